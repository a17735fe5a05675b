"""A second, deliberately plain implementation of the billing rules (SPEC §2–§4).

It exists to be the expected value of tests: it imports nothing from `worker` (enforced by an
import-linter contract), keeps one function per rule, and favours obvious over fast. Input is a
history in log order: records (with their Kafka timestamp) and expiry-timer ticks; output is
the ledger, reminders, postpay charges, invoices and lots the worker must end with.

Expiry is time passing on each account: a lot's notice is due `expiring_notice` before it
expires and its forfeit `lateness` after. A timer tick at `now` handles every moment up to
`now`; a record that arrived at `a` is preceded by every moment of its account before `a`. What
is due is handled in the order of its moments, and a notice is never skipped: a lot with credit
left gets it even when the timer only gets there after the lot expired.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

TOKYO = ZoneInfo("Asia/Tokyo")
PACKAGE_JPY = 1_000
INVOICE_PURCHASE_OVER_JPY = 100_000
EARLIEST_PLAUSIBLE = datetime.fromisoformat("2000-01-01T00:00:00+00:00")
# From this instant on an event is implausible whatever its record's timestamp: every date
# derived from it (an expiry 90 days on) must stay representable.
LATEST_PLAUSIBLE = datetime.fromisoformat("9000-01-01T00:00:00+00:00")


@dataclass(frozen=True)
class Rules:
    """The configurable parts of the rules, with SPEC's defaults."""

    test_credits_jpy: int = 100
    validity: timedelta = timedelta(days=90)
    lateness: timedelta = timedelta(hours=1)
    expiring_notice: timedelta = timedelta(days=7)
    max_clock_skew: timedelta = timedelta(days=1)
    zone: tzinfo = TOKYO


# -- inputs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One input record: `kind` and its fields as on the wire, with the record's metadata."""

    source: str  # "usage" | "account"
    kind: str  # usage | account_opened | credits_purchased | reminder_configured | ...
    event_id: str
    account_id: str
    occurred_at: datetime
    arrived_at: datetime  # the record's Kafka timestamp
    key: str | None = None  # the record key; None means "the account id" (the normal case)
    amount_jpy: int = 0  # usage: price x segments; purchase, payment: amount
    country: str = "JP"
    unit_price_jpy: int = 10
    segments: int = 1
    test_credits_jpy: int | None = None
    payment_method: str = "credit_card"
    enabled: bool = False
    threshold_jpy: int = 0
    email: str | None = None
    invoice_id: str = ""
    contract_id: str = ""
    payload_id: int = 0  # identity of the wire payload: a re-send carries the same one


@dataclass(frozen=True)
class Tick:
    """The expiry timer firing at `now` (every record that arrived by `now` has been consumed)."""

    now: datetime


@dataclass(frozen=True)
class Close:
    """Closing the month `period` (and catching up on the months before it)."""

    period: str


Step = Event | Tick | Close


# -- state ----------------------------------------------------------------------------------


@dataclass
class Lot:
    lot_id: str
    amount_jpy: int
    remaining_jpy: int
    granted_at: datetime
    expires_at: datetime
    forfeited_jpy: int = 0
    closed: bool = False
    notified: bool = False


@dataclass
class Charge:
    event_id: str
    period: str
    country: str
    unit_price_jpy: int
    segments: int
    amount_jpy: int
    from_lots_jpy: int
    invoice_id: str | None = None


@dataclass
class Invoice:
    invoice_id: str
    account_id: str
    period: str
    lines: list[tuple[str, str | None, int, int, int, str]]  # desc, country, price, qty, amt, per
    total_jpy: int
    due_date: date
    paid_jpy: int = 0


@dataclass
class Acct:
    account_id: str
    opened: bool = False
    plan: str = "prepay"
    postpay_since: datetime | None = None
    overdraft_jpy: int = 0
    postpay_due_jpy: int = 0
    reminder: tuple[bool, int | None, str | None] = (False, None, None)
    lots: list[Lot] = field(default_factory=list)
    charges: list[Charge] = field(default_factory=list)
    invoices: dict[str, Invoice] = field(default_factory=dict)


