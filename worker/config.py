"""Settings read once from `BILLING_*` environment variables and passed down."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker import redact
from worker.domain.errors import BillingError


class SettingsError(BillingError):
    """A setting has a value the worker cannot start with."""


class Settings(BaseSettings):
    """Every knob of the worker; the defaults match `scripts/services`."""

    model_config = SettingsConfigDict(env_prefix="BILLING_", extra="ignore", frozen=True)

    kafka_bootstrap_servers: str = Field("127.0.0.1:19092", min_length=1)
    database_url: str = Field(
        "postgresql://billing@127.0.0.1:15432/billing", pattern=r"^postgres(ql)?://"
    )
    # Kafka security: every client's connection arguments come from
    # worker.adapters.kafka_connection.kafka_client_args, built from these.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = "SCRAM-SHA-512"
    kafka_sasl_username: str | None = Field(None, min_length=1)
    kafka_sasl_password: SecretStr | None = None
    # A mounted secret: the file holds the password (one trailing newline is ignored).
    kafka_sasl_password_file: Path | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    consumer_group: str = Field("sms-billing-worker", min_length=1)
    client_id: str = Field("sms-billing-worker", min_length=1)
    # Static membership: set a stable id per process so a quick restart does not rebalance.
    group_instance_id: str | None = Field(None, min_length=1)

    topic_usage: str = Field("sms.usage.v1", min_length=1)
    topic_account_events: str = Field("billing.account-events.v1", min_length=1)
    topic_reminders: str = Field("billing.reminders.v1", min_length=1)
    topic_invoices: str = Field("billing.invoices.v1", min_length=1)
    topic_dlq: str = Field("billing.dlq.v1", min_length=1)
    topic_balances: str = Field("billing.balances.v1", min_length=1)
    input_partitions: int = Field(6, ge=1, le=1000)
    output_partitions: int = Field(3, ge=1, le=1000)

    business_timezone: str = "Asia/Tokyo"
    month_close_grace_s: int = Field(900, ge=0)
    lateness_allowance_s: int = Field(3600, ge=0)
    # How far an event's occurred_at may be ahead of its record's Kafka timestamp.
    max_clock_skew_s: int = Field(86_400, ge=0, le=10 * 365 * 86_400)
    # Accept input topics whose record timestamps producers set (CreateTime): lateness is then
    # measured by the producers' clocks. Off: such a topic stops start-up.
    allow_create_time_inputs: bool = False
    test_credits_jpy: int = Field(100, ge=0)
    lot_validity_days: int = Field(90, ge=1)
    expiring_notice_days: int = Field(7, ge=0)
    rate_table_path: Path | None = None

    # Large batches amortise the per-transaction cost and load each busy account once for many
    # events (benchmarks/RESULTS.md); at lower load batches are smaller, so latency stays low.
    batch_max_records: int = Field(10_000, ge=1, le=100_000)
    # How long the stream waits for records when none are buffered: not a batching delay
    # (a fetch returns as soon as the broker has records), the idle poll of the aligner's clock.
    batch_timeout_ms: int = Field(200, ge=1)
    # How long the broker may hold one fetch with no new records: bounds how long records of a
    # partition left out of the fetch in flight wait (consumer `fetch_max_wait_ms`; Kafka's
    # default is 500). While any assigned partition is idle (the account topic, mostly) the
    # consumer sends 1000 / this fetches a second, which costs worker CPU on a busy machine.
    fetch_max_wait_ms: int = Field(50, ge=0, le=10_000)
    # How long records of one input wait for the other co-partitioned input to catch up.
    align_max_wait_ms: int = Field(1000, ge=0)
    expiry_sweep_interval_s: float = Field(30.0, gt=0)
    month_close_interval_s: float = Field(60.0, gt=0)
    month_close_enabled: bool = True
    outbox_poll_interval_ms: int = Field(200, ge=1)
    outbox_batch_size: int = Field(1000, ge=1)
    retry_max_backoff_s: float = Field(10.0, gt=0)
    shutdown_timeout_s: float = Field(30.0, gt=0)
    lag_refresh_interval_s: float = Field(5.0, gt=0)
    # /ready fails when an assigned partition has lag but no commit for this long.
    ready_commit_stall_s: float = Field(60.0, gt=0)

    http_host: str = "127.0.0.1"
    http_port: int = Field(8080, ge=0, le=65535)
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$")
    log_json: bool = True
    # Loggers of the worker that write their DEBUG lines whatever `log_level` is, comma
    # separated: `worker.stream` traces every offset commit (partition -> offset, generation,
    # batch size, released offsets). The libraries stay at their level.
    log_debug: str = ""

    # How long a one-shot command (account, lag, close-month, dlq replay, migrate) keeps trying
    # to reach PostgreSQL or Kafka before it gives up; `run` keeps trying until stopped.
    connect_timeout_s: float = Field(15.0, gt=0)
    # Single-process deployments may migrate at start; an advisory lock serialises migrators.
    migrate_on_start: bool = False

    @field_validator("business_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @field_validator("rate_table_path")
    @classmethod
    def _rate_table_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @field_validator(
        "kafka_sasl_password_file", "kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile"
    )
    @classmethod
    def _readable_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            try:
                value.read_bytes()
            except OSError as exc:
                raise ValueError(f"cannot read {value}: {exc.strerror}") from exc
        return value

    @field_validator("database_url")
    @classmethod
    def _database_tls(cls, value: str) -> str:
        check_dsn_tls(value)
        return value

    @model_validator(mode="after")
    def _kafka_security(self) -> Settings:
        check_kafka_security(self)
        return self

    @model_validator(mode="after")
    def _distinct_topics(self) -> Settings:
        names = [
            self.topic_usage,
            self.topic_account_events,
            self.topic_reminders,
            self.topic_invoices,
            self.topic_dlq,
            self.topic_balances,
        ]
        if len(set(names)) != len(names):
            raise ValueError("BILLING_TOPIC_* must name six different topics")
        return self

    @property
    def output_topics(self) -> tuple[str, ...]:
        """The topics the outbox relay publishes to."""
        return (self.topic_reminders, self.topic_invoices, self.topic_dlq, self.topic_balances)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.business_timezone)

    def kafka_sasl_password_value(self) -> str | None:
        """The SASL password, from BILLING_KAFKA_SASL_PASSWORD or the file that holds it."""
        if self.kafka_sasl_password is not None:
            return self.kafka_sasl_password.get_secret_value()
        if self.kafka_sasl_password_file is not None:
            return self.kafka_sasl_password_file.read_text().removesuffix("\n")
        return None

    def secrets(self) -> list[str]:
        """Every secret value these settings hold, so outputs can be scrubbed of them."""
        found = [self.kafka_sasl_password_value() or "", urlsplit(self.database_url).password or ""]
        return [value for value in found if value]


_SSLMODES = {"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}


def check_dsn_tls(dsn: str) -> None:
    """The DSN's sslmode is known and the certificate files it names can be read."""
    query = parse_qs(urlsplit(dsn).query)
    modes = query.get("sslmode", [])
    if modes and modes[-1] not in _SSLMODES:
        raise ValueError(f"sslmode must be one of {', '.join(sorted(_SSLMODES))}")
    for key in ("sslrootcert", "sslcert", "sslkey"):
        for path in query.get(key, []):
            if not Path(path).is_file():
                raise ValueError(f"{key}: no such file: {path}")
    verifies = modes and modes[-1] in ("verify-ca", "verify-full")
    # asyncpg would fall back to PGSSLROOTCERT or ~/.postgresql/root.crt; say what is missing.
    default_ca = Path(os.environ.get("PGSSLROOTCERT", Path.home() / ".postgresql" / "root.crt"))
    if verifies and not query.get("sslrootcert") and not default_ca.is_file():
        raise ValueError(f"sslmode={modes[-1]} needs sslrootcert=<CA file>")


