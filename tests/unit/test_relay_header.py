"""The sequence number header the relay writes and reads back."""

from __future__ import annotations

from worker.adapters.relay_log import SEQ_HEADER, seq_of


def test_the_sequence_number_is_read_from_its_header() -> None:
    assert seq_of([("message_id", b"r-1"), (SEQ_HEADER, b"1234")]) == 1234


def test_a_message_without_a_valid_number_has_none() -> None:
    assert seq_of([("message_id", b"r-1")]) is None
    assert seq_of([(SEQ_HEADER, b"12x")]) is None
    assert seq_of([(SEQ_HEADER, b"\xff")]) is None
