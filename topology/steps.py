"""The worker's processors: one batch of input records in, records to publish and state out.

No broker and no Faust here: an agent feeds a batch, publishes `outputs`, waits for the broker's
acknowledgements, and only then writes `writes` to its table (see streams.replay for why that
order makes replays exact). Tests drive these directly, like Kafka Streams' TopologyTestDriver.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from streams import collection, lineage, membership, replay
from streams.collection import Collection
from streams.envelope import Event
from streams.errors import Invalid
from streams.lineage import FlowRunLineage
from streams.membership import Membership
from streams.messages import parse_artifact_op, parse_task_result
from topology.records import (
    Headers,
    Out,
    Source,
    dead_letter,
    partition_for,
    via_from_headers,
    via_headers,
)


@dataclass(frozen=True, slots=True)
class InRecord:
    """One consumed record, as the processors see it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers = ()
    timestamp_ms: int | None = None

    @property
    def source(self) -> Source:
        return Source(self.topic, self.partition, self.offset)


@dataclass(slots=True)
class Stamped:
    """A table value: the domain state plus the replay marks of what it has absorbed."""

    seen: replay.Seen
    state: Any  # the state's JSON form; None = no state

    def dump(self) -> bytes:
        seen = {str(p): o for p, o in self.seen.items()}
        return orjson.dumps({"seen": seen, "state": self.state})

    @classmethod
    def load(cls, raw: bytes | None) -> Stamped:
        if raw is None:
            return cls({}, None)
        value = orjson.loads(raw)
        return cls({int(p): o for p, o in value["seen"].items()}, value["state"])


@dataclass(slots=True)
class BatchResult:
    outputs: list[Out] = field(default_factory=list)
    writes: dict[bytes, tuple[int, bytes]] = field(default_factory=dict)  # key → (partition, value)
    emitted: Counter[str] = field(default_factory=Counter)
    dead_letters: list[tuple[Source, Invalid]] = field(default_factory=list)
    unknown_deletes: int = 0
    related_truncated: int = 0
    replays_skipped: int = 0
    watermark_us: int = 0  # greatest event time seen, for the lineage retention sweep

    def emit(self, topic: str, events: Sequence[Event]) -> None:
        for event in events:
            self.outputs.append(Out(topic, event.key, event.value, event.headers))
            self.emitted[event.name] += 1
            if event.related_dropped:
                self.related_truncated += 1

    def reject(self, topic: str, record: InRecord, source: Source, why: Invalid) -> None:
        self.outputs.append(dead_letter(topic, record.key, record.value, source, why))
        self.dead_letters.append((source, why))


