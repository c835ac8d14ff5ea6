"""What the worker must have emitted, given the order in which its collections step read.

Operations on different artifacts of one collection key come from different input partitions,
and the worker's collections step sees them in the order they reach the key's internal
partition, which a backlog drained over several partitions need not keep (README, "Known
limitations"). So the worker's events can differ from `prefect-events process` over the input
order, and a count of events cannot tell that difference from a loss. This recomputes the
expectation from that order, read back from the internal topic: memberships and lineage in
input order (their state is per artifact and per flow run, whose records keep their order),
collections in the order the worker read them. The worker's output must then equal it, event
for event and byte for byte.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import orjson
import workload as wl

from streams.envelope import Event
from streams.errors import Invalid
from streams.messages import ArtifactOp, parse_artifact_op
from streams.pipeline import ArtifactPipeline, AssetPipeline, Outcome
from topology.records import Headers, deleted_from_headers, via_from_headers


class _Memberships(ArtifactPipeline):
    """The memberships step alone: what it hands on is applied in the worker's order instead."""

    def collect(self, key: str, op: ArtifactOp, raw: bytes, *, deleted: bool = False) -> Outcome:
        return Outcome()


@dataclass(frozen=True, slots=True)
class HandedOn:
    """A record of the worker's internal by-collection-key topic, as read back."""

    partition: int
    offset: int
    key: bytes
    value: bytes
    headers: Headers


@dataclass(slots=True)
class Comparison:
    expected: int
    missing: list[str] = field(default_factory=list)  # event ids
    extra: list[str] = field(default_factory=list)
    differing: list[str] = field(default_factory=list)  # other bytes than expected, or two versions
    duplicates: int = 0  # byte-identical copies (at-least-once allows them)

    @property
    def exact(self) -> bool:
        return not (self.missing or self.extra or self.differing)

    def summary(self) -> dict[str, int | bool]:
        return {"expected": self.expected, "missing": len(self.missing), "extra": len(self.extra),
                "differing": len(self.differing), "duplicates": self.duplicates,
                "exact": self.exact}


def expected_events(inputs: Iterable[wl.Msg], handed_on: Iterable[HandedOn]) -> dict[str, bytes]:
    """Event id → bytes, with collections applied in the order of `handed_on` per partition.

    A record handed on again (a replay after a crash or rebalance carries the identity of the
    record that first carried it on) counts once, as the worker's replay marks make it."""
    events: list[Event] = []
    memberships, lineage = _Memberships(), AssetPipeline()
    for m in inputs:
        events.extend((memberships if m.stream == wl.ARTIFACTS else lineage).process(m.value).events)
    collections, seen = ArtifactPipeline(), set[tuple[str, int]]()
    for r in sorted(handed_on, key=lambda r: (r.partition, r.offset)):
        identity = via_from_headers(r.headers)
        if identity in seen:
            continue
        seen.add(identity)
        try:
            op, deleted = parse_artifact_op(r.value), deleted_from_headers(r.headers)
            events.extend(collections.collect(r.key.decode(), op, r.value, deleted=deleted).events)
        except Invalid:
            continue  # the worker dead-letters it
    return {event_id(e.value): e.value for e in events}


def compare(expected: Mapping[str, bytes], emitted: Iterable[bytes]) -> Comparison:
    result, seen = Comparison(len(expected)), dict[str, bytes]()
    for value in emitted:
        eid = event_id(value)
        if eid in seen:
            if seen[eid] == value:
                result.duplicates += 1
            elif eid not in result.differing:
                result.differing.append(eid)  # two versions of one event
            continue
        seen[eid] = value
        if eid not in expected:
            result.extra.append(eid)
        elif expected[eid] != value:
            result.differing.append(eid)
    result.missing = [i for i in expected if i not in seen]
    return result


def event_id(value: bytes) -> str:
    return str(orjson.loads(value)["id"])
