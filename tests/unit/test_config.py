"""Settings come from BILLING_* variables; a bad value names the variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from worker.config import SettingsError, load_settings


def test_defaults_point_at_the_project_services(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BILLING_KAFKA_BOOTSTRAP_SERVERS", "BILLING_DATABASE_URL", "BILLING_TOPIC_USAGE"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.kafka_bootstrap_servers == "127.0.0.1:19092"
    assert settings.database_url.startswith("postgresql://")
    assert settings.topic_usage == "sms.usage.v1"
    assert settings.business_timezone == "Asia/Tokyo"
    assert settings.month_close_grace_s == 900
    assert settings.lateness_allowance_s == 3600


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BILLING_INPUT_PARTITIONS", "zero"),
        ("BILLING_INPUT_PARTITIONS", "0"),
        ("BILLING_BUSINESS_TIMEZONE", "Mars/Olympus"),
        ("BILLING_DATABASE_URL", "mysql://nope"),
        ("BILLING_TEST_CREDITS_JPY", "-5"),
        ("BILLING_LOG_LEVEL", "LOUD"),
        ("BILLING_RATE_TABLE_PATH", "/no/such/rates.json"),
    ],
)
def test_a_bad_value_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=variable):
        load_settings()


def test_topics_must_differ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BILLING_TOPIC_DLQ", "sms.usage.v1")
    with pytest.raises(SettingsError, match="BILLING_TOPIC"):
        load_settings()


def test_the_worker_refuses_to_start_with_a_bad_setting(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "billing-worker"
    done = subprocess.run(
        [str(script), "run"],
        env={"BILLING_INPUT_PARTITIONS": "many", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 78
    assert "BILLING_INPUT_PARTITIONS" in done.stderr


@pytest.mark.parametrize(
    ("now", "due"),
    [
        # June begins in Tokyo at 2026-05-31T15:00Z; with one hour's grace May is due at 16:00Z
        ("2026-05-31T15:59:59.999999+00:00", "2026-04"),
        ("2026-05-31T16:00:00+00:00", "2026-05"),
        ("2026-06-30T15:59:59+00:00", "2026-05"),  # July 1, 00:59:59 in Tokyo
        ("2026-06-30T16:00:00+00:00", "2026-06"),
    ],
)
def test_month_close_waits_out_a_configured_grace_period(
    monkeypatch: pytest.MonkeyPatch, now: str, due: str
) -> None:
    from datetime import datetime

    from worker.entrypoints.month_close import due_period

    monkeypatch.setenv("BILLING_MONTH_CLOSE_GRACE_S", "3600")
    settings = load_settings()
    assert settings.month_close_grace_s == 3600
    assert due_period(datetime.fromisoformat(now), settings) == due
