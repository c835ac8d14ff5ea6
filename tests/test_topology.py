"""The worker's topology without a broker: the golden cases through every step, however the
producer keyed its records, give exactly the events of the offline pipeline."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from streams.messages import parse_artifact_op
from streams.pipeline import ArtifactPipeline, AssetPipeline
from tests import spec_helpers as h
from tests.topology_driver import Driver, topics
from topology import steps
from topology.records import Source, partition_for
from topology.steps import InRecord, UnknownDelete, in_event_time_order

GOLDEN = h.GOLDEN_DIR
CASES = h.golden_cases()


def _key(line: bytes, stream: str, how: str) -> bytes | None:
    message = json.loads(line)
    if how == "none" or (how == "creates-only" and message.get("op") not in (None, "create")):
        return None
    if stream == "assets":
        return str(message["flow_run_id"]).encode()
    return str(message.get("artifact_id") or message["artifact"]["id"]).encode()


@h.needs_golden
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize(
    ("how", "raw_partitions"),
    [("advised", 4), ("creates-only", 4), ("none", 1), ("advised", 3)],
    ids=["keyed-co-partitioned", "mixed-paths", "one-raw-partition", "keyed-other-partition-count"],
)
def test_golden_case_through_the_topology(case: str, how: str, raw_partitions: int) -> None:
    """Keyed by artifact id / flow run on co-partitioned raw topics, records are applied where
    they are; otherwise they are re-keyed first. One record at a time, the output is the same."""
    lines = (GOLDEN / case / "input.jsonl").read_bytes().splitlines()
    stream = "artifacts" if b'"op"' in lines[0] else "assets"
    driver = Driver(topics(partitions=4, raw_partitions=raw_partitions))
    raw_topic = driver.topics.raw_artifacts if stream == "artifacts" else driver.topics.raw_task_results
    pipeline = ArtifactPipeline() if stream == "artifacts" else AssetPipeline()
    expected: list[bytes] = []
    for line in lines:
        driver.produce(raw_topic, line, _key(line, stream, how))
        driver.run()  # a live feed: each operation is through before the next arrives
        expected.extend(e.value for e in pipeline.process(line).events)
    events_topic = driver.topics.artifact_events if stream == "artifacts" else driver.topics.asset_events
    assert sorted(driver.events(events_topic)) == sorted(expected)
    assert driver.events(driver.topics.dead_letters) == []


def _artifact_keyed_ops() -> list[bytes]:
    """Keyed artifacts created and patched at once, as a progress artifact is, and deleted."""
    v1, v2 = h.uid(0x51), h.uid(0x52)
    return [
        h.encode(m)
        for m in (
            h.create(v1, "progress", 0.0),
            h.update(v1, {"data": 10}, 0.1),
            h.create(v2, "progress", 0.2),
            h.update(v2, {"data": 20}, 0.3),
            h.update(v1, {"description": "done"}, 0.4),
            h.delete(v2, 0.5),
            h.update(v2, {"data": 30}, 0.6),
        )
    ]


def _per_resource(values: list[bytes]) -> dict[str, list[bytes]]:
    by_resource: dict[str, list[bytes]] = {}
    for value in values:
        resource = json.loads(value)["resource"]["prefect.resource.id"]
        by_resource.setdefault(resource, []).append(value)
    return by_resource


def _keyed_retries_after_delete() -> list[bytes]:
    """A keyed artifact deleted, then its create again: as it was, and stamped anew."""
    v1 = h.uid(0x53)
    create = h.create(v1, "retried", 0.0)
    return [h.encode(m) for m in (create, h.delete(v1, 0.1), create, h.create(v1, "retried", 0.2))]


@pytest.mark.parametrize("batch_size", [1, 500])
@pytest.mark.parametrize(
    "case", [*h.golden_cases("artifacts"), "keyed-progress", "keyed-retry-after-delete"]
)
def test_an_artifacts_events_keep_the_order_of_its_operations_in_a_backlog(
    case: str, batch_size: int
) -> None:
    """SPEC §4's order per artifact: a keyed create's `artifact.created` comes from the collection
    step, one hop on, so its updates' `artifact.updated` must come from there too, or a backlog
    (every record waiting, the hop behind) publishes them before it. Each artifact's events share
    a record key, so a consumer reads them in publishing order: compared per resource, exactly."""
    if case == "keyed-progress":
        lines = _artifact_keyed_ops()
    elif case == "keyed-retry-after-delete":
        lines = _keyed_retries_after_delete()
    else:
        lines = (GOLDEN / case / "input.jsonl").read_bytes().splitlines()
    driver = Driver(topics(partitions=4, raw_partitions=4), batch_size=batch_size)
    for line in lines:
        driver.produce(driver.topics.raw_artifacts, line, _key(line, "artifacts", "advised"))
    driver.run()  # one backlog: nothing is through before everything has arrived
    pipeline = ArtifactPipeline()
    expected = [e.value for line in lines for e in pipeline.process(line).events]
    worker = _per_resource(driver.events(driver.topics.artifact_events))
    artifacts = {r: v for r, v in _per_resource(expected).items() if r.startswith("prefect.artifact.")}
    assert {r: v for r, v in worker.items() if r.startswith("prefect.artifact.")} == artifacts
    assert driver.events(driver.topics.dead_letters) == []


DAY_US = 86_400_000_000


def _in_partition(partition: int, partitions: int, prefix: str) -> bytes:
    """A key that partition_for puts in `partition`."""
    return next(
        key
        for key in (f"{prefix}-{i}".encode() for i in range(1000))
        if partition_for(key, partitions) == partition
    )


def test_retention_forgets_silent_flow_runs_and_old_tombstones_only() -> None:
    from topology.steps import Stamped, expired_flow_runs, expired_tombstones

    lineage = {
        b"silent": Stamped({}, {"last_seen_us": 1 * DAY_US, "passes_on": {}}).dump(),
        b"recent": Stamped({}, {"last_seen_us": 5 * DAY_US, "passes_on": {}}).dump(),
    }
    memberships = {
        b"live": Stamped({}, ["report", None]).dump(),
        b"deleted-long-ago": Stamped({}, ["report", 1 * DAY_US]).dump(),
        b"deleted-lately": Stamped({}, [None, 5 * DAY_US]).dump(),
    }
    now, retention, lateness = {0: 9 * DAY_US}, 7 * DAY_US, 0
    assert expired_flow_runs(lambda: lineage.items(), now, 1, retention, lateness) == [b"silent"]
    assert expired_tombstones(lambda: memberships.items(), now, 1, retention, lateness) == [
        b"deleted-long-ago"
    ]


@pytest.mark.parametrize(
    ("watermark_us", "expired"),
    [(9 * DAY_US, False), (9 * DAY_US + 1, True)],
    ids=["retention+lateness", "1-us-more"],
)
def test_the_sweep_keeps_state_for_the_allowed_lateness_beyond_the_retention(
    watermark_us: int, expired: bool
) -> None:
    from topology.steps import Stamped, expired_flow_runs, expired_tombstones

    lineage = {b"f": Stamped({}, {"last_seen_us": 1 * DAY_US, "passes_on": {}}).dump()}
    memberships = {
        b"deleted": Stamped({}, ["report", 1 * DAY_US]).dump(),
        b"remembered": Stamped({"r0": [3]}, None, 1 * DAY_US).dump(),
    }
    now, retention, lateness = {0: watermark_us}, 7 * DAY_US, 1 * DAY_US
    assert expired_flow_runs(lambda: lineage.items(), now, 1, retention, lateness) == (
        [b"f"] if expired else []
    )
    assert expired_tombstones(lambda: memberships.items(), now, 1, retention, lateness) == (
        [b"deleted", b"remembered"] if expired else []
    )


def test_each_partitions_keys_are_swept_by_that_partitions_watermark() -> None:
    """A partition draining a backlog (event time days behind) is not swept by the event time of
    the partitions that are live; a partition with no watermark yet is not swept at all."""
    from topology.steps import Stamped, expired_flow_runs, expired_tombstones

    live, backlog, unseen = (_in_partition(p, 3, "flow-run") for p in (0, 1, 2))
    lineage = {
        key: Stamped({}, {"last_seen_us": 1 * DAY_US, "passes_on": {}}).dump()
        for key in (live, backlog, unseen)
    }
    deleted = {key: Stamped({}, ["report", 1 * DAY_US]).dump() for key in (live, backlog, unseen)}
    watermarks = {0: 20 * DAY_US, 1: 3 * DAY_US}
    retention, lateness = 7 * DAY_US, 1 * DAY_US
    assert expired_flow_runs(lambda: lineage.items(), watermarks, 3, retention, lateness) == [live]
    assert expired_tombstones(lambda: deleted.items(), watermarks, 3, retention, lateness) == [live]


def test_a_batch_reports_the_newest_event_time_applied_in_each_partition() -> None:
    """Per state partition (where a record is applied), not per batch: a raw record outside its
    flow run's partition counts there, when it is applied after its hop."""
    t = topics(partitions=2, raw_partitions=2)
    first, second = (
        next(uid for uid in (h.uid(i, "f0") for i in range(100)) if partition_for(uid.encode(), 2) == p)
        for p in (0, 1)
    )

    def record(partition: int, offset: int, flow_run: str, at: int) -> InRecord:
        value = h.encode(h.task_result(h.uid(offset, "7a"), flow_run_id=flow_run, at=at))
        return InRecord(t.raw_task_results, partition, offset, flow_run.encode(), value)

    batch = [
        record(0, 0, first, 10),
        record(0, 1, first, 5),
        record(1, 2, second, 3),
        record(0, 3, second, 99),  # not in its flow run's partition: re-keyed, not applied here
    ]
    applied = steps.apply_lineage(t, batch, lambda key, partition: None, 7 * DAY_US)
    t0_us = (h.T0 - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)
    assert applied.watermarks_us == {0: t0_us + 10_000_000, 1: t0_us + 3_000_000}
    assert [(o.topic, o.partition) for o in applied.outputs if o.topic != t.asset_events] == [
        (t.task_results_by_flow_run, 1)
    ]


