"""Kafka and PostgreSQL security settings: bad combinations name the variable; the builder
hands every client the same arguments; secrets are never shown."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest

from worker import redact
from worker.adapters.kafka_connection import kafka_client_args
from worker.config import SettingsError, load_settings

SECURITY_VARS = [
    "BILLING_KAFKA_SECURITY_PROTOCOL",
    "BILLING_KAFKA_SASL_MECHANISM",
    "BILLING_KAFKA_SASL_USERNAME",
    "BILLING_KAFKA_SASL_PASSWORD",
    "BILLING_KAFKA_SASL_PASSWORD_FILE",
    "BILLING_KAFKA_SSL_CAFILE",
    "BILLING_KAFKA_SSL_CERTFILE",
    "BILLING_KAFKA_SSL_KEYFILE",
    "BILLING_DATABASE_URL",
]


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SECURITY_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    """A real CA certificate, so the builder's SSL context can load it."""
    path = tmp_path / "ca.crt"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=test CA",
            "-keyout",
            str(tmp_path / "ca.key"),
            "-out",
            str(path),
        ],
        check=True,
        capture_output=True,
    )
    return path


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"BILLING_KAFKA_SECURITY_PROTOCOL": "TLS"}, "BILLING_KAFKA_SECURITY_PROTOCOL"),
        ({"BILLING_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "BILLING_KAFKA_SASL_USERNAME"),
        (
            {"BILLING_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "BILLING_KAFKA_SASL_USERNAME": "u"},
            "BILLING_KAFKA_SASL_PASSWORD_FILE",
        ),
        (
            {"BILLING_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "BILLING_KAFKA_SASL_MECHANISM": "MD5"},
            "BILLING_KAFKA_SASL_MECHANISM",
        ),
        ({"BILLING_KAFKA_SASL_USERNAME": "u"}, "BILLING_KAFKA_SASL_USERNAME"),
        ({"BILLING_KAFKA_SASL_PASSWORD": "p"}, "BILLING_KAFKA_SASL_PASSWORD"),
        ({"BILLING_KAFKA_SSL_CAFILE": "/no/such/ca.crt"}, "BILLING_KAFKA_SSL_CAFILE"),
        (
            {
                "BILLING_KAFKA_SECURITY_PROTOCOL": "SSL",
                "BILLING_KAFKA_SSL_KEYFILE": "/etc/hostname",
            },
            "BILLING_KAFKA_SSL_KEYFILE needs BILLING_KAFKA_SSL_CERTFILE",
        ),
        (
            {"BILLING_DATABASE_URL": "postgresql://u@h/db?sslmode=very"},
            "BILLING_DATABASE_URL",
        ),
        (
            {"BILLING_DATABASE_URL": "postgresql://u@h/db?sslmode=verify-full&sslrootcert=/no/ca"},
            "BILLING_DATABASE_URL",
        ),
    ],
)
def test_a_bad_combination_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError, match=named):
        load_settings()


def test_the_settings_error_never_shows_a_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BILLING_KAFKA_SASL_PASSWORD", "Hunter2-secret")
    monkeypatch.setenv("BILLING_DATABASE_URL", "mysql://u:Pg-secret@h/db")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "Hunter2-secret" not in str(caught.value)
    assert "Pg-secret" not in str(caught.value)
    assert "BILLING_DATABASE_URL" in str(caught.value)
    monkeypatch.setenv("BILLING_DATABASE_URL", "postgresql://u:Pg-secret@h/db")
    with pytest.raises(SettingsError) as caught:
        load_settings()  # a password with PLAINTEXT
    assert "Hunter2-secret" not in str(caught.value)
    assert "Pg-secret" not in str(caught.value)
    assert "BILLING_KAFKA_SASL_PASSWORD" in str(caught.value)


def test_plaintext_arguments_are_the_bootstrap_servers_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BILLING_KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    assert kafka_client_args(load_settings()) == {
        "bootstrap_servers": "k1:9092,k2:9092",
        "security_protocol": "PLAINTEXT",
    }


def test_sasl_ssl_reads_the_password_file_and_builds_a_verifying_context(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ca: Path
) -> None:
    secret = tmp_path / "password"
    secret.write_text("Zq-7-file-secret\n")
    # Named here: the environment of a run (e.g. services on other ports) must not leak in.
    monkeypatch.setenv("BILLING_KAFKA_BOOTSTRAP_SERVERS", "kafka-1.internal:9093")
    monkeypatch.setenv("BILLING_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("BILLING_KAFKA_SASL_USERNAME", "billing-worker")
    monkeypatch.setenv("BILLING_KAFKA_SASL_PASSWORD_FILE", str(secret))
    monkeypatch.setenv("BILLING_KAFKA_SSL_CAFILE", str(ca))
    settings = load_settings()
    args = kafka_client_args(settings)
    context = args.pop("ssl_context")
    assert args == {
        "bootstrap_servers": "kafka-1.internal:9093",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "billing-worker",
        "sasl_plain_password": "Zq-7-file-secret",
    }
    assert context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert "Zq-7-file-secret" not in repr(settings)
    assert "Zq-7-file-secret" not in str(settings.model_dump())


def test_a_secret_is_scrubbed_and_a_dsn_is_masked() -> None:
    redact.register("Pw-0123456789")
    assert redact.scrub("login failed for Pw-0123456789!") == "login failed for ***!"
    assert (
        redact.mask_dsn("postgresql://billing:Pw-0123456789@db:5432/billing?sslmode=verify-full")
        == "postgresql://billing:***@db:5432/billing?sslmode=verify-full"
    )
    assert redact.mask_dsn("postgresql://billing@db/billing") == "postgresql://billing@db/billing"
