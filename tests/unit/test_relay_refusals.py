"""Which broker answers to a produce request the relay parks, and which it retries."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import (
    KafkaConnectionError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    TopicAuthorizationFailedError,
    UnknownError,
    for_code,
)
from aiokafka.producer.sender import SendProduceReqHandler

from worker.adapters import relay
from worker.adapters.relay import InvalidRecordError

TP = TopicPartition("billing.balances.v1", 0)


class Batch:
    """Stands for aiokafka's record batch: keeps what the sender decided about it."""

    def __init__(self) -> None:
        self.failed: BaseException | None = None
        self.done = False

    def failure(self, exception: BaseException) -> None:
        self.failed = exception

    def expired(self) -> bool:
        return False


def _answer(error_code: int) -> tuple[Batch, SendProduceReqHandler]:
    """The producer's handler after the broker answered `error_code` for the partition, as a
    produce response v7 (the highest aiokafka 0.14 sends) carries it."""
    batch = Batch()
    sender: Any = SimpleNamespace(client=None, _retry_backoff=0.01, _txn_manager=object())
    handler = SendProduceReqHandler(sender, {TP: batch})
    response = SimpleNamespace(
        API_VERSION=7, topics=[(TP.topic, [(TP.partition, error_code, -1, -1, -1)])]
    )
    handler.handle_response(response)
    return batch, handler


def test_invalid_record_fails_the_batch_with_an_error_the_relay_parks() -> None:
    # 87 is INVALID_RECORD in Kafka's protocol: e.g. a record without a key on a compacted topic.
    assert for_code(87) is InvalidRecordError
    batch, handler = _answer(87)
    assert isinstance(batch.failed, InvalidRecordError)
    assert isinstance(batch.failed, relay._REFUSALS)
    assert handler._to_reenqueue == []  # not sent again by the producer either
    assert str(batch.failed.description).startswith("The broker refused a record")


def test_a_message_too_large_is_parked_too() -> None:
    batch, _ = _answer(10)  # MESSAGE_TOO_LARGE
    assert isinstance(batch.failed, MessageSizeTooLargeError)
    assert isinstance(batch.failed, relay._REFUSALS)


@pytest.mark.parametrize(
    "error",
    [
        UnknownError(),  # a code the client does not know: nothing says it is about one message
        TopicAuthorizationFailedError("t"),
        NotLeaderForPartitionError(),
        KafkaConnectionError(),
    ],
)
def test_errors_about_more_than_one_message_are_not_parked(error: Exception) -> None:
    assert not isinstance(error, relay._REFUSALS)


def test_a_code_no_class_is_registered_for_still_fails_as_unknown() -> None:
    batch, _ = _answer(1_000)
    assert type(batch.failed) is UnknownError
