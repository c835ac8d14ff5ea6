"""SPEC §4 as the worker stores it: a collection's members in pages (streams.members), read as of
the collection record, so that any batching and any crash between a batch's writes give the
events of the in-memory pipeline, and a key's records stay small however many versions it has."""

from __future__ import annotations

import itertools
from collections import Counter
from contextlib import contextmanager
from decimal import Decimal

import orjson
import pytest
import spec_helpers as h
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_spec_6_bad_input import TOPICS, Table, _by_id, _by_key

from streams import collection_record, members
from streams.collection_record import page_key, version_from_json, version_key
from streams.members import INLINE, MemberPages
from streams.pipeline import ArtifactPipeline
from topology import steps
from topology.steps import Stamped

KEY = "report"
IDS = [h.uid(n) for n in range(1, 9)]

# Operations as (kind, artifact, data); `occurred` is their position, so that the worker's merge
# of partitions by event time (topology.steps.in_event_time_order) keeps the list's order. Six
# artifacts over two keys, creates twice as likely (a deleted id stays deleted).
operations = st.tuples(
    st.sampled_from(["create", "create", "update", "delete"]), st.integers(0, 5), st.integers(0, 9)
)
# Few distinct `created`, so that ties are common; some apart by less than a microsecond, which
# the state records keep exactly (streams.timestamps.Instant).
CREATED = st.sampled_from(
    [
        "2026-11-24T10:00:00.000001Z",
        "2026-11-24T10:00:00.0000010004Z",
        "2026-11-24T10:00:00.00000100041Z",
        "2026-11-24T10:00:00.0000009999Z",
        "2026-11-24T10:00:00.000002Z",
        "1969-12-31T23:59:59.9999995Z",
    ]
)


def _messages(ops, created):
    out = []
    for at, ((kind, i, data), when) in enumerate(zip(ops, created, strict=True)):
        if kind == "create":
            out.append(h.create(IDS[i], f"k{i % 2 + 1}", at, created=when, data=data))
        elif kind == "update":
            out.append(h.update(IDS[i], {"data": data}, at))
        else:
            out.append(h.delete(IDS[i], at))
    return out


# A crash after each of a batch's write phases: its outputs acknowledged or not (they share a
# round trip with the "before" records, so those can land without them), then its state phases.
CRASHES = [
    ((), True),
    (("before",), False),
    (("before",), True),
    (("before", "writes"), True),
]


def _collection_events(ops):
    """What the collection step must emit: the pipeline's events less the membership step's."""
    pipeline = Counter(e.value for e in h.raw_events(ArtifactPipeline(), ops))
    by_id = steps.apply_memberships(TOPICS, _by_id(ops), Table().load)
    membership = Counter(o.value for o in by_id.outputs if o.topic == TOPICS.artifact_events)
    return pipeline - membership


def _state_of(table, key):
    """A key's collection and members as the worker reads them from `table`."""
    raw = table.get(key.encode())

    def stored_page(artifact_id, as_of):
        version = table.get(version_key(artifact_id))
        found = None if version is None else version_from_json(artifact_id, orjson.loads(version), as_of)
        return None if found is None else found[1]

    state = collection_record.decode(
        None if raw is None else Stamped.load(raw).state,
        lambda page: table.get(page_key(key.encode(), page)),
        stored_page,
    )
    return state


