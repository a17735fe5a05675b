"""The wire contract: what each topic's schema accepts, rejects and publishes."""

import ast
import json
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas import (
    ACCOUNT_EVENT_ADAPTER,
    AccountOpened,
    Balance,
    CreditsPurchased,
    DeadLetter,
    Invoice,
    InvoiceLine,
    InvoicePaid,
    Reminder,
    ReminderConfigured,
    SwitchedToPostpay,
    UsageEvent,
    generate,
)
from schemas.dlq import MAX_PAYLOAD_BYTES

SCHEMAS_DIR = Path(generate.__file__).resolve().parent
TOPICS = {
    "sms.usage.v1",
    "billing.account-events.v1",
    "billing.reminders.v1",
    "billing.invoices.v1",
    "billing.dlq.v1",
    "billing.balances.v1",
}
T0 = datetime(2024, 7, 9, 3, 0, tzinfo=UTC)


def raw(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()


def usage(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "event_id": "u-1",
        "account_id": "acct-1",
        "occurred_at": "2024-07-09T12:00:00+09:00",
        "destination": "+819012345678",
        "country": "JP",
        "segments": 2,
        "message_id": "m-1",
    }
    payload.update(overrides)
    return payload


ACCOUNT_EVENTS: dict[str, dict[str, Any]] = {
    "account_opened": {"test_credits": 100},
    "credits_purchased": {"purchase_id": "p-1", "amount": 5000, "payment_method": "credit_card"},
    "reminder_configured": {"enabled": True, "threshold": 500, "email": "ops@example.com"},
    "switched_to_postpay": {"contract_id": "c-1"},
    "invoice_paid": {"invoice_id": "inv-1", "amount": 1200},
}
ACCOUNT_EVENT_MODELS = {
    "account_opened": AccountOpened,
    "credits_purchased": CreditsPurchased,
    "reminder_configured": ReminderConfigured,
    "switched_to_postpay": SwitchedToPostpay,
    "invoice_paid": InvoicePaid,
}


def account_event(kind: str, **overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "type": kind,
        "event_id": f"{kind}-1",
        "account_id": "acct-1",
        "occurred_at": "2024-07-09T03:00:00Z",
        **ACCOUNT_EVENTS[kind],
    }
    payload.update(overrides)
    return payload


FORECAST = {
    "usage_jpy_per_day": 100,
    "runs_out_on": "2024-07-13",
    "expiring_unused_jpy": 0,
    "suggested_package_jpy": 9000,
}


def reminder(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "reminder_id": "acct-1:low_balance:1",
        "account_id": "acct-1",
        "kind": "low_balance",
        "balance": 400,
        "threshold": 500,
        "email": "ops@example.com",
        "created_at": T0,
    }
    payload.update(overrides)
    if payload["kind"] != "credits_expired":
        payload.setdefault("forecast", FORECAST)
    return payload


def invoice(**overrides: Any) -> dict[str, Any]:
    lines = [
        InvoiceLine(
            description="SMS to JP",
            country="JP",
            unit_price=10,
            quantity=300,
            amount=3000,
            period="2024-06",
        ),
        InvoiceLine(
            description="Prepaid credit applied",
            unit_price=-500,
            quantity=1,
            amount=-500,
            period="2024-06",
        ),
    ]
    payload: dict[str, Any] = {
        "invoice_id": "acct-1:2024-06",
        "account_id": "acct-1",
        "period": "2024-06",
        "period_start": datetime(2024, 5, 31, 15, tzinfo=UTC),
        "period_end": datetime(2024, 6, 30, 15, tzinfo=UTC),
        "issued_at": datetime(2024, 6, 30, 15, 15, tzinfo=UTC),
        "due_date": date(2024, 7, 31),
        "lines": lines,
        "total": 2500,
    }
    payload.update(overrides)
    return payload


def dead_letter(value: bytes = b'{"oops": 1}') -> DeadLetter:
    return DeadLetter.from_record(
        topic="sms.usage.v1",
        partition=3,
        offset=42,
        key=b"acct-1",
        value=value,
        error_code="invalid_payload",
        reason="missing field event_id",
        failed_at=T0,
    )


# --- sms.usage.v1 -----------------------------------------------------------------------


def test_usage_event_parses_from_raw_json_bytes() -> None:
    event = UsageEvent.model_validate_json(raw(usage()))

    assert event.segments == 2
    assert event.country == "JP"
    assert event.occurred_at == datetime(2024, 7, 9, 3, 0, tzinfo=UTC)


def test_usage_event_defaults_optional_fields() -> None:
    minimal = {k: v for k, v in usage().items() if k not in {"country", "segments", "message_id"}}

    event = UsageEvent.model_validate_json(raw(minimal))

    assert (event.segments, event.country, event.message_id) == (1, None, None)


def test_timestamps_are_normalised_to_utc() -> None:
    event = UsageEvent.model_validate_json(raw(usage(occurred_at="2024-07-09T12:00:00+09:00")))

    assert event.occurred_at.utcoffset() == timedelta(0)
    assert event.model_dump(mode="json")["occurred_at"] == "2024-07-09T03:00:00Z"


def test_usage_event_ignores_unknown_fields() -> None:
    event = UsageEvent.model_validate_json(raw(usage(carrier="docomo", extra={"a": [1]})))

    assert "carrier" not in event.model_dump()


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"event_id": None}, "missing required field"),
        ({"destination": 819012345678}, "wrong type"),
        ({"segments": "2"}, "string count"),
        ({"segments": 2.0}, "float count"),
        ({"segments": 2.5}, "fractional count"),
        ({"segments": True}, "boolean count"),
        ({"segments": 0}, "zero segments"),
        ({"segments": 256}, "too many segments"),
        ({"occurred_at": "2024-07-09T12:00:00"}, "naive datetime"),
        ({"occurred_at": "2024-07-09"}, "date only"),
        ({"occurred_at": 1720494000}, "unix seconds"),
        ({"occurred_at": "1720494000"}, "unix seconds as string"),
        ({"occurred_at": "2024-07-09T12:00+09:00"}, "no seconds"),
        ({"occurred_at": "2024-07-09T12:00:00+0900"}, "offset without colon"),
        ({"event_id": "e" * 129}, "event id too long"),
        ({"event_id": ""}, "empty event id"),
        ({"account_id": "a" * 65}, "account id too long"),
        ({"destination": "819012345678"}, "E.164 without plus"),
        ({"destination": "+0812345678"}, "E.164 leading zero"),
        ({"destination": "+8190123456789012"}, "E.164 too long"),
        ({"destination": "+81 90 1234 5678"}, "E.164 with spaces"),
        ({"destination": "+８１９０１２３４"}, "E.164 non-ASCII digits"),
        ({"country": "jp"}, "lower-case country"),
        ({"country": "JPN"}, "alpha-3 country"),
        ({"message_id": "m" * 129}, "message id too long"),
    ],
)
def test_usage_event_rejects(overrides: dict[str, Any], why: str) -> None:
    payload = {k: v for k, v in usage(**overrides).items() if v is not None}

    with pytest.raises(ValidationError):
        UsageEvent.model_validate_json(raw(payload))


