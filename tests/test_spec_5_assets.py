"""SPEC §5 Asset events: emission rules, labels, related order, payload, lineage, retention."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import spec_helpers as h

from streams.pipeline import SWEEP_EVERY, AssetPipeline

REFERENCED = "prefect.asset.referenced"
SUCCEEDED = "prefect.asset.materialization.succeeded"
FAILED = "prefect.asset.materialization.failed"

A, B, C, D, E = (h.uid(n, "7a") for n in (0xA, 0xB, 0xC, 0xD, 0xE))
DAY = 86_400
DAY_US = 86_400_000_000
HOUR_US = 3_600_000_000


def wall_clock_at(seconds):
    """A fixed wall clock, T0 + seconds: what a message contributes to the sweep's watermark is
    capped by the wall clock, and T0 is only days before the dates these tests run on."""
    return lambda: int((h.T0 - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)).total_seconds() + seconds) * 10**6


A_YEAR_AFTER_T0 = wall_clock_at(365 * DAY)


def on(date):
    """`occurred` at 00:00 UTC of an ISO date, as the helpers render it."""
    return h.ts(base=dt.datetime.fromisoformat(date).replace(tzinfo=dt.UTC))


def ctx_of(task_run_id, flow_run_id=h.FLOW_RUN):
    return h.ctx_related(h.context(flow_run=flow_run_id, task_run=task_run_id))


def referenced(message, labels):
    return {
        "occurred": message["occurred"],
        "event": REFERENCED,
        "resource": labels,
        "related": h.ctx_related(message["context"]),
        "payload": {},
        "follows": None,
    }


def materialization(message, labels, upstream_keys, payload, name=SUCCEEDED):
    related = [h.rel(k, "asset") for k in upstream_keys]
    if message.get("materialized_by"):
        related.append(h.rel(message["materialized_by"], "asset-materialized-by"))
    return {
        "occurred": message["occurred"],
        "event": name,
        "resource": labels,
        "related": related + h.ctx_related(message["context"]),
        "payload": payload,
        "follows": None,
    }


def run(messages, **kwargs):
    return h.strip_ids(h.run_assets(messages, **kwargs))


def upstream_of(events):
    """Keys of the related assets of the (last) materialization event."""
    mat = [e for e in events if e["event"] in (SUCCEEDED, FAILED)][-1]
    return [r["prefect.resource.id"] for r in mat["related"] if r["prefect.resource.role"] == "asset"]


# --- emission rules ---------------------------------------------------------------------------


def test_completed_materialization_full_event_order():
    m = h.task_result(
        C,
        downstream=[h.materialized("s3://y", {"rows": 10}, name="Y"), h.materialized("s3://z")],
        upstream=[h.asset("s3://x", name="X"), h.asset("s3://w")],
        materialized_by="dbt",
    )
    assert run([m]) == [
        referenced(m, {"prefect.resource.id": "s3://x", "prefect.resource.name": "X"}),
        referenced(m, {"prefect.resource.id": "s3://w"}),
        materialization(m, {"prefect.resource.id": "s3://y", "prefect.resource.name": "Y"},
                        ["s3://x", "s3://w"], {"rows": 10}),
        materialization(m, {"prefect.resource.id": "s3://z"}, ["s3://x", "s3://w"], {}),
    ]


def test_failed_emits_referenced_and_failed():
    m = h.task_result(C, downstream=[h.materialized("s3://y", {"why": "boom"})],
                      upstream=[h.asset("s3://x")], state="FAILED")
    assert run([m]) == [
        referenced(m, {"prefect.resource.id": "s3://x"}),
        materialization(m, {"prefect.resource.id": "s3://y"}, ["s3://x"], {"why": "boom"}, FAILED),
    ]


@pytest.mark.parametrize(
    "state, name",
    [("COMPLETED", "Cached"), ("CRASHED", "Crashed"), ("CANCELLED", "Cancelled"),
     ("SCHEDULED", "Scheduled"), ("PENDING", "Pending"), ("RUNNING", "Running"),
     ("PAUSED", "Paused"), ("CANCELLING", "Cancelling"), ("completed", "Completed"), ("", "")],
)
def test_other_states_emit_nothing(state, name):
    m = h.task_result(C, downstream=[h.materialized("s3://y")], upstream=[h.asset("s3://x")],
                      state=state, state_name=name)
    assert run([m]) == []


@pytest.mark.parametrize("name", ["Completed", "Cached-ish", "cached", "Anything"])
def test_completed_with_other_names_succeeds(name):
    m = h.task_result(C, downstream=[h.materialized("s3://y")], state_name=name)
    assert h.names(run([m])) == [SUCCEEDED]


def test_failed_named_cached_still_fails():
    m = h.task_result(C, downstream=[h.materialized("s3://y")], state="FAILED", state_name="Cached")
    assert h.names(run([m])) == [FAILED]


@pytest.mark.parametrize("state", ["COMPLETED", "FAILED"])
def test_no_downstream_assets_emits_nothing(state):
    m = h.task_result(C, upstream=[h.asset("s3://x")], state=state)
    assert run([m]) == []


def test_cached_run_passes_its_assets_on():
    cached = h.task_result(A, downstream=[h.materialized("s3://x", name="X")], state_name="Cached")
    consumer = h.task_result(C, downstream=[h.materialized("s3://y")], upstream_runs=[A], at=1)
    events = run([cached, consumer])
    assert events == [
        referenced(consumer, {"prefect.resource.id": "s3://x", "prefect.resource.name": "X"}),
        materialization(consumer, {"prefect.resource.id": "s3://y"}, ["s3://x"], {}),
    ]


@pytest.mark.parametrize("state, name", [("COMPLETED", "Cached"), ("RUNNING", "Running")])
def test_a_run_that_emits_nothing_passes_its_assets_on_however_deep_its_metadata(state, name):
    """Only events are held to orjson's depth (SPEC §6: a message that would produce an event over
    a limit); a result that produces none is applied, and its downstream assets are passed on."""
    deep = h.task_result(A, downstream=[h.materialized("s3://x", {"m": h.nested(300)})],
                         state=state, state_name=name)
    consumer = h.task_result(C, downstream=[h.materialized("s3://y")], upstream_runs=[A], at=1)
    pipeline = AssetPipeline()
    assert [pipeline.process(h.encode(m)).dead_letter for m in (deep, consumer)] == [None, None]
    assert run([deep, consumer]) == [
        referenced(consumer, {"prefect.resource.id": "s3://x"}),
        materialization(consumer, {"prefect.resource.id": "s3://y"}, ["s3://x"], {}),
    ]


# --- labels -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "properties, labels",
    [
        (None, {}),
        ({}, {}),
        ({"name": "N", "description": "D", "url": "https://u", "owners": ["a", "b"]},
         {"prefect.resource.name": "N", "prefect.asset.description": "D",
          "prefect.asset.url": "https://u", "prefect.asset.owners": '["a", "b"]'}),
        ({"owners": ["b"], "url": "u", "name": "n"},  # label order is fixed, not input order
         {"prefect.resource.name": "n", "prefect.asset.url": "u",
          "prefect.asset.owners": '["b"]'}),
        ({"owners": []}, {"prefect.asset.owners": "[]"}),
        ({"owners": ["é", 'q"t']}, {"prefect.asset.owners": '["\\u00e9", "q\\"t"]'}),
        ({"name": None, "description": None, "url": "u", "owners": None}, {"prefect.asset.url": "u"}),
        ({"name": "", "colour": "red"}, {"prefect.resource.name": ""}),
    ],
    ids=["null", "empty", "all", "order", "owners-empty", "owners-json-dumps", "nulls", "unknown"],
)
def test_asset_labels_only_set_properties(properties, labels):
    m = h.task_result(C, downstream=[{"key": "s3://y", "properties": properties, "metadata": {}}],
                      upstream=[{"key": "s3://x", "properties": properties}])
    ref, mat = run([m])
    expected = {"prefect.resource.id": "s3://y", **labels}
    assert mat["resource"] == expected
    assert list(mat["resource"]) == list(expected)
    assert ref["resource"] == {"prefect.resource.id": "s3://x", **labels}
    # related upstream entries carry the key and role only
    assert mat["related"][0] == h.rel("s3://x", "asset")


def test_asset_key_is_used_as_given():
    m = h.task_result(C, downstream=[h.materialized("My Table/ÄÖ?x=1")])
    [mat] = run([m])
    assert mat["resource"] == {"prefect.resource.id": "My Table/ÄÖ?x=1"}


# --- related and payload ----------------------------------------------------------------------


@pytest.mark.parametrize("materialized_by", [None, ""])
def test_no_materialized_by_entry_when_empty(materialized_by):
    m = h.task_result(C, downstream=[h.materialized("s3://y")], upstream=[h.asset("s3://x")],
                      materialized_by=materialized_by)
    _, mat = run([m])
    assert mat["related"] == [h.rel("s3://x", "asset"), *ctx_of(C)]


def test_related_order_upstream_then_materialized_by_then_context():
    m = h.task_result(C, downstream=[h.materialized("s3://y")],
                      upstream=[h.asset("s3://b"), h.asset("s3://a")], materialized_by="spark",
                      ctx=h.context(task_run=C, tags=["t"]))
    *_, mat = run([m])
    assert [(r["prefect.resource.id"], r["prefect.resource.role"]) for r in mat["related"]] == [
        ("s3://b", "asset"), ("s3://a", "asset"), ("spark", "asset-materialized-by"),
        ("prefect.flow-run." + h.FLOW_RUN, "flow-run"), ("prefect.task-run." + C, "task-run"),
        ("prefect.flow." + h.FLOW, "flow"), ("prefect.tag.t", "tag"),
    ]


def test_materialized_by_naming_an_upstream_asset_keeps_both_entries():
    """One entry per upstream asset, then the materialized-by one (§5): an id repeated in another
    role stays, as Prefect's client keeps it; the run context still skips ids already present."""
    m = h.task_result(C, downstream=[h.materialized("s3://y")],
                      upstream=[h.asset("s3://m"), h.asset("prefect.tag.t")], materialized_by="s3://m",
                      ctx=h.context(task_run=C, tags=["t"]))
    *_, mat = run([m])
    assert [(r["prefect.resource.id"], r["prefect.resource.role"]) for r in mat["related"]] == [
        ("s3://m", "asset"), ("prefect.tag.t", "asset"), ("s3://m", "asset-materialized-by"),
        ("prefect.flow-run." + h.FLOW_RUN, "flow-run"), ("prefect.task-run." + C, "task-run"),
        ("prefect.flow." + h.FLOW, "flow"),
    ]


