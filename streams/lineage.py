"""Asset lineage within a flow run (SPEC §5): what each task run passes on to its consumers.

State is kept per flow run and forgotten after a retention of event time, so it stays bounded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from streams import assets
from streams.envelope import Event
from streams.messages import Asset, TaskResult


@dataclass(slots=True)
class FlowRunLineage:
    """Per task run of one flow run: the assets it passes on; and when the flow run was last seen."""

    passes_on: dict[str, tuple[Asset, ...]]
    last_seen_us: int

    def to_json(self) -> dict[str, Any]:
        return {
            "last_seen_us": self.last_seen_us,
            "passes_on": {
                tr: [[a.key, dict(a.labels)] if a.labels else [a.key] for a in items]
                for tr, items in self.passes_on.items()
            },
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> FlowRunLineage:
        return cls(
            {
                tr: tuple(Asset(item[0], tuple(item[1].items()) if len(item) > 1 else ()) for item in items)
                for tr, items in value["passes_on"].items()
            },
            value["last_seen_us"],
        )


@dataclass(slots=True)
class LineageStep:
    lineage: FlowRunLineage | None
    changed: bool = False
    events: list[Event] = field(default_factory=list)


def is_expired(lineage: FlowRunLineage, now_us: int, retention_us: int) -> bool:
    """A flow run is forgotten once `retention` of event time passed without a message for it."""
    return now_us - lineage.last_seen_us > retention_us


def apply(
    current: FlowRunLineage | None, result: TaskResult, content: bytes, retention_us: int
) -> LineageStep:
    """Apply one task run attempt; updates `current` in place. Raises Invalid before changing it."""
    if current is not None and is_expired(current, result.occurred_us, retention_us):
        current = None
    inherited: list[Asset] = []
    if current is not None:
        for upstream_run in result.upstream_task_run_ids:
            inherited.extend(current.passes_on.get(upstream_run, ()))
    upstream = assets.unique_assets([*inherited, *result.upstream])
    downstream = assets.unique_materialized(result.downstream)
    events = assets.events(result, upstream, downstream, content)
    if result.flow_run_id is None:  # nothing to inherit from or pass on to
        return LineageStep(None, False, events)
    passes = tuple(m.asset for m in downstream) if downstream else tuple(upstream)
    if current is None:
        current = FlowRunLineage({}, result.occurred_us)
    # In place: a flow run's record can hold thousands of task runs, and no caller keeps the old.
    current.passes_on[result.task_run_id] = passes
    current.last_seen_us = max(current.last_seen_us, result.occurred_us)
    return LineageStep(current, True, events)
