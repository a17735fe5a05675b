"""Start-up checks: a wrong password or an untrusted certificate stops start-up in one line.

An unreachable broker or database is not decided here: the normal retries handle it.
"""

from __future__ import annotations

import asyncio
import ssl

import asyncpg
from aiokafka.conn import create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    IllegalSaslStateError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)

from worker.adapters.kafka_connection import kafka_client_args
from worker.config import Settings
from worker.errors import ExitCode, Failure
from worker.redact import mask_dsn

_SASL_REFUSED = (
    SaslAuthenticationFailed,
    AuthenticationFailedError,
    UnsupportedSaslMechanismError,
    IllegalSaslStateError,
)


class AccessRefused(Failure):
    """The broker or the database refused these credentials or certificates."""

    exit_code = ExitCode.ACCESS_REFUSED
    error_code = "access_refused"


def _tls_reason(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"its certificate is not trusted ({exc.verify_message})"
    return f"the TLS handshake failed ({exc.reason or exc})"


async def check_kafka(settings: Settings, timeout_s: float = 10.0) -> None:
    """Open one connection to the first bootstrap server and authenticate as the clients will."""
    args = kafka_client_args(settings)
    host, _, port = str(args.pop("bootstrap_servers")).split(",")[0].strip().rpartition(":")
    where = f"Kafka at {host}:{port} ({settings.kafka_security_protocol})"
    try:
        conn = await asyncio.wait_for(
            create_conn(host, int(port), request_timeout_ms=int(timeout_s * 1000), **args),
            timeout_s,
        )
    except _SASL_REFUSED as exc:
        raise AccessRefused(
            f"{where} refused the {settings.kafka_sasl_mechanism} login of "
            f"{settings.kafka_sasl_username!r} "
            "(check BILLING_KAFKA_SASL_USERNAME and the password): "
            f"{type(exc).__name__}"
        ) from None
    except ssl.SSLError as exc:
        raise AccessRefused(
            f"{where}: {_tls_reason(exc)}; check BILLING_KAFKA_SSL_CAFILE/CERTFILE/KEYFILE"
        ) from None
    except (OSError, TimeoutError):
        return
    conn.close()


async def check_postgres(settings: Settings, timeout_s: float = 10.0) -> None:
    """Open one connection to the database and close it."""
    where = f"PostgreSQL at {mask_dsn(settings.database_url)}"
    try:
        conn = await asyncpg.connect(settings.database_url, timeout=timeout_s)
    except (
        asyncpg.InvalidPasswordError,
        asyncpg.InvalidAuthorizationSpecificationError,
    ) as exc:
        raise AccessRefused(f"{where} refused the login: {exc}") from None
    except ssl.SSLError as exc:
        raise AccessRefused(
            f"{where}: {_tls_reason(exc)}; check sslrootcert/sslcert/sslkey"
        ) from None
    except (OSError, TimeoutError, asyncpg.PostgresError):
        return
    await conn.close()
