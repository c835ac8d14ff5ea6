"""SPEC §4 Artifact events: the table, case by case, with exact events."""

from __future__ import annotations

import copy
import json

import pytest
import spec_helpers as h

from streams.collection import collection_id
from streams.membership import Membership
from streams.pipeline import ArtifactPipeline

V1, V2, V3, V4, U = (h.uid(n) for n in (0x1, 0x2, 0x3, 0x4, 0xDD))
KEY = "report"
CREATED = "prefect.artifact-collection.created"
UPDATED = "prefect.artifact-collection.updated"
DELETED = "prefect.artifact-collection.deleted"
ART_CREATED = "prefect.artifact.created"
ART_UPDATED = "prefect.artifact.updated"


def coll_event(name, message, at, latest, cid=None, *, data=None, description=None):
    """Expected collection event (id stripped): `latest` is the create message of the latest."""
    art = latest["artifact"]
    cid = cid or collection_id(art["key"], art["id"])
    related = [h.rel("prefect.artifact." + art["id"], "latest")]
    if art["flow_run_id"]:
        related.append(h.rel("prefect.flow-run." + art["flow_run_id"], "flow-run"))
    if art["task_run_id"]:
        related.append(h.rel("prefect.task-run." + art["task_run_id"], "task-run"))
    return {
        "occurred": h.ts(at),
        "event": name,
        "resource": {
            "prefect.resource.id": "prefect.artifact-collection." + cid,
            "prefect.resource.name": art["key"],
        },
        "related": related,
        "payload": {
            "key": art["key"],
            "type": art["type"],
            "data": art["data"] if data is None else data,
            "description": art["description"] if description is None else description,
        },
        "follows": None,
    }


def created_event(message):
    art = message["artifact"]
    resource = {"prefect.resource.id": "prefect.artifact." + art["id"]}
    if art["key"]:  # Prefect's client: `if created.key:`
        resource["prefect.resource.name"] = art["key"]
    return {
        "occurred": message["occurred"],
        "event": ART_CREATED,
        "resource": resource,
        "related": h.ctx_related(message.get("context")),
        "payload": {"key": art["key"], "type": art["type"], "description": art["description"]},
        "follows": None,
    }


def updated_event(message, payload):
    return {
        "occurred": message["occurred"],
        "event": ART_UPDATED,
        "resource": {"prefect.resource.id": "prefect.artifact." + message["artifact_id"]},
        "related": h.ctx_related(message.get("context")),
        "payload": payload,
        "follows": None,
    }


class Run:
    """One pipeline fed message by message; `feed` returns that message's events (ids stripped)."""

    def __init__(self):
        self.pipeline = ArtifactPipeline()
        self.last = None

    def feed(self, message):
        self.last = self.pipeline.process(h.encode(message))
        assert self.last.dead_letter is None, self.last.dead_letter
        return h.strip_ids(h.parsed(self.last.events))

    def state(self):
        p = self.pipeline
        return copy.deepcopy((p.memberships, p.collections, p.members, p.versions))


# --- create -----------------------------------------------------------------------------------


def test_keyed_create_starts_a_collection_then_artifact_created():
    run = Run()
    c1 = h.create(V1, KEY, 0)
    assert run.feed(c1) == [coll_event(CREATED, c1, 0, c1), created_event(c1)]


def test_second_later_version_updates_the_collection():
    run = Run()
    c1, c2 = h.create(V1, KEY, 0), h.create(V2, KEY, 10, flow_run_id=h.uid(0x77), task_run_id=h.uid(0x78))
    run.feed(c1)
    assert run.feed(c2) == [coll_event(UPDATED, c2, 10, c2, collection_id(KEY, V1)), created_event(c2)]


