"""The worker's processors: one batch of input records in, records to publish and state out.

No broker and no Faust here: an agent feeds a batch, publishes `outputs`, waits for the broker's
acknowledgements, and only then writes `writes` to its table (see streams.replay for why that
order makes replays exact). Tests drive these directly, like Kafka Streams' TopologyTestDriver.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from streams import collection, collection_record, lineage, membership, replay, retention
from streams.artifacts import Version
from streams.collection_record import CollectionState
from streams.envelope import Event
from streams.errors import Invalid
from streams.lineage import FlowRunLineage
from streams.membership import Membership
from streams.messages import ArtifactCreate, ArtifactUpdate, parse_artifact_op, parse_task_result
from streams.timestamps import instant_json
from topology.records import (
    Headers,
    Out,
    Source,
    dead_letter,
    deleted_from_headers,
    deleted_headers,
    internal_lane,
    partition_for,
    raw_lane,
    via_from_headers,
    via_headers,
)


# A per-message value, never mutated; not frozen for speed (streams.messages says why).
@dataclass(slots=True)
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
        return Source(self.topic, self.partition, self.offset, self.key)


@dataclass(slots=True)
class Stamped:
    """A table value: the domain state plus the replay marks of what it has absorbed.

    A record with marks and no state remembers messages that changed nothing (an update or a
    delete of an artifact not known yet): `at`, the newest event time among them, lets the
    retention sweep forget it."""

    seen: replay.Seen
    state: Any  # the state's JSON form; None = no state
    at: int | None = None  # only with no state

    def dump(self) -> bytes:
        if self.state is None and self.at is not None:
            return orjson.dumps({"seen": self.seen, "state": None, "at": self.at})
        return orjson.dumps({"seen": self.seen, "state": self.state}, default=instant_json)

    @classmethod
    def load(cls, raw: bytes | None) -> Stamped:
        if raw is None:
            return cls({}, None)
        value = orjson.loads(raw)
        return cls(value["seen"], value["state"], value.get("at"))


#: Why a delete emitted nothing, as the step knows it (logged after the id). The memberships step
#: tells a tombstone from no record: an id never seen whose create is known to be in the input
#: means it lacked state it should have had. The collections step knows only that the artifact is
#: not a member: a second delete, or one whose create it refused (a dead letter) alike.
NEVER_SEEN = "never seen"
DELETED_ALREADY = "deleted already"
NOT_A_MEMBER = "deleted already or never a member of its collection"


@dataclass(frozen=True, slots=True)
class UnknownDelete:
    """A delete of an artifact id without a live membership, or (collections step) of one its
    collection does not hold: nothing is emitted. The worker logs each one with `why`."""

    source: Source
    artifact_id: bytes
    why: str


@dataclass(slots=True)
class BatchResult:
    outputs: list[Out] = field(default_factory=list)
    writes: dict[bytes, tuple[int, bytes]] = field(default_factory=dict)  # key → (partition, value)
    # Records that `writes` refer to (collection member pages and versions): durable before
    # `writes`, so a message skipped as a replay (streams.replay) finds them; and deleted only
    # once `writes` are durable, so a message applied again finds what it read the first time.
    writes_before: dict[bytes, tuple[int, bytes]] = field(default_factory=dict)
    deletes_after: dict[bytes, int] = field(default_factory=dict)  # key → partition
    emitted: Counter[str] = field(default_factory=Counter)
    dead_letters: list[tuple[Source, Invalid]] = field(default_factory=list)
    unknown_deletes: list[UnknownDelete] = field(default_factory=list)
    related_truncated: int = 0
    replays_skipped: int = 0
    # Greatest event time applied per state partition (the record's), for the retention sweep:
    # each partition's keys are swept by their own partition's event time (streams.retention).
    watermarks_us: dict[int, int] = field(default_factory=dict)

    def emit(self, topic: str, events: Sequence[Event]) -> None:
        for event in events:
            self.outputs.append(Out(topic, event.key, event.value, event.headers))
            self.emitted[event.name] += 1
            if event.related_dropped:
                self.related_truncated += 1

    def reject(self, topic: str, record: InRecord, source: Source, why: Invalid) -> None:
        self.outputs.append(dead_letter(topic, source.key, record.value, source, why))
        self.dead_letters.append((source, why.bare()))


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
    raw_artifacts: str = "prefect.raw.artifacts"
    raw_task_results: str = "prefect.raw.asset-task-results"
    raw_partitions: int = 0

    def is_raw(self, topic: str) -> bool:
        return topic in (self.raw_artifacts, self.raw_task_results)

    def local(self, record: InRecord, key: bytes) -> bool:
        """Whether a raw record already sits in the partition that owns its key's state."""
        return self.raw_partitions == self.partitions and record.partition == partition_for(
            key, self.partitions
        )


