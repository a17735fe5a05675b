"""The headers the relay writes and reads back, and when it trusts the log they describe."""

from __future__ import annotations

from worker.adapters.relay_log import SEQ_HEADER, STAMP_HEADER, Tail, mismatch, seq_of, stamp_of


def test_the_sequence_number_is_read_from_its_header() -> None:
    assert seq_of([("message_id", b"r-1"), (SEQ_HEADER, b"1234")]) == 1234


def test_a_message_without_a_valid_number_has_none() -> None:
    assert seq_of([("message_id", b"r-1")]) is None
    assert seq_of([(SEQ_HEADER, b"12x")]) is None
    assert seq_of([(SEQ_HEADER, b"\xff")]) is None


def test_the_stamp_header_is_read_and_an_unreadable_one_is_none() -> None:
    assert stamp_of([(SEQ_HEADER, b"7"), (STAMP_HEADER, b"0b6a-db")]) == "0b6a-db"
    assert stamp_of([(SEQ_HEADER, b"7")]) is None
    assert stamp_of([(STAMP_HEADER, b"\xff")]) is None


def test_a_log_within_this_databases_numbers_and_stamp_is_trusted() -> None:
    assert mismatch(Tail(), "ours", 0) is None
    assert mismatch(Tail(40, {"ours": 40}), "ours", 40) is None
    # Messages from before the stamp existed carry none: only the numbers are compared.
    assert mismatch(Tail(40), "ours", 52) is None


def test_a_log_ahead_of_this_databases_numbering_is_a_restore() -> None:
    problem = mismatch(Tail(41, {"ours": 41}), "ours", 40)
    assert problem is not None
    assert problem.startswith(
        "the output topics hold outbox_seq 41, but this database has numbered only up to 40:"
        " it was restored from a backup"
    )
    assert "billing-worker outbox adopt-log" in problem


def test_a_log_stamped_by_another_database_is_refused_whatever_the_numbers() -> None:
    problem = mismatch(Tail(5, {"theirs": 5, "ours": 3}), "ours", 1000)
    assert problem is not None
    assert problem.startswith(
        "the output topics hold messages published from another database (stamp theirs,"
        " outbox_seq up to 5), not from this one (stamp ours)"
    )