@dataclass(frozen=True)
class Entry:
    entry_id: str
    account_id: str
    kind: str
    amount_jpy: int
    balance_after_jpy: int
    allocations: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Reminder:
    reminder_id: str
    account_id: str
    kind: str
    balance_jpy: int
    threshold_jpy: int | None
    lot_id: str | None = None
    amount_jpy: int | None = None
    email: str | None = None  # the account's reminder address, enabled or not


@dataclass
class Outcome:
    """Everything the history must leave behind."""

    accounts: dict[str, Acct] = field(default_factory=dict)
    ledger: list[Entry] = field(default_factory=list)
    reminders: list[Reminder] = field(default_factory=list)
    invoices: dict[str, Invoice] = field(default_factory=dict)
    dead: dict[str, str] = field(default_factory=dict)  # event_id -> error code
    dead_log: list[str] = field(default_factory=list)  # every refused record's code, in order
    seen: dict[tuple[str, str], Event] = field(default_factory=dict)


# -- one function per rule ------------------------------------------------------------------


def balance(acct: Acct) -> int:
    """Remaining credit of lots not yet forfeited, minus overdraft and unpaid postpay usage."""
    credit = 0
    for lot in acct.lots:
        if not lot.closed:
            credit += lot.remaining_jpy
    return credit - acct.overdraft_jpy - acct.postpay_due_jpy


def key_matches(event: Event) -> bool:
    """The record key must be the account id (a null key never is)."""
    key = event.account_id if event.key is None else event.key
    return key == event.account_id and key != ""


def plausible_time(event: Event, rules: Rules) -> bool:
    """Not before 2000, not from year 9000 on, and not more than the allowed skew after the
    record reached Kafka."""
    if not EARLIEST_PLAUSIBLE <= event.occurred_at < LATEST_PLAUSIBLE:
        return False
    return event.occurred_at - rules.max_clock_skew <= event.arrived_at


def same_payload(a: Event, b: Event) -> bool:
    """A re-send carries the same payload; when it reached Kafka is no part of it."""
    return replace(a, arrived_at=b.arrived_at, key=b.key) == b


def purchase_problem(event: Event) -> str | None:
    """Packages of JPY 1,000; paying by invoice only over JPY 100,000."""
    if event.amount_jpy <= 0 or event.amount_jpy % PACKAGE_JPY != 0:
        return "invalid_amount"
    if event.payment_method == "invoice" and event.amount_jpy <= INVOICE_PURCHASE_OVER_JPY:
        return "invoice_purchase_too_small"
    return None


def lot_pays(lot: Lot, event: Event, rules: Rules) -> bool:
    """Unexpired at the event's time, and the record arrived within the lateness allowance."""
    if lot.closed or lot.remaining_jpy == 0:
        return False
    return (
        event.occurred_at < lot.expires_at and event.arrived_at <= lot.expires_at + rules.lateness
    )


def paying_lots(acct: Acct, event: Event, rules: Rules) -> list[Lot]:
    """Soonest expiry first, then oldest grant, then lot id."""
    lots = [lot for lot in acct.lots if lot_pays(lot, event, rules)]
    return sorted(lots, key=lambda lot: (lot.expires_at, lot.granted_at, lot.lot_id))


def period_of(at: datetime, zone: tzinfo) -> str:
    local = at.astimezone(zone)
    return f"{local.year:04d}-{local.month:02d}"


def months_up_to(period: str, count: int = 12) -> list[str]:
    """The `count` months ending with `period`, oldest first."""
    year, month = int(period[:4]), int(period[5:])
    out = []
    for _ in range(count):
        out.append(f"{year:04d}-{month:02d}")
        month -= 1
        if month == 0:
            year, month = year - 1, 12
    return list(reversed(out))


def last_day_of_next_month(period: str) -> date:
    year, month = int(period[:4]), int(period[5:]) + 1
    if month == 13:
        year, month = year + 1, 1
    return date(year, month, calendar.monthrange(year, month)[1])


def notice_moment(lot: Lot, rules: Rules) -> datetime:
    """When a lot's `credits_expiring` notice is due: `expiring_notice` before it expires."""
    return lot.expires_at - rules.expiring_notice