def test_older_version_arriving_later_only_creates_and_keeps_the_latest():
    run = Run()
    newer = h.create(V2, KEY, 0, created=10)
    older = h.create(V1, KEY, 5, created=1)  # smaller `created`, seen later
    run.feed(newer)
    assert run.feed(older) == [created_event(older)]
    coll = run.pipeline.collections[KEY]
    assert coll.latest == V2 and set(run.pipeline.members[KEY]) == {V1, V2}
    # and the older one really is a member: deleting the latest re-points to it
    assert run.feed(h.delete(V2, 20)) == [
        coll_event(UPDATED, None, 20, older, collection_id(KEY, V2))
    ]


@pytest.mark.parametrize("order", ["small-id-first", "big-id-first"])
def test_equal_created_ties_go_to_the_greater_id(order):
    small, big = h.create(V1, KEY, 0, created=5), h.create(V2, KEY, 1, created=5)
    first, second = (small, big) if order == "small-id-first" else (big, small)
    run = Run()
    run.feed(first)
    events = run.feed(second)
    assert run.pipeline.collections[KEY].latest == V2
    if order == "small-id-first":
        assert h.names(events) == [UPDATED, ART_CREATED]
        assert events[0]["related"][0] == h.rel("prefect.artifact." + V2, "latest")
    else:
        assert h.names(events) == [ART_CREATED]


@pytest.mark.parametrize(
    "earlier, later",
    [
        ("2026-11-24T10:00:00.1234561Z", "2026-11-24T10:00:00.1234569Z"),
        ("2026-11-24T10:00:00.123456Z", "2026-11-24T10:00:00.123456000000000000000000000001Z"),
        ("2026-11-24T10:00:00.1234569Z", "2026-11-24T10:00:00.123457Z"),
        ("1969-12-31T23:59:59.9999994Z", "1969-12-31T23:59:59.9999995Z"),
        ("2026-11-24T11:00:00.0000001+01:00", "2026-11-24T10:00:00.0000002Z"),
    ],
)
def test_created_is_compared_to_its_last_digit(earlier, later):
    """Python's datetime keeps microseconds; the ranking keeps every digit the input gave."""
    run = Run()
    first, second = h.create(V2, KEY, 0, created=later), h.create(V1, KEY, 1, created=earlier)
    run.feed(first)
    assert run.feed(second) == [created_event(second)]  # the greater id, but created earlier
    assert run.pipeline.collections[KEY].latest == V2


def test_created_equal_to_the_last_digit_ties_whatever_the_trailing_zeros():
    run = Run()
    run.feed(h.create(V2, KEY, 0, created="2026-11-24T10:00:00.1234565Z"))
    second = h.create(V3, KEY, 1, created="2026-11-24T10:00:00.123456500Z")
    assert h.names(run.feed(second)) == [UPDATED, ART_CREATED]  # a tie: the greater id wins
    assert run.pipeline.collections[KEY].latest == V3


def test_a_created_before_1970_ranks_below_every_later_one():
    """`created` only ranks, so an instant the event ids could not carry is still a member."""
    run = Run()
    later, ancient = h.create(V1, KEY, 0, created=-1), h.create(V2, KEY, 1)
    ancient["artifact"]["created"] = "1969-07-20T20:17:40Z"
    assert run.feed(later) == [coll_event(CREATED, later, 0, later), created_event(later)]
    assert run.feed(ancient) == [created_event(ancient)]
    assert run.feed(h.delete(V1, 2)) == [coll_event(UPDATED, None, 2, ancient, collection_id(KEY, V1))]


def test_latest_is_decided_by_event_time_not_arrival_order():
    creates = [h.create(V1, KEY, 0, created=3), h.create(V2, KEY, 1, created=1),
               h.create(V3, KEY, 2, created=2)]
    finals = set()
    for order in ([0, 1, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]):
        run = Run()
        for i in order:
            run.feed(creates[i])
        finals.add(run.pipeline.collections[KEY].latest)
        # deleting the latest always re-points to the same next one
        assert run.feed(h.delete(V1, 9))[0]["related"][0] == h.rel("prefect.artifact." + V3, "latest")
    assert finals == {V1}


