"""Settings read once from `BILLING_*` environment variables and passed down."""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

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
    test_credits_jpy: int = Field(100, ge=0)
    lot_validity_days: int = Field(90, ge=1)
    expiring_notice_days: int = Field(7, ge=0)
    rate_table_path: Path | None = None

    # Large batches amortise the per-transaction cost and load each busy account once for many
    # events (benchmarks/RESULTS.md); at lower load batches are smaller, so latency stays low.
    batch_max_records: int = Field(10_000, ge=1, le=100_000)
    batch_timeout_ms: int = Field(200, ge=1)
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
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.business_timezone)


def load_settings() -> Settings:
    """Read the environment; a bad value raises SettingsError naming the variable."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(part) for part in err["loc"])
            name = f"BILLING_{field.upper()}" if field else "BILLING_* settings"
            problems.append(f"{name}: {err['msg']}")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from exc
