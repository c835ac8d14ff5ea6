"""Second check beside the golden files: Prefect's own `Event` model accepts every event we emit.

Runs the golden inputs and a broad generated workload (all event kinds, tags, deployments,
truncated related lists, Unicode owners) through the pipelines and validates every event in the
pinned Prefect's `.venv-prefect` (tests/prefect_validate.py).
"""

from __future__ import annotations

import json

import orjson

from streams.pipeline import ArtifactPipeline, AssetPipeline
from tests import spec_helpers as h
from tests.prefect_validate import validate_events


def variety_of_artifact_messages() -> list[dict[str, object]]:
    """Every artifact event kind, with a full run context (deployment, work pool, tags)."""
    full = h.context(
        task_run=h.TASK_RUN, deployment=h.uid(0xD1), work_queue=h.uid(0xD2), work_pool=h.uid(0xD3),
        tags=["zeta", "alpha", "Mixed-Case", "ünïcode"],
    )
    table = json.dumps([{"a": 1, "b": "x"}])
    return [
        h.create(h.uid(1), "report", 0.0, ctx=full),
        h.create(h.uid(2), "report", 1.0, ctx=None, type="table", data=table, description=None),
        h.create(h.uid(3), None, 2.0, ctx=full, type="progress", data=42.5),
        h.update(h.uid(2), {"data": "patched", "description": "d", "metadata_": {"k": "v"}}, 3.0),
        h.update(h.uid(3), {}, 3.5, ctx=None),
        h.delete(h.uid(1), 4.0),
        h.delete(h.uid(2), 5.0),
        h.create(h.uid(4), "report", 6.0, ctx=full),
        h.create(h.uid(5), "report", 7.0, task_run_id=h.TASK_RUN),
        h.delete(h.uid(5), 8.0),
    ]


def variety_of_task_results() -> list[dict[str, object]]:
    """Referenced, succeeded and failed events; labels of every property; >100 related."""
    a, b, c = h.uid(0x101), h.uid(0x102), h.uid(0x103)
    many = [h.asset(f"s3://bucket/up-{i}") for i in range(120)]
    return [
        h.task_result(a, [h.materialized("s3://b/x", {"rows": 1}, name="X", description="x d",
                                         url="https://x", owners=["ann", "ütf"])]),
        h.task_result(b, [h.materialized("s3://b/y")], [h.asset("postgres://db/t")], [a], 1.0,
                      materialized_by="dbt"),
        h.task_result(c, [h.materialized("s3://b/z", {"err": "boom"})], many, [b], 2.0,
                      state="FAILED"),
        h.task_result(h.uid(0x104), [h.materialized("s3://b/w")], [h.asset("s3://b/v")], [], 3.0,
                      materialized_by="s3://b/v"),  # one id in two roles
    ]


def _events() -> list[dict[str, object]]:
    raws: list[tuple[str, bytes]] = []
    for stream in ("artifacts", "assets"):
        for case in h.golden_cases(stream):
            raws.extend((stream, line) for line in h.golden_lines(case, "input.jsonl"))
    raws.extend(("artifacts", orjson.dumps(m)) for m in variety_of_artifact_messages())
    raws.extend(("assets", orjson.dumps(m)) for m in variety_of_task_results())
    artifacts, assets = ArtifactPipeline(), AssetPipeline()
    events = []
    for stream, raw in raws:
        outcome = (artifacts if stream == "artifacts" else assets).process(raw)
        assert outcome.dead_letter is None, outcome.dead_letter
        events.extend(json.loads(e.value) for e in outcome.events)
    return events


def test_prefect_accepts_every_event_we_emit() -> None:
    events = _events()
    names = {e["event"] for e in events}
    assert names == {
        "prefect.artifact.created",
        "prefect.artifact.updated",
        "prefect.artifact-collection.created",
        "prefect.artifact-collection.updated",
        "prefect.artifact-collection.deleted",
        "prefect.asset.referenced",
        "prefect.asset.materialization.succeeded",
        "prefect.asset.materialization.failed",
    }
    errors = validate_events(events)
    rejected = [(e["event"], e["id"], err) for e, err in zip(events, errors, strict=True) if err]
    assert rejected == []