def test_unkeyed_create_only_artifact_created_without_name():
    run = Run()
    u = h.create(U, key=None)
    events = run.feed(u)
    assert events == [created_event(u)]
    assert "prefect.resource.name" not in events[0]["resource"]
    description = u["artifact"]["description"]
    assert events[0]["payload"] == {"key": None, "type": "markdown", "description": description}
    assert run.pipeline.collections == {}


def test_an_empty_key_names_its_collection_but_not_its_artifact():
    """Prefect's server keeps a collection for any key that is not None, named "" too; its
    client names artifact.created only after a non-empty key."""
    run = Run()
    c = h.create(V1, "")
    events = run.feed(c)
    assert events == [coll_event(CREATED, c, 0, c), created_event(c)]
    assert events[0]["resource"]["prefect.resource.name"] == ""
    assert events[1]["resource"] == {"prefect.resource.id": "prefect.artifact." + V1}
    assert events[1]["payload"]["key"] == ""
    later = h.create(V2, "", 1)
    expected = coll_event(UPDATED, later, 1, later, collection_id("", V1))
    assert run.feed(later) == [expected, created_event(later)]


def test_artifact_created_payload_keeps_nulls_and_never_data():
    run = Run()
    c = h.create(V1, KEY, type=None, description=None, data={"big": "x" * 100})
    [_, created] = run.feed(c)
    assert created["payload"] == {"key": KEY, "type": None, "description": None}


def test_duplicate_create_emits_artifact_created_again_state_unchanged():
    run = Run()
    c1, c2 = h.create(V1, KEY, 0), h.create(V2, KEY, 10)
    run.feed(c1)
    run.feed(c2)
    before = run.state()
    for message in (c2, c1, c2):  # producer retries, the latest one and an older one
        assert run.feed(message) == [created_event(message)]
        assert run.state() == before


def test_duplicate_unkeyed_create_emits_again():
    run = Run()
    u = h.create(U, key=None)
    first = run.feed(u)
    assert run.feed(u) == first


# --- update -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, payload",
    [
        ({}, {}),
        ({"data": {"rows": [1, 2]}}, {"data": {"rows": [1, 2]}}),
        ({"description": None}, {"description": None}),
        ({"data": None}, {"data": None}),
        ({"metadata_": {"a": "b"}}, {"metadata_": {"a": "b"}}),
        ({"metadata_": None, "description": "d", "data": 0},
         {"data": 0, "description": "d", "metadata_": None}),  # Prefect's field order
        ({"data": "x", "key": "not updatable", "type": "nope"}, {"data": "x"}),
    ],
    ids=["empty", "data", "description-null", "data-null", "metadata", "all-three", "extras"],
)
@pytest.mark.parametrize("known", [True, False], ids=["known", "unknown"])
def test_update_payload_is_exactly_the_changes(changes, payload, known):
    run = Run()
    if known:
        run.feed(h.create(V1, KEY))
    message = h.update(V1, changes, 3)
    events = run.feed(message)
    assert events == [updated_event(message, payload)]
    assert list(events[0]["payload"]) == list(payload)
    assert events[0]["resource"] == {"prefect.resource.id": "prefect.artifact." + V1}


def test_update_of_latest_changes_later_collection_payloads_but_emits_no_collection_event():
    run = Run()
    c1, c2 = h.create(V1, KEY, 0), h.create(V2, KEY, 10)
    run.feed(c1)
    assert h.names(run.feed(h.update(V1, {"data": "patched", "description": "new"}, 5))) == [
        ART_UPDATED
    ]
    run.feed(c2)
    assert h.names(run.feed(h.update(V2, {"description": None, "metadata_": {"m": "1"}}, 11))) == [
        ART_UPDATED
    ]
    cid = collection_id(KEY, V1)
    # deleting v2 re-points to v1 with its patched data/description ...
    assert run.feed(h.delete(V2, 20)) == [
        coll_event(UPDATED, None, 20, c1, cid, data="patched", description="new")
    ]
    # ... and deleting v1 last describes it, patched
    assert run.feed(h.delete(V1, 21)) == [
        coll_event(DELETED, None, 21, c1, cid, data="patched", description="new")
    ]