def test_a_foreign_record_on_an_internal_topic_is_a_dead_letter_not_a_crash() -> None:
    driver = Driver(topics(partitions=1, raw_partitions=1))
    t = driver.topics
    driver.produce(t.artifacts_by_key, b'{"op": "delete"}', key=None, partition=0)
    driver.produce(t.artifacts_by_id, b"{}", key=b"x", partition=0)
    driver.run()
    dead = [r for (topic, _), log in sorted(driver.logs.items()) if topic == t.dead_letters for r in log]
    assert [(r.value, dict(r.headers)["prefect-dead-letter-code"]) for r in dead] == [
        (b'{"op": "delete"}', b"foreign_record"),
        (b"{}", b"foreign_record"),
    ]
    assert dict(dead[0].headers)["prefect-source-topic"] == t.artifacts_by_key.encode()


def test_a_re_read_update_is_not_applied_again_after_a_newer_one() -> None:
    """A crash re-reads raw records after the last commit; an update re-keyed a second time must
    be recognised by the membership step, or the collection would take the older data back."""
    from tests import spec_helpers as h

    driver = Driver(topics(partitions=4, raw_partitions=4))
    raw = driver.topics.raw_artifacts
    v1, v2 = h.uid(1), h.uid(2)
    messages = [
        h.create(v1, "report", 0.0),
        h.create(v2, "report", 1.0),
        h.update(v1, {"data": "a1"}, 2.0),
        h.update(v1, {"data": "a2"}, 3.0),
    ]
    # Keyed by nothing useful: none is local, every one is re-keyed; the newer update happens to
    # sit on another raw partition than the older one.
    for m, partition in zip(messages, [0, 0, 0, 1], strict=True):
        driver.produce(raw, h.encode(m), key=None, partition=partition)
        driver.run()
    driver.positions[(raw, 0)] = 2  # partition 0 not committed past the older update: re-read
    driver.queue.append((raw, 0))
    driver.run()
    driver.produce(raw, h.encode(h.delete(v2, 4.0)), key=None, partition=0)  # re-point to v1
    driver.run()
    events = [json.loads(v) for v in driver.events(driver.topics.artifact_events)]
    [repoint] = [e for e in events if e["event"] == "prefect.artifact-collection.updated"][-1:]
    assert repoint["related"][0]["prefect.resource.id"] == f"prefect.artifact.{v1}"
    assert repoint["payload"]["data"] == "a2"


