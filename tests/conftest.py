"""Shared fixtures. Unit tests need nothing; integration tests need `scripts/services up`."""

from __future__ import annotations

import gc
import os
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from hypothesis import settings as hypothesis_settings

from worker.adapters.kafka_connection import kafka_client_args
from worker.adapters.migrate import create_database, drop_database
from worker.config import Settings

ROOT = Path(__file__).resolve().parent.parent
HOW_TO_START = "start them with `scripts/services up` (or run the whole suite with `make test`)"

# Mutation runs (make mutation) trace every call: timings mean nothing there.
hypothesis_settings.register_profile("mutation", deadline=None)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def _service_env() -> dict[str, str]:
    """BILLING_* from the environment, else from `scripts/services env`."""
    env = {k: v for k, v in os.environ.items() if k.startswith("BILLING_")}
    if "BILLING_KAFKA_BOOTSTRAP_SERVERS" in env and "BILLING_DATABASE_URL" in env:
        return env
    out = subprocess.run(
        [str(ROOT / "scripts" / "services"), "env"], capture_output=True, text=True, check=False
    ).stdout
    for line in out.splitlines():
        if line.startswith("export ") and "=" in line:
            key, _, value = line.removeprefix("export ").partition("=")
            env.setdefault(key, value.strip().strip("'\""))
    return env


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(autouse=True)
def _collect_garbage_after_each_test() -> Iterator[None]:
    """Collect after every test, so an unclosed client warns in the test that leaked it."""
    yield
    gc.collect()


@pytest.fixture(scope="session")
def service_env() -> dict[str, str]:
    env = _service_env()
    kafka = env.get("BILLING_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092").split(",")[0]
    host, _, port = kafka.rpartition(":")
    if not _reachable(host, int(port)):
        pytest.fail(f"Kafka is not reachable at {kafka}: {HOW_TO_START}")
    db = urlsplit(env.get("BILLING_DATABASE_URL", "postgresql://billing@127.0.0.1:15432/billing"))
    if not _reachable(db.hostname or "127.0.0.1", db.port or 5432):
        pytest.fail(f"PostgreSQL is not reachable at {db.hostname}:{db.port}: {HOW_TO_START}")
    return env


@pytest.fixture(scope="session")
async def database_url(service_env: dict[str, str]) -> AsyncIterator[str]:
    """A fresh database for this test session, migrated, dropped at the end."""
    admin_url = service_env.get(
        "BILLING_DATABASE_URL", "postgresql://billing@127.0.0.1:15432/billing"
    )
    name = f"billing_test_{uuid.uuid4().hex[:10]}"
    url = await create_database(admin_url, name)
    try:
        yield url
    finally:
        await drop_database(admin_url, name)


@pytest.fixture
def unique() -> str:
    """A short id that keeps topics, groups and accounts of one test apart."""
    return uuid.uuid4().hex[:8]


@pytest.fixture
async def settings(
    service_env: dict[str, str], database_url: str, unique: str
) -> AsyncIterator[Settings]:
    """Settings for one test: its own topics and consumer group, the session's database.
    The test's topics are deleted afterwards so the broker does not accumulate them."""
    settings = Settings(
        kafka_bootstrap_servers=service_env.get(
            "BILLING_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092"
        ),
        database_url=database_url,
        consumer_group=f"test-{unique}",
        client_id=f"test-{unique}",
        topic_usage=f"test-{unique}.sms.usage.v1",
        topic_account_events=f"test-{unique}.billing.account-events.v1",
        topic_reminders=f"test-{unique}.billing.reminders.v1",
        topic_invoices=f"test-{unique}.billing.invoices.v1",
        topic_dlq=f"test-{unique}.billing.dlq.v1",
        topic_balances=f"test-{unique}.billing.balances.v1",
        input_partitions=3,
        output_partitions=2,
        batch_timeout_ms=50,
        outbox_poll_interval_ms=50,
        expiry_sweep_interval_s=0.5,
        month_close_interval_s=0.5,
        # Month close is global to the database: only the tests about it switch it on.
        month_close_enabled=False,
        http_port=0,
        shutdown_timeout_s=20,
        log_json=True,
    )
    yield settings
    await _delete_topics(settings)


async def _delete_topics(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(**kafka_client_args(settings))
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        mine = [
            t
            for t in (
                settings.topic_usage,
                settings.topic_account_events,
                settings.topic_reminders,
                settings.topic_invoices,
                settings.topic_dlq,
                settings.topic_balances,
            )
            if t in existing
        ]
        if mine:
            await admin.delete_topics(mine)
    finally:
        await admin.close()
