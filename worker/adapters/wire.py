"""Turns wire records into domain commands and domain outputs into wire messages."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, tzinfo

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
from schemas import Balance as WireBalance
from schemas import BalanceNextExpiry as WireNextExpiry
from schemas import Forecast as WireForecast
from schemas import Invoice as WireInvoice
from schemas import InvoiceLine as WireInvoiceLine
from worker.adapters.usage_fast import Usage, read_usage
from worker.domain.balance import BalanceState
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
from worker.domain.forecast import Forecast
from worker.domain.invoicing import Invoice, period_bounds
from worker.domain.rating import RateTable, rate_usage
from worker.service.ports import Dead, Decoded, InputRecord, OutboxMessage

_Model = (
    UsageEvent
    | AccountOpened
    | CreditsPurchased
    | ReminderConfigured
    | SwitchedToPostpay
    | InvoicePaid
)


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


def _fingerprint(model: _Model) -> bytes:
    """A digest of the validated payload: re-serialised, so whitespace and key order don't count."""
    canonical = orjson.dumps(model.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).digest()


EARLIEST_OCCURRED_AT = datetime(2000, 1, 1, tzinfo=UTC)
"""Nothing the product bills happened before this."""
LATEST_OCCURRED_AT = datetime(9000, 1, 1, tzinfo=UTC)
"""A ceiling whatever the record timestamp says: every date derived from an event (lot expiry,
billing periods, due dates) stays representable."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def _misplaced(
    record: InputRecord, model: _Model | Usage, max_clock_skew: timedelta
) -> Dead | None:
    """Key and time checks every input passes before it reaches an account."""
    expected = model.account_id.encode("utf-8")
    if record.key != expected:
        shown = "null" if record.key is None else repr(record.key[:80])
        return Dead(
            record,
            "key_mismatch",
            f"record key {shown} is not the account_id {model.account_id!r} of its payload",
        )
    at = model.occurred_at
    # Whole milliseconds as ints: no datetime arithmetic on an untrusted timestamp can overflow.
    at_ms = (at - _EPOCH) // _MS
    latest_ms = record.timestamp_ms + max_clock_skew // _MS
    if at < EARLIEST_OCCURRED_AT or at >= LATEST_OCCURRED_AT or at_ms > latest_ms:
        return Dead(
            record,
            "implausible_time",
            f"occurred_at {at.isoformat()} is before {EARLIEST_OCCURRED_AT.date()} or more than "
            f"{max_clock_skew} after the record timestamp ({record.timestamp_ms} ms)",
        )
    return None


class Decoder:
    """Validates a record against its topic's schema, its key and its time, and rates usage."""

    def __init__(self, rates: RateTable, max_clock_skew: timedelta = timedelta(days=1)) -> None:
        self.rates = rates
        self.max_clock_skew = max_clock_skew

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
        # PostgreSQL text cannot hold NUL: refused here, not by a failing transaction.
        if b"\\u0000" in raw and _has_nul(payload):
            return Dead(record, "schema_violation", "a text field contains a NUL character")
        # The schema validates what orjson parsed: the JSON is parsed once, by the stricter
        # parser (it refuses NaN and Infinity, which pydantic's own JSON parser accepts).
        if record.source == "usage":
            usage = read_usage(payload)
            if usage is None:  # not the plain shape: the model decides, with its messages
                try:
                    usage = _usage_of(UsageEvent.model_validate(payload))
                except ValidationError as exc:
                    return Dead(record, *_summarise(exc))
            return self._charge(record, usage)
        try:
            event = ACCOUNT_EVENT_ADAPTER.validate_python(payload)
        except ValidationError as exc:
            code, reason = _summarise(exc)
            return Dead(record, code, reason)
        refused = _misplaced(record, event, self.max_clock_skew)
        if refused is not None:
            return refused
        return Decoded(record, _account_command(event), _fingerprint(event))

    def _charge(self, record: InputRecord, usage: Usage) -> Decoded | Dead:
        """A usage event of the plain shape, checked and rated as `_decode` does the model."""
        refused = _misplaced(record, usage, self.max_clock_skew)
        if refused is not None:
            return refused
        try:
            rated = rate_usage(
                self.rates, usage.country, usage.destination, usage.segments, usage.occurred_at
            )
        except Rejected as exc:
            return Dead(record, exc.code, exc.reason)
        command: Command = ChargeUsage(
            usage.event_id, usage.account_id, usage.occurred_at, rated, record.arrived_at
        )
        return Decoded(record, command, usage.fingerprint())


