"""The whole worker over SASL_SSL (SCRAM-SHA-512) and over mutual TLS, under the README's
least-privilege ACLs, against PostgreSQL with sslmode=verify-full."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.kit import (
    account_row,
    ago,
    database,
    messages_for,
    opened,
    produce,
    read_topic,
    reminder_set,
    run_cli,
    running_worker,
    usage,
    wait_applied,
    wait_until,
)
from tests.secure.conftest import (
    WORKER,
    as_admin,
    create_topics,
    delete_topics,
    grant,
    secure_settings,
)
from worker.config import Settings
from worker.entrypoints.dlq import replay

pytestmark = [pytest.mark.integration, pytest.mark.secure, pytest.mark.timeout(300)]


@pytest.fixture(params=["sasl_ssl", "mtls"])
async def worker_settings(
    request: pytest.FixtureRequest,
    secure_env: dict[str, str],
    secure_database_url: str,
    unique: str,
) -> AsyncIterator[tuple[Settings, Settings]]:
    settings = secure_settings(secure_env, secure_database_url, unique, request.param, WORKER)
    admin = as_admin(settings, secure_env)
    await create_topics(admin)
    await grant(settings, WORKER, "--replay")
    yield settings, admin
    await delete_topics(admin)


def rates_with_france(path: Path) -> Path:
    path.write_text(
        json.dumps(
            [
                {"country": c, "unit_price_jpy": p, "effective_from": "2000-01-01T00:00:00+09:00"}
                for c, p in (("JP", 10), ("FR", 16))
            ]
        )
    )
    return path


async def test_the_whole_worker_runs_under_least_privilege(
    worker_settings: tuple[Settings, Settings], unique: str, tmp_path: Path
) -> None:
    settings, admin = worker_settings
    a, b = f"a-{unique}", f"b-{unique}"
    start = ago(days=1)
    account_events = [
        opened(f"open-{a}", a, start),  # 100 JPY of test credits
        reminder_set(f"rem-{a}", a, ago(days=1, minutes=-1), threshold=80),
        opened(f"open-{b}", b, ago(days=91)),  # its lot expired a day ago
    ]
    jp = usage(f"u1-{a}", a, ago(days=1, minutes=-2), segments=3)  # 30 JPY
    fr = usage(f"u2-{a}", a, ago(days=1, minutes=-3), segments=2, destination="+33612345678")
    # Inputs are written by the worker's own principal (it may: the --replay grant).
    await produce(settings, settings.topic_account_events, account_events)
    await produce(settings, settings.topic_usage, [jp, fr])

    async with running_worker(settings):
        async with database(settings) as conn:
            await wait_applied(conn, [e["event_id"] for e in account_events] + [jp["event_id"]])
            reminders = await messages_for(admin, settings.topic_reminders, a, at_least=1)
            expired = await messages_for(admin, settings.topic_reminders, b, at_least=1)
        (letter,) = await read_topic(admin, settings.topic_dlq, at_least=1)

        async def no_lag() -> bool:
            code, out, _ = await run_cli(settings, "lag", "--json")
            return code == 0 and json.loads(out)["total"] == 0

        await wait_until(no_lag, 60, "lag --json to report no lag")
        code, out, err = await run_cli(settings, "account", a, "--json")
        assert code == 0, err
        assert json.loads(out)["balance"] == 70

    assert [(r["kind"], r["balance"]) for r in reminders] == [("low_balance", 70)]
    assert "credits_expired" in [r["kind"] for r in expired]
    assert letter["error_code"] == "no_rate"

    fixed = settings.model_copy(update={"rate_table_path": rates_with_france(tmp_path / "r.json")})
    report = await replay(fixed, {"no_rate"}, dry_run=False)
    assert (dict(report.replayed), dict(report.skipped), report.refused) == ({"no_rate": 1}, {}, [])
    async with running_worker(fixed), database(settings) as conn:

        async def charged() -> bool:
            return (await account_row(conn, a))["balance_jpy"] == 70 - 32

        await wait_until(charged, 60, "the replayed French usage to be charged")
        assert (await account_row(conn, b))["balance_jpy"] == 0
