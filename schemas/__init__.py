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
from schemas.balances import Balance, BalanceStatus
from schemas.balances import NextExpiry as BalanceNextExpiry
from schemas.dlq import DeadLetter
from schemas.invoices import Invoice, InvoiceLine
from schemas.reminders import Forecast, Reminder, ReminderKind
from schemas.usage import UsageEvent

__all__ = [
    "ACCOUNT_EVENT_ADAPTER",
    "AccountEvent",
    "AccountEventBase",
    "AccountOpened",
    "Balance",
    "BalanceNextExpiry",
    "BalanceStatus",
    "CreditsPurchased",
    "DeadLetter",
    "Forecast",
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