def test_a_batch_merges_a_raw_partition_and_the_internal_one_of_the_same_number_by_event_time() -> None:
    """A step reading a raw topic and its internal topic gets both partitions N in one batch:
    two logs, merged by `occurred`. As one lane (they were keyed by partition number alone) a
    delete read first from the raw log went before the earlier create re-keyed onto the internal
    one, and was dropped as the delete of an unknown artifact."""
    t = topics()
    artifact = "0a0a0a0a-0000-4000-8000-000000000001"
    create = json.dumps(
        {"op": "create", "occurred": "2026-01-01T00:00:01Z",
         "artifact": {"id": artifact, "key": "k", "type": "markdown", "data": "x",
                      "created": "2026-01-01T00:00:01Z"}}
    ).encode()
    delete = json.dumps(
        {"op": "delete", "occurred": "2026-01-01T00:00:02Z", "artifact_id": artifact}
    ).encode()
    raw_delete = InRecord(t.raw_artifacts, 1, 7, artifact.encode(), delete, ())
    rekeyed_create = InRecord(t.artifacts_by_id, 1, 3, artifact.encode(), create, ())
    merged = [r for r, _ in in_event_time_order([raw_delete, rekeyed_create], parse_artifact_op)]
    assert merged == [rekeyed_create, raw_delete]


