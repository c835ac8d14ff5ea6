"""Hostile input (SPEC §6 "nothing stops the worker"): property tests with hypothesis.

Whatever bytes arrive, Pipeline.process returns — events that satisfy SPEC §3, or a dead letter
with a reason — and random operation sequences keep the collection state consistent.
"""

from __future__ import annotations

import json

import spec_helpers as h
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.pipeline import ArtifactPipeline, AssetPipeline

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=25,
)

ARTIFACT_FIELDS = ["op", "occurred", "context", "artifact", "artifact_id", "changes", "id", "key",
                   "type", "data", "description", "metadata_", "flow_run_id", "task_run_id",
                   "created", "tags", "flow_run", "name"]
RESULT_FIELDS = ["task_run_id", "flow_run_id", "occurred", "context", "state", "type", "name",
                 "downstream_assets", "upstream_assets", "upstream_task_run_ids",
                 "materialized_by", "key", "properties", "metadata", "owners", "url"]


def _check(outcome):
    if outcome.dead_letter is not None:
        assert outcome.events == []
        assert isinstance(outcome.dead_letter.code, str) and outcome.dead_letter.code
        assert isinstance(outcome.dead_letter.reason, str) and outcome.dead_letter.reason.strip()
        return
    for event in outcome.events:
        parsed = h.check_envelope(event.value)
        assert event.key == parsed["resource"]["prefect.resource.id"].encode()
        assert dict(event.headers)["prefect-event"] == parsed["event"].encode()


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


@st.composite
def mutated(draw, base_messages):
    """A valid message with 1-3 random parts replaced by random JSON, or deleted."""
    message = json.loads(json.dumps(draw(st.sampled_from(base_messages))))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(message) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = message
        for part in path[:-1]:
            parent = parent[part]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(json_values)
    return message


ARTIFACT_BASES = [
    h.create(h.uid(1), ctx=h.context(task_run=h.uid(5), deployment=h.uid(6), tags=["a", "b"])),
    h.create(h.uid(2), key=None, data={"rows": [1, 2]}),
    h.update(h.uid(1), {"data": 1, "description": None, "metadata_": {"a": "b"}}),
    h.delete(h.uid(1)),
]
RESULT_BASES = [
    h.task_result(
        h.uid(3),
        downstream=[h.materialized("s3://y", {"m": [1]}, name="Y", owners=["o"], url="u")],
        upstream=[h.asset("s3://x", description="d")],
        upstream_runs=[h.uid(2)],
        materialized_by="dbt",
        ctx=h.context(task_run=h.uid(3), work_pool=h.uid(7), tags=["t"]),
    ),
    h.task_result(h.uid(4), upstream=[h.asset("s3://x")], upstream_runs=[h.uid(3)], state="FAILED"),
]


def _pipelines():
    """Pipelines already holding state, so mutated messages meet known ids too."""
    artifacts, assets = ArtifactPipeline(), AssetPipeline()
    h.raw_events(artifacts, [h.create(h.uid(1)), h.create(h.uid(9), created=-5)])
    h.raw_events(assets, [h.task_result(h.uid(2), downstream=[h.materialized("s3://w")])])
    return artifacts, assets


@SETTINGS
@given(st.binary(max_size=300))
def test_random_bytes(raw):
    artifacts, assets = _pipelines()
    _check(artifacts.process(raw))
    _check(assets.process(raw))


@SETTINGS
@given(json_values)
def test_random_json(value):
    raw = json.dumps(value).encode()
    artifacts, assets = _pipelines()
    _check(artifacts.process(raw))
    _check(assets.process(raw))


@SETTINGS
@given(st.dictionaries(st.sampled_from(ARTIFACT_FIELDS + RESULT_FIELDS), json_values, max_size=8))
def test_random_objects_with_known_field_names(value):
    raw = json.dumps(value).encode()
    artifacts, assets = _pipelines()
    _check(artifacts.process(raw))
    _check(assets.process(raw))


@SETTINGS
@given(mutated(ARTIFACT_BASES))
def test_mutated_artifact_messages(message):
    artifacts, _ = _pipelines()
    _check(artifacts.process(json.dumps(message).encode()))


@SETTINGS
@given(mutated(RESULT_BASES))
def test_mutated_task_results(message):
    _, assets = _pipelines()
    _check(assets.process(json.dumps(message).encode()))