def test_payload_is_each_assets_own_metadata():
    meta = {"rows": 3, "nested": {"a": [1, None, "x"]}, "f": 1.5}
    m = h.task_result(C, downstream=[h.materialized("s3://y", meta), h.materialized("s3://z")])
    y, z = run([m])
    assert y["payload"] == meta and z["payload"] == {}


def test_metadata_integers_beyond_64_bits_are_carried_exactly():
    meta = {"rows": 2**70, "min": -(2**63) - 1}
    m = h.task_result(C, downstream=[h.materialized("s3://y", meta)])
    [event] = h.raw_events(AssetPipeline(), [m])
    assert b'"payload":{"rows":1180591620717411303424,"min":-9223372036854775809}' in event.value


def test_metadata_absent_is_empty_payload():
    m = h.task_result(C, downstream=[{"key": "s3://y", "properties": None}])
    [y] = run([m])
    assert y["payload"] == {}


def test_no_context_related_without_context():
    m = h.task_result(C, downstream=[h.materialized("s3://y")], upstream=[h.asset("s3://x")], ctx=None)
    ref, mat = run([m])
    assert ref["related"] == []
    assert mat["related"] == [h.rel("s3://x", "asset")]


# --- lineage ----------------------------------------------------------------------------------


def test_inherited_in_upstream_run_order_then_declared_deduplicated():
    a = h.task_result(A, downstream=[h.materialized("x")], at=0)
    b = h.task_result(B, downstream=[h.materialized("y", name="Y")], at=1)
    c = h.task_result(
        C, downstream=[h.materialized("out")],
        upstream=[h.asset("z"), h.asset("x", name="X named"), h.asset("y", name="other")],
        upstream_runs=[B, A, B], at=2,
    )
    events = run([a, b, c])[2:]
    assert events == [
        referenced(c, {"prefect.resource.id": "y", "prefect.resource.name": "Y"}),
        referenced(c, {"prefect.resource.id": "x", "prefect.resource.name": "X named"}),
        referenced(c, {"prefect.resource.id": "z"}),
        materialization(c, {"prefect.resource.id": "out"}, ["y", "x", "z"], {}),
    ]


