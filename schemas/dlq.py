"""`billing.dlq.v1`: input records the worker could not apply, kept for replay."""

import base64
import binascii
from datetime import datetime
from typing import Self

from pydantic import Field, model_validator

from schemas._types import OutputModel, Timestamp

MAX_PAYLOAD_BYTES = 256 * 1024
"""A longer value is kept truncated, so that the dead letter still fits in one Kafka message;
the whole value stays in the source topic at the source offset."""


class DeadLetter(OutputModel):
    """An input record that was not applied, with where it came from and why."""

    source_topic: str = Field(
        min_length=1, max_length=249, description="Topic the record was read from."
    )
    source_partition: int = Field(strict=True, ge=0, description="Its partition.")
    source_offset: int = Field(strict=True, ge=0, description="Its offset.")
    key: str | None = Field(
        None,
        description="Its key decoded as UTF-8 (invalid bytes replaced), for reading; "
        "null when absent.",
    )
    key_base64: str | None = Field(
        None,
        description="Its key exactly as received, base64-encoded (use this to replay); "
        "null when absent.",
    )
    payload: str = Field(
        description="Its value decoded as UTF-8 (invalid bytes replaced), for reading."
    )
    payload_base64: str = Field(
        description="Its value exactly as received, base64-encoded: use this to replay."
    )
    payload_size: int = Field(strict=True, ge=0, description="Size of the value in bytes.")
    payload_truncated: bool = Field(
        False,
        strict=True,
        description="True when the value was longer than 256 KiB: payload and payload_base64 "
        "then hold its first 256 KiB; the whole value is at source_topic/partition/offset.",
    )
    error_code: str = Field(
        max_length=64,
        pattern=r"^[a-z][a-z0-9_]*$",
        description="Machine-readable reason, snake_case (e.g. invalid_payload, no_rate).",
    )
    reason: str = Field(min_length=1, description="Human-readable reason.")
    failed_at: Timestamp = Field(description="When the record was dead-lettered (UTC).")

    @classmethod
    def from_record(
        cls,
        *,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        error_code: str,
        reason: str,
        failed_at: datetime,
    ) -> Self:
        """Build a dead letter from a consumed record's raw key and value bytes."""
        whole = value or b""
        raw = whole[:MAX_PAYLOAD_BYTES]
        return cls(
            source_topic=topic,
            source_partition=partition,
            source_offset=offset,
            key=None if key is None else key.decode("utf-8", errors="replace"),
            key_base64=None if key is None else base64.b64encode(key).decode("ascii"),
            payload=raw.decode("utf-8", errors="replace"),
            payload_base64=base64.b64encode(raw).decode("ascii"),
            payload_size=len(whole),
            payload_truncated=len(whole) > len(raw),
            error_code=error_code,
            reason=reason,
            failed_at=failed_at,
        )

    def original_key(self) -> bytes | None:
        """The record key exactly as it was consumed (from the readable form for old letters)."""
        if self.key_base64 is not None:
            return base64.b64decode(self.key_base64, validate=True)
        return None if self.key is None else self.key.encode("utf-8")

    def original_payload(self) -> bytes:
        """The record value exactly as it was consumed."""
        return base64.b64decode(self.payload_base64, validate=True)

    @model_validator(mode="after")
    def _payload_matches_base64(self) -> Self:
        try:
            raw = self.original_payload()
        except binascii.Error as exc:
            raise ValueError("payload_base64 is not valid base64") from exc
        if raw.decode("utf-8", errors="replace") != self.payload:
            raise ValueError("payload does not match payload_base64")
        if (self.payload_size > len(raw)) != self.payload_truncated:
            raise ValueError("payload_size and payload_truncated disagree with the payload")
        if self.key_base64 is not None:
            try:
                key = self.original_key()
            except binascii.Error as exc:
                raise ValueError("key_base64 is not valid base64") from exc
            if key is None or key.decode("utf-8", errors="replace") != self.key:
                raise ValueError("key does not match key_base64")
        return self