@settings(max_examples=30, deadline=None)
@given(
    depth=st.integers(min_value=1, max_value=1100),
    container=st.sampled_from(["[", "{\"a\":"]),
    where=st.sampled_from(["data", "changes", "metadata", "top"]),
)
def test_deep_nesting(depth, container, where):
    close = "]" if container == "[" else "}"
    deep = container * depth + "1" + close * depth
    if where == "data":
        raw = json.dumps(h.create(h.uid(1), data="@@")).replace('"@@"', deep)
    elif where == "changes":
        raw = json.dumps(h.update(h.uid(1), {"data": "@@"})).replace('"@@"', deep)
    elif where == "metadata":
        raw = json.dumps(h.task_result(downstream=[h.materialized("y", {"m": "@@"})])).replace(
            '"@@"', deep
        )
    else:
        raw = deep
    artifacts, assets = _pipelines()
    _check(artifacts.process(raw.encode()))
    _check(assets.process(raw.encode()))


@settings(max_examples=10, deadline=None)
@given(size=st.sampled_from([1_499_000, 1_500_000, 3_000_000]), field=st.sampled_from(
    ["data", "description", "key", "metadata"]))
def test_huge_strings(size, field):
    big = "\u00e9" * (size // 2) if size % 2 == 0 else "x" * size
    if field == "metadata":
        raw = json.dumps(h.task_result(downstream=[h.materialized("y", {"m": big})])).encode()
        _check(AssetPipeline().process(raw))
        return
    raw = json.dumps(h.create(h.uid(1), **{field: big})).encode()
    _check(ArtifactPipeline().process(raw))


# --- random operation sequences --------------------------------------------------------------

IDS = [h.uid(n) for n in range(1, 6)]
KEYS = ["k1", "k2", None]

operations = st.one_of(
    st.builds(
        lambda i, k, at, created: h.create(IDS[i], KEYS[k], at, created=created),
        st.integers(0, len(IDS) - 1),
        st.integers(0, len(KEYS) - 1),
        st.integers(0, 50),
        st.integers(0, 5),  # few distinct `created`: ties are common
    ),
    st.builds(
        lambda i, at, data: h.update(IDS[i], {"data": data}, at),
        st.integers(0, len(IDS) - 1),
        st.integers(0, 50),
        st.integers(0, 9),
    ),
    st.builds(lambda i, at: h.delete(IDS[i], at), st.integers(0, len(IDS) - 1), st.integers(0, 50)),
)


@SETTINGS
@given(st.lists(operations, max_size=30))
def test_random_operation_sequences_keep_latest_the_max_of_live_members(ops):
    pipeline = ArtifactPipeline()
    live: dict[str, dict[str, tuple[float, str]]] = {}  # key → artifact id → (created, id)
    known: dict[str, str | None] = {}  # artifact id → key of its first create
    deleted: set[str] = set()
    for op in ops:
        outcome = pipeline.process(json.dumps(op).encode())
        _check(outcome)
        assert outcome.dead_letter is None
        names = [e.name for e in outcome.events]
        if op["op"] == "create":
            art = op["artifact"]
            assert names[-1] == "prefect.artifact.created"
            if art["id"] not in known:
                known[art["id"]] = art["key"]
                if art["key"] is not None:
                    members = live.setdefault(art["key"], {})
                    before = max(members.values()) if members else None
                    members[art["id"]] = (h.occurred_ms(art["created"]), art["id"])
                    if before is None:
                        assert names == ["prefect.artifact-collection.created", names[-1]]
                    elif max(members.values()) != before:
                        assert names == ["prefect.artifact-collection.updated", names[-1]]
                    else:
                        assert names == [names[-1]]
            else:
                assert names == ["prefect.artifact.created"]  # a retry changes nothing
        elif op["op"] == "update":
            assert names == ["prefect.artifact.updated"]
        else:
            aid = op["artifact_id"]
            key = known.get(aid)
            gone = aid not in known or aid in deleted
            assert outcome.unknown_delete == gone
            if not gone:
                deleted.add(aid)
                if key is not None:
                    members = live[key]
                    was_latest = max(members.values())[1] == aid
                    del members[aid]
                    if not members:
                        del live[key]
                        assert names == ["prefect.artifact-collection.deleted"]
                    elif was_latest:
                        assert names == ["prefect.artifact-collection.updated"]
                    else:
                        assert names == []
                else:
                    assert names == []
            else:
                assert names == []
        # the state: per key, the live members, and the latest = max (created, id)
        assert set(pipeline.collections) == set(live)
        for key, members in live.items():
            coll = pipeline.collections[key]
            assert set(pipeline.members[key]) == set(members)
            assert coll.latest == max(members.values())[1]
            assert coll.latest_rank == pipeline.members[key].best()
        # a version record for every live member, and none left behind
        assert set(pipeline.versions) == {aid for members in live.values() for aid in members}