def _live(state):
    return {a for a in IDS if a in state.members}


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(operations, min_size=6, max_size=30), data=st.data())
def test_any_batching_and_a_crash_anywhere_emit_the_pipelines_events(ops, data):
    """Pages of two members, so that pages fill, empty and re-point all the time. Every batch is
    crashed in turn after each of its write phases (its outputs out or lost), and replayed from
    a batch or two back, batched differently."""
    ops = _messages(ops, data.draw(st.lists(CREATED, min_size=len(ops), max_size=len(ops))))
    records = _by_key(ops)
    batches = _batches(records, data.draw(st.lists(st.integers(1, 5), min_size=len(records))))
    rebatched = data.draw(st.lists(st.integers(1, 5), min_size=len(records)))
    expected = _collection_events(ops)
    pipeline = ArtifactPipeline()
    h.raw_events(pipeline, ops)
    with _pages_of(2):
        table, emitted = Table(), []
        for batch in batches:
            emitted += _apply(batch, table)
        assert Counter(emitted) == expected
        _check_state(table, pipeline, left_behind=False)
        for crashed, (phases, published) in itertools.product(range(len(batches)), CRASHES):
            table, emitted = Table(), []
            for batch in batches[:crashed]:
                emitted += _apply(batch, table)
            out = _apply(batches[crashed], table, phases)
            emitted += out if published else []
            replay_from = sum(map(len, batches[: max(0, crashed - 2)]))
            for batch in _batches(records[replay_from:], rebatched):
                emitted += _apply(batch, table)
            assert set(emitted) == set(expected)  # replays repeat events byte for byte, no other
            _check_state(table, pipeline, left_behind=True)


def _batches(records, sizes):
    out, start = [], 0
    for size in sizes:
        if start >= len(records):
            break
        out.append(records[start : start + size])
        start += size
    return out


def _apply(batch, table, phases=("before", "writes", "after")):
    result = steps.apply_collections(TOPICS, batch, table.load)
    table.write(result, phases)
    return [o.value for o in result.outputs if o.topic == TOPICS.artifact_events]


def _check_state(table, pipeline, left_behind):
    for key in ("k1", "k2"):
        state = _state_of(table, key)
        coll, want = state.collection, pipeline.collections.get(key)
        assert (coll and coll.latest) == (want and want.latest)
        assert _live(state) == (set(pipeline.members[key]) if key in pipeline.members else set())
        if not left_behind:  # a crash between a batch's last two phases leaves records behind
            pages = {k for k in table if k.startswith(b"\xfe") and k.endswith(key.encode())}
            assert pages == {page_key(key.encode(), p) for p in state.members.pages if p != INLINE}


@contextmanager
def _pages_of(size):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(members, "PAGE_SIZE", size)
        patch.setattr(members, "INLINE_SIZE", size)
        yield


def _creates(n, key=KEY, start=0):
    return [h.create(h.uid(0x1000 + i), key, at=i, created=i) for i in range(start, start + n)]


def test_a_keys_records_stay_small_however_many_versions_it_has():
    """A batch touching a key with 1,000 live versions rewrites one page and the collection record
    (16 members inline and the summary of 16 pages), not every member: under 8 KB apiece. The
    record of all members it replaces was ~60 KB at 1,000 versions (bench/NOTES.md, note 8)."""
    table = Table()
    records = _by_key(_creates(1001))
    for i in range(0, 1000, 50):
        result = steps.apply_collections(TOPICS, records[i : i + 50], table.load)
        table.write(result)
    last = steps.apply_collections(TOPICS, records[1000:], table.load)
    state = _state_of(table, KEY)
    assert sorted(state.members.pages) == [INLINE, *range(16)]  # 16 inline, 984 in pages
    assert state.collection.latest == h.uid(0x1000 + 999)
    written = {**last.writes_before, **last.writes}
    assert set(written) == {KEY.encode(), page_key(KEY.encode(), 15), version_key(h.uid(0x1000 + 1000))}
    assert max(len(value) for _, value in written.values()) < 8_000


def test_a_batch_leaves_nothing_for_pythons_collector():
    """A batch's objects are freed by reference counting as it ends. A page reader that reached
    back to its key's decoded state once made every state a reference cycle, left for Python's
    collector: at saturation ~30k objects for each of its young collections (bench/NOTES.md)."""
    table = Table()
    ops = _creates(300) + [h.update(h.uid(0x1000 + i), {"data": "x"}, at=400 + i) for i in range(0, 300, 7)]
    ops += [h.delete(h.uid(0x1000 + i), at=800 + i) for i in range(0, 300, 11)]
    records = _by_key(ops)
    table.write(steps.apply_collections(TOPICS, records[:250], table.load))  # stored pages

    def run():
        result = steps.apply_collections(TOPICS, records[250:], table.load)
        assert result.outputs and any(key[:1] == b"\xfe" for key in result.writes_before)  # pages
        return result

    assert h.garbage_left_by(run) == []