def test_usage_event_rejects_invalid_json() -> None:
    with pytest.raises(ValidationError):
        UsageEvent.model_validate_json(b'{"event_id": ')


@given(
    segments=st.integers(min_value=1, max_value=255),
    account_id=st.text(min_size=1, max_size=64),
)
def test_usage_event_round_trips_through_json(segments: int, account_id: str) -> None:
    event = UsageEvent.model_validate_json(raw(usage(segments=segments, account_id=account_id)))

    assert UsageEvent.model_validate_json(event.model_dump_json()) == event


# --- billing.account-events.v1 ------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(ACCOUNT_EVENTS))
def test_account_event_type_selects_the_model(kind: str) -> None:
    event = ACCOUNT_EVENT_ADAPTER.validate_json(raw(account_event(kind)))

    assert type(event) is ACCOUNT_EVENT_MODELS[kind]
    assert event.account_id == "acct-1"


@pytest.mark.parametrize("kind", sorted(ACCOUNT_EVENTS))
def test_account_events_ignore_unknown_fields(kind: str) -> None:
    event = ACCOUNT_EVENT_ADAPTER.validate_json(raw(account_event(kind, source="crm", v=2)))

    assert "source" not in event.model_dump()


def test_account_opened_without_test_credits_uses_the_default() -> None:
    payload = account_event("account_opened")
    del payload["test_credits"]

    event = ACCOUNT_EVENT_ADAPTER.validate_json(raw(payload))

    assert isinstance(event, AccountOpened)
    assert event.test_credits is None


def test_disabled_reminder_needs_no_email() -> None:
    payload = account_event("reminder_configured", enabled=False, email=None)

    event = ACCOUNT_EVENT_ADAPTER.validate_json(raw(payload))

    assert isinstance(event, ReminderConfigured)
    assert not event.enabled