def test_update_of_latest_reflected_in_deleted_event():
    run = Run()
    c1 = h.create(V1, KEY, 0)
    run.feed(c1)
    run.feed(h.update(V1, {"description": None}, 1))
    [deleted] = run.feed(h.delete(V1, 2))
    assert deleted["payload"] == {"key": KEY, "type": "markdown", "data": c1["artifact"]["data"],
                                  "description": None}


def test_update_of_a_deleted_artifact_still_emits_updated():
    run = Run()
    run.feed(h.create(V1, KEY, 0))
    run.feed(h.delete(V1, 1))
    message = h.update(V1, {"data": 2}, 2)
    assert run.feed(message) == [updated_event(message, {"data": 2})]
    assert KEY not in run.pipeline.collections


# --- delete -----------------------------------------------------------------------------------


def _three_versions(run):
    c1 = h.create(V1, KEY, 0)
    c2 = h.create(V2, KEY, 1, flow_run_id=h.uid(0x22), task_run_id=h.uid(0x23), data={"v": 2})
    c3 = h.create(V3, KEY, 2)
    for c in (c1, c2, c3):
        run.feed(c)
    return c1, c2, c3


def test_delete_of_a_non_latest_emits_nothing():
    run = Run()
    _three_versions(run)
    assert run.feed(h.delete(V1, 5)) == []
    assert run.last.unknown_delete is False
    assert set(run.pipeline.members[KEY]) == {V2, V3}


def test_delete_of_latest_repoints_to_newest_remaining_with_its_runs():
    run = Run()
    _, c2, _ = _three_versions(run)
    run.feed(h.delete(V1, 5))
    expected = coll_event(UPDATED, None, 6, c2, collection_id(KEY, V1))
    assert expected["related"] == [
        h.rel("prefect.artifact." + V2, "latest"),
        h.rel("prefect.flow-run." + h.uid(0x22), "flow-run"),
        h.rel("prefect.task-run." + h.uid(0x23), "task-run"),
    ]
    assert run.feed(h.delete(V3, 6)) == [expected]


def test_delete_of_the_last_one_deletes_the_collection_describing_it():
    run = Run()
    _, c2, _ = _three_versions(run)
    run.feed(h.delete(V1, 5))
    run.feed(h.delete(V3, 6))
    assert run.feed(h.delete(V2, 7)) == [coll_event(DELETED, None, 7, c2, collection_id(KEY, V1))]
    assert run.pipeline.collections == {}


def test_recreate_after_full_delete_starts_a_new_collection_with_a_new_id():
    run = Run()
    c1 = h.create(V1, KEY, 0)
    run.feed(c1)
    [deleted] = run.feed(h.delete(V1, 1))
    c4 = h.create(V4, KEY, 2)
    events = run.feed(c4)
    assert events == [coll_event(CREATED, c4, 2, c4, collection_id(KEY, V4)), created_event(c4)]
    old = deleted["resource"]["prefect.resource.id"]
    new = events[0]["resource"]["prefect.resource.id"]
    assert old != new


def test_collection_ids_are_deterministic():
    messages = [h.create(V1, KEY, 0), h.delete(V1, 1), h.create(V4, KEY, 2), h.create(V2, "other", 3)]
    first = h.run_artifacts(messages)
    second = h.run_artifacts(messages)
    assert first == second
    ids = [e["resource"]["prefect.resource.id"] for e in first if "collection" in e["event"]]
    assert ids == [
        "prefect.artifact-collection." + collection_id(KEY, V1),
        "prefect.artifact-collection." + collection_id(KEY, V1),
        "prefect.artifact-collection." + collection_id(KEY, V4),
        "prefect.artifact-collection." + collection_id("other", V2),
    ]
    assert len(set(ids)) == 3


def test_collection_id_depends_on_key_and_first_artifact():
    assert collection_id("a", V1) == collection_id("a", V1)
    assert len({collection_id("a", V1), collection_id("b", V1), collection_id("a", V2)}) == 3
    # no ambiguity from concatenation
    assert collection_id("a", V1) != collection_id("a\x00", V1)