def has_passed(moment: datetime, upto: datetime, inclusive: bool) -> bool:
    """The timer at `upto` counts a moment at `upto` itself; a record that arrived at `upto`
    comes before it (it reached Kafka in time for that moment)."""
    return moment <= upto if inclusive else moment < upto


def forfeit_has_passed(lot: Lot, upto: datetime, rules: Rules, inclusive: bool) -> bool:
    """Has `expires_at + lateness` passed by `upto`? (Compared as `upto - lateness`, so a lot
    dated near the end of the calendar cannot overflow.)"""
    return has_passed(lot.expires_at, upto - rules.lateness, inclusive)


def low_balance_edge(acct: Acct, before: int, after: int) -> bool:
    """From above the threshold to at or below it, reminder enabled, prepay only."""
    enabled, threshold, _ = acct.reminder
    return (
        acct.plan == "prepay" and enabled and threshold is not None and before > threshold >= after
    )


def depleted_edge(acct: Acct, before: int, after: int) -> bool:
    """A prepay balance from above zero to zero or below, enabled or not."""
    return acct.plan == "prepay" and before > 0 >= after


def reminder_on_configure(
    acct: Acct, old: tuple[bool, int | None, str | None], new: tuple[bool, int | None, str | None]
) -> bool:
    """Enabling or changing while at or below the threshold sends one; no change sends none."""
    enabled, threshold, _ = new
    if old == new or acct.plan != "prepay" or not enabled or threshold is None:
        return False
    return balance(acct) <= threshold


# -- applying -------------------------------------------------------------------------------