Load = Callable[[bytes, int], bytes | None]  # (table key, partition) → stored value


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic names and internal partition count, as the processors need them."""

    artifact_events: str
    asset_events: str
    dead_letters: str
    artifacts_by_id: str
    artifacts_by_key: str
    task_results_by_flow_run: str
    partitions: int


def in_event_time_order(
    batch: Sequence[InRecord], parse: Callable[[bytes], Any]
) -> Iterator[tuple[InRecord, Any]]:
    """Parse a batch and merge its partitions by `occurred`, keeping each partition's own order.

    A batch spans partitions that Kafka hands over one after another; merging them by event time
    keeps operations on different artifacts of one key in the order they happened whenever they
    meet in a batch (per-partition order, which Kafka guarantees, is never changed).
    Unparseable records come out as Invalid, first.
    """
    lanes: dict[int, list[tuple[int, int, InRecord, Any]]] = {}
    for i, record in enumerate(batch):
        try:
            parsed: Any = parse(_value(record))
            when = parsed.occurred_us
        except Invalid as why:
            parsed, when = why, -1
        lanes.setdefault(record.partition, []).append((when, i, record, parsed))
    if len(lanes) == 1:
        for _, _, record, parsed in next(iter(lanes.values())):
            yield record, parsed
        return
    for _, _, record, parsed in heapq.merge(*lanes.values(), key=lambda lane: lane[0]):
        yield record, parsed


# --- step 0: route raw input to the partition that owns its state -----------------------------


def route_artifacts(topics: Topics, batch: Sequence[InRecord]) -> BatchResult:
    """Validate, then re-key by artifact id (the producer's key is advice, never trusted)."""
    result = BatchResult()
    for record, op in in_event_time_order(batch, parse_artifact_op):
        if isinstance(op, Invalid):
            result.reject(topics.dead_letters, record, record.source, op)
            continue
        key = op.artifact_id.encode()
        result.outputs.append(
            Out(
                topics.artifacts_by_id,
                key,
                record.value,
                record.source.headers(),
                partition_for(key, topics.partitions),
                record.timestamp_ms,
            )
        )
    return result


def route_task_results(topics: Topics, batch: Sequence[InRecord]) -> BatchResult:
    """Validate, then re-key by flow run (task runs without one: by task run, stateless)."""
    result = BatchResult()
    for record, task_result in in_event_time_order(batch, parse_task_result):
        if isinstance(task_result, Invalid):
            result.reject(topics.dead_letters, record, record.source, task_result)
            continue
        key = (task_result.flow_run_id or task_result.task_run_id).encode()
        result.outputs.append(
            Out(
                topics.task_results_by_flow_run,
                key,
                record.value,
                record.source.headers(),
                partition_for(key, topics.partitions),
                record.timestamp_ms,
            )
        )
    return result


# --- step 1: artifact id → collection membership ----------------------------------------------


def apply_memberships(topics: Topics, batch: Sequence[InRecord], load: Load) -> BatchResult:
    result = BatchResult()
    records: dict[bytes, Stamped] = {}
    for record, op in in_event_time_order(batch, parse_artifact_op):
        source = Source.from_headers(record.headers)
        if isinstance(op, Invalid):
            result.reject(topics.dead_letters, record, source, op)
            continue
        value = _value(record)
        key = _key(record)
        stamped = records.get(key) or Stamped.load(load(key, record.partition))
        if replay.is_replay(stamped.seen, source.partition, source.offset):
            result.replays_skipped += 1
            continue
        current = None if stamped.state is None else Membership.from_json(stamped.state)
        try:
            step = membership.apply(current, op, value)
        except Invalid as why:
            result.reject(topics.dead_letters, record, source, why)
            continue
        result.emit(topics.artifact_events, step.events)
        result.unknown_deletes += step.unknown_delete
        if step.forward_to is not None:
            target = step.forward_to.encode()
            result.outputs.append(
                Out(
                    topics.artifacts_by_key,
                    target,
                    value,
                    [*source.headers(), *via_headers(record.partition, record.offset)],
                    partition_for(target, topics.partitions),
                    record.timestamp_ms,
                )
            )
        if step.changed:
            assert step.membership is not None
            stamped.state = step.membership.to_json()
            replay.mark(stamped.seen, source.partition, source.offset)
            records[key] = stamped
            result.writes[key] = (record.partition, stamped.dump())
    return result


# --- step 2: collection key → latest artifact -------------------------------------------------


def apply_collections(topics: Topics, batch: Sequence[InRecord], load: Load) -> BatchResult:
    result = BatchResult()
    records: dict[bytes, Stamped] = {}
    for record, op in in_event_time_order(batch, parse_artifact_op):
        source = Source.from_headers(record.headers)
        if isinstance(op, Invalid):
            result.reject(topics.dead_letters, record, source, op)
            continue
        via_partition, via_offset = via_from_headers(record.headers)
        value = _value(record)
        key = _key(record)
        stamped = records.get(key) or Stamped.load(load(key, record.partition))
        if replay.is_replay(stamped.seen, via_partition, via_offset):
            result.replays_skipped += 1
            continue
        current = None if stamped.state is None else Collection.from_json(stamped.state)
        try:
            step = collection.apply(current, key.decode(), op, value)
        except Invalid as why:
            result.reject(topics.dead_letters, record, source, why)
            continue
        result.emit(topics.artifact_events, step.events)
        if step.changed:
            stamped.state = None if step.collection is None else step.collection.to_json()
            replay.mark(stamped.seen, via_partition, via_offset)
            records[key] = stamped
            result.writes[key] = (record.partition, stamped.dump())
    return result


# --- assets: flow run → lineage ---------------------------------------------------------------


def apply_lineage(
    topics: Topics, batch: Sequence[InRecord], load: Load, retention_us: int
) -> BatchResult:
    result = BatchResult()
    records: dict[bytes, Stamped] = {}
    for record, task_result in in_event_time_order(batch, parse_task_result):
        source = Source.from_headers(record.headers)
        if isinstance(task_result, Invalid):
            result.reject(topics.dead_letters, record, source, task_result)
            continue
        result.watermark_us = max(result.watermark_us, task_result.occurred_us)
        value = _value(record)
        if task_result.flow_run_id is None:
            try:
                step = lineage.apply(None, task_result, value, retention_us)
            except Invalid as why:
                result.reject(topics.dead_letters, record, source, why)
                continue
            result.emit(topics.asset_events, step.events)
            continue
        key = task_result.flow_run_id.encode()
        stamped = records.get(key) or Stamped.load(load(key, record.partition))
        if replay.is_replay(stamped.seen, source.partition, source.offset):
            result.replays_skipped += 1
            continue
        current = None if stamped.state is None else FlowRunLineage.from_json(stamped.state)
        try:
            step = lineage.apply(current, task_result, value, retention_us)
        except Invalid as why:
            result.reject(topics.dead_letters, record, source, why)
            continue
        result.emit(topics.asset_events, step.events)
        if step.changed:
            assert step.lineage is not None
            stamped.state = step.lineage.to_json()
            replay.mark(stamped.seen, source.partition, source.offset)
            records[key] = stamped
            result.writes[key] = (record.partition, stamped.dump())
    return result


def expired_flow_runs(
    items: Callable[[], Any], watermark_us: int, retention_us: int
) -> list[bytes]:
    """Keys of flow runs silent for longer than the retention, as of the event-time watermark."""
    expired = []
    for key, raw in items():
        state = Stamped.load(raw).state
        if state is not None and watermark_us - int(state["last_seen_us"]) > retention_us:
            expired.append(key)
    return expired


def _value(record: InRecord) -> bytes:
    if record.value is None:
        raise Invalid("invalid_json", "record has no value (a tombstone)")
    return record.value


def _key(record: InRecord) -> bytes:
    if record.key is None:  # only our own routing step writes these topics, always with a key
        raise RuntimeError(f"internal record without key at {record.source}")
    return record.key
