"""Prometheus metrics of the worker (one registry per process)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """Every metric the worker exports; built once and passed down."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # No `*_created` series: they double the output and no dashboard of ours reads them.
        prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "billing_events", "Input events by topic and outcome", ["topic", "outcome"], registry=r
        )
        self.dlq = Counter(
            "billing_dlq_messages",
            "Records sent to the dead-letter topic",
            ["error_code"],
            registry=r,
        )
        self.implicit_accounts = Counter(
            "billing_implicit_accounts",
            "Usage for accounts never opened (charged as overdraft)",
            registry=r,
        )
        self.reminders = Counter("billing_reminders", "Reminders written to the outbox", registry=r)
        self.invoices = Counter("billing_invoices", "Invoices written to the outbox", registry=r)
        self.retries = Counter(
            "billing_retries",
            "Retries after an infrastructure failure",
            ["operation", "cause"],
            registry=r,
        )
        self.batch_size = Histogram(
            "billing_batch_size",
            "Records per batch",
            registry=r,
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000),
        )
        self.batch_seconds = Histogram(
            "billing_batch_duration_seconds",
            "Time to apply and commit one batch",
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.stage_seconds = Histogram(
            "billing_stage_seconds",
            "Time one traced event (the first of each batch and of each relay round) spent"
            " in each stage from the broker to its output's Kafka commit",
            ["stage"],
            registry=r,
            buckets=(
                *(0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25),
                *(0.5, 1, 2.5, 5, 10),
            ),
        )
        self.outbox_sent = Counter(
            "billing_outbox_sent", "Outbox messages the broker acked", ["topic"], registry=r
        )
        self.outbox_parked = Counter(
            "billing_outbox_parked",
            "Outbox messages the broker can never accept, parked with their reason",
            ["topic"],
            registry=r,
        )
        self.outbox_backlog = Gauge(
            "billing_outbox_backlog", "Outbox rows not yet sent (parked ones apart)", registry=r
        )
        self.outbox_oldest_s = Gauge(
            "billing_outbox_oldest_unsent_seconds",
            "Age of the oldest unsent outbox row (parked ones apart)",
            registry=r,
        )
        self.outbox_parked_rows = Gauge(
            "billing_outbox_parked_rows",
            "Outbox rows the broker refused, parked until released (billing-worker outbox)",
            registry=r,
        )
        self.lag = Gauge(
            "kafka_consumergroup_lag",
            "Log-end offset minus the group's committed offset",
            ["consumergroup", "topic", "partition"],
            registry=r,
        )
        self.lag_seconds = Gauge(
            "kafka_consumergroup_lag_seconds",
            "How long ago the oldest record the group has not committed reached Kafka"
            " (0 without lag)",
            ["consumergroup", "topic", "partition"],
            registry=r,
        )
        self.since_commit = Gauge(
            "billing_seconds_since_last_commit",
            "Seconds since this process last committed a partition it owns"
            " (since it was assigned, if it has not committed it yet)",
            ["topic", "partition"],
            registry=r,
        )
        self.ready = Gauge(
            "billing_ready",
            "1 when this process's /ready checks pass, 0 otherwise (evaluated at scrape time)",
            registry=r,
        )
        self.month_close_due = Gauge(
            "billing_month_close_due_timestamp_seconds",
            "When the oldest month not closed yet is due to close: its end in the business"
            " time zone plus the grace, Unix time",
            registry=r,
        )
        # Unknown until the closer's first tick: NaN compares false, so no alert fires on it.
        self.month_close_due.set(float("nan"))
        self.assigned = Gauge(
            "billing_assigned_partitions", "Partitions assigned to this process", registry=r
        )

    def set_outbox(self, backlog: int, oldest_s: float, parked: int) -> None:
        """The outbox gauges, from one reading (the relay's or the monitor's)."""
        self.outbox_backlog.set(backlog)
        self.outbox_oldest_s.set(oldest_s)
        self.outbox_parked_rows.set(parked)

    def set_lag(self, group: str, rows: Iterable[Mapping[str, Any]]) -> None:
        """Replace the lag series with one reading (partitions that vanished disappear; a time
        lag that could not be read is left out rather than shown as 0)."""
        self.lag.clear()
        self.lag_seconds.clear()
        for row in rows:
            labels = (group, row["topic"], str(row["partition"]))
            self.lag.labels(*labels).set(row["lag"])
            if row.get("lag_seconds") is not None:
                self.lag_seconds.labels(*labels).set(row["lag_seconds"])

    def set_since_commit(
        self,
        owned: Iterable[tuple[str, int]],
        last_commit_s: Mapping[tuple[str, int], float],
        assigned_at_s: float,
        now_s: float,
    ) -> None:
        """Seconds since the last commit of each partition this process owns right now."""
        self.since_commit.clear()
        for topic, partition in owned:
            last = max(last_commit_s.get((topic, partition), assigned_at_s), assigned_at_s)
            self.since_commit.labels(topic, str(partition)).set(max(now_s - last, 0.0))