def in_event_time_order(
    batch: Sequence[InRecord], parse: Callable[[bytes], Any]
) -> Iterator[tuple[InRecord, Any]]:
    """Parse a batch and merge its partitions by `occurred`, keeping each partition's own order.

    A batch spans partitions that Kafka hands over one after another; merging them by event time
    keeps operations on different artifacts of one key in the order they happened whenever they
    meet in a batch (per-partition order, which Kafka guarantees, is never changed).
    Unparseable records come out as Invalid, first.
    """
    lanes: dict[tuple[str, int], list[tuple[int, int, InRecord, Any]]] = {}
    for i, record in enumerate(batch):
        try:
            parsed: Any = parse(_value(record))
            when = parsed.occurred_us
        except Invalid as why:
            parsed, when = why.bare(), -1
        lanes.setdefault((record.topic, record.partition), []).append((when, i, record, parsed))
    if len(lanes) == 1:
        for _, _, record, parsed in next(iter(lanes.values())):
            yield record, parsed
        return
    for _, _, record, parsed in heapq.merge(*lanes.values(), key=lambda lane: lane[0]):
        yield record, parsed


# --- routing: raw input to the partition that owns its state ---------------------------------


def _route(topic: str, key: bytes, record: InRecord, topics: Topics) -> Out:
    """A raw record re-keyed onto the internal topic whose partition owns `key`."""
    return Out(
        topic,
        key,
        record.value,
        record.source.headers(),
        partition_for(key, topics.partitions),
        record.timestamp_ms,
    )


def _flow_run_key(result: Any) -> bytes:
    return str(result.flow_run_id or result.task_run_id).encode()


# --- the stateful steps ----------------------------------------------------------------------


@dataclass(slots=True)
class Applied:
    """What one message did to its state record."""

    state: Any  # the new domain state (None: no state)
    changed: bool
    events: Sequence[Event]
    forward: Out | None = None
    unknown_delete: str | None = None  # a delete that emitted nothing: why (UnknownDelete)


@dataclass(slots=True)
class _Record:
    seen: replay.Seen
    state: Any
    partition: int
    changed: bool = False
    at: int | None = None  # Stamped.at