@pytest.mark.parametrize(
    ("kind", "overrides", "why"),
    [
        ("account_opened", {"type": "account_closed"}, "unknown type"),
        ("account_opened", {"type": None}, "missing type"),
        ("account_opened", {"event_id": None}, "missing event_id"),
        ("account_opened", {"occurred_at": "2024-07-09T12:00:00"}, "naive datetime"),
        ("account_opened", {"test_credits": -1}, "negative test credits"),
        ("account_opened", {"test_credits": "100"}, "string test credits"),
        ("credits_purchased", {"amount": "5000"}, "string amount"),
        ("credits_purchased", {"amount": 5000.0}, "float amount"),
        ("credits_purchased", {"amount": 5000.5}, "fractional amount"),
        ("credits_purchased", {"amount": True}, "boolean amount"),
        ("credits_purchased", {"amount": 0}, "zero amount"),
        ("credits_purchased", {"amount": None}, "missing amount"),
        ("credits_purchased", {"payment_method": "paypal"}, "unknown payment method"),
        ("credits_purchased", {"purchase_id": "p" * 129}, "purchase id too long"),
        ("reminder_configured", {"email": None}, "enabled without email"),
        ("reminder_configured", {"email": "not-an-address"}, "bad email"),
        ("reminder_configured", {"email": "a@" + "b" * 250 + ".jp"}, "email too long"),
        ("reminder_configured", {"threshold": -1}, "negative threshold"),
        ("reminder_configured", {"threshold": 500.0}, "float threshold"),
        ("reminder_configured", {"enabled": "true"}, "string flag"),
        ("switched_to_postpay", {"contract_id": ""}, "empty contract id"),
        ("invoice_paid", {"amount": "1200"}, "string amount"),
        ("invoice_paid", {"amount": 1200.0}, "float amount"),
        ("invoice_paid", {"amount": -1}, "negative amount"),
        ("invoice_paid", {"invoice_id": None}, "missing invoice id"),
    ],
)
def test_account_event_rejects(kind: str, overrides: dict[str, Any], why: str) -> None:
    payload = {k: v for k, v in account_event(kind, **overrides).items() if v is not None}

    with pytest.raises(ValidationError):
        ACCOUNT_EVENT_ADAPTER.validate_json(raw(payload))


# --- billing.reminders.v1 -----------------------------------------------------------------


def test_reminder_round_trips_through_json_bytes() -> None:
    sent = Reminder(**reminder())

    data = sent.to_json_bytes()

    assert json.loads(data)["created_at"] == "2024-07-09T03:00:00Z"
    assert Reminder.model_validate_json(data) == sent


def test_lot_reminders_carry_the_lot() -> None:
    sent = Reminder(
        **reminder(
            kind="credits_expired",
            email=None,
            threshold=None,
            lot_id="lot-1",
            amount=300,
            expires_at=T0,
        )
    )

    assert json.loads(sent.to_json_bytes())["lot_id"] == "lot-1"


def test_balance_depleted_needs_no_email_or_threshold() -> None:
    sent = Reminder(**reminder(kind="balance_depleted", balance=-20, email=None, threshold=None))

    assert json.loads(sent.to_json_bytes())["email"] is None


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"kind": "top_up"}, "unknown kind"),
        ({"balance": "400"}, "string balance"),
        ({"balance": 400.0}, "float balance"),
        ({"created_at": datetime(2024, 7, 9, 3)}, "naive datetime"),  # noqa: DTZ001
        ({"reminder_id": "r" * 257}, "id too long"),
        ({"kind": "credits_expiring"}, "lot kind without lot"),
        ({"lot_id": "lot-1", "amount": 1, "expires_at": T0}, "balance kind with lot"),
        ({"email": None}, "low balance without email"),
        ({"channel": "email"}, "unknown field"),
    ],
)
def test_reminder_rejects(overrides: dict[str, Any], why: str) -> None:
    with pytest.raises(ValidationError):
        Reminder(**reminder(**overrides))


def test_outputs_are_frozen() -> None:
    sent = Reminder(**reminder())

    with pytest.raises(ValidationError):
        sent.balance = 0  # type: ignore[misc]


# --- billing.invoices.v1 ------------------------------------------------------------------


