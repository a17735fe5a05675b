"""The one place that turns settings into the connection arguments of every Kafka client, and
the one way to close such a client."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.helpers import create_ssl_context

from worker.config import Settings


def kafka_client_args(settings: Settings) -> dict[str, Any]:
    """Keywords shared by AIOKafkaConsumer, AIOKafkaProducer and AIOKafkaAdminClient."""
    protocol = settings.kafka_security_protocol
    args: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "security_protocol": protocol,
    }
    if protocol in ("SSL", "SASL_SSL"):
        # Hostname checking stays on; without a CA file the system's trusted CAs apply.
        args["ssl_context"] = create_ssl_context(
            cafile=settings.kafka_ssl_cafile,
            certfile=settings.kafka_ssl_certfile,
            keyfile=settings.kafka_ssl_keyfile,
        )
    if protocol.startswith("SASL_"):
        args["sasl_mechanism"] = settings.kafka_sasl_mechanism
        args["sasl_plain_username"] = settings.kafka_sasl_username
        args["sasl_plain_password"] = settings.kafka_sasl_password_value()
    return args


async def close_client(
    client: AIOKafkaConsumer | AIOKafkaProducer | AIOKafkaAdminClient,
    timeout_s: float | None = None,
) -> None:
    """Stop a Kafka client; its connections close even when the stop fails, hangs past
    `timeout_s` or is cancelled.

    aiokafka's stop() closes the connections last, after leaving the group and stopping the
    fetcher and sender: an error or a cancellation in between left them open until the
    garbage collector found them. A stop that hangs is given up (no error): the connections
    are closed all the same.
    """
    network = client.client if isinstance(client, AIOKafkaProducer) else client._client
    stop = client.close() if isinstance(client, AIOKafkaAdminClient) else client.stop()
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop, timeout_s)
    finally:
        await network.close()