def _apply_keyed(
    topics: Topics,
    batch: Sequence[InRecord],
    load: Load,
    *,
    parse: Callable[[bytes], Any],
    events_topic: str,
    key_of: Callable[[InRecord, Any], bytes | None],
    identity: Callable[[InRecord, Source], tuple[str, int]],
    decode: Callable[[bytes, int, Any], Any],
    encode: Callable[[Any], Any],
    apply: Callable[[Any, bytes, InRecord, Any, bytes], Applied],
    route: Callable[[InRecord, Any], Out | None],
    mark_unchanged: bool = False,
) -> BatchResult:
    """The loop every stateful step shares: event-time order, replay skip, one record per message,
    domain objects kept decoded for the whole batch and encoded once per changed key.

    `mark_unchanged`: also mark messages that changed nothing, for a step where such a message,
    replayed after later ones changed its record, would change it (streams.replay)."""
    result = BatchResult()
    records: dict[bytes, _Record] = {}
    for record, parsed in in_event_time_order(batch, parse):
        raw_input = topics.is_raw(record.topic)
        try:
            source = record.source if raw_input else Source.from_headers(record.headers)
            identity_of_record = identity(record, source) if not raw_input else None
            if not raw_input and record.key is None:
                raise KeyError("record key")
        except (KeyError, ValueError, UnicodeDecodeError) as exc:
            # Internal topics are written by this worker only: a record someone else put there
            # is a dead letter, not a reason to stop.
            why = Invalid("foreign_record", f"internal record not written by this worker ({exc!r})")
            result.reject(topics.dead_letters, record, record.source, why)
            continue
        if isinstance(parsed, Invalid):
            result.reject(topics.dead_letters, record, source, parsed)
            continue
        if raw_input:
            moved = route(record, parsed)
            if moved is not None:
                result.outputs.append(moved)
                continue
        if parsed.occurred_us > result.watermarks_us.get(record.partition, 0):
            result.watermarks_us[record.partition] = parsed.occurred_us
        key = key_of(record, parsed)
        entry = None
        if key is not None:
            entry = records.get(key)
            if entry is None:
                stamped = Stamped.load(load(key, record.partition))
                state = decode(key, record.partition, stamped.state)
                entry = records[key] = _Record(stamped.seen, state, record.partition, at=stamped.at)
            lane, lane_offset = identity_of_record or identity(record, source)
            if replay.is_replay(entry.seen, lane, lane_offset):
                result.replays_skipped += 1
                continue
        try:
            applied = apply(
                None if entry is None else entry.state, key or b"", record, parsed, _value(record)
            )
        except Invalid as why:
            result.reject(topics.dead_letters, record, source, why)
            if entry is not None:  # refused by its state (an event over a limit): a replay must
                _mark_unchanged(entry, lane, lane_offset, parsed.occurred_us)  # not be applied later
            continue
        result.emit(events_topic, applied.events)
        if applied.unknown_delete is not None:
            result.unknown_deletes.append(
                UnknownDelete(source, parsed.artifact_id.encode(), applied.unknown_delete)
            )
        if applied.forward is not None:
            result.outputs.append(applied.forward)
        # A message that changed state or handed an operation on is marked done: a re-read copy
        # (re-keyed again at a new internal offset) must not hand it on a second time.
        if entry is not None and (applied.changed or applied.forward is not None):
            entry.state, entry.changed = applied.state, True
            replay.mark(entry.seen, lane, lane_offset)
        elif entry is not None and mark_unchanged:
            _mark_unchanged(entry, lane, lane_offset, parsed.occurred_us)
    for key, entry in records.items():
        if entry.changed:
            state = None if entry.state is None else encode(entry.state)
            result.writes[key] = (entry.partition, Stamped(entry.seen, state, entry.at).dump())
    return result


def _mark_unchanged(entry: _Record, lane: str, offset: int, occurred_us: int) -> None:
    """Remember a message that left the state as it was, so that its replay is skipped rather
    than applied to what later messages made of the record."""
    entry.changed = True
    entry.at = max(entry.at or 0, occurred_us)
    replay.mark(entry.seen, lane, offset)


def _decoded(from_json: Callable[[Any], Any]) -> Callable[[bytes, int, Any], Any]:
    """A decoder for state that is one record per key: None stays None."""
    return lambda key, partition, value: None if value is None else from_json(value)


def _raw_identity(record: InRecord, source: Source) -> tuple[str, int]:
    """Where the operation entered: the same lane whether it was re-keyed or not."""
    return raw_lane(source.partition), source.offset


def _via_identity(record: InRecord, source: Source) -> tuple[str, int]:
    """The record that carried it on: re-keyed copies of one raw record share this identity."""
    return via_from_headers(record.headers)


def _stay(record: InRecord, parsed: Any) -> Out | None:
    return None


def _rekey_unless_local(
    topics: Topics, topic: str, key_of: Callable[[Any], bytes]
) -> Callable[[InRecord, Any], Out | None]:
    """A raw record stays when it sits in the partition owning its key, else moves to `topic`."""

    def route(record: InRecord, parsed: Any) -> Out | None:
        key = key_of(parsed)
        return None if topics.local(record, key) else _route(topic, key, record, topics)

    return route


# --- step 1: artifact id → collection membership ----------------------------------------------


def apply_memberships(
    topics: Topics, batch: Sequence[InRecord], load: Load, retention_us: int = retention.DEFAULT_RETENTION_US
) -> BatchResult:
    """Reads the by-id topic and, when it is co-partitioned, the raw topic too: a record the
    producer already put in the partition that owns its artifact id is applied without a hop."""

    def apply(current: Membership | None, key: bytes, record: InRecord, op: Any, raw: bytes) -> Applied:
        step = membership.apply(current, op, raw, retention_us)
        forward = None
        if step.forward_to is not None:
            target = step.forward_to.encode()
            raw_input = topics.is_raw(record.topic)
            source = record.source if raw_input else Source.from_headers(record.headers)
            via_lane = raw_lane(record.partition) if raw_input else internal_lane(record.partition)
            forward = Out(
                topics.artifacts_by_key,
                target,
                raw,
                [*source.headers(), *via_headers(via_lane, record.offset), *deleted_headers(step.deleted)],
                partition_for(target, topics.partitions),
                record.timestamp_ms,
            )
        unknown = None
        if step.unknown_delete:
            unknown = NEVER_SEEN if current is None else DELETED_ALREADY
        return Applied(step.membership, step.changed, step.events, forward, unknown)

    return _apply_keyed(
        topics,
        batch,
        load,
        parse=parse_artifact_op,
        events_topic=topics.artifact_events,
        key_of=lambda record, op: op.artifact_id.encode(),
        identity=_raw_identity,
        decode=_decoded(Membership.from_json),
        encode=Membership.to_json,
        apply=apply,
        route=_rekey_unless_local(topics, topics.artifacts_by_id, lambda op: op.artifact_id.encode()),
        # An update or delete before its artifact's create changes nothing; replayed after the
        # create, it would hand itself on (an update patching the collection, a delete deleting).
        mark_unchanged=True,
    )


