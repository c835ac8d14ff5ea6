"""SPEC §6 Bad input and failures: dead letters, all-or-nothing, and exact replays.

The pure pipelines show the per-message rules; topology.steps (driven with fake InRecord batches
and an in-memory table, no broker) shows dead letters carry the original bytes and where they came
from, and that a replayed batch is either skipped or gives byte-identical outputs.
"""

from __future__ import annotations

import copy
import json
from collections import Counter

import orjson
import pytest
import spec_helpers as h

from streams import collection_record
from streams.membership import Membership
from streams.pipeline import ArtifactPipeline, AssetPipeline
from topology import steps
from topology.steps import InRecord, Topics

RAW_ARTIFACTS = "prefect.raw.artifacts"
RAW_RESULTS = "prefect.raw.asset-task-results"
TOPICS = Topics(
    artifact_events="prefect.events.artifacts",
    asset_events="prefect.events.assets",
    dead_letters="prefect.raw.dead-letters",
    artifacts_by_id="by-id",
    artifacts_by_key="by-key",
    task_results_by_flow_run="by-flow-run",
    partitions=4,
)
V1, V2, V3, U = h.uid(1), h.uid(2), h.uid(3), h.uid(0xDD)
A, B, C = h.uid(0xA, "7a"), h.uid(0xB, "7a"), h.uid(0xC, "7a")


def _grows():
    """420 kB of `1e15`s: orjson renders each as 1000000000000000.0, the collection event 1.6 MB."""
    message = h.create(V2, at=1, data=[1e15] * 84_000)
    return json.dumps(message, separators=(",", ":")).replace("1000000000000000.0", "1e15").encode()


BAD_ARTIFACTS = [
    ("not-json", b"{\"op\": \"create\"", "invalid_json"),
    ("not-object", b"[1, 2, 3]", "wrong_type"),
    ("missing-field", h.create(V2, drop=["occurred"]), "missing_field"),
    ("wrong-type", h.create(V2, key=7), "wrong_type"),
    ("invalid-uuid", h.create("v2"), "invalid_uuid"),
    ("invalid-timestamp", h.create(V2, occurred="2026-02-30T00:00:00Z"), "invalid_timestamp"),
    ("unknown-op", {**h.delete(V1), "op": "remove"}, "unknown_op"),
    ("too-deep", h.create(V2, at=1, data=h.nested(300)), "too_deep"),
    ("artifact-event-too-large", h.create(V2, at=1, description="d" * 1_500_000), "event_too_large"),
    ("collection-event-too-large", h.create(V2, at=1, data="x" * 1_500_000), "event_too_large"),
    ("update-too-large", h.update(V1, {"data": "x" * 1_500_000}), "event_too_large"),
    ("collection-event-grows-too-large", _grows(), "event_too_large"),
]


@pytest.mark.parametrize(
    "bad, code", [(b, c) for _, b, c in BAD_ARTIFACTS], ids=[i for i, _, _ in BAD_ARTIFACTS]
)
def test_bad_artifact_message_is_a_dead_letter_and_never_happened(bad, code):
    before = [h.create(V1, at=0), h.create(U, key=None, at=0.5)]
    after = [h.create(V2, at=3), h.update(V1, {"description": "new"}, at=4), h.delete(V2, at=5),
             h.delete(V1, at=6)]
    pipeline = ArtifactPipeline()
    h.raw_events(pipeline, before)
    state = copy.deepcopy(_state(pipeline))
    outcome = pipeline.process(h.encode(bad))
    assert outcome.events == []
    assert outcome.dead_letter is not None
    assert outcome.dead_letter.code == code
    assert outcome.dead_letter.reason.strip() and "\n" not in outcome.dead_letter.reason
    assert len(outcome.dead_letter.reason) < 500
    assert _visible(pipeline) == _visible_of(state)
    # A keyed create its collections step refused leaves its id known, as the worker's
    # memberships step has recorded it one hop before (README, Behaviour).
    refused = {k: v for k, v in pipeline.memberships.items() if k not in state[0]}
    assert refused in ({}, {V2: Membership("report")})
    assert {k: pipeline.memberships[k] for k in state[0]} == state[0]
    with_bad = [e.value for e in h.raw_events(pipeline, after)]
    clean = ArtifactPipeline()
    h.raw_events(clean, before)
    assert with_bad == [e.value for e in h.raw_events(clean, after)]


