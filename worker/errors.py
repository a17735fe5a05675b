"""Infrastructure failures and how the worker treats them."""

from __future__ import annotations

import asyncio
from enum import IntEnum

import asyncpg
from aiokafka.errors import KafkaError

from worker.domain.errors import BillingError


class WorkerError(BillingError):
    """An infrastructure-side failure of the worker itself."""


class ExitCode(IntEnum):
    """What `billing-worker` exits with; the README's table lists the same."""

    OK = 0
    FAILED = 1
    BAD_ARGUMENT = 2  # an unknown account, a malformed argument (Click's usage errors too)
    BROKER_UNREACHABLE = 3
    DATABASE_UNREACHABLE = 4
    SCHEMA_MISMATCH = 5
    OUTPUT_LOG_MISMATCH = 6  # the output topics hold what this database never published
    ACCESS_REFUSED = 77  # EX_NOPERM: credentials or certificates refused
    BAD_SETTING = 78  # EX_CONFIG of sysexits.h
    INTERRUPTED = 130


class Failure(WorkerError):
    """Ends a command with one line saying what is wrong and what to do."""

    exit_code = ExitCode.FAILED
    error_code = "failed"

    def __init__(
        self, message: str, *, exit_code: int | None = None, error_code: str | None = None
    ) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = ExitCode(exit_code)
        if error_code is not None:
            self.error_code = error_code


class BadArgument(Failure):
    """An argument names nothing there is, or is not in the form expected."""

    exit_code = ExitCode.BAD_ARGUMENT
    error_code = "bad_argument"


class UnknownAccount(BadArgument):
    """No account has this id."""

    error_code = "unknown_account"


class BrokerUnreachable(Failure):
    """Kafka did not answer within the time allowed."""

    exit_code = ExitCode.BROKER_UNREACHABLE
    error_code = "broker_unreachable"
    retriable = True


class DatabaseUnreachable(Failure):
    """PostgreSQL did not answer, or refused the connection, within the time allowed."""

    exit_code = ExitCode.DATABASE_UNREACHABLE
    error_code = "database_unreachable"
    retriable = True


class ProducerStampedInputs(Failure):
    """An input topic lets producers choose the record timestamps that decide lateness."""

    exit_code = ExitCode.BAD_SETTING
    error_code = "input_timestamp_type"


class SchemaMismatch(Failure):
    """The database's applied migrations are not the ones this worker was built for."""

    exit_code = ExitCode.SCHEMA_MISMATCH
    error_code = "schema_mismatch"


class OutputLogMismatch(Failure):
    """The output topics hold messages this database never numbered: a restore, or another one."""

    exit_code = ExitCode.OUTPUT_LOG_MISMATCH
    error_code = "output_log_mismatch"


class AccountNotLocked(WorkerError):
    """A unit of work was asked to write a row for an account it has not locked."""


class ShuttingDown(WorkerError):
    """Stop was requested while a batch waited to be retried; it will be redelivered."""


_RETRIABLE_PG = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
    # lock_timeout; statement_timeout is a QueryCanceledError, an OperatorInterventionError.
    asyncpg.exceptions.LockNotAvailableError,
    # What asyncpg raises instead of a connection error when the server ends a session that
    # is mid-operation (e.g. PostgreSQL shutting down); the next connection is fine.
    asyncpg.exceptions.InternalClientError,
    # A failover can hand the pool a server that is still (or again) a read-only standby:
    # the write waits for a primary instead of sending the batch's records to the DLQ.
    asyncpg.exceptions.ReadOnlySQLTransactionError,
)


def is_retriable(exc: BaseException) -> bool:
    """Infrastructure that may come back: the database, the broker, the network."""
    if isinstance(exc, BillingError):
        return exc.retriable
    if isinstance(exc, KafkaError):
        # aiokafka marks each error class, as this root does (KafkaConnectionError among them).
        return bool(exc.retriable)
    return isinstance(exc, (*_RETRIABLE_PG, OSError, asyncio.TimeoutError))