def _usage_of(model: UsageEvent) -> Usage:
    return Usage(
        model.event_id,
        model.account_id,
        model.occurred_at,
        model.destination,
        model.country,
        model.segments,
        model.message_id,
    )


def _has_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


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


def wire_forecast(forecast: Forecast) -> WireForecast:
    """The forecast as reminders and `billing-worker account --json` show it."""
    return WireForecast(
        usage_jpy_per_day=forecast.usage_jpy_per_day,
        runs_out_on=forecast.runs_out_on,
        expiring_unused_jpy=forecast.expiring_unused_jpy,
        suggested_package_jpy=forecast.suggested_package_jpy,
    )


def wire_balance(state: BalanceState) -> WireBalance:
    """The balance snapshot as `billing.balances.v1` and `billing-worker account` show it."""
    expiry = state.next_expiry
    return WireBalance(
        account_id=state.account_id,
        plan=state.plan,
        balance=state.balance_jpy,
        overdraft=state.overdraft_jpy,
        postpay_due=state.postpay_due_jpy,
        credit=state.credit_jpy,
        next_expiry=(
            None
            if expiry is None
            else WireNextExpiry(expires_at=expiry.expires_at, amount=expiry.amount_jpy)
        ),
        status=state.status,
        version=state.version,
        as_of=state.as_of,
    )


def _utc(at: datetime | None) -> datetime | None:
    return at if at is None or at.tzinfo is UTC else at.astimezone(UTC)


def balance_json(state: BalanceState) -> bytes:
    """`billing.balances.v1` bytes built straight from the state: the same bytes as
    `wire_balance(state).to_json_bytes()` (a property test holds them equal) at a third of the
    cost, paid once per changed account and batch, on the path of every usage event."""
    expiry = state.next_expiry
    return orjson.dumps(
        {
            "account_id": state.account_id,
            "plan": state.plan,
            "balance": state.balance_jpy,
            "overdraft": state.overdraft_jpy,
            "postpay_due": state.postpay_due_jpy,
            "credit": state.credit_jpy,
            "next_expiry": (
                None
                if expiry is None
                else {"expires_at": _utc(expiry.expires_at), "amount": expiry.amount_jpy}
            ),
            "status": state.status,
            "version": state.version,
            "as_of": _utc(state.as_of),
        },
        option=orjson.OPT_UTC_Z,
    )


def balance_message_id(account_id: str, version: int) -> str:
    """The outbox message id of an account's snapshot at `version`: one per version."""
    return f"{account_id}:balance:{version}"


class Encoder:
    """Builds outbox messages with deterministic ids."""

    def __init__(
        self,
        reminders_topic: str,
        invoices_topic: str,
        dlq_topic: str,
        balances_topic: str,
    ) -> None:
        self.reminders_topic = reminders_topic
        self.invoices_topic = invoices_topic
        self.dlq_topic = dlq_topic
        self.balances_topic = balances_topic

    def balance(self, state: BalanceState, previous_version: int) -> OutboxMessage:
        """The account's snapshot, keyed by account: compaction keeps the newest. It replaces
        the snapshot of `previous_version`, the account's version before the change (0: none)."""
        replaced = 0 < previous_version < state.version
        return OutboxMessage(
            balance_message_id(state.account_id, state.version),
            self.balances_topic,
            state.account_id.encode(),
            balance_json(state),
            conflatable=True,
            replaces=balance_message_id(state.account_id, previous_version) if replaced else None,
        )

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
            forecast=None if reminder.forecast is None else wire_forecast(reminder.forecast),
        )
        return OutboxMessage(
            reminder.reminder_id,
            self.reminders_topic,
            reminder.account_id.encode(),
            wire.to_json_bytes(),
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
        return OutboxMessage(message_id, self.dlq_topic, record.key, wire.to_json_bytes())

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
            invoice.invoice_id,
            self.invoices_topic,
            invoice.account_id.encode(),
            wire.to_json_bytes(),
        )