def test_a_delete_without_membership_is_reported_with_its_source_and_id() -> None:
    """Nothing is emitted for it, and the worker logs where it came from: in a run whose input
    created the artifact, such a line means the memberships step lacked state it should have."""
    t = topics(partitions=1, raw_partitions=1)  # every raw record is in its artifact's partition
    known, unknown = ("0a0a0a0a-0000-4000-8000-00000000000" + d for d in "12")
    create = json.dumps(
        {"op": "create", "occurred": "2026-01-01T00:00:01Z",
         "artifact": {"id": known, "key": None, "type": "markdown", "data": "x",
                      "created": "2026-01-01T00:00:01Z"}}
    ).encode()
    deletes = [
        json.dumps({"op": "delete", "occurred": f"2026-01-01T00:00:0{i}Z", "artifact_id": a}).encode()
        for i, a in ((2, unknown), (3, known), (4, known))
    ]
    batch = [
        InRecord(t.raw_artifacts, 0, offset, None, value, ())
        for offset, value in enumerate([create, *deletes])
    ]
    result = steps.apply_memberships(t, batch, lambda key, partition: None)
    assert result.unknown_deletes == [
        UnknownDelete(Source(t.raw_artifacts, 0, 1), unknown.encode(), steps.NEVER_SEEN),
        UnknownDelete(Source(t.raw_artifacts, 0, 3), known.encode(), steps.DELETED_ALREADY),
    ]
    assert [out.topic for out in result.outputs] == [t.artifact_events]  # its created event only


def _half_limit_updates_then_deletes() -> list[dict[str, object]]:
    """Each PATCH fits in its `artifact.updated` event; together they make the latest's collection
    event too large, so the first delete is a dead letter (SPEC §6) and the artifact lives on."""
    from tests import spec_helpers as h

    big = "x" * 800_000
    v1 = h.uid(1)
    return [
        h.create(v1, "report", 0.0),
        h.update(v1, {"description": big}, 1.0),
        h.update(v1, {"data": big}, 2.0),
        h.delete(v1, 3.0),
        h.update(v1, {"data": "small", "description": "small"}, 4.0),
        h.delete(v1, 5.0),
    ]


@pytest.mark.parametrize("partitions", [1, 4])
def test_a_dead_lettered_delete_leaves_the_artifact_in_its_collection(partitions: int) -> None:
    """All or nothing across the two steps: the memberships step has already recorded the delete
    when the collections step refuses it, yet the later PATCH and delete still reach the
    collection, which emits what the offline pipeline emits."""
    from tests import spec_helpers as h

    messages = _half_limit_updates_then_deletes()
    offline = h.outcomes(ArtifactPipeline(), messages)
    assert [o.dead_letter.code if o.dead_letter else None for o in offline] == [
        None, None, None, "event_too_large", None, None,
    ]
    driver = Driver(topics(partitions=partitions, raw_partitions=partitions))
    for m in messages:
        driver.produce(driver.topics.raw_artifacts, h.encode(m), key=h.uid(1).encode())
        driver.run()
    emitted = driver.events(driver.topics.artifact_events)
    assert sorted(emitted) == sorted(e.value for o in offline for e in o.events)
    assert [dict(r.headers)["prefect-dead-letter-code"] for r in _dead_letters(driver)] == [
        b"event_too_large"
    ]
    last = json.loads(offline[-1].events[-1].value)
    assert (last["event"], last["payload"]["data"], last["payload"]["description"]) == (
        "prefect.artifact-collection.deleted", "small", "small",
    )