def test_invoice_round_trips_through_json_bytes() -> None:
    issued = Invoice(**invoice())

    data = json.loads(issued.to_json_bytes())

    assert data["currency"] == "JPY"
    assert data["payment_method"] == "bank_deposit"
    assert data["due_date"] == "2024-07-31"
    assert data["lines"][1]["country"] is None
    assert Invoice.model_validate_json(issued.to_json_bytes()) == issued
    assert Invoice.model_validate(data) == issued


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"total": 3000}, "total is not the sum of the lines"),
        ({"total": "2500"}, "string total"),
        ({"total": 2500.0}, "float total"),
        ({"period": "2024-13"}, "bad period"),
        ({"period": "2024-6"}, "unpadded period"),
        ({"currency": "USD"}, "other currency"),
        ({"payment_method": "credit_card"}, "other payment method"),
        ({"lines": [], "total": 0}, "no lines"),
        ({"issued_at": datetime(2024, 7, 1)}, "naive datetime"),  # noqa: DTZ001
        ({"period_end": datetime(2024, 5, 31, 15, tzinfo=UTC)}, "empty period"),
        ({"due_date": datetime(2024, 7, 31, tzinfo=UTC)}, "due date is a datetime"),
        ({"due_date": 1722384000}, "due date as a number"),
        ({"due_date": "2024-07-31T00:00:00Z"}, "due date with a time"),
        ({"memo": "hi"}, "unknown field"),
    ],
)
def test_invoice_rejects(overrides: dict[str, Any], why: str) -> None:
    with pytest.raises(ValidationError):
        Invoice(**invoice(**overrides))


def test_invoice_line_amount_is_unit_price_times_quantity() -> None:
    with pytest.raises(ValidationError):
        InvoiceLine(
            description="SMS to JP",
            country="JP",
            unit_price=10,
            quantity=3,
            amount=31,
            period="2024-06",
        )


# --- billing.dlq.v1 -----------------------------------------------------------------------


def test_dead_letter_keeps_a_non_utf8_payload_unchanged() -> None:
    original = b'{"event_id": "\xff\xfe"}'

    letter = dead_letter(original)
    received = DeadLetter.model_validate_json(letter.to_json_bytes())

    assert received.original_payload() == original
    assert "\ufffd" in received.payload
    assert received.key == "acct-1"
    assert (received.source_partition, received.source_offset) == (3, 42)


def test_dead_letter_of_an_empty_record() -> None:
    letter = DeadLetter.from_record(
        topic="sms.usage.v1",
        partition=0,
        offset=0,
        key=None,
        value=None,
        error_code="invalid_json",
        reason="empty record",
        failed_at=T0,
    )

    assert (letter.key, letter.payload, letter.original_payload()) == (None, "", b"")


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"payload": "something else"}, "payload does not match the bytes"),
        ({"payload_base64": "!!!"}, "not base64"),
        ({"source_offset": "42"}, "string offset"),
        ({"source_offset": -1}, "negative offset"),
        ({"error_code": "Bad Code"}, "error code not snake_case"),
        ({"failed_at": "2024-07-09T03:00:00"}, "naive datetime"),
        ({"retries": 1}, "unknown field"),
    ],
)
def test_dead_letter_rejects(overrides: dict[str, Any], why: str) -> None:
    payload = dead_letter().model_dump(mode="json") | overrides

    with pytest.raises(ValidationError):
        DeadLetter.model_validate_json(json.dumps(payload))


def test_aware_datetimes_in_any_zone_are_accepted_for_outputs() -> None:
    jst = timezone(timedelta(hours=9))

    sent = Reminder(**reminder(created_at=datetime(2024, 7, 9, 12, tzinfo=jst)))

    assert sent.created_at == T0


# --- generated JSON Schema and AsyncAPI ---------------------------------------------------


def test_checked_in_json_schemas_are_up_to_date() -> None:
    stale = generate.stale_files()

    assert stale == [], f"stale JSON Schema files {stale}: run `python -m schemas.generate`"


def test_there_is_one_json_schema_per_topic() -> None:
    on_disk = {p.name for p in (SCHEMAS_DIR / "json").glob("*.json")}

    assert on_disk == {f"{topic}.json" for topic in TOPICS}


def test_generate_check_names_the_stale_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert generate.main(["--dir", str(tmp_path)]) == 0
    assert generate.main(["--check", "--dir", str(tmp_path)]) == 0
    (tmp_path / "billing.invoices.v1.json").write_text("{}\n", encoding="utf-8")
    capsys.readouterr()

    assert generate.main(["--check", "--dir", str(tmp_path)]) == 1
    assert "billing.invoices.v1.json" in capsys.readouterr().err


