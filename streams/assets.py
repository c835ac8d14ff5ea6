"""Asset event builders (SPEC §5): referenced and materialization events of one task run."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from streams import envelope
from streams.context import append_unique, run_context_related
from streams.envelope import Event, Labels, related_entry
from streams.messages import Asset, Json, Materialized, TaskResult

REFERENCED = "prefect.asset.referenced"
SUCCEEDED = "prefect.asset.materialization.succeeded"
FAILED = "prefect.asset.materialization.failed"


def materialization_name(result: TaskResult) -> str | None:
    """COMPLETED (but not a Cached completion) → succeeded, FAILED → failed, else no events."""
    if result.state_type == "COMPLETED" and result.state_name != "Cached":
        return SUCCEEDED
    if result.state_type == "FAILED":
        return FAILED
    return None


def unique_assets(assets: Iterable[Asset]) -> list[Asset]:
    """Each key once, at its first position, with the labels of its first occurrence having any."""
    by_key: dict[str, Asset] = {}
    for asset in assets:
        seen = by_key.get(asset.key)
        if seen is None or (not seen.labels and asset.labels):
            by_key[asset.key] = asset  # replacing a value keeps the key's first position
    return list(by_key.values())


def unique_materialized(items: Iterable[Materialized]) -> list[Materialized]:
    """Downstream assets deduplicated like upstream ones; metadata of one key merged, later wins
    (Prefect keeps materialization metadata per asset key)."""
    assets = unique_assets(m.asset for m in items)
    metadata: dict[str, dict[str, Json]] = {}
    for m in items:
        metadata.setdefault(m.asset.key, {}).update(m.metadata)
    return [Materialized(a, metadata[a.key]) for a in assets]


def events(
    result: TaskResult, upstream: Sequence[Asset], downstream: Sequence[Materialized], content: bytes
) -> list[Event]:
    """All events of one task run attempt, in order: referenced per upstream, then materializations."""
    name = materialization_name(result)
    if name is None or not downstream:
        return []
    if result.too_deep is not None:
        raise result.too_deep.bare()  # a copy: the kept one would hold this frame once raised
    # Every event of the message shares these lists: build() only reads them.
    context = run_context_related(result.context)
    out = [
        envelope.build(
            occurred_us=result.occurred_us,
            name=REFERENCED,
            resource=_labels(asset),
            related=context,
            payload={},
            content=content,
        )
        for asset in upstream
    ]
    lineage = [related_entry(asset.key, "asset") for asset in upstream]
    if result.materialized_by:
        lineage.append(related_entry(result.materialized_by, "asset-materialized-by"))
    # The lineage entries all stay, even when `materialized_by` names an upstream asset's key
    # (another role; Prefect keeps both): only the run context skips ids already present.
    related = append_unique(lineage, context)
    for item in downstream:
        out.append(
            envelope.build(
                occurred_us=result.occurred_us,
                name=name,
                resource=_labels(item.asset),
                related=related,
                payload=item.metadata,
                content=content,
            )
        )
    return out


def _labels(asset: Asset) -> Labels:
    labels = {"prefect.resource.id": asset.key}
    labels.update(asset.labels)
    return labels