@pytest.mark.parametrize("partitions", [1, 4])
def test_a_retried_create_the_collections_step_refused_is_refused_again(partitions: int) -> None:
    """The memberships step has recorded the artifact when the collections step refuses its create
    (its collection event over 1.5 MB); a producer's retry of the same bytes must be refused again,
    as offline, not taken for a retry of an accepted create (SPEC §6: replays give the same)."""
    from tests import spec_helpers as h

    big = h.create(h.uid(1), "report", 1.0, data="x" * 1_500_000)
    small = h.create(h.uid(2), "report", 2.0)
    messages = [big, big, small, small]
    offline = h.outcomes(ArtifactPipeline(), messages)
    assert [o.dead_letter.code if o.dead_letter else None for o in offline] == [
        "event_too_large", "event_too_large", None, None,
    ]
    driver = Driver(topics(partitions=partitions, raw_partitions=partitions))
    for m in messages:
        driver.produce(driver.topics.raw_artifacts, h.encode(m), key=m["artifact"]["id"].encode())
        driver.run()
    assert driver.events(driver.topics.artifact_events) == [e.value for o in offline for e in o.events]
    assert [dict(r.headers)["prefect-dead-letter-code"] for r in _dead_letters(driver)] == [
        b"event_too_large", b"event_too_large"
    ]


def test_a_second_delete_of_a_keyed_artifact_is_an_unknown_delete_of_its_collection() -> None:
    """Handed on despite the tombstone (the collections step decides, see streams.membership), it
    is reported there with the artifact's id, and emits nothing."""
    from tests import spec_helpers as h

    driver = Driver(topics(partitions=1, raw_partitions=1))
    t = driver.topics
    v1 = h.uid(1)
    for m in (h.create(v1, "report", 0.0), h.delete(v1, 1.0)):
        driver.produce(t.raw_artifacts, h.encode(m), key=v1.encode())
    driver.run()
    before = list(driver.events(t.artifact_events))
    again = h.encode(h.delete(v1, 2.0))
    memberships = steps.apply_memberships(t, [InRecord(t.raw_artifacts, 0, 2, v1.encode(), again)],
                                          lambda key, _p: driver.tables["memberships"].get(key))
    assert memberships.unknown_deletes == [] and memberships.emitted == {}
    [handed_on] = [o for o in memberships.outputs if o.topic == t.artifacts_by_key]
    collections = steps.apply_collections(
        t, [InRecord(t.artifacts_by_key, 0, 9, handed_on.key, handed_on.value, tuple(handed_on.headers))],
        lambda key, _p: driver.tables["collections"].get(key),
    )
    assert collections.outputs == []
    [(_, marked)] = collections.writes.values()  # only marked: a replay after a re-create is skipped
    stored = driver.tables["collections"][b"report"]
    assert steps.Stamped.load(marked).state == steps.Stamped.load(stored).state
    assert collections.unknown_deletes == [
        UnknownDelete(Source(t.raw_artifacts, 0, 2, v1.encode()), v1.encode(), steps.NOT_A_MEMBER)
    ]
    assert len(before) == 3  # collection created, artifact created, collection deleted


def _dead_letters(driver: Driver) -> list[InRecord]:
    return [r for (topic, _), log in sorted(driver.logs.items()) if topic == driver.topics.dead_letters
            for r in log]


def _re_read(driver: Driver, topic: str, partition: int, offset: int) -> None:
    """A crash before `offset` was committed: the partition is read again from there."""
    driver.positions[(topic, partition)] = offset
    driver.queue.append((topic, partition))
    driver.run()