def test_generated_schemas_are_deterministic() -> None:
    for topic in TOPICS:
        text = generate.render(topic)
        assert text == generate.render(topic)
        assert text.endswith("}\n")
        assert json.loads(text)["$schema"].startswith("https://json-schema.org/")


def test_json_schemas_document_every_field() -> None:
    for topic in TOPICS:
        schema = json.loads(generate.render(topic))
        models = [schema, *schema.get("$defs", {}).values()]
        for model in models:
            assert model.get("description"), f"{topic}: {model.get('title')} lacks a docstring"
            for name, field in model.get("properties", {}).items():
                assert field.get("description"), f"{topic}: {name} lacks a description"


def test_asyncapi_document_describes_every_topic() -> None:
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load((SCHEMAS_DIR / "asyncapi.yaml").read_text(encoding="utf-8"))

    assert doc["asyncapi"] == "3.0.0"
    assert {ch["address"] for ch in doc["channels"].values()} == TOPICS
    actions = {
        op["channel"]["$ref"].rsplit("/", 1)[1]: op["action"] for op in doc["operations"].values()
    }
    assert actions == {
        "usage": "receive",
        "accountEvents": "receive",
        "reminders": "send",
        "invoices": "send",
        "dlq": "send",
        "balances": "send",
    }
    for message in doc["components"]["messages"].values():
        ref = message["payload"]["$ref"]
        assert (SCHEMAS_DIR / ref).resolve().is_file(), ref


def test_schemas_never_import_the_worker() -> None:
    for path in SCHEMAS_DIR.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(n == "worker" or n.startswith("worker.") for n in names), path


def test_a_dead_letter_of_a_huge_value_is_truncated_and_says_so() -> None:
    value = b"x" * (MAX_PAYLOAD_BYTES + 10)
    letter = DeadLetter.from_record(
        topic="sms.usage.v1",
        partition=1,
        offset=7,
        key=b"acc",
        value=value,
        error_code="malformed_json",
        reason="not valid JSON",
        failed_at=datetime(2024, 7, 9, 3, tzinfo=UTC),
    )
    assert letter.payload_truncated
    assert letter.payload_size == len(value)
    assert letter.original_payload() == value[:MAX_PAYLOAD_BYTES]
    assert len(letter.to_json_bytes()) < 1_000_000


def test_a_dead_letter_of_a_small_value_keeps_it_whole() -> None:
    letter = DeadLetter.from_record(
        topic="sms.usage.v1",
        partition=1,
        offset=7,
        key=None,
        value=b"{bad",
        error_code="malformed_json",
        reason="not valid JSON",
        failed_at=datetime(2024, 7, 9, 3, tzinfo=UTC),
    )
    assert not letter.payload_truncated
    assert (letter.payload_size, letter.original_payload()) == (4, b"{bad")


def test_forecast_kinds_need_a_forecast_and_the_others_take_none() -> None:
    for kind in ("low_balance", "balance_depleted"):
        with pytest.raises(ValidationError, match="needs a forecast"):
            Reminder(**reminder(kind=kind, forecast=None))
    expired = reminder(
        kind="credits_expired", lot_id="lot:p1", amount=100, expires_at=T0, forecast=FORECAST
    )
    with pytest.raises(ValidationError, match="takes no forecast"):
        Reminder(**expired)


def test_suggested_package_is_whole_packages_on_the_wire() -> None:
    with pytest.raises(ValidationError):
        Reminder(**reminder(forecast={**FORECAST, "suggested_package_jpy": 1500}))


def test_a_balance_round_trips_with_and_without_next_expiry() -> None:
    balance = {
        "account_id": "acct-1",
        "plan": "prepay",
        "balance": 300,
        "overdraft": 0,
        "postpay_due": 0,
        "credit": 300,
        "next_expiry": {"expires_at": T0, "amount": 300},
        "status": "low",
        "version": 4,
        "as_of": T0,
    }
    sent = Balance(**balance)
    assert Balance.model_validate_json(sent.to_json_bytes()) == sent
    assert orjson.loads(sent.to_json_bytes())["next_expiry"]["expires_at"] == "2024-07-09T03:00:00Z"
    none = Balance(**{**balance, "next_expiry": None, "status": "depleted", "balance": 0})
    assert orjson.loads(none.to_json_bytes())["next_expiry"] is None
    with pytest.raises(ValidationError):
        Balance(**{**balance, "status": "negative"})
