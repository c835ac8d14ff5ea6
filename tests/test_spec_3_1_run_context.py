"""SPEC §3.1 Run-context related resources: order, names, sorted tags, each id once."""

from __future__ import annotations

import pytest
import spec_helpers as h

FR, TR, FL, DE, WQ, WP = (h.uid(n, p) for n, p in [
    (1, "f1"), (2, "71"), (3, "f0"), (4, "de"), (5, "0a"), (6, "0b")])

FULL = {
    "tags": ["zeta", "alpha", "Mixed-Case", "alpha"],
    "work_pool": {"id": WP, "name": "pool"},
    "work_queue": {"id": WQ, "name": "queue"},
    "deployment": {"id": DE, "name": "deploy"},
    "flow": {"id": FL, "name": "flow"},
    "task_run": {"id": TR, "name": "task"},
    "flow_run": {"id": FR, "name": "run"},
}

FULL_RELATED = [
    {"prefect.resource.id": f"prefect.flow-run.{FR}", "prefect.resource.role": "flow-run",
     "prefect.resource.name": "run"},
    {"prefect.resource.id": f"prefect.task-run.{TR}", "prefect.resource.role": "task-run",
     "prefect.resource.name": "task"},
    {"prefect.resource.id": f"prefect.flow.{FL}", "prefect.resource.role": "flow",
     "prefect.resource.name": "flow"},
    {"prefect.resource.id": f"prefect.deployment.{DE}", "prefect.resource.role": "deployment",
     "prefect.resource.name": "deploy"},
    {"prefect.resource.id": f"prefect.work-queue.{WQ}", "prefect.resource.role": "work-queue",
     "prefect.resource.name": "queue"},
    {"prefect.resource.id": f"prefect.work-pool.{WP}", "prefect.resource.role": "work-pool",
     "prefect.resource.name": "pool"},
    {"prefect.resource.id": "prefect.tag.Mixed-Case", "prefect.resource.role": "tag"},
    {"prefect.resource.id": "prefect.tag.alpha", "prefect.resource.role": "tag"},
    {"prefect.resource.id": "prefect.tag.zeta", "prefect.resource.role": "tag"},
]


def _artifact_created(ctx):
    [event] = h.run_artifacts([h.create(h.uid(0xA), key=None, ctx=ctx)])
    return event


@pytest.mark.parametrize(
    "message",
    [
        lambda: h.create(h.uid(0xA), key=None, ctx=FULL),
        lambda: h.update(h.uid(0xA), {"data": 1}, ctx=FULL),
    ],
    ids=["artifact.created", "artifact.updated"],
)
def test_full_context_order_names_and_sorted_tags(message):
    [event] = h.run_artifacts([message()])
    assert event["related"] == FULL_RELATED


def test_asset_events_end_with_the_same_context():
    message = h.task_result(
        TR, downstream=[h.materialized("s3://y")], upstream=[h.asset("s3://x")], ctx=FULL,
        materialized_by="dbt",
    )
    referenced, succeeded = h.run_assets([message])
    assert referenced["related"] == FULL_RELATED
    assert succeeded["related"] == [
        h.rel("s3://x", "asset"), h.rel("dbt", "asset-materialized-by"), *FULL_RELATED,
    ]


def test_collection_events_carry_no_run_context():
    """Collection events are server-side: ids and roles of the latest only, no names."""
    coll, _ = h.run_artifacts([h.create(h.uid(0xA), key="k", ctx=FULL, flow_run_id=None)])
    assert coll["related"] == [h.rel(f"prefect.artifact.{h.uid(0xA)}", "latest")]


@pytest.mark.parametrize(
    "tags, expected",
    [
        (["alpha", "Mixed-Case"], ["Mixed-Case", "alpha"]),  # code point: 'M' < 'a'
        (["b", "B", "a", "A", "_", "1"], ["1", "A", "B", "_", "a", "b"]),
        (["é", "z", "e"], ["e", "z", "é"]),  # non-ASCII after ASCII
        (["x", "x", "x"], ["x"]),  # duplicates once
        (["b", "a", "b", "a"], ["a", "b"]),
        ([], []),
    ],
    ids=["mixed-case", "ascii", "non-ascii", "all-same", "dupes", "none"],
)
def test_tags_sorted_by_code_point_without_names_each_once(tags, expected):
    event = _artifact_created({"tags": tags})
    assert event["related"] == [
        {"prefect.resource.id": f"prefect.tag.{t}", "prefect.resource.role": "tag"}
        for t in expected
    ]


@pytest.mark.parametrize(
    "parts",
    [
        ["flow_run"],
        ["task_run"],
        ["work_pool"],
        ["deployment", "flow"],
        ["work_queue", "task_run", "flow_run"],
    ],
)
def test_partial_contexts_keep_the_fixed_order(parts):
    ctx = {p: FULL[p] for p in parts}
    order = ["flow_run", "task_run", "flow", "deployment", "work_queue", "work_pool"]
    expected = [FULL_RELATED[order.index(p)] for p in sorted(parts, key=order.index)]
    assert _artifact_created(ctx)["related"] == expected


def test_an_id_already_present_is_not_repeated():
    """An upstream asset whose key is a context id: the asset entry stays, the context one goes."""
    message = h.task_result(
        TR,
        downstream=[h.materialized("s3://y")],
        upstream=[h.asset(f"prefect.flow-run.{FR}"), h.asset("prefect.tag.alpha")],
        materialized_by=f"prefect.flow.{FL}",
        ctx={"flow_run": FULL["flow_run"], "flow": FULL["flow"], "tags": ["alpha", "beta"]},
    )
    *_, succeeded = h.run_assets([message])
    assert succeeded["related"] == [
        h.rel(f"prefect.flow-run.{FR}", "asset"),
        h.rel("prefect.tag.alpha", "asset"),
        h.rel(f"prefect.flow.{FL}", "asset-materialized-by"),
        {"prefect.resource.id": "prefect.tag.beta", "prefect.resource.role": "tag"},
    ]
    ids = [r["prefect.resource.id"] for r in succeeded["related"]]
    assert len(ids) == len(set(ids))


def test_context_ids_are_lower_cased():
    ctx = {"flow_run": {"id": "ABCDEF01-0000-4000-8000-00000000ABCD", "name": "run"}}
    event = _artifact_created(ctx)
    assert event["related"][0]["prefect.resource.id"] == (
        "prefect.flow-run.abcdef01-0000-4000-8000-00000000abcd"
    )


def test_names_are_carried_verbatim():
    ctx = {"flow_run": {"id": FR, "name": ""}, "flow": {"id": FL, "name": "ünïcode \"quoted\""}}
    event = _artifact_created(ctx)
    assert [r["prefect.resource.name"] for r in event["related"]] == ["", "ünïcode \"quoted\""]