@pytest.mark.parametrize(
    "create_partition", ["same", "other"], ids=["create-same-partition", "create-elsewhere"]
)
@pytest.mark.parametrize("early", ["delete", "update"])
def test_an_operation_before_its_create_is_not_applied_when_replayed_after_it(
    early: str, create_partition: str
) -> None:
    """It changed nothing the first time (the artifact was unknown), and must not the second,
    when its record holds the create: every message of the memberships step is marked."""
    from tests import spec_helpers as h
    from topology.records import partition_for

    v1 = h.uid(1)
    first = h.delete(v1, 0.5) if early == "delete" else h.update(v1, {"data": "early"}, 0.5)
    outcomes = []
    for crash in (False, True):
        driver = Driver(topics(partitions=4, raw_partitions=4))
        raw = driver.topics.raw_artifacts
        local = partition_for(v1.encode(), 4)
        driver.produce(raw, h.encode(first), partition=local)
        driver.run()
        driver.produce(raw, h.encode(h.create(v1, "report", 1.0)),
                       partition=local if create_partition == "same" else (local + 1) % 4)
        driver.run()
        if crash:
            _re_read(driver, raw, local, 0)
        outcomes.append((driver.events(driver.topics.artifact_events),
                         steps.Stamped.load(driver.tables["memberships"][v1.encode()]).state))
    assert outcomes[1] == outcomes[0]
    assert outcomes[0][1] == ["report", None]  # live


def test_a_delete_its_collection_refused_is_not_applied_when_replayed_after_a_later_change() -> None:
    """The collections step dead-letters the delete (its event over 1.5 MB); a later PATCH makes
    the event small. Re-read after the PATCH, the delete is skipped, not applied."""
    from tests import spec_helpers as h

    driver = Driver(topics(partitions=1, raw_partitions=1))
    t = driver.topics
    messages = _half_limit_updates_then_deletes()[:5]  # ... delete (refused), small PATCH
    for m in messages:
        driver.produce(t.raw_artifacts, h.encode(m), key=h.uid(1).encode())
        driver.run()
    before = driver.events(t.artifact_events)
    refused = [r.offset for r in driver.logs[(t.artifacts_by_key, 0)]
               if json.loads(r.value or b"{}").get("op") == "delete"]
    _re_read(driver, t.artifacts_by_key, 0, refused[0])
    assert driver.events(t.artifact_events) == before
    assert len(_dead_letters(driver)) == 1


def test_a_retried_create_is_not_applied_when_replayed_after_its_artifacts_delete() -> None:
    """The retry changed nothing at the collections step (a member already); re-read after the
    delete, it must not bring the artifact back as a new collection (found by the crash property
    test of tests/test_collection_pages.py)."""
    from tests import spec_helpers as h

    driver = Driver(topics(partitions=1, raw_partitions=1))
    t = driver.topics
    create = h.create(h.uid(1), "report", 1.0)
    for m in (create, create, h.delete(h.uid(1), 2.0)):
        driver.produce(t.raw_artifacts, h.encode(m), key=h.uid(1).encode())
        driver.run()
    before = driver.events(t.artifact_events)
    retry = [r.offset for r in driver.logs[(t.artifacts_by_key, 0)] if b'"create"' in (r.value or b"")][1]
    _re_read(driver, t.artifacts_by_key, 0, retry)
    assert driver.events(t.artifact_events) == before
    assert [json.loads(v)["event"] for v in before] == [
        "prefect.artifact-collection.created", "prefect.artifact.created", "prefect.artifact.created",
        "prefect.artifact-collection.deleted",
    ]


def test_a_record_that_only_remembers_messages_expires_with_the_retention() -> None:
    from topology.steps import Stamped, expired_tombstones

    memberships = {
        b"remembered-long-ago": Stamped({"r0": [3]}, None, 1 * DAY_US).dump(),
        b"remembered-lately": Stamped({"r0": [4]}, None, 5 * DAY_US).dump(),
        b"live": Stamped({"r0": [5]}, ["report", None]).dump(),
    }
    assert expired_tombstones(lambda: memberships.items(), {0: 9 * DAY_US}, 1, 7 * DAY_US, 0) == [
        b"remembered-long-ago"
    ]