def test_duplicate_declared_keys_once_with_first_labels_that_have_properties():
    c = h.task_result(
        C, downstream=[h.materialized("out")],
        upstream=[h.asset("x"), h.asset("x", name="first"), h.asset("x", name="second"), h.asset("x")],
    )
    events = run([c])
    assert h.names(events) == [REFERENCED, SUCCEEDED]
    assert events[0]["resource"] == {"prefect.resource.id": "x", "prefect.resource.name": "first"}
    assert upstream_of(events) == ["x"]


def test_duplicate_downstream_keys_once():
    c = h.task_result(C, downstream=[h.materialized("y", {"a": 1}), h.materialized("y", {"b": 2}, name="Y")])
    events = run([c])
    assert h.names(events) == [SUCCEEDED]
    assert events[0]["resource"] == {"prefect.resource.id": "y", "prefect.resource.name": "Y"}


def test_three_level_chain_through_a_plain_task():
    a = h.task_result(A, downstream=[h.materialized("s3://x")], at=0)
    b = h.task_result(B, upstream_runs=[A], at=1)  # plain task: passes X on
    c = h.task_result(C, downstream=[h.materialized("s3://y")], upstream_runs=[B], at=2)
    pipeline = AssetPipeline()
    assert h.names(h.run_assets([a], pipeline)) == [SUCCEEDED]
    assert h.run_assets([b], pipeline) == []
    events = h.strip_ids(h.run_assets([c], pipeline))
    assert events == [
        referenced(c, {"prefect.resource.id": "s3://x"}),
        materialization(c, {"prefect.resource.id": "s3://y"}, ["s3://x"], {}),
    ]