def test_collection_id_stays_while_the_collection_lives_even_when_first_is_deleted():
    run = Run()
    run.feed(h.create(V1, KEY, 0))
    run.feed(h.create(V2, KEY, 1))
    run.feed(h.delete(V1, 2))  # the artifact that started it is gone, the collection lives
    events = run.feed(h.create(V3, KEY, 3))
    assert events[0]["resource"]["prefect.resource.id"] == (
        "prefect.artifact-collection." + collection_id(KEY, V1)
    )


@pytest.mark.parametrize(
    "before",
    [[], [h.create(V1, KEY, 0), h.delete(V1, 1)]],
    ids=["never-seen", "already-deleted"],
)
def test_delete_of_an_unknown_artifact_emits_nothing_and_is_counted(before):
    run = Run()
    for m in before:
        run.feed(m)
    state = run.state()
    assert run.feed(h.delete(V1, 5)) == []
    assert run.last.unknown_delete is True
    assert run.last.dead_letter is None
    assert run.state() == state


def test_delete_of_an_unkeyed_artifact_emits_nothing_and_is_not_unknown():
    run = Run()
    run.feed(h.create(U, key=None))
    assert run.feed(h.delete(U, 1)) == []
    assert run.last.unknown_delete is False


def test_keys_are_independent():
    run = Run()
    a, b = h.create(V1, "a", 0), h.create(V2, "b", 1)
    assert h.names(run.feed(a)) == [CREATED, ART_CREATED]
    assert h.names(run.feed(b)) == [CREATED, ART_CREATED]
    assert run.feed(h.delete(V1, 2)) == [coll_event(DELETED, None, 2, a)]
    assert set(run.pipeline.collections) == {"b"}


# --- all or nothing ---------------------------------------------------------------------------


def test_create_whose_collection_event_is_too_large_is_a_dead_letter_and_never_happened():
    big = h.create(V1, KEY, 0, data="x" * 1_500_000)  # artifact.created fits, the collection doesn't
    run = Run()
    outcome = run.pipeline.process(h.encode(big))
    assert outcome.events == []
    assert str(outcome.dead_letter) == (
        f"event_too_large: prefect.artifact-collection.created for prefect.artifact-collection."
        f"{collection_id(KEY, V1)} would be 1500613 bytes, 1500654 with the received time Prefect's "
        "server adds, over its limit of 1500000"
    )
    # No collection, member or version; the id stays known, as the worker's memberships step
    # has recorded it one hop before the refusal (README, Behaviour).
    assert run.state() == ({V1: Membership(KEY)}, {}, {}, {})
    good = h.create(V2, KEY, 1)
    assert run.feed(good) == [coll_event(CREATED, good, 1, good, collection_id(KEY, V2)),
                              created_event(good)]


def test_too_large_newer_version_leaves_the_collection_as_it_was():
    run = Run()
    c1 = h.create(V1, KEY, 0)
    run.feed(c1)
    state = run.state()
    outcome = run.pipeline.process(h.encode(h.create(V2, KEY, 1, description="d" * 1_500_000)))
    assert outcome.dead_letter is not None and outcome.events == []
    assert run.state()[1:] == state[1:]
    assert run.state()[0] == {**state[0], V2: Membership(KEY)}
    # V2 never became a member: deleting V1 deletes the collection, and V2's delete is unknown
    assert h.names(run.feed(h.delete(V1, 2))) == [DELETED]
    run.feed(h.delete(V2, 3))
    assert run.last.unknown_delete is True


def test_created_events_bytes_follow_the_input_not_the_state():
    """The same create replayed after later operations gives the same bytes (same id)."""
    c1 = h.create(V1, KEY, 0)
    run = Run()
    first = run.pipeline.process(h.encode(c1)).events[-1].value
    run.feed(h.create(V2, KEY, 1))
    again = run.pipeline.process(h.encode(c1)).events
    assert [e.value for e in again] == [first]
    assert json.loads(first)["event"] == ART_CREATED