BAD_RESULTS = [
    ("not-json", b"\xff", "invalid_json"),
    ("missing-field", h.task_result(B, drop=["upstream_task_run_ids"]), "missing_field"),
    ("wrong-type", h.task_result(B, state="COMPLETED", materialized_by=["x"]), "wrong_type"),
    ("invalid-uuid", h.task_result(B, upstream_runs=["a"]), "invalid_uuid"),
    ("invalid-timestamp", h.task_result(B, occurred="now"), "invalid_timestamp"),
    ("too-deep", h.task_result(B, downstream=[h.materialized("y", {"m": h.nested(260)})]), "too_deep"),
    ("event-too-large",
     h.task_result(B, downstream=[h.materialized("y", {"m": "x" * 1_500_000})], upstream_runs=[A]),
     "event_too_large"),
    ("failed-event-too-large",
     h.task_result(B, downstream=[h.materialized("y", {"m": "x" * 1_500_000})], state="FAILED"),
     "event_too_large"),
]


@pytest.mark.parametrize(
    "bad, code", [(b, c) for _, b, c in BAD_RESULTS], ids=[i for i, _, _ in BAD_RESULTS]
)
def test_bad_task_result_is_a_dead_letter_and_never_happened(bad, code):
    """B's bad attempt records nothing: C, downstream of B, inherits nothing; the flow run's
    last-seen time does not move either."""
    before = [h.task_result(A, downstream=[h.materialized("x")], at=0)]
    after = [h.task_result(C, downstream=[h.materialized("z")], upstream_runs=[B, A], at=2)]
    pipeline = AssetPipeline()
    h.raw_events(pipeline, before)
    state = {k: v.to_json() for k, v in pipeline.lineages.items()}
    outcome = pipeline.process(h.encode(bad))
    assert outcome.events == []
    assert outcome.dead_letter is not None and outcome.dead_letter.code == code
    assert outcome.dead_letter.reason.strip()
    assert {k: v.to_json() for k, v in pipeline.lineages.items()} == state
    clean = AssetPipeline()
    h.raw_events(clean, before)
    assert [e.value for e in h.raw_events(pipeline, after)] == [
        e.value for e in h.raw_events(clean, after)
    ]


def test_a_later_good_attempt_of_the_same_task_run_counts():
    pipeline = AssetPipeline()
    bad = h.task_result(B, downstream=[h.materialized("y", {"m": "x" * 1_500_000})], at=1)
    good = h.task_result(B, downstream=[h.materialized("y")], at=2)
    consumer = h.task_result(C, downstream=[h.materialized("z")], upstream_runs=[B], at=3)
    assert pipeline.process(h.encode(bad)).dead_letter is not None
    events = h.run_assets([good, consumer], pipeline)
    assert events[-1]["related"][0] == h.rel("y", "asset")


# --- topology.steps: dead letters ---------------------------------------------------------------