def test_a_materializing_task_passes_on_its_downstream_only():
    a = h.task_result(A, downstream=[h.materialized("x")], at=0)
    b = h.task_result(B, downstream=[h.materialized("y")], upstream=[h.asset("w")], upstream_runs=[A], at=1)
    c = h.task_result(C, downstream=[h.materialized("z")], upstream_runs=[B], at=2)
    assert upstream_of(run([a, b, c])) == ["y"]


def test_plain_task_passes_on_inherited_and_declared():
    a = h.task_result(A, downstream=[h.materialized("x")], at=0)
    b = h.task_result(B, upstream=[h.asset("w", name="W")], upstream_runs=[A], at=1)
    c = h.task_result(C, downstream=[h.materialized("z")], upstream_runs=[B], at=2)
    events = run([a, b, c])
    assert upstream_of(events) == ["x", "w"]
    assert events[2]["resource"] == {"prefect.resource.id": "w", "prefect.resource.name": "W"}


def test_failed_and_crashed_runs_pass_on_too():
    a = h.task_result(A, downstream=[h.materialized("x")], state="FAILED", at=0)
    b = h.task_result(B, upstream_runs=[A], state="CRASHED", at=1)
    c = h.task_result(C, downstream=[h.materialized("z")], upstream_runs=[B], at=2)
    assert upstream_of(run([a, b, c])) == ["x"]


def test_retry_replaces_what_the_earlier_attempt_recorded():
    a = h.task_result(A, downstream=[h.materialized("x")], at=0)
    e = h.task_result(E, downstream=[h.materialized("e")], at=0)
    b1 = h.task_result(B, upstream_runs=[A], state="FAILED", at=1)
    b2 = h.task_result(B, upstream_runs=[E], at=2)  # the retry read another input
    c = h.task_result(C, downstream=[h.materialized("z")], upstream_runs=[B], at=3)
    assert upstream_of(run([a, e, b1, b2, c])) == ["e"]


