"""Kafka records the worker writes besides events: forwards between its steps and dead letters.

Forwarded records carry the input message's bytes unchanged plus, in headers, where it first
came from (for dead letters and replay detection) and which internal record carried it on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka.partitioner import murmur2

from streams.errors import Invalid

SOURCE_TOPIC = "prefect-source-topic"
SOURCE_PARTITION = "prefect-source-partition"
SOURCE_OFFSET = "prefect-source-offset"
VIA_LANE = "prefect-via-lane"
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
        return cls(h[SOURCE_TOPIC].decode(), int(h[SOURCE_PARTITION]), int(h[SOURCE_OFFSET]))


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
    """Where a key lives: Kafka's default partitioner (murmur2), computed by us, never trusted
    from the producer. A producer that keys raw records the advised way (artifact id, flow run id)
    with the default partitioner puts them exactly here, so they need no repartitioning hop."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


def raw_lane(partition: int) -> str:
    """Replay lane of a raw input partition."""
    return f"r{partition}"


def internal_lane(partition: int) -> str:
    """Replay lane of an internal topic's partition."""
    return f"i{partition}"


def via_headers(lane: str, offset: int) -> list[tuple[str, bytes]]:
    """Which record carried an operation on to the next step: its replay identity there."""
    return [(VIA_LANE, lane.encode()), (VIA_OFFSET, str(offset).encode())]


def via_from_headers(headers: Headers) -> tuple[str, int]:
    h = dict(headers)
    return h[VIA_LANE].decode(), int(h[VIA_OFFSET])


def dead_letter(topic: str, key: bytes | None, value: bytes | None, source: Source, why: Invalid) -> Out:
    """The original bytes unchanged, with where they came from and why they could not be used."""
    return Out(
        topic,
        key,
        value,
        [*source.headers(), (REASON, why.reason.encode()), (REASON_CODE, why.code.encode())],
    )
