"""Turns wire records into domain commands and domain outputs into wire messages."""

from __future__ import annotations

import hashlib
from datetime import datetime, tzinfo

import orjson
from pydantic import ValidationError

from schemas import (
    ACCOUNT_EVENT_ADAPTER,
    AccountOpened,
    CreditsPurchased,
    DeadLetter,
    InvoicePaid,
    Reminder,
    ReminderConfigured,
    SwitchedToPostpay,
    UsageEvent,
)
from schemas import Invoice as WireInvoice
from schemas import InvoiceLine as WireInvoiceLine
from worker.domain.commands import (
    ChargeUsage,
    Command,
    ConfigureReminder,
    OpenAccount,
    PayInvoice,
    PurchaseCredits,
    SwitchToPostpay,
)
from worker.domain.errors import Rejected
from worker.domain.events import ReminderDue
from worker.domain.invoicing import Invoice, period_bounds
from worker.domain.rating import RateTable, rate_usage
from worker.service.ports import Dead, Decoded, InputRecord, OutboxMessage


def _summarise(exc: ValidationError) -> tuple[str, str]:
    errors = exc.errors(include_url=False, include_input=False)
    if any(e["type"] == "union_tag_invalid" for e in errors):
        return "unknown_type", "unknown account event type: " + errors[0]["msg"]
    if any(e["type"] == "union_tag_not_found" for e in errors):
        return "schema_violation", "account event has no `type` field"
    parts = []
    for err in errors[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "message"
        parts.append(f"{where}: {err['msg']}")
    return "schema_violation", "; ".join(parts)


def _fingerprint(
    model: UsageEvent
    | AccountOpened
    | CreditsPurchased
    | ReminderConfigured
    | SwitchedToPostpay
    | InvoicePaid,
) -> bytes:
    """A digest of the validated payload: re-serialised, so whitespace and key order don't count."""
    canonical = orjson.dumps(model.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).digest()


class Decoder:
    """Validates a record against its topic's schema and rates usage."""

    def __init__(self, rates: RateTable) -> None:
        self.rates = rates

    def __call__(self, record: InputRecord) -> Decoded | Dead:
        """Never raises: whatever a record holds, it becomes a command or a dead letter."""
        try:
            return self._decode(record)
        except Exception as exc:  # noqa: BLE001 - one bad record must not stop the partition
            return Dead(record, "schema_violation", f"could not be decoded: {exc!r}")

    def _decode(self, record: InputRecord) -> Decoded | Dead:
        raw = record.value
        if raw is None:
            return Dead(record, "malformed_json", "record has no value (tombstone)")
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return Dead(record, "malformed_json", f"not valid JSON: {exc}")
        if not isinstance(payload, dict):
            return Dead(record, "schema_violation", "message: Input should be an object")
        # The schema validates what orjson parsed: the JSON is parsed once, by the stricter
        # parser (it refuses NaN and Infinity, which pydantic's own JSON parser accepts).
        try:
            if record.source == "usage":
                usage = UsageEvent.model_validate(payload)
                rated = rate_usage(
                    self.rates, usage.country, usage.destination, usage.segments, usage.occurred_at
                )
                command: Command = ChargeUsage(
                    usage.event_id, usage.account_id, usage.occurred_at, rated, record.arrived_at
                )
                return Decoded(record, command, _fingerprint(usage))
            event = ACCOUNT_EVENT_ADAPTER.validate_python(payload)
        except ValidationError as exc:
            code, reason = _summarise(exc)
            return Dead(record, code, reason)
        except Rejected as exc:
            return Dead(record, exc.code, exc.reason)
        return Decoded(record, _account_command(event), _fingerprint(event))


def _account_command(
    event: AccountOpened | CreditsPurchased | ReminderConfigured | SwitchedToPostpay | InvoicePaid,
) -> Command:
    common = (event.event_id, event.account_id, event.occurred_at)
    if isinstance(event, AccountOpened):
        return OpenAccount(*common, event.test_credits)
    if isinstance(event, CreditsPurchased):
        return PurchaseCredits(*common, event.purchase_id, event.amount, event.payment_method)
    if isinstance(event, ReminderConfigured):
        return ConfigureReminder(*common, event.enabled, event.threshold, event.email)
    if isinstance(event, SwitchedToPostpay):
        return SwitchToPostpay(*common, event.contract_id)
    return PayInvoice(*common, event.invoice_id, event.amount)


class Encoder:
    """Builds outbox messages with deterministic ids."""

    def __init__(self, reminders_topic: str, invoices_topic: str, dlq_topic: str) -> None:
        self.reminders_topic = reminders_topic
        self.invoices_topic = invoices_topic
        self.dlq_topic = dlq_topic

    def reminder(self, reminder: ReminderDue) -> OutboxMessage:
        wire = Reminder(
            reminder_id=reminder.reminder_id,
            account_id=reminder.account_id,
            kind=reminder.kind,
            balance=reminder.balance_jpy,
            threshold=reminder.threshold_jpy,
            email=reminder.email,
            created_at=reminder.created_at,
            lot_id=reminder.lot_id,
            amount=reminder.amount_jpy,
            expires_at=reminder.expires_at,
        )
        return OutboxMessage(
            reminder.reminder_id, self.reminders_topic, reminder.account_id, wire.to_json_bytes()
        )

    def dead_letter(self, dead: Dead, failed_at: datetime) -> OutboxMessage:
        record = dead.record
        wire = DeadLetter.from_record(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            value=record.value,
            error_code=dead.code,
            reason=dead.reason,
            failed_at=failed_at,
        )
        message_id = f"dlq:{record.topic}:{record.partition}:{record.offset}"
        key = None if record.key is None else record.key.decode("utf-8", errors="replace")
        return OutboxMessage(message_id, self.dlq_topic, key, wire.to_json_bytes())

    def invoice(self, invoice: Invoice, issued_at: datetime, zone: tzinfo) -> OutboxMessage:
        start, end = period_bounds(invoice.period, zone)
        wire = WireInvoice(
            invoice_id=invoice.invoice_id,
            account_id=invoice.account_id,
            period=invoice.period,
            period_start=start,
            period_end=end,
            issued_at=issued_at,
            due_date=invoice.due_date,
            currency="JPY",
            payment_method="bank_deposit",
            lines=[
                WireInvoiceLine(
                    description=line.description,
                    country=line.country,
                    unit_price=line.unit_price_jpy,
                    quantity=line.quantity,
                    amount=line.amount_jpy,
                    period=line.period,
                )
                for line in invoice.lines
            ],
            total=invoice.total_jpy,
        )
        return OutboxMessage(
            invoice.invoice_id, self.invoices_topic, invoice.account_id, wire.to_json_bytes()
        )