def test_unknown_upstream_run_inherits_nothing():
    c = h.task_result(C, downstream=[h.materialized("z")], upstream=[h.asset("d")], upstream_runs=[D])
    assert upstream_of(run([c])) == ["d"]


def test_lineage_does_not_cross_flow_runs():
    other = h.uid(0xF2, "f2")
    a = h.task_result(A, downstream=[h.materialized("x")], flow_run_id=other, at=0)
    c = h.task_result(C, downstream=[h.materialized("z")], upstream_runs=[A], at=1)
    assert upstream_of(run([a, c])) == []


def test_no_flow_run_inherits_nothing_and_records_nothing():
    pipeline = AssetPipeline()
    a = h.task_result(A, downstream=[h.materialized("x")], at=0)
    h.run_assets([a], pipeline)
    lineages = {k: v.to_json() for k, v in pipeline.lineages.items()}
    c = h.task_result(C, downstream=[h.materialized("z")], upstream=[h.asset("d")], upstream_runs=[A],
                      flow_run_id=None, ctx=None, at=1)
    events = h.strip_ids(h.run_assets([c], pipeline))
    assert events == [referenced(c, {"prefect.resource.id": "d"}),
                      materialization(c, {"prefect.resource.id": "z"}, ["d"], {})]
    assert {k: v.to_json() for k, v in pipeline.lineages.items()} == lineages


def test_more_than_100_upstream_assets_keep_100_related_upstream_first():
    upstream = [h.asset(f"s3://in/{i:03}") for i in range(120)]
    m = h.task_result(C, downstream=[h.materialized("s3://out")], upstream=upstream,
                      materialized_by="dbt")
    pipeline = AssetPipeline()
    events = pipeline.process(h.encode(m)).events
    assert [e.name for e in events] == [REFERENCED] * 120 + [SUCCEEDED]
    mat = events[-1]
    related = json.loads(mat.value)["related"]
    assert related == [h.rel(f"s3://in/{i:03}", "asset") for i in range(100)]
    dropped = 20 + 1 + len(ctx_of(C))
    assert ("prefect-related-truncated", str(dropped).encode()) in mat.headers
    assert all(e.related_dropped == 0 for e in events[:-1])
    assert all(("prefect-related-truncated" not in dict(e.headers)) for e in events[:-1])


def test_exactly_100_related_is_not_truncated():
    upstream = [h.asset(f"s3://in/{i:03}") for i in range(100 - len(ctx_of(C)))]
    m = h.task_result(C, downstream=[h.materialized("s3://out")], upstream=upstream)
    mat = AssetPipeline().process(h.encode(m)).events[-1]
    assert len(json.loads(mat.value)["related"]) == 100
    assert mat.related_dropped == 0


# --- retention --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "gap_us, inherits",
    [(DAY_US, True), (DAY_US + 1, False), (DAY_US - 1, True)],
    ids=["exactly-retention", "one-us-longer", "one-us-shorter"],
)
def test_a_flow_run_silent_longer_than_retention_inherits_nothing(gap_us, inherits):
    a = h.task_result(A, downstream=[h.materialized("x")], at=0)
    c = h.task_result(C, downstream=[h.materialized("z")], upstream_runs=[A], at=gap_us / 1e6)
    assert upstream_of(run([a, c], retention_us=DAY_US)) == (["x"] if inherits else [])


def test_any_message_of_the_flow_run_keeps_it_alive():
    a = h.task_result(A, downstream=[h.materialized("x")], at=0)
    b = h.task_result(B, at=0.9 * DAY)
    c = h.task_result(C, downstream=[h.materialized("z")], upstream_runs=[A], at=1.8 * DAY)
    assert upstream_of(run([a, b, c], retention_us=DAY_US)) == ["x"]


def test_default_retention_is_seven_days():
    a = h.task_result(A, downstream=[h.materialized("x")], at=0)
    c6 = h.task_result(C, downstream=[h.materialized("z")], upstream_runs=[A], at=7 * DAY)
    c8 = h.task_result(D, downstream=[h.materialized("z")], upstream_runs=[A], at=14 * DAY + 1)
    assert upstream_of(run([a, c6])) == ["x"]
    assert upstream_of(run([a, c8])) == []