@pytest.mark.parametrize("swept", [False, True], ids=["tombstone-kept", "tombstone-swept"])
@pytest.mark.parametrize(("days_after_delete", "names"), [
    (6.0, ["prefect.artifact.created"]),
    (7.5, ["prefect.artifact-collection.created", "prefect.artifact.created"]),
], ids=["within-retention", "past-retention"])
def test_a_re_created_artifact_id_sees_its_tombstone_by_its_own_time_not_the_sweeps(
    swept: bool, days_after_delete: float, names: list[str]
) -> None:
    """A tombstone counts for the retention after its delete, by the later message's `occurred`
    (as lineage does): whether the sweep has removed it yet changes no event, so a replay gives
    what the first pass gave (SPEC §6). The sweep removes it only later still (the allowed
    lateness, streams.retention), so it never matters within the retention."""
    from tests import spec_helpers as h

    day = 86_400.0
    v1 = h.uid(1)
    driver = Driver(topics(partitions=1, raw_partitions=1))
    t = driver.topics
    for m in (h.create(v1, "report", 0.0), h.delete(v1, 1.0)):
        driver.produce(t.raw_artifacts, h.encode(m), key=v1.encode())
        driver.run()
    if swept and days_after_delete > 7:
        del driver.tables["memberships"][v1.encode()]
    again = h.create(v1, "report", 1.0 + days_after_delete * day)
    before = len(driver.events(t.artifact_events))
    driver.produce(t.raw_artifacts, h.encode(again), key=v1.encode())
    driver.run()
    worker = [json.loads(v)["event"] for v in driver.events(t.artifact_events)[before:]]
    offline = h.outcomes(ArtifactPipeline(), [h.create(v1, "report", 0.0), h.delete(v1, 1.0), again])[-1]
    assert worker == [json.loads(e.value)["event"] for e in offline.events] == names


def _worker_and_offline(
    messages: list[dict[str, object]], batch_size: int
) -> tuple[list[bytes], list[bytes]]:
    from tests import spec_helpers as h

    driver = Driver(topics(partitions=1, raw_partitions=1), batch_size=batch_size)
    for m in messages:
        artifact_id = m.get("artifact_id") or m["artifact"]["id"]  # type: ignore[index]
        driver.produce(driver.topics.raw_artifacts, h.encode(m), key=str(artifact_id).encode())
    driver.run()
    offline = [e.value for o in h.outcomes(ArtifactPipeline(), messages) for e in o.events]
    return driver.events(driver.topics.artifact_events), offline


@pytest.mark.parametrize("batch_size", [1, 500])
@pytest.mark.parametrize("case", ["delete-then-create", "create-under-another-key"])
def test_after_a_create_its_collection_refused_worker_and_offline_agree(case: str, batch_size: int) -> None:
    """The memberships step has recorded the artifact when the collections step refuses its
    create; the offline pipeline keeps that record too, so later operations on the id meet the
    same state in both (found by a review: the offline pipeline used to drop it)."""
    from tests import spec_helpers as h

    x, big = h.uid(1), "x" * 1_500_000
    later = (
        [h.delete(x, 2.0), h.create(x, "k", 3.0)]
        if case == "delete-then-create"
        else [h.create(x, "k2", 2.0)]
    )
    worker, offline = _worker_and_offline([h.create(x, "k", 1.0, data=big), *later], batch_size)
    assert worker == offline


def test_an_update_after_its_tombstone_expired_keeps_its_place_behind_the_artifacts_events() -> None:
    """Handed on to the collections step like any update of a keyed artifact, it cannot overtake
    the create and delete that the same batch hands on (SPEC §4 order, per resource)."""
    from tests import spec_helpers as h

    x, day = h.uid(1), 86_400.0
    messages = [h.create(x, "k", 0.0), h.delete(x, 1.0), h.update(x, {"data": "d"}, 2.0 + 8 * day)]
    worker, offline = _worker_and_offline(messages, batch_size=500)
    assert [json.loads(v)["event"] for v in worker] == [
        "prefect.artifact-collection.created", "prefect.artifact.created",
        "prefect.artifact-collection.deleted", "prefect.artifact.updated",
    ]
    assert worker == offline


@pytest.mark.parametrize("batch_size", [1, 500])
@pytest.mark.parametrize("retry", ["byte-identical", "stamped-anew"])
def test_a_retried_create_after_its_delete_keeps_its_place_behind_the_artifacts_events(
    retry: str, batch_size: int
) -> None:
    """The create and the delete of a keyed artifact go out from the collections step, one hop
    on; a retry of its create after the delete must too, or a backlog publishes its
    `artifact.created` before theirs (SPEC §4 order). One partition: publishing order is kept."""
    from tests import spec_helpers as h

    x = h.uid(1)
    create = h.create(x, "k", 0.0)
    again = create if retry == "byte-identical" else h.create(x, "k", 2.0)
    worker, offline = _worker_and_offline([create, h.delete(x, 1.0), again], batch_size)
    assert [json.loads(v)["event"] for v in worker] == [
        "prefect.artifact-collection.created", "prefect.artifact.created",
        "prefect.artifact-collection.deleted", "prefect.artifact.created",
    ]
    assert worker == offline


