"""The one place that turns settings into the connection arguments of every Kafka client."""

from __future__ import annotations

from typing import Any

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