class Oracle:
    """Applies a history step by step."""

    def __init__(self, rules: Rules | None = None) -> None:
        self.rules = rules or Rules()
        self.out = Outcome()

    def acct(self, account_id: str) -> Acct:
        if account_id not in self.out.accounts:
            self.out.accounts[account_id] = Acct(account_id)
        return self.out.accounts[account_id]

    def run(self, steps: list[Step]) -> Outcome:
        for step in steps:
            self.step(step)
        return self.out

    def step(self, step: Step) -> None:
        if isinstance(step, Tick):
            for account_id in sorted(self.out.accounts):
                self.pass_time(self.out.accounts[account_id], step.now, inclusive=True)
        elif isinstance(step, Close):
            for account_id in sorted(self.out.accounts):
                self.close(self.out.accounts[account_id], step.period)
        else:
            self.event(step)

    # records

    def event(self, event: Event) -> None:
        code = self.refusal(event)
        if code is not None:
            self.out.dead[event.event_id] = code
            self.out.dead_log.append(code)

    def refusal(self, event: Event) -> str | None:
        """Apply the record unless it is refused (returns why) or a re-send (skipped)."""
        if not key_matches(event):
            return "key_mismatch"
        if not plausible_time(event, self.rules):
            return "implausible_time"
        prior = self.out.seen.get((event.source, event.event_id))
        if prior is not None:
            return None if same_payload(prior, event) else "conflicting_duplicate"
        acct = self.acct(event.account_id)
        # What was due on the account's lots before this record reached Kafka comes first: a
        # record that arrived after a lot's cutoff cannot draw from it anyway.
        self.pass_time(acct, event.arrived_at, inclusive=False)
        problem = self.apply(acct, event)
        if problem is None:
            self.out.seen[(event.source, event.event_id)] = event
        return problem

    def apply(self, acct: Acct, event: Event) -> str | None:
        """Apply one event; returns an error code instead when it breaks a rule."""
        if event.kind == "usage":
            self.charge(acct, event)
        elif event.kind == "account_opened":
            return self.open(acct, event)
        elif event.kind == "credits_purchased":
            problem = purchase_problem(event)
            if problem is not None:
                return problem
            self.grant(acct, event, event.amount_jpy)
        elif event.kind == "reminder_configured":
            self.configure(acct, event)
        elif event.kind == "switched_to_postpay":
            if acct.plan == "postpay":
                return "already_postpay"
            acct.plan = "postpay"
            acct.postpay_since = event.occurred_at
        else:
            return self.pay(acct, event)
        return None

    def open(self, acct: Acct, event: Event) -> str | None:
        """Test credits from the event, else from configuration; none when zero."""
        if acct.opened:
            return "already_opened"
        acct.opened = True
        amount = event.test_credits_jpy
        if amount is None:
            amount = self.rules.test_credits_jpy
        if amount > 0:
            self.grant(acct, event, amount)
        return None

    def entry(
        self, acct: Acct, kind: str, ref: str, amount: int, allocations: list[tuple[str, int]]
    ) -> None:
        self.out.ledger.append(
            Entry(f"{kind}:{ref}", acct.account_id, kind, amount, balance(acct), tuple(allocations))
        )

    def balance_reminders(self, acct: Acct, before: int, cause: str) -> None:
        after = balance(acct)
        threshold = acct.reminder[1]
        if low_balance_edge(acct, before, after):
            self.remind(acct, "low_balance", cause, after, threshold)
        if depleted_edge(acct, before, after):
            self.remind(acct, "balance_depleted", cause, after, threshold)

    def remind(
        self,
        acct: Acct,
        kind: str,
        cause: str,
        amount_balance: int,
        threshold: int | None,
        lot: Lot | None = None,
        lot_amount: int | None = None,
    ) -> None:
        self.out.reminders.append(
            Reminder(
                f"{acct.account_id}:{kind}:{cause}",
                acct.account_id,
                kind,
                amount_balance,
                threshold,
                None if lot is None else lot.lot_id,
                lot_amount,
                acct.reminder[2],
            )
        )

    def grant(self, acct: Acct, event: Event, amount: int) -> None:
        """A new lot; it repays overdraft first."""
        before = balance(acct)
        lot = Lot(
            f"lot:{event.event_id}",
            amount,
            amount,
            event.occurred_at,
            event.occurred_at + self.rules.validity,
        )
        repaid = min(acct.overdraft_jpy, amount)
        lot.remaining_jpy -= repaid
        acct.overdraft_jpy -= repaid
        acct.lots.append(lot)
        self.entry(acct, "grant", event.event_id, amount, [(lot.lot_id, repaid)] if repaid else [])
        self.balance_reminders(acct, before, f"grant:{event.event_id}")

    def charge(self, acct: Acct, event: Event) -> None:
        """Debit the lots; what they cannot cover is overdraft, or postpay due after the switch."""
        before = balance(acct)
        left = event.amount_jpy
        allocations = []
        for lot in paying_lots(acct, event, self.rules):
            if left == 0:
                break
            taken = min(left, lot.remaining_jpy)
            lot.remaining_jpy -= taken
            left -= taken
            allocations.append((lot.lot_id, taken))
        since = acct.postpay_since
        if acct.plan == "postpay" and since is not None and event.occurred_at >= since:
            acct.postpay_due_jpy += left
            acct.charges.append(
                Charge(
                    event.event_id,
                    period_of(event.occurred_at, self.rules.zone),
                    event.country,
                    event.unit_price_jpy,
                    event.segments,
                    event.amount_jpy,
                    event.amount_jpy - left,
                )
            )
        else:
            acct.overdraft_jpy += left
        self.entry(acct, "charge", event.event_id, -event.amount_jpy, allocations)
        self.balance_reminders(acct, before, f"charge:{event.event_id}")

    def configure(self, acct: Acct, event: Event) -> None:
        old = acct.reminder
        acct.reminder = (event.enabled, event.threshold_jpy, event.email)
        if reminder_on_configure(acct, old, acct.reminder):
            cause = f"configure:{event.event_id}"
            self.remind(acct, "low_balance", cause, balance(acct), event.threshold_jpy)

    def pay(self, acct: Acct, event: Event) -> str | None:
        invoice = acct.invoices.get(event.invoice_id)
        if invoice is None:
            return "unknown_invoice"
        if event.amount_jpy > invoice.total_jpy - invoice.paid_jpy:
            return "overpayment"
        invoice.paid_jpy += event.amount_jpy
        acct.postpay_due_jpy -= event.amount_jpy
        self.entry(acct, "payment", event.event_id, event.amount_jpy, [])
        return None

    # timers

    def pass_time(self, acct: Acct, upto: datetime, *, inclusive: bool) -> None:
        """Every expiry notice and forfeit of the account's lots due by `upto`, in the order
        of their moments (at one instant a notice before a forfeit, then by lot id).

        A notice is never skipped: a lot that still has credit when its notice comes due gets
        it, even when the timer only gets there after the lot expired (a worker that was down
        sends it late, just before the forfeit)."""
        due: list[tuple[datetime, int, str, Lot]] = []
        for lot in acct.lots:
            if lot.closed:
                continue
            if not lot.notified and has_passed(notice_moment(lot, self.rules), upto, inclusive):
                due.append((notice_moment(lot, self.rules), 0, lot.lot_id, lot))
            if forfeit_has_passed(lot, upto, self.rules, inclusive):
                due.append((lot.expires_at + self.rules.lateness, 1, lot.lot_id, lot))
        for _, what, _, lot in sorted(due, key=lambda d: (d[0], d[1], d[2])):
            if what == 0:
                self.notice(acct, lot)
            else:
                self.forfeit(acct, lot)

    def notice(self, acct: Acct, lot: Lot) -> None:
        """`credits_expiring`, once per lot, only while it has credit left."""
        if lot.closed or lot.notified or lot.remaining_jpy == 0:
            return
        lot.notified = True
        self.remind(
            acct,
            "credits_expiring",
            lot.lot_id,
            balance(acct),
            acct.reminder[1],
            lot,
            lot.remaining_jpy,
        )

    def forfeit(self, acct: Acct, lot: Lot) -> None:
        """Close the lot; what it still had is lost, announced and may cross an edge."""
        before = balance(acct)
        lost = lot.remaining_jpy
        lot.closed = True
        lot.remaining_jpy = 0
        lot.forfeited_jpy = lost
        if lost == 0:
            return
        self.entry(acct, "forfeit", lot.lot_id, -lost, [])
        self.remind(acct, "credits_expired", lot.lot_id, balance(acct), acct.reminder[1], lot, lost)
        self.balance_reminders(acct, before, f"forfeit:{lot.lot_id}")

    def close(self, acct: Acct, period: str) -> None:
        """One invoice per month of the window with postpay usage not yet invoiced."""
        for month in months_up_to(period):
            usage = [c for c in acct.charges if c.invoice_id is None and c.period <= month]
            if not usage:
                continue
            invoice_id = f"INV-{month}-{acct.account_id}"
            lines = invoice_lines(usage, month)
            total = sum(c.amount_jpy - c.from_lots_jpy for c in usage)
            invoice = Invoice(
                invoice_id, acct.account_id, month, lines, total, last_day_of_next_month(month)
            )
            for c in usage:
                c.invoice_id = invoice_id
            acct.invoices[invoice_id] = invoice
            self.out.invoices[invoice_id] = invoice


def invoice_lines(
    usage: list[Charge], period: str
) -> list[tuple[str, str | None, int, int, int, str]]:
    """Per (usage month, country, price): segments and amount; then the prepaid credit applied."""
    groups: dict[tuple[str, str, int], list[int]] = {}
    for c in usage:
        quantity_amount = groups.setdefault((c.period, c.country, c.unit_price_jpy), [0, 0])
        quantity_amount[0] += c.segments
        quantity_amount[1] += c.amount_jpy
    lines: list[tuple[str, str | None, int, int, int, str]] = []
    for (month, country, price), (quantity, amount) in sorted(groups.items()):
        text = f"SMS to {country}"
        if month != period:
            text += f" (late usage from {month})"
        lines.append((text, country, price, quantity, amount, month))
    applied = sum(c.from_lots_jpy for c in usage)
    if applied:
        lines.append(("Prepaid credit applied", None, -applied, 1, -applied, period))
    return lines


def run(steps: list[Step], rules: Rules | None = None) -> Outcome:
    """The expected outcome of a history."""
    return Oracle(rules).run(steps)