# --- step 2: collection key → latest artifact -------------------------------------------------


def apply_collections(topics: Topics, batch: Sequence[InRecord], load: Load) -> BatchResult:
    """Collections by key, with their member pages and their members' versions in records of their
    own (streams.collection_record), all in the collection key's partition."""
    states: list[tuple[bytes, int, CollectionState]] = []  # every key the batch read
    versions: dict[str, _VersionWrite] = {}  # this batch's, by artifact id
    stored: dict[str, tuple[Version, int] | None] = {}  # versions as of their collection record

    def stored_version(artifact_id: str, partition: int, as_of: int) -> tuple[Version, int] | None:
        if artifact_id not in stored:
            raw = load(collection_record.version_key(artifact_id), partition)
            stored[artifact_id] = (
                None
                if raw is None
                else collection_record.load_version(artifact_id, raw, as_of)
            )
        return stored[artifact_id]

    def decode(key: bytes, partition: int, value: Any) -> CollectionState:
        def stored_page(artifact_id: str, as_of: int) -> int | None:
            found = stored_version(artifact_id, partition, as_of)
            return None if found is None else found[1]

        state = collection_record.decode(
            value, lambda page: load(collection_record.page_key(key, page), partition), stored_page
        )
        states.append((key, partition, state))
        return state

    def version_of(key: bytes, partition: int, as_of: int) -> collection.VersionOf:
        def get(artifact_id: str) -> Version:
            if artifact_id in versions:
                version = versions[artifact_id].version
            else:
                found = stored_version(artifact_id, partition, as_of)
                version = None if found is None else found[0]
            if version is None:  # written before its collection, forgotten after: cannot happen
                raise LookupError(f"collection {key!r}: no version of its member {artifact_id}")
            return version

        return get

    def apply(state: CollectionState, key: bytes, record: InRecord, op: Any, raw: bytes) -> Applied:
        members, partition = state.members, record.partition
        # Honoured on the hop only: on a raw record it would let a producer keep a create out.
        deleted = record.topic == topics.artifacts_by_key and deleted_from_headers(record.headers)
        step = collection.apply(
            state.collection,
            members,
            key.decode(),
            op,
            raw,
            version_of(key, partition, members.as_of),
            deleted=deleted,
        )
        if isinstance(op, ArtifactUpdate) and step.versions:
            members.stamp()  # adds and removes stamp themselves
        for artifact_id, version in step.versions.items():
            earlier = versions.get(artifact_id)
            since = members.seq if earlier is None else earlier.since
            if earlier is not None and earlier.version is not None:
                before = earlier.before
            elif earlier is None and (version is None or isinstance(op, ArtifactCreate)):
                before = None  # forgotten, or created: not a member as of the record
            else:  # as of the record: an update read it already; a re-create after a delete has not
                found = stored_version(artifact_id, partition, members.as_of)
                before = None if found is None else found[0]
            page = None if version is None else members.page_of(artifact_id)
            versions[artifact_id] = _VersionWrite(partition, version, page, since, before)
        state.collection = step.collection
        unknown = NOT_A_MEMBER if step.unknown_delete else None
        return Applied(state, step.changed, step.events, unknown_delete=unknown)

    result = _apply_keyed(
        topics,
        batch,
        load,
        parse=parse_artifact_op,
        events_topic=topics.artifact_events,
        key_of=lambda record, op: _key(record),
        identity=_via_identity,
        decode=decode,
        encode=CollectionState.to_json,
        apply=apply,
        route=_stay,
        # A retried create of a member, or an update or delete of an artifact not (or no longer)
        # a member, changes nothing; replayed after a delete or a create it would (streams.replay).
        mark_unchanged=True,
    )
    # Pages and versions first, durable before the collection records that refer to them; those
    # left without a member deleted once the records are (streams.members, streams.replay).
    for key, partition, state in states:
        for page, value in state.members.written():
            result.writes_before[collection_record.page_key(key, page)] = (partition, value)
        for page in state.members.emptied:
            result.deletes_after[collection_record.page_key(key, page)] = partition
    for artifact_id, w in versions.items():
        vkey = collection_record.version_key(artifact_id)
        if w.version is None:
            result.deletes_after[vkey] = w.partition
        else:
            assert w.page is not None, artifact_id  # a live member has a page
            record = collection_record.version_to_json(w.version, w.page, w.since, w.before)
            result.writes_before[vkey] = (w.partition, orjson.dumps(record, default=instant_json))
    return result


