"""Wire contract of the SMS billing worker: one pydantic model per Kafka topic."""

from schemas._types import InputModel, OutputModel, Timestamp
from schemas.account_events import (
    ACCOUNT_EVENT_ADAPTER,
    AccountEvent,
    AccountEventBase,
    AccountOpened,
    CreditsPurchased,
    InvoicePaid,
    ReminderConfigured,
    SwitchedToPostpay,
)
from schemas.dlq import DeadLetter
from schemas.invoices import Invoice, InvoiceLine
from schemas.reminders import Reminder, ReminderKind
from schemas.usage import UsageEvent

__all__ = [
    "ACCOUNT_EVENT_ADAPTER",
    "AccountEvent",
    "AccountEventBase",
    "AccountOpened",
    "CreditsPurchased",
    "DeadLetter",
    "InputModel",
    "Invoice",
    "InvoiceLine",
    "InvoicePaid",
    "OutputModel",
    "Reminder",
    "ReminderConfigured",
    "ReminderKind",
    "SwitchedToPostpay",
    "Timestamp",
    "UsageEvent",
]
