"""Fixtures for the secured pair of `scripts/services --secure up`: SCRAM, TLS, ACLs."""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.conftest import ROOT, _reachable
from worker.adapters.kafka_connection import kafka_client_args
from worker.adapters.migrate import create_database, drop_database
from worker.config import Settings

SERVICES = ROOT / "scripts" / "services"
WORKER = "billing-worker"
LIMITED = "billing-limited"


def _secure_env() -> dict[str, str]:
    done = subprocess.run(
        [str(SERVICES), "--secure", "env"], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        pytest.fail(
            f"start the secured services with `scripts/services --secure up`: {done.stderr}"
        )
    env = {}
    for line in done.stdout.splitlines():
        key, _, value = shlex.split(line)[1].partition("=")
        env[key] = value
    return env


@pytest.fixture(scope="session")
def secure_env() -> dict[str, str]:
    env = _secure_env()
    for address in (
        env["BILLING_KAFKA_BOOTSTRAP_SERVERS"],
        env["BILLING_SERVICES_SECURE_SSL_BOOTSTRAP"],
    ):
        host, _, port = address.rpartition(":")
        if not _reachable(host, int(port)):
            pytest.fail(f"no secured Kafka at {address}: `scripts/services --secure up`")
    return env


@pytest.fixture(scope="session")
async def secure_database_url(secure_env: dict[str, str]) -> AsyncIterator[str]:
    admin_url = secure_env["BILLING_DATABASE_URL"]
    name = f"billing_secure_{uuid.uuid4().hex[:10]}"
    url = await create_database(admin_url, name)
    try:
        yield url
    finally:
        await drop_database(admin_url, name)


def tls_dir(env: dict[str, str]) -> Path:
    return Path(env["BILLING_SERVICES_SECURE_TLS_DIR"])


def secret_file(env: dict[str, str], user: str) -> Path:
    return Path(env["BILLING_SERVICES_SECURE_SECRETS_DIR"]) / f"{user}.password"


def connection(env: dict[str, str], mode: str, user: str) -> dict[str, Any]:
    """Settings fields that connect as `user` by SCRAM over SASL_SSL or by certificate (mTLS)."""
    ca = tls_dir(env) / "ca.crt"
    if mode == "sasl_ssl":
        return {
            "kafka_bootstrap_servers": env["BILLING_KAFKA_BOOTSTRAP_SERVERS"],
            "kafka_security_protocol": "SASL_SSL",
            "kafka_sasl_mechanism": "SCRAM-SHA-512",
            "kafka_sasl_username": user,
            "kafka_sasl_password_file": secret_file(env, user),
            "kafka_ssl_cafile": ca,
        }
    return {
        "kafka_bootstrap_servers": env["BILLING_SERVICES_SECURE_SSL_BOOTSTRAP"],
        "kafka_security_protocol": "SSL",
        "kafka_ssl_cafile": ca,
        "kafka_ssl_certfile": tls_dir(env) / f"{user}.crt",
        "kafka_ssl_keyfile": tls_dir(env) / f"{user}.key",
    }


def secure_settings(
    env: dict[str, str], database_url: str, unique: str, mode: str, user: str
) -> Settings:
    return Settings(
        **connection(env, mode, user),
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
        month_close_enabled=False,
        retry_max_backoff_s=1.0,
        http_port=0,
        shutdown_timeout_s=20,
    )


def as_admin(settings: Settings, env: dict[str, str]) -> Settings:
    """The same topics, as the super user (creates topics, reads outputs)."""
    return settings.model_copy(update=connection(env, "sasl_ssl", "admin"))


async def grant(settings: Settings, principal: str, *options: str) -> None:
    """The README's least-privilege ACLs for `principal` on these settings' topics and group."""
    env = {
        **os.environ,
        "BILLING_TOPIC_USAGE": settings.topic_usage,
        "BILLING_TOPIC_ACCOUNT_EVENTS": settings.topic_account_events,
        "BILLING_TOPIC_REMINDERS": settings.topic_reminders,
        "BILLING_TOPIC_INVOICES": settings.topic_invoices,
        "BILLING_TOPIC_DLQ": settings.topic_dlq,
        "BILLING_TOPIC_BALANCES": settings.topic_balances,
        "BILLING_CONSUMER_GROUP": settings.consumer_group,
    }
    proc = await asyncio.create_subprocess_exec(
        str(SERVICES), "--secure", "grant", principal, *options, env=env
    )
    assert await asyncio.wait_for(proc.wait(), timeout=180) == 0


async def create_topics(admin: Settings) -> None:
    client = AIOKafkaAdminClient(**kafka_client_args(admin))
    await client.start()
    try:
        inputs = [admin.topic_usage, admin.topic_account_events]
        outputs = [admin.topic_reminders, admin.topic_invoices, admin.topic_dlq]
        compacted = {"cleanup.policy": "compact"}
        stamped = {"message.timestamp.type": "LogAppendTime"}  # as the worker wants its inputs
        await client.create_topics(
            [NewTopic(t, admin.input_partitions, 1, topic_configs=stamped) for t in inputs]
            + [NewTopic(t, admin.output_partitions, 1) for t in outputs]
            + [NewTopic(admin.topic_balances, admin.output_partitions, 1, topic_configs=compacted)]
        )
    finally:
        await client.close()


async def delete_topics(admin: Settings) -> None:
    client = AIOKafkaAdminClient(**kafka_client_args(admin))
    await client.start()
    try:
        mine = {
            admin.topic_usage,
            admin.topic_account_events,
            admin.topic_reminders,
            admin.topic_invoices,
            admin.topic_dlq,
            admin.topic_balances,
        }
        existing = mine & set(await client.list_topics())
        if existing:
            await client.delete_topics(sorted(existing))
    finally:
        await client.close()