@pytest.mark.parametrize(
    "newest_at, swept", [(1.5 * DAY, 0), (1.5 * DAY + 1e-6, 1)], ids=["retention+lateness", "1-us-more"]
)
def test_sweep_forgets_flow_runs_silent_longer_than_retention_and_allowed_lateness(newest_at, swept):
    old, fresh = h.uid(0x01, "f0"), h.uid(0x02, "f0")
    pipeline = AssetPipeline(retention_us=DAY_US, allowed_lateness_us=DAY_US // 2, clock_us=A_YEAR_AFTER_T0)
    h.run_assets([h.task_result(A, flow_run_id=old, at=0)], pipeline)
    h.run_assets([h.task_result(B, flow_run_id=fresh, at=DAY + 1)], pipeline)
    assert pipeline.sweep() == 0  # silent longer than the retention, not than the lateness too
    h.run_assets([h.task_result(C, flow_run_id=fresh, at=newest_at)], pipeline)
    assert pipeline.sweep() == swept
    assert set(pipeline.lineages) == ({fresh} if swept else {old, fresh})
    assert pipeline.sweep() == 0


def test_memory_stays_flat_over_many_flow_runs():
    lateness_us = 24 * HOUR_US  # the default
    pipeline = AssetPipeline(retention_us=DAY_US, clock_us=A_YEAR_AFTER_T0)
    assert pipeline.allowed_lateness_us == lateness_us
    peak = 0
    step = 60  # one flow run a minute: 2880 per retention window and allowed lateness
    for i in range(20_000):  # 14 days
        flow_run = h.uid(i, "f0")
        downstream = [h.materialized("s3://x")] if i % 2 else []
        message = h.task_result(h.uid(i, "7a"), downstream=downstream, flow_run_id=flow_run,
                                ctx=None, at=i * step)
        outcome = pipeline.process(h.encode(message))
        assert outcome.dead_letter is None
        peak = max(peak, len(pipeline.lineages))
    window = (DAY_US + lateness_us) // (step * 10**6) + 1
    assert peak <= window + SWEEP_EVERY + 1  # the window + one sweep interval, far below 20,000
    pipeline.sweep()
    assert len(pipeline.lineages) <= window


# The audit's reproductions: the sweep must not change an event that a message at most the allowed
# lateness behind the newest `occurred` gets (streams.retention.forgettable).

F_TASK_1, F_TASK_2 = h.uid(0x1, "7f"), h.uid(0x2, "7f")
OTHER_FLOW_RUN = h.uid(0x2, "f0")


def late_task_of_a_quiet_flow_run():
    """Flow run F's first task on 2026-01-01 and its consumer 6 days later, 2026-01-07."""
    task_1 = h.task_result(F_TASK_1, downstream=[h.materialized("s3://x")], occurred=on("2026-01-01"))
    task_2 = h.task_result(F_TASK_2, downstream=[h.materialized("s3://y")], upstream_runs=[F_TASK_1],
                           occurred=on("2026-01-07"))
    return task_1, task_2


def other_flow_run(count, occurred):
    """Task results of another flow run that emit nothing (no assets): event time alone."""
    return [h.task_result(h.uid(i, "7b"), flow_run_id=OTHER_FLOW_RUN, occurred=occurred)
            for i in range(count)]


@pytest.mark.parametrize("lateness_hours", [48, 24 * 365])
def test_a_message_within_the_allowed_lateness_gets_the_events_it_gets_without_any_sweep(lateness_hours):
    """1,023 messages of another flow run on 2026-01-09 (a sweep after them, by a watermark 8 days
    after F's last message), then F's task 2 of 2026-01-07: 2 days late, 6 days after F's last
    message. Within the retention by its own `occurred`, it inherits x, exactly as with no filler."""
    task_1, task_2 = late_task_of_a_quiet_flow_run()
    filler = other_flow_run(SWEEP_EVERY - 1, on("2026-01-09"))
    expected = [
        materialization(task_1, {"prefect.resource.id": "s3://x"}, [], {}),
        referenced(task_2, {"prefect.resource.id": "s3://x"}),
        materialization(task_2, {"prefect.resource.id": "s3://y"}, ["s3://x"], {}),
    ]
    assert run([task_1, task_2]) == expected
    lateness_us = lateness_hours * HOUR_US
    pipeline = AssetPipeline(allowed_lateness_us=lateness_us, clock_us=wall_clock_at(0))
    assert h.strip_ids(h.run_assets([task_1, *filler], pipeline)) == expected[:1]
    assert pipeline._since_sweep == 0  # a sweep ran
    assert h.strip_ids(h.run_assets([task_2], pipeline)) == expected[1:]


def test_a_message_later_than_the_allowed_lateness_may_find_its_flow_run_forgotten():
    """The same input with no allowed lateness: the 2-day-late task 2 is beyond it, and the sweep
    forgot F (8 days behind the watermark) although 6 days by task 2's own `occurred` keep it."""
    task_1, task_2 = late_task_of_a_quiet_flow_run()
    filler = other_flow_run(SWEEP_EVERY - 1, on("2026-01-09"))
    pipeline = AssetPipeline(allowed_lateness_us=0, clock_us=wall_clock_at(0))
    assert run([task_1, *filler, task_2], pipeline=pipeline) == [
        materialization(task_1, {"prefect.resource.id": "s3://x"}, [], {}),
        materialization(task_2, {"prefect.resource.id": "s3://y"}, [], {}),
    ]


def test_a_message_from_a_clock_decades_ahead_does_not_make_the_sweep_forget_other_flow_runs():
    """A 2099 task result (a client's bad clock) among 2026 ones: it gets its own events, and moves
    the watermark only to the wall clock + the allowed lateness, so the sweep after it keeps F."""
    task_1 = h.task_result(F_TASK_1, downstream=[h.materialized("s3://x")], occurred=on("2026-01-01"))
    task_2 = h.task_result(F_TASK_2, downstream=[h.materialized("s3://y")], upstream_runs=[F_TASK_1],
                           occurred=on("2026-01-02"))
    ahead = h.task_result(h.uid(0xA, "7b"), downstream=[h.materialized("s3://z")],
                          flow_run_id=OTHER_FLOW_RUN, occurred=on("2099-01-01"))
    filler = other_flow_run(SWEEP_EVERY - 2, on("2026-01-01"))
    now_us = int(dt.datetime(2026, 1, 2, 12, tzinfo=dt.UTC).timestamp()) * 10**6
    pipeline = AssetPipeline(clock_us=lambda: now_us)
    assert run([task_1, ahead, *filler, task_2], pipeline=pipeline) == [
        materialization(task_1, {"prefect.resource.id": "s3://x"}, [], {}),
        materialization(ahead, {"prefect.resource.id": "s3://z"}, [], {}),
        referenced(task_2, {"prefect.resource.id": "s3://x"}),
        materialization(task_2, {"prefect.resource.id": "s3://y"}, ["s3://x"], {}),
    ]
    assert pipeline._since_sweep == 1  # the sweep ran before task 2
    assert pipeline.watermark_us == now_us + pipeline.allowed_lateness_us
    assert set(pipeline.lineages) == {h.FLOW_RUN, OTHER_FLOW_RUN}


# --- replay -----------------------------------------------------------------------------------


def test_processing_the_same_input_twice_gives_byte_identical_events():
    messages = [
        h.task_result(A, downstream=[h.materialized("x", {"n": 1}, name="X")], at=0),
        h.task_result(B, upstream=[h.asset("w")], upstream_runs=[A], at=1),
        h.task_result(C, downstream=[h.materialized("y")], upstream_runs=[B], at=2,
                      materialized_by="dbt", ctx=h.context(task_run=C, tags=["b", "a"])),
        h.task_result(D, downstream=[h.materialized("q")], state="FAILED", at=3),
    ]

    def values():
        pipeline = AssetPipeline()
        return [e.value for m in messages for e in pipeline.process(h.encode(m)).events]

    first, second = values(), values()
    assert first == second
    assert len(first) == 1 + 0 + 3 + 1  # A; B plain; C referenced x, w + y; D failed
    for value in first:
        h.check_envelope(value)