def test_deleting_the_latest_re_points_across_pages():
    """The next latest is found from the pages' summaries: here among the members inline in the
    record, after the whole first page is deleted newest first."""
    ops = _creates(4) + [h.delete(h.uid(0x1000 + i), at=10 + n) for n, i in enumerate((3, 2))]
    with _pages_of(2):
        table = Table()
        result = steps.apply_collections(TOPICS, _by_key(ops), table.load)
        table.write(result)
    names = [dict(o.headers)["prefect-event"] for o in result.outputs if o.topic == TOPICS.artifact_events]
    assert names[-2:] == [b"prefect.artifact-collection.updated"] * 2
    latest = orjson.loads(result.outputs[-1].value)["related"][0]["prefect.resource.id"]
    assert latest == "prefect.artifact." + h.uid(0x1000 + 1)
    assert set(result.deletes_after) == {
        page_key(KEY.encode(), 0),  # emptied
        version_key(h.uid(0x1000 + 3)),
        version_key(h.uid(0x1000 + 2)),
    }
    assert page_key(KEY.encode(), 0) in result.writes_before  # with its removals, for a replay
    assert _state_of(table, KEY).members.summary() == {
        "seq": 6,
        "next": 1,
        "open": None,
        "pages": [],
        "inline": {h.uid(0x1000): h.us(0), h.uid(0x1000 + 1): h.us(1)},
    }


def test_a_page_is_read_as_of_its_collection_record():
    """What a crashed later batch wrote to a page is not there yet; what it removed is still
    there; what was removed before the record is gone."""
    a, b, c, d = IDS[:4]
    stored = {
        a: [1, 1, None],  # added before the record (seq 3): live
        b: [2, 2, 3],  # removed at 3, before: compacted away
        c: [3, 3, 4],  # removed at 4, after: live as of 3
        d: [4, 4, None],  # added at 4, after: not yet
    }
    summary = {"seq": 3, "next": 1, "open": 0, "pages": [[0, 2, 3, c]]}
    pages = MemberPages(summary, lambda page: orjson.dumps(stored), lambda aid, as_of: 0)
    assert [aid in pages for aid in (a, b, c, d)] == [True, False, True, False]
    assert pages.best() == (3, c) and pages.best(excluding=c) == (1, a)
    pages.remove(c)
    assert dict(pages.written()) == {0: orjson.dumps({a: [1, 1, None], c: [3, 3, 4]})}


def test_a_created_below_the_microsecond_is_stored_exactly_and_read_back_as_a_number():
    """Such an instant is a Decimal, stored as a JSON string of its digits, and read back into
    a number wherever a record holds one: compared as strings, "999.9999" would beat "1000.5"."""
    a, b, c, d = IDS[:4]
    stored = {a: ["1000.5", 1, None], b: [1000, 2, None], c: ["999.9999", 3, None]}
    summary = {"seq": 3, "next": 1, "open": 0, "pages": [[0, 3, "1000.5", a]], "inline": {d: "999.5"}}
    pages = MemberPages(summary, lambda page: orjson.dumps(stored), lambda aid, as_of: 0)
    assert pages.best() == (Decimal("1000.5"), a)
    assert pages.best(excluding=a) == (1000, b)
    pages.remove(a)
    pages.remove(b)
    assert pages.best() == (Decimal("999.9999"), c)
    assert dict(pages.written())[0] == orjson.dumps(
        {a: ["1000.5", 1, 4], b: [1000, 2, 5], c: ["999.9999", 3, None]}
    )
    assert pages.summary()["pages"] == [[0, 1, Decimal("999.9999"), c]]
    assert pages.summary()["inline"] == {d: Decimal("999.5")}