def test_a_retried_create_after_its_delete_is_replayed_exactly() -> None:
    """Handed on marked as deleted, the retry changes nothing at the collections step and is
    marked there: applied again before the batch's state was written it gives the same bytes,
    after it nothing; a crash before either step committed changes no event (SPEC §6)."""
    from tests import spec_helpers as h

    x = h.uid(1)
    create = h.create(x, "k", 0.0)
    messages = [create, h.delete(x, 1.0), create]
    driver = Driver(topics(partitions=1, raw_partitions=1), batch_size=500)
    t = driver.topics
    for m in messages:
        driver.produce(t.raw_artifacts, h.encode(m), key=x.encode())
    driver.run()
    offline = [e.value for o in h.outcomes(ArtifactPipeline(), messages) for e in o.events]
    handed_on = list(driver.logs[(t.artifacts_by_key, 0)])
    assert [dict(r.headers).get("prefect-artifact-deleted") for r in handed_on] == [None, None, b"1"]

    table: dict[bytes, bytes] = {}
    first, second = (steps.apply_collections(t, handed_on, lambda k, _p: table.get(k)) for _ in "12")
    assert [o.value for o in first.outputs] == offline  # the memberships step emitted nothing
    assert (second.outputs, second.writes, second.writes_before, second.deletes_after) == (
        first.outputs, first.writes, first.writes_before, first.deletes_after
    )
    table.update({k: v for writes in (first.writes_before, first.writes) for k, (_, v) in writes.items()})
    third = steps.apply_collections(t, handed_on, lambda k, _p: table.get(k))
    assert (third.outputs, third.writes, third.replays_skipped) == ([], {}, 3)

    _re_read(driver, t.raw_artifacts, 0, 0)
    _re_read(driver, t.artifacts_by_key, 0, 0)
    assert driver.events(t.artifact_events) == offline


@pytest.mark.parametrize("raw_key", ["artifact-id", "none"], ids=["applied-in-place", "re-keyed"])
def test_a_deleted_marker_on_a_raw_record_is_ignored(raw_key: str) -> None:
    """Only the worker's own hop to the collections step may say that an artifact was deleted:
    a producer that puts the marker on a raw create cannot keep it out of its collection."""
    from tests import spec_helpers as h

    messages = [h.create(h.uid(1), "k", 0.0), h.create(h.uid(2), "k", 1.0)]
    driver = Driver(topics(partitions=4, raw_partitions=4), batch_size=500)
    t = driver.topics
    for m in messages:
        key = m["artifact"]["id"].encode() if raw_key == "artifact-id" else None  # type: ignore[index]
        driver.produce(t.raw_artifacts, h.encode(m), key=key, headers=[("prefect-artifact-deleted", b"1")])
    driver.run()
    offline = [e.value for o in h.outcomes(ArtifactPipeline(), messages) for e in o.events]
    assert sorted(driver.events(t.artifact_events)) == sorted(offline)
    assert sum(b"artifact-collection" in v for v in offline) == 2
    handed_on = [r for (topic, _), log in driver.logs.items() if topic == t.artifacts_by_key for r in log]
    assert len(handed_on) == 2 and not any("prefect-artifact-deleted" in dict(r.headers) for r in handed_on)


def test_the_collections_step_honours_the_deleted_marker_on_its_hop_only() -> None:
    """The same fresh create with every header of the hop: read from the hop it is taken for a
    retry of a deleted artifact (its event, no state); read from a raw topic, as a create."""
    from tests import spec_helpers as h
    from topology.records import via_headers

    t = topics(partitions=1, raw_partitions=1)
    value = h.encode(h.create(h.uid(1), "k", 0.0))
    marker = ("prefect-artifact-deleted", b"1")
    headers = (*Source(t.raw_artifacts, 0, 0).headers(), *via_headers("r0", 0), marker)
    names = {}
    for topic in (t.artifacts_by_key, t.raw_artifacts):
        record = InRecord(topic, 0, 0, b"k", value, headers)
        result = steps.apply_collections(t, [record], lambda _k, _p: None)
        names[topic] = [json.loads(o.value or b"")["event"] for o in result.outputs]
    assert names == {
        t.artifacts_by_key: ["prefect.artifact.created"],
        t.raw_artifacts: ["prefect.artifact-collection.created", "prefect.artifact.created"],
    }