def check_kafka_security(s: Settings) -> None:
    """A combination of BILLING_KAFKA_* security settings the clients can connect with."""
    protocol = s.kafka_security_protocol
    if protocol.startswith("SASL_"):
        _check_sasl(s)
    else:
        _none_set(
            f"BILLING_KAFKA_SECURITY_PROTOCOL={protocol} does not use SASL",
            BILLING_KAFKA_SASL_USERNAME=s.kafka_sasl_username,
            BILLING_KAFKA_SASL_PASSWORD=s.kafka_sasl_password,
            BILLING_KAFKA_SASL_PASSWORD_FILE=s.kafka_sasl_password_file,
        )
    if protocol not in ("SSL", "SASL_SSL"):
        _none_set(
            f"BILLING_KAFKA_SECURITY_PROTOCOL={protocol} does not use TLS",
            BILLING_KAFKA_SSL_CAFILE=s.kafka_ssl_cafile,
            BILLING_KAFKA_SSL_CERTFILE=s.kafka_ssl_certfile,
            BILLING_KAFKA_SSL_KEYFILE=s.kafka_ssl_keyfile,
        )
    if s.kafka_ssl_keyfile is not None and s.kafka_ssl_certfile is None:
        raise ValueError("BILLING_KAFKA_SSL_KEYFILE needs BILLING_KAFKA_SSL_CERTFILE")


def _check_sasl(s: Settings) -> None:
    with_protocol = f"with BILLING_KAFKA_SECURITY_PROTOCOL={s.kafka_security_protocol}"
    if s.kafka_sasl_username is None:
        raise ValueError(f"BILLING_KAFKA_SASL_USERNAME is required {with_protocol}")
    if (s.kafka_sasl_password is None) == (s.kafka_sasl_password_file is None):
        raise ValueError(
            "set exactly one of BILLING_KAFKA_SASL_PASSWORD and "
            f"BILLING_KAFKA_SASL_PASSWORD_FILE {with_protocol}"
        )
    if not s.kafka_sasl_password_value():
        raise ValueError("BILLING_KAFKA_SASL_PASSWORD(_FILE) gives an empty password")


def _none_set(why: str, **values: object) -> None:
    for name, value in values.items():
        if value is not None:
            raise ValueError(f"{name} is set but {why}")


def load_settings() -> Settings:
    """Read the environment; a bad value raises SettingsError naming the variable."""
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(part) for part in err["loc"])
            # Only the message, never the input: a rejected value may be a secret.
            message = str(err["msg"]).removeprefix("Value error, ")
            problems.append(f"BILLING_{field.upper()}: {message}" if field else message)
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None
    redact.register(*settings.secrets())
    return settings
