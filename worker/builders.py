"""Builds the worker's parts from settings: the one place app and entrypoints construct them."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
from pydantic import ValidationError

from worker.adapters.kafka_connection import kafka_client_args
from worker.adapters.postgres import SESSION_SETTINGS
from worker.adapters.rates import load_rate_table
from worker.adapters.relay import OutboxRelay
from worker.adapters.wire import Decoder, Encoder
from worker.config import Settings, SettingsError
from worker.domain.account import Policy
from worker.domain.rating import RateTable
from worker.metrics import Metrics


def policy_from(settings: Settings) -> Policy:
    return Policy(
        test_credits_jpy=settings.test_credits_jpy,
        lot_validity=timedelta(days=settings.lot_validity_days),
        lateness=timedelta(seconds=settings.lateness_allowance_s),
        expiring_notice=timedelta(days=settings.expiring_notice_days),
        zone=settings.zone,
    )


def rates_from(settings: Settings) -> RateTable:
    try:
        return load_rate_table(settings.rate_table_path)
    except (ValidationError, ValueError, OSError) as exc:
        raise SettingsError(f"BILLING_RATE_TABLE_PATH: unusable rate table: {exc}") from exc


def decoder_from(settings: Settings) -> Decoder:
    return Decoder(rates_from(settings), timedelta(seconds=settings.max_clock_skew_s))


def encoder_from(settings: Settings) -> Encoder:
    return Encoder(
        settings.topic_reminders,
        settings.topic_invoices,
        settings.topic_dlq,
        settings.topic_balances,
    )


async def create_pool(settings: Settings, size: int = 4) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        settings.database_url,
        min_size=1,
        max_size=size,
        command_timeout=60,
        server_settings=SESSION_SETTINGS,
    )
    assert pool is not None
    return pool


def relay_from(settings: Settings, metrics: Metrics) -> OutboxRelay:
    """The outbox relay, checking every output topic's log when it starts."""
    return OutboxRelay(
        settings.database_url,
        kafka_client_args(settings),
        settings.client_id,
        metrics,
        settings.outbox_batch_size,
        settings.outbox_poll_interval_ms / 1000,
        topics=settings.output_topics,
    )
