"""Kafka records the worker writes besides events: forwards between its steps and dead letters.

Forwarded records carry the input message's bytes unchanged plus, in headers, where it first
came from (for dead letters and replay detection) and which internal record carried it on.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from streams.errors import Invalid

SOURCE_TOPIC = "prefect-source-topic"
SOURCE_PARTITION = "prefect-source-partition"
SOURCE_OFFSET = "prefect-source-offset"
VIA_PARTITION = "prefect-via-partition"
VIA_OFFSET = "prefect-via-offset"
REASON = "prefect-dead-letter-reason"
REASON_CODE = "prefect-dead-letter-code"

Headers = Sequence[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class Source:
    """Coordinates of the input record a message was first read from."""

    topic: str
    partition: int
    offset: int

    def headers(self) -> list[tuple[str, bytes]]:
        return [
            (SOURCE_TOPIC, self.topic.encode()),
            (SOURCE_PARTITION, str(self.partition).encode()),
            (SOURCE_OFFSET, str(self.offset).encode()),
        ]

    @classmethod
    def from_headers(cls, headers: Headers) -> Source:
        h = dict(headers)
        return cls(
            h[SOURCE_TOPIC].decode(), int(h[SOURCE_PARTITION]), int(h[SOURCE_OFFSET])
        )


@dataclass(frozen=True, slots=True)
class Out:
    """One record to publish."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    partition: int | None = None
    timestamp_ms: int | None = None  # forwards keep the input's timestamp (end-to-end latency)


def partition_for(key: bytes, partitions: int) -> int:
    """Internal topics are partitioned by our own stable hash, so any step can tell where a key
    lives (the lineage sweep needs it) without trusting how a producer keyed its records."""
    return zlib.crc32(key) % partitions


def via_headers(partition: int, offset: int) -> list[tuple[str, bytes]]:
    return [(VIA_PARTITION, str(partition).encode()), (VIA_OFFSET, str(offset).encode())]


def via_from_headers(headers: Headers) -> tuple[int, int]:
    h = dict(headers)
    return int(h[VIA_PARTITION]), int(h[VIA_OFFSET])


def dead_letter(
    topic: str, key: bytes | None, value: bytes | None, source: Source, why: Invalid
) -> Out:
    """The original bytes unchanged, with where they came from and why they could not be used."""
    return Out(
        topic,
        key,
        value,
        [*source.headers(), (REASON, why.reason.encode()), (REASON_CODE, why.code.encode())],
    )
