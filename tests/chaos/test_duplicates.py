"""The read_committed duplicate count of the chaos run."""

from __future__ import annotations

from chaos.duplicates import by_topic, repeats


def test_a_message_repeated_in_the_same_topic_counts_once_per_extra_copy() -> None:
    records = [
        (0, 0, b"a", b'{"id": 1}'),
        (0, 1, b"a", b'{"id": 2}'),
        (1, 0, b"b", b'{"id": 1}'),  # other key: another message
        (0, 2, b"a", b'{"id": 1}'),
        (0, 3, b"a", b'{"id": 1}'),
    ]
    assert repeats(records) == 2


def test_counts_are_per_output_topic() -> None:
    logs = {
        "t.rem": [(0, 0, b"k", b"x"), (0, 1, b"k", b"x")],
        "t.inv": [(0, 0, b"k", b"x")],
        "t.dlq": [],
    }
    names = {"reminders": "t.rem", "invoices": "t.inv", "dlq": "t.dlq"}
    assert by_topic(logs, names) == {"reminders": 1, "invoices": 0, "dlq": 0}
