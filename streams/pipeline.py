"""The whole processing of one input stream over in-memory state, message by message.

The worker runs the same steps split across Kafka hops (artifact id → collection key; flow run);
this composition is what `prefect-events process` runs offline, and what tests drive like Kafka
Streams' TopologyTestDriver: the same message sequence gives the same bytes either way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from streams import collection, lineage, membership, retention
from streams.artifacts import Version
from streams.collection import Collection
from streams.envelope import Event
from streams.errors import Invalid
from streams.lineage import FlowRunLineage
from streams.members import MemberSet
from streams.membership import Membership
from streams.messages import ArtifactOp, parse_artifact_op, parse_task_result

DEFAULT_RETENTION_US = retention.DEFAULT_RETENTION_US
SWEEP_EVERY = 1024  # messages
V = TypeVar("V")


@dataclass(slots=True)
class Outcome:
    """What one input message caused: its events, or why it is a dead letter."""

    events: list[Event] = field(default_factory=list)
    dead_letter: Invalid | None = None
    unknown_delete: bool = False


@dataclass(slots=True)
class ArtifactPipeline:
    """The artifact steps over one stream. Tombstones are forgotten per message (streams.membership),
    so none is swept here: memory holds every artifact id seen, fine for a file."""

    retention_us: int = DEFAULT_RETENTION_US
    memberships: dict[str, Membership] = field(default_factory=dict)
    collections: dict[str, Collection] = field(default_factory=dict)
    members: dict[str, MemberSet] = field(default_factory=dict)  # by collection key
    versions: dict[str, Version] = field(default_factory=dict)  # collection members, by artifact id

    def process(self, raw: bytes) -> Outcome:
        try:
            op = parse_artifact_op(raw)
            step = membership.apply(self.memberships.get(op.artifact_id), op, raw, self.retention_us)
            outcome = Outcome(list(step.events), unknown_delete=step.unknown_delete)
        except Invalid as exc:
            return Outcome(dead_letter=exc.bare())
        # Kept whatever the collections step makes of the operation: the worker's memberships step
        # has written it before its collections step could refuse (no message goes back a hop),
        # so later operations on the artifact meet the same state in both (README, Behaviour).
        if step.changed:
            _put(self.memberships, op.artifact_id, step.membership)
        if step.forward_to is not None:
            try:
                collected = self.collect(step.forward_to, op, raw, deleted=step.deleted)
            except Invalid as exc:
                return Outcome(dead_letter=exc.bare())
            outcome.events.extend(collected.events)
            outcome.unknown_delete = collected.unknown_delete
        return outcome

    def collect(self, key: str, op: ArtifactOp, raw: bytes, *, deleted: bool = False) -> Outcome:
        """The collections step alone, for an operation the memberships step handed on to `key`
        (`deleted`: as a retried create of a deleted artifact, collection.apply). Raises Invalid
        (nothing changes then).

        Separate so that operations can be applied in the order the worker's collections step
        read them, which across input partitions need not be the input's (bench/arrival_order.py)."""
        members = self.members.get(key) or MemberSet()
        step = collection.apply(
            self.collections.get(key), members, key, op, raw, self.versions.__getitem__, deleted=deleted
        )
        if step.changed:
            _put(self.collections, key, step.collection)
            _put(self.members, key, members if step.collection else None)
        for artifact_id, version in step.versions.items():
            _put(self.versions, artifact_id, version)
        return Outcome(step.events, unknown_delete=step.unknown_delete)


@dataclass(slots=True)
class AssetPipeline:
    """Lineage over one stream, so one watermark (streams.retention): a message at most
    `allowed_lateness_us` behind the newest `occurred` before it gets exactly the events it would
    get with no sweep. `clock_us` is the wall clock that caps what a message contributes to the
    watermark (a fixed one in tests)."""

    retention_us: int = DEFAULT_RETENTION_US
    allowed_lateness_us: int = retention.DEFAULT_ALLOWED_LATENESS_US
    clock_us: Callable[[], int] = retention.wall_clock_us
    lineages: dict[str, FlowRunLineage] = field(default_factory=dict)
    watermark_us: int = 0
    _since_sweep: int = 0

    def process(self, raw: bytes) -> Outcome:
        try:
            result = parse_task_result(raw)
            key = result.flow_run_id
            current = self.lineages.get(key) if key is not None else None
            step = lineage.apply(current, result, raw, self.retention_us)
        except Invalid as exc:
            return Outcome(dead_letter=exc.bare())
        if key is not None and step.lineage is not None:
            self.lineages[key] = step.lineage
        if result.occurred_us > self.watermark_us:  # else nothing to advance: no clock read
            self.watermark_us = retention.advance(
                self.watermark_us, result.occurred_us, self.clock_us(), self.allowed_lateness_us
            )
        self._since_sweep += 1
        if self._since_sweep >= SWEEP_EVERY:
            self.sweep()
        return Outcome(step.events)

    def sweep(self) -> int:
        """Forget flow runs silent for longer than the retention and the allowed lateness, by the
        watermark; returns how many."""
        self._since_sweep = 0
        expired = [
            key
            for key, value in self.lineages.items()
            if retention.forgettable(
                value.last_seen_us, self.watermark_us, self.retention_us, self.allowed_lateness_us
            )
        ]
        for key in expired:
            del self.lineages[key]
        return len(expired)


def _put(store: dict[str, V], key: str, value: V | None) -> None:
    if value is None:
        store.pop(key, None)
    else:
        store[key] = value
