"""Run-context related resources (SPEC §3.1), appended to every client-caused event."""

from __future__ import annotations

from collections.abc import Iterable

from streams.envelope import Labels, related_entry
from streams.messages import RunContext

_PARTS = (
    ("flow_run", "prefect.flow-run.", "flow-run"),
    ("task_run", "prefect.task-run.", "task-run"),
    ("flow", "prefect.flow.", "flow"),
    ("deployment", "prefect.deployment.", "deployment"),
    ("work_queue", "prefect.work-queue.", "work-queue"),
    ("work_pool", "prefect.work-pool.", "work-pool"),
)


def run_context_related(context: RunContext) -> list[Labels]:
    """flow-run, task-run, flow, deployment, work-queue, work-pool (named), then sorted tags."""
    related: list[Labels] = []
    for attr, prefix, role in _PARTS:
        part = getattr(context, attr)
        if part is not None:
            related.append(related_entry(prefix + part.id, role, part.name))
    for tag in sorted(set(context.tags)):
        related.append(related_entry("prefect.tag." + tag, "tag"))
    return related


def append_unique(related: list[Labels], extra: Iterable[Labels]) -> list[Labels]:
    """Append entries whose resource id is not in `related` yet (an id is never repeated)."""
    seen = {r["prefect.resource.id"] for r in related}
    for entry in extra:
        rid = entry["prefect.resource.id"]
        if rid not in seen:
            seen.add(rid)
            related.append(entry)
    return related