@dataclass(slots=True)
class _VersionWrite:
    partition: int
    version: Version | None  # None: forgotten
    page: int | None
    since: int  # the collection's change that first changed it in this batch
    before: Version | None  # as of the collection record the batch read


# --- assets: flow run → lineage ---------------------------------------------------------------


def apply_lineage(topics: Topics, batch: Sequence[InRecord], load: Load, retention_us: int) -> BatchResult:
    """Task runs without a flow run are stateless: they inherit nothing and pass nothing on.
    Like memberships, raw records already in their flow run's partition are applied directly."""

    def apply(
        current: FlowRunLineage | None, key: bytes, record: InRecord, result: Any, raw: bytes
    ) -> Applied:
        step = lineage.apply(current, result, raw, retention_us)
        return Applied(step.lineage, step.changed, step.events)

    return _apply_keyed(
        topics,
        batch,
        load,
        parse=parse_task_result,
        events_topic=topics.asset_events,
        key_of=lambda record, result: None if result.flow_run_id is None else result.flow_run_id.encode(),
        identity=_raw_identity,
        decode=_decoded(FlowRunLineage.from_json),
        encode=FlowRunLineage.to_json,
        apply=apply,
        route=_rekey_unless_local(topics, topics.task_results_by_flow_run, _flow_run_key),
    )


def expired_flow_runs(
    items: Callable[[], Any],
    watermarks_us: Mapping[int, int],
    partitions: int,
    retention_us: int,
    lateness_us: int,
) -> list[bytes]:
    """Keys of flow runs silent for longer than the retention and the allowed lateness, as of the
    event-time watermark of their own partition (streams.retention.forgettable)."""
    return _expired(
        items, watermarks_us, partitions, retention_us, lateness_us, lambda state: int(state["last_seen_us"])
    )


def expired_tombstones(
    items: Callable[[], Any],
    watermarks_us: Mapping[int, int],
    partitions: int,
    retention_us: int,
    lateness_us: int,
) -> list[bytes]:
    """Keys of artifacts deleted longer than the retention and the allowed lateness ago (live ones
    never expire), and of records that only remember messages about an artifact not known yet; as
    of the event-time watermark of their own partition."""
    return _expired(items, watermarks_us, partitions, retention_us, lateness_us, lambda state: state[1])


def _expired(
    items: Callable[[], Any],
    watermarks_us: Mapping[int, int],
    partitions: int,
    retention_us: int,
    lateness_us: int,
    last_us: Callable[[Any], int | None],
) -> list[bytes]:
    """A key is swept by the watermark of the partition that holds it (partition_for, as its
    records were applied and its changelog is written); a partition without one yet is not swept."""
    newest = max(watermarks_us.values(), default=0)
    expired = []
    for key, raw in items():
        stamped = Stamped.load(raw)
        when = stamped.at if stamped.state is None else last_us(stamped.state)
        # By the newest watermark first: most keys are kept, and need no partition then.
        if when is not None and retention.forgettable(when, newest, retention_us, lateness_us):
            watermark = watermarks_us.get(partition_for(key, partitions), 0)
            if retention.forgettable(when, watermark, retention_us, lateness_us):
                expired.append(key)
    return expired


def _value(record: InRecord) -> bytes:
    if record.value is None:
        raise Invalid("invalid_json", "record has no value (a tombstone)")
    return record.value


def _key(record: InRecord) -> bytes:
    assert record.key is not None  # _apply_keyed dead-letters keyless internal records
    return record.key
