"""An input topic whose producers stamp the records (CreateTime) would let a producer's clock
decide lateness: `billing-worker run` refuses it at start with one line naming the topic and
the fix, unless BILLING_ALLOW_CREATE_TIME_INPUTS says the producers' clocks are trusted."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.integration.kit import (
    ARRIVAL_STAMPED,
    CLI,
    PRODUCER_STAMPED,
    ago,
    create_topics,
    database,
    opened,
    produce,
    running_worker,
    settings_env,
    wait_applied,
)
from worker.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


async def _run_until_exit(settings: Settings) -> tuple[int, list[str]]:
    """`billing-worker run` until it exits by itself: (exit code, its stderr lines)."""
    proc = await asyncio.create_subprocess_exec(
        str(CLI),
        "run",
        env=settings_env(settings, http_port="0"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout=90)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, err.decode().splitlines()


async def test_a_create_time_input_topic_stops_the_start_naming_it_and_the_fix(
    settings: Settings,
) -> None:
    # The account topic is stamped on arrival, the usage topic by its producers.
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(settings.topic_usage, 2, 1, topic_configs=PRODUCER_STAMPED),
                NewTopic(settings.topic_account_events, 2, 1, topic_configs=ARRIVAL_STAMPED),
            ]
        )
    finally:
        await admin.close()

    code, lines = await _run_until_exit(settings)

    failures = [orjson.loads(line) for line in lines if '"command_failed"' in line]
    assert code == 78, lines[-5:]
    assert len(failures) == 1, lines[-5:]
    message = failures[0]["message"]
    assert failures[0]["error_code"] == "input_timestamp_type"
    assert f"input topic {settings.topic_usage} has message.timestamp.type=CreateTime" in message
    assert "message.timestamp.type=LogAppendTime" in message
    assert "BILLING_ALLOW_CREATE_TIME_INPUTS=true" in message
    assert settings.topic_account_events not in message


async def test_create_time_inputs_are_consumed_when_the_setting_allows_them(
    settings: Settings, unique: str
) -> None:
    allowed = settings.model_copy(update={"allow_create_time_inputs": True})
    await create_topics(allowed, producer_stamped=True)
    account = f"acc-{unique}"
    await produce(
        allowed, allowed.topic_account_events, [opened(f"o-{unique}", account, ago(minutes=1))]
    )

    async with running_worker(allowed), database(allowed) as conn:
        await wait_applied(conn, [f"o-{unique}"], timeout_s=60)