@pytest.mark.parametrize("n", [2**64, 7 * 10**400 + 1], ids=["beyond-64-bits", "beyond-any-double"])
def test_a_stored_versions_wide_integers_come_back_exact(n):
    """The re-pointed collection event reads the older version from its record, a batch later."""
    records = _by_key(
        [h.create(IDS[0], KEY, at=0, data={"n": n}), h.create(IDS[1], KEY, at=1), h.delete(IDS[1], at=2)]
    )
    table = Table()
    table.write(steps.apply_collections(TOPICS, records[:2], table.load))
    result = steps.apply_collections(TOPICS, records[2:], table.load)
    [event] = [o.value for o in result.outputs if o.topic == TOPICS.artifact_events]
    assert b'"payload":{"key":"report","type":"markdown","data":{"n":%d},' % n in event


@pytest.mark.parametrize(
    "now, before, as_of, data",
    [
        (b'{"n":18446744073709551616}', b'"text"', 5, b'{"n":18446744073709551616}'),
        (b'"text"', b"[18446744073709551617]", 4, b"[18446744073709551617]"),
    ],
    ids=["now", "before its patch"],
)
def test_a_version_record_reads_wide_integers_exactly(now, before, as_of, data):
    raw = b'[1,"markdown",' + now + b',"d",null,null,0,5,[' + before + b',"old"]]'
    version, _ = collection_record.load_version(IDS[0], raw, as_of)
    assert orjson.dumps(version.data) == data


def test_a_collection_record_from_before_pages_is_read_and_moves_on():
    """State written by an earlier version (every member inline, versions without a page) keeps
    working: it is what a small collection looks like now, and new members join it inline."""
    v1, v2, v3 = IDS[:3]
    table = Table()
    table[KEY.encode()] = orjson.dumps(
        {"seen": {}, "state": {"id": "c0", "latest": v2, "members": {v1: h.us(10), v2: h.us(20)}}}
    )
    for aid, created in ((v1, h.us(10)), (v2, h.us(20))):
        table[version_key(aid)] = orjson.dumps([created, None, aid, None, None, None])
    history = [h.create(v1, at=10), h.create(v2, at=20)]  # what the membership step knows
    records = _by_key([*history, h.delete(v2, at=30), h.create(v3, at=31, created=5)])
    result = steps.apply_collections(TOPICS, records[len(history) :], table.load)
    table.write(result)
    updated = [o for o in result.outputs if dict(o.headers)["prefect-event"].endswith(b"collection.updated")]
    assert [orjson.loads(o.value)["payload"]["data"] for o in updated] == [v1]  # re-pointed inline
    state = _state_of(table, KEY)
    assert state.collection.id == "c0" and state.collection.latest == v1
    assert state.members.summary()["inline"] == {v1: h.us(10), v3: h.us(5)}
    assert state.members.page_of(v1) == INLINE and state.members.page_of(v3) == INLINE
    assert _live(state) == {v1, v3}


def test_a_replay_reads_a_version_as_of_the_collection_record():
    """A PATCH later in the batch than the delete that re-pointed to its artifact: after a crash
    between the batch's version writes and its collection record, the replay's event must carry
    the data the first run's did, not the patched data it finds stored."""
    v1, v2 = IDS[:2]
    records = _by_key(
        [
            h.create(v1, at=0, data="one"),
            h.create(v2, at=1),
            h.delete(v2, at=2),  # re-points to v1: data "one"
            h.update(v1, {"data": "patched"}, at=3),
        ]
    )
    table = Table()
    table.write(steps.apply_collections(TOPICS, records[:2], table.load))
    first = steps.apply_collections(TOPICS, records[2:], table.load)
    event, patch = first.outputs
    assert orjson.loads(event.value)["payload"]["data"] == "one"
    assert orjson.loads(patch.value)["event"] == "prefect.artifact.updated"
    without_crash = Table(table)
    without_crash.write(first)
    table.write(first, ("before",))
    assert orjson.loads(table[version_key(v1)])[2] == "patched"
    for batching in ([records[2:]], [records[2:3], records[3:]]):
        replayed = Table(table)
        outputs = []
        for batch in batching:
            result = steps.apply_collections(TOPICS, batch, replayed.load)
            replayed.write(result)
            outputs += result.outputs
        assert outputs == first.outputs
        assert replayed == without_crash