def _raw(topic, values, partitions=2):
    return [
        InRecord(topic, i % partitions, 100 + i // partitions, b"producer-key-%d" % i, v)
        for i, v in enumerate(values)
    ]


def _forwarded(outputs, topic):
    """Outputs for `topic` as the next step consumes them, with per-partition offsets."""
    offsets: Counter[int] = Counter()
    records = []
    for out in outputs:
        if out.topic != topic:
            continue
        records.append(
            InRecord(topic, out.partition, offsets[out.partition], out.key, out.value,
                     tuple(out.headers))
        )
        offsets[out.partition] += 1
    return records


class Table(dict):
    def load(self, key, partition):
        return self.get(key)

    def write(self, result, phases=("before", "writes", "after")):
        """A batch's state, in the worker's order; a crash can stop it after any phase."""
        if "before" in phases:
            self.update({key: value for key, (_, value) in result.writes_before.items()})
        if "writes" in phases:
            self.update({key: value for key, (_, value) in result.writes.items()})
        if "after" in phases:
            for key in result.deletes_after:
                self.pop(key, None)


def _state(p):
    return (p.memberships, p.collections, p.members, p.versions)


def _visible(p):
    """What events are made of: collections, their members and versions (not the memberships
    routing table, which a refusal one hop later leaves written)."""
    return _visible_of(_state(p))


def _visible_of(state):
    return state[1:]


def _check_dead_letter(out, record, code):
    assert out.topic == TOPICS.dead_letters
    assert out.value is record.value  # the original bytes, unchanged
    assert out.key == record.key
    headers = dict(out.headers)
    assert headers["prefect-source-topic"] == record.topic.encode()
    assert headers["prefect-source-partition"] == str(record.partition).encode()
    assert headers["prefect-source-offset"] == str(record.offset).encode()
    reason = headers["prefect-dead-letter-reason"].decode()
    assert reason.strip() and "\n" not in reason
    assert headers.get("prefect-dead-letter-code", code.encode()) == code.encode()


@pytest.mark.parametrize(
    "bad, code", [(b, c) for _, b, c in BAD_ARTIFACTS[:7]], ids=[i for i, _, _ in BAD_ARTIFACTS[:7]]
)
def test_routing_artifacts_dead_letters_the_original_bytes(bad, code):
    good = h.encode(h.create(V1))
    batch = _raw(RAW_ARTIFACTS, [good, h.encode(bad), good])
    result = _route_artifacts(batch)
    dead = [o for o in result.outputs if o.topic == TOPICS.dead_letters]
    assert len(dead) == 1
    _check_dead_letter(dead[0], batch[1], code)
    assert [(s, why.code) for s, why in result.dead_letters] == [(batch[1].source, code)]
    forwarded = [o for o in result.outputs if o.topic == TOPICS.artifacts_by_id]
    assert [o.value for o in forwarded] == [good, good]
    assert all(o.key == V1.encode() for o in forwarded)  # re-keyed: the producer key is advice
    assert dict(forwarded[0].headers)["prefect-source-offset"] == b"100"


def test_routing_artifacts_dead_letters_a_tombstone():
    batch = [InRecord(RAW_ARTIFACTS, 3, 9, b"k", None)]
    result = _route_artifacts(batch)
    [out] = result.outputs
    assert out.topic == TOPICS.dead_letters and out.value is None
    assert dict(out.headers)["prefect-source-partition"] == b"3"


@pytest.mark.parametrize(
    "bad, code", [(b, c) for _, b, c in BAD_RESULTS[:5]], ids=[i for i, _, _ in BAD_RESULTS[:5]]
)
def test_routing_task_results_dead_letters_the_original_bytes(bad, code):
    good = h.encode(h.task_result(A))
    batch = _raw(RAW_RESULTS, [h.encode(bad), good])
    result = _route_task_results(batch)
    [dead] = [o for o in result.outputs if o.topic == TOPICS.dead_letters]
    _check_dead_letter(dead, batch[0], code)
    [fwd] = [o for o in result.outputs if o.topic == TOPICS.task_results_by_flow_run]
    assert fwd.key == h.FLOW_RUN.encode() and fwd.value is good


def _refused_after_hops(producer_key):
    """An update over the limit refused two hops on (collections) and a task result one hop on
    (lineage): the dead letters and the records as the producer wrote them."""
    too_big = {"data": "x" * 1_500_000}
    artifact_ops = [h.encode(h.create(V1, at=0)), h.encode(h.update(V1, too_big, at=1))]
    raw = [InRecord(RAW_ARTIFACTS, 1, 100 + i, producer_key, v) for i, v in enumerate(artifact_ops)]
    by_id = _forwarded(_route_artifacts(raw).outputs, TOPICS.artifacts_by_id)
    by_key = _forwarded(_memberships(by_id, Table()).outputs, TOPICS.artifacts_by_key)
    collections = _collections(by_key, Table())
    result = h.encode(h.task_result(A, downstream=[h.materialized("x", {"m": "y" * 1_500_000})], at=0))
    raw_result = InRecord(RAW_RESULTS, 1, 7, producer_key, result)
    by_flow_run = _forwarded(_route_task_results([raw_result]).outputs, TOPICS.task_results_by_flow_run)
    lineage = _lineage(by_flow_run, Table())
    dead = [o for r in (collections, lineage) for o in r.outputs if o.topic == TOPICS.dead_letters]
    return dead, [raw[1], raw_result]


@pytest.mark.parametrize("producer_key", [b"producer-key", None], ids=["keyed", "unkeyed"])
def test_a_message_refused_after_a_hop_goes_out_with_the_producers_key(producer_key):
    """'Unchanged' (SPEC §6): key and value as the producer wrote them, not the internal key (the
    collection key, the flow run id) a hop gave the message; the source headers name the raw
    record, and `prefect-source-key` carries the key on through the hops."""
    dead, records = _refused_after_hops(producer_key)
    assert len(dead) == 2
    for out, record in zip(dead, records, strict=True):
        _check_dead_letter(out, record, "event_too_large")
        assert dict(out.headers).get("prefect-source-key") == producer_key


def _sized_create(size, **kwargs):
    """A create of V2 (key "report", latest: created at 1) whose collection event is `size` bytes."""
    base = h.raw_events(ArtifactPipeline(), [h.create(V2, at=1, data="", **kwargs)])[0]
    return h.create(V2, at=1, data="x" * (size - len(base.value)), **kwargs)


def test_an_event_prefect_would_drop_for_its_received_field_dead_letters_the_whole_message():
    """Prefect's server measures an event with its `received` field (41 bytes) added: an event of
    1,499,960 bytes is over 1.5 MB there, so its message is refused whole (SPEC §6), before the
    artifact.created it would also cause goes out and before the collection changes."""
    pipeline = ArtifactPipeline()
    h.raw_events(pipeline, [h.create(V1, at=0)])
    before = copy.deepcopy(_state(pipeline))
    outcome = pipeline.process(h.encode(_sized_create(1_499_960)))
    assert outcome.events == []
    assert str(outcome.dead_letter) == (
        f"event_too_large: prefect.artifact-collection.updated for {_collection_of(pipeline)} "
        "would be 1499960 bytes, 1500001 with the received time Prefect's server adds, over its "
        "limit of 1500000"
    )
    assert _visible(pipeline) == _visible_of(before)
    [coll, created] = h.raw_events(pipeline, [_sized_create(1_499_959)])
    assert (coll.name, len(coll.value), created.name) == (
        "prefect.artifact-collection.updated", 1_499_959, "prefect.artifact.created",
    )


def test_an_update_prefect_would_drop_for_its_received_field_is_a_dead_letter():
    base = len(h.raw_events(ArtifactPipeline(), [h.update(V1, {"data": ""})])[0].value)
    outcome = ArtifactPipeline().process(h.encode(h.update(V1, {"data": "x" * (1_499_960 - base)})))
    assert outcome.events == []
    assert str(outcome.dead_letter) == (
        f"event_too_large: prefect.artifact.updated for prefect.artifact.{V1} would be 1499960 "
        "bytes, 1500001 with the received time Prefect's server adds, over its limit of 1500000"
    )


def _collection_of(pipeline):
    return "prefect.artifact-collection." + pipeline.collections["report"].id


def test_an_older_create_too_large_to_be_the_latest_is_applied_and_the_delete_that_would_repoint_is_refused():
    """SPEC §6 refuses a message for the events it would produce: an older create makes no
    collection event, so it is applied and its artifact.created goes out. The delete of the newer
    version would re-point the collection to it, with an event over the limit: that delete is the
    dead letter, and the collection stays as it was (same id, same latest)."""
    pipeline = ArtifactPipeline()
    [started, _] = h.raw_events(pipeline, [h.create(V1, at=0, created=10)])
    older = _sized_create(1_500_000, created=5)
    assert [e.name for e in h.raw_events(pipeline, [older])] == ["prefect.artifact.created"]
    before = copy.deepcopy(_state(pipeline))
    outcome = pipeline.process(h.encode(h.delete(V1, at=2)))
    assert outcome.events == []
    assert str(outcome.dead_letter) == (
        f"event_too_large: prefect.artifact-collection.updated for {_collection_of(pipeline)} "
        "would be 1500000 bytes, 1500041 with the received time Prefect's server adds, over its "
        "limit of 1500000"
    )
    assert _visible(pipeline) == _visible_of(before)  # the memberships step's tombstone stays (README)
    again = h.create(V3, at=3, created=20)
    [coll, _] = h.raw_events(pipeline, [again])
    assert (coll.name, coll.resource_id) == ("prefect.artifact-collection.updated", _collection_of(pipeline))
    assert started.resource_id == _collection_of(pipeline)


def test_a_create_whose_collection_event_is_too_large_is_refused_where_its_events_are_built():
    """All or nothing at the collections step, which alone knows whether the artifact becomes the
    latest: the memberships step hands the create on, the collections step refuses it whole and
    leaves the collection as it was; the dead letter is the producer's record."""
    grows = _grows()
    assert len(grows) < 500_000
    routed = _route_artifacts(_raw(RAW_ARTIFACTS, [grows]))
    by_id = _forwarded(routed.outputs, TOPICS.artifacts_by_id)
    memberships = steps.apply_memberships(TOPICS, by_id, Table().load)
    by_key = _forwarded(memberships.outputs, TOPICS.artifacts_by_key)
    assert len(by_key) == 1 and [o.topic for o in memberships.outputs] == [TOPICS.artifacts_by_key]
    collections = steps.apply_collections(TOPICS, by_key, Table().load)
    [dead] = collections.outputs
    assert dead.topic == TOPICS.dead_letters and dead.value == grows
    assert dead.key == b"producer-key-0"  # the producer's, not the key a hop keyed it by
    assert dict(dead.headers)["prefect-source-topic"] == RAW_ARTIFACTS.encode()
    [(_, written)] = collections.writes.values()  # the refusal is remembered, no collection
    assert steps.Stamped.load(written).state == {"members": {"seq": 0, "next": 0, "open": None, "pages": []}}


# --- topology.steps: replays --------------------------------------------------------------------


ARTIFACT_OPS = [
    h.create(V1, at=0),
    h.create(V2, at=1, task_run_id=h.uid(0x71)),
    h.create(U, key=None, at=2),
    h.create(V3, "other", at=3),
    h.delete(V1, at=4),
    h.delete(V2, at=5),
    h.delete(V3, at=6),
    h.delete(h.uid(0x99), at=7),
]


def _route_artifacts(batch):
    """Raw records outside their artifact id's partition: the memberships step re-keys them."""
    return steps.apply_memberships(TOPICS, batch, lambda key, partition: None)


def _route_task_results(batch):
    return steps.apply_lineage(TOPICS, batch, lambda key, partition: None, 7 * 86_400_000_000)


def _dead_letter_batches():
    """Every bad message of this module, with a good one, at each step that can refuse it."""
    artifacts = [b for _, b, _ in BAD_ARTIFACTS] + [h.create(V1, at=0)]
    results = [b for _, b, _ in BAD_RESULTS] + [h.task_result(A, downstream=[h.materialized("x")])]
    raw_artifacts = _raw(RAW_ARTIFACTS, [h.encode(m) for m in artifacts])
    raw_results = _raw(RAW_RESULTS, [h.encode(m) for m in results])
    by_id, by_flow_run = _by_id(artifacts), _by_flow_run(results)
    # The memberships step refuses what would fail later: here only a record it did not write.
    by_key = [*_by_key(artifacts), InRecord(TOPICS.artifacts_by_key, 0, 999, b"k", b"{}")]
    week_us = 7 * 86_400_000_000
    return {
        "routing-artifacts": lambda: _route_artifacts(raw_artifacts),
        "memberships": lambda: steps.apply_memberships(TOPICS, by_id, Table().load),
        "collections": lambda: steps.apply_collections(TOPICS, by_key, Table().load),
        "routing-task-results": lambda: _route_task_results(raw_results),
        "lineage": lambda: steps.apply_lineage(TOPICS, by_flow_run, Table().load, week_us),
    }


@pytest.mark.parametrize(
    "step", ["routing-artifacts", "memberships", "collections", "routing-task-results", "lineage"]
)
def test_a_dead_letter_leaves_nothing_for_pythons_collector(step):
    """A step keeps a dead letter's reason, not the exception that carried it: its traceback would
    hold the step's frames, and with them the whole batch, until Python's collector ran."""
    run = _dead_letter_batches()[step]

    def refusing():
        result = run()
        assert result.dead_letters
        return result

    assert h.garbage_left_by(refusing) == []


def _replay_twice(run, batch, applied):
    table = Table()
    first = run(batch, table)
    if applied:
        table.write(first)
    second = run(batch, table)
    return first, second


def _memberships(batch, table):
    return steps.apply_memberships(TOPICS, batch, table.load)


def _collections(batch, table):
    return steps.apply_collections(TOPICS, batch, table.load)


def _lineage(batch, table):
    return steps.apply_lineage(TOPICS, batch, table.load, 7 * 86_400_000_000)


def _by_id(messages):
    routed = _route_artifacts(_raw(RAW_ARTIFACTS, [h.encode(m) for m in messages]))
    return _forwarded(routed.outputs, TOPICS.artifacts_by_id)


def _by_key(messages):
    first = steps.apply_memberships(TOPICS, _by_id(messages), Table().load)
    return _forwarded(first.outputs, TOPICS.artifacts_by_key)


def _by_flow_run(messages):
    routed = _route_task_results(_raw(RAW_RESULTS, [h.encode(m) for m in messages]))
    return _forwarded(routed.outputs, TOPICS.task_results_by_flow_run)


ASSET_OPS = [
    h.task_result(A, downstream=[h.materialized("x")], at=0),
    h.task_result(B, upstream_runs=[A], at=1),
    h.task_result(C, downstream=[h.materialized("y")], upstream_runs=[B], at=2),
    h.task_result(h.uid(0xF, "7a"), downstream=[h.materialized("q")], flow_run_id=h.uid(2, "f2"), at=3),
]

STEPS = {
    "memberships": (_memberships, lambda: _by_id(ARTIFACT_OPS)),
    "collections": (_collections, lambda: _by_key(ARTIFACT_OPS)),
    "lineage": (_lineage, lambda: _by_flow_run(ASSET_OPS)),
}


@pytest.mark.parametrize("step", list(STEPS))
def test_replay_after_state_was_written_emits_nothing(step):
    run, batch = STEPS[step][0], STEPS[step][1]()
    first, second = _replay_twice(run, batch, applied=True)
    assert first.outputs and first.writes
    # every message is marked, the memberships step's unknown delete too (it changed nothing, but
    # replayed after a create of its id it would delete it)
    assert second.replays_skipped == len(batch)
    assert second.writes == {}
    assert second.outputs == [] and second.unknown_deletes == []


@pytest.mark.parametrize("step", list(STEPS))
def test_replay_before_state_was_written_gives_byte_identical_outputs(step):
    run, batch = STEPS[step][0], STEPS[step][1]()
    first, second = _replay_twice(run, batch, applied=False)
    assert first.outputs
    assert second.outputs == first.outputs  # topic, key, value bytes, headers, partition
    assert second.writes == first.writes
    assert second.replays_skipped == 0


COLLECTION_HISTORY = [
    h.create(V1, at=0, data="one"),
    h.create(V2, at=1, data="two", task_run_id=h.uid(0x71)),
]
COLLECTION_CHANGES = [
    h.update(V1, {"data": "one, patched"}, at=2),
    h.delete(V2, at=3),  # the latest: V1 (patched) becomes the latest again
]


@pytest.mark.parametrize(
    ("written", "replayed"),
    [
        pytest.param(("before",), "applied again", id="member-versions-only"),
        pytest.param(("before", "writes"), "skipped", id="collection-but-not-forgotten-versions"),
    ],
)
def test_a_crash_between_a_collection_batchs_state_writes_replays_exactly(written, replayed):
    """Member pages and versions are durable before their collection record and forgotten after
    it, so a replay after a crash between the writes finds what the first run read
    (streams.replay, streams.members)."""
    records = _by_key(COLLECTION_HISTORY + COLLECTION_CHANGES)
    history, batch = records[: len(COLLECTION_HISTORY)], records[len(COLLECTION_HISTORY) :]
    table = Table()
    table.write(_collections(history, table))
    first = _collections(batch, table)
    patch, event = first.outputs
    assert dict(patch.headers)["prefect-event"] == b"prefect.artifact.updated"
    assert dict(event.headers)["prefect-event"] == b"prefect.artifact-collection.updated"
    assert orjson.loads(event.value)["payload"]["data"] == "one, patched"
    assert set(first.writes_before) == {collection_record.version_key(V1)}  # members inline
    assert set(first.deletes_after) == {collection_record.version_key(V2)}
    table.write(first, written)

    second = _collections(batch, table)
    if replayed == "applied again":
        assert second.outputs == first.outputs
        assert (second.writes_before, second.writes, second.deletes_after) == (
            first.writes_before,
            first.writes,
            first.deletes_after,
        )
    else:
        assert second.outputs == [] and second.replays_skipped == len(batch)
        assert collection_record.version_key(V2) in table  # left behind: nothing refers to it any more


def test_replayed_updates_are_skipped_once_handed_on():
    """An update of a keyed artifact is handed on to the collection step, so the membership step
    marks it done: a replayed copy (re-keyed again at a new internal offset) emits nothing and
    hands nothing on a second time."""
    ops = [h.create(V1, at=0), h.update(V1, {"data": 2}, at=1)]
    batch = _by_id(ops)
    first, second = _replay_twice(_memberships, batch, applied=True)
    assert [o.topic for o in first.outputs].count(TOPICS.artifacts_by_key) == 2
    assert second.outputs == [] and second.replays_skipped == 2


def test_the_worker_steps_emit_what_the_pipeline_emits():
    """route → memberships → collections over tables gives the pipeline's events (as a multiset:
    the two steps publish at different times)."""
    by_id_table, by_key_table = Table(), Table()
    first = _memberships(_by_id(ARTIFACT_OPS), by_id_table)
    second = _collections(_forwarded(first.outputs, TOPICS.artifacts_by_key), by_key_table)
    worker = [
        o.value for r in (first, second) for o in r.outputs if o.topic == TOPICS.artifact_events
    ]
    pipeline = [e.value for e in h.raw_events(ArtifactPipeline(), ARTIFACT_OPS)]
    assert Counter(worker) == Counter(pipeline)
    lineage = _lineage(_by_flow_run(ASSET_OPS), Table())
    assert [o.value for o in lineage.outputs] == [
        e.value for e in h.raw_events(AssetPipeline(), ASSET_OPS)
    ]


def test_replay_marks_are_exact_so_out_of_order_delivery_loses_nothing():
    """A consumer can be handed a partition's later records before earlier ones around a
    rebalance; the earlier ones are not replays and must still be applied."""
    from streams import replay

    seen: replay.Seen = {}
    replay.mark(seen, "r0", 110)
    assert not replay.is_replay(seen, "r0", 90)
    replay.mark(seen, "r0", 90)
    assert replay.is_replay(seen, "r0", 90) and replay.is_replay(seen, "r0", 110)
    assert not replay.is_replay(seen, "r1", 90)  # another lane
    for offset in range(1000, 1000 + replay.KEEP):
        replay.mark(seen, "r0", offset)
    assert seen["r0"] == list(range(1000, 1000 + replay.KEEP))
    assert replay.is_replay(seen, "r0", 500)  # older than all it remembers: judged by position
    assert not replay.is_replay(seen, "r0", 1000 + replay.KEEP)
