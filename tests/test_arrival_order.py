"""bench/arrival_order.py: the benchmark's check of the worker's events, one by one, against the
order in which its collections step read the operations (no broker needed)."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import arrival_order  # noqa: E402
import workload as wl  # noqa: E402
from spec_helpers import create, delete, encode, task_result, uid  # noqa: E402

from streams.pipeline import ArtifactPipeline, AssetPipeline  # noqa: E402
from topology.records import via_headers  # noqa: E402

EARLIER = encode(create(uid(1), "report", at=0.0))
LATER = encode(create(uid(2), "report", at=1.0))
DELETE_EARLIER = encode(delete(uid(1), at=2.0))
TASK_RUN = encode(task_result())


def _inputs() -> list[wl.Msg]:
    artifacts = [wl.Msg(wl.ARTIFACTS, b"", raw, "") for raw in (EARLIER, LATER, DELETE_EARLIER)]
    return [*artifacts, wl.Msg(wl.TASK_RESULTS, b"", TASK_RUN, "")]


def _handed_on(*raws: bytes, offsets: tuple[int, ...] | None = None) -> list[arrival_order.HandedOn]:
    """Records of the by-collection-key topic, in this order; `offsets` = the raw offsets that
    carried them on (their replay identity)."""
    ids = offsets or tuple(range(len(raws)))
    return [
        arrival_order.HandedOn(0, i, b"report", raw, via_headers("r0", via))
        for i, (raw, via) in enumerate(zip(raws, ids, strict=True))
    ]


def _offline(*raws: bytes) -> dict[str, bytes]:
    """`prefect-events process` over the artifacts in this order, with the task run."""
    arts, assets = ArtifactPipeline(), AssetPipeline()
    events = [e for raw in raws for e in arts.process(raw).events]
    events += assets.process(TASK_RUN).events
    return {arrival_order.event_id(e.value): e.value for e in events}


def test_read_in_input_order_the_expectation_is_the_offline_output() -> None:
    expected = arrival_order.expected_events(_inputs(), _handed_on(EARLIER, LATER, DELETE_EARLIER))
    assert expected == _offline(EARLIER, LATER, DELETE_EARLIER)


def test_collections_follow_the_order_the_worker_read_them() -> None:
    """The later artifact read first creates the collection; the earlier one then never becomes
    the latest, so its delete changes nothing a collection event would tell."""
    expected = arrival_order.expected_events(_inputs(), _handed_on(LATER, EARLIER, DELETE_EARLIER))
    assert expected == _offline(LATER, EARLIER, DELETE_EARLIER)
    assert expected != _offline(EARLIER, LATER, DELETE_EARLIER)


def test_a_record_handed_on_again_counts_once() -> None:
    """A replay carries the identity of the record that first carried it on: the worker skips it."""
    again = _handed_on(EARLIER, LATER, EARLIER, DELETE_EARLIER, offsets=(0, 1, 0, 2))
    assert arrival_order.expected_events(_inputs(), again) == _offline(EARLIER, LATER, DELETE_EARLIER)



def test_a_retried_create_of_a_deleted_artifact_handed_on_marked_changes_no_collection() -> None:
    """The memberships step hands it on marked as deleted: its `artifact.created` again, no
    collection started anew."""
    retry = encode(create(uid(1), "report", at=3.0))
    inputs = [wl.Msg(wl.ARTIFACTS, b"", raw, "") for raw in (EARLIER, DELETE_EARLIER, retry)]
    *first, last = _handed_on(EARLIER, DELETE_EARLIER, retry)
    marked = replace(last, headers=[*last.headers, ("prefect-artifact-deleted", b"1")])
    expected = arrival_order.expected_events([*inputs, wl.Msg(wl.TASK_RESULTS, b"", TASK_RUN, "")],
                                             [*first, marked])
    assert expected == _offline(EARLIER, DELETE_EARLIER, retry)


EXPECTED = MappingProxyType({"a": b'{"id":"a","n":1}', "b": b'{"id":"b","n":1}'})


class TestCompare:

    def test_the_same_events_in_any_order_are_exact(self) -> None:
        result = arrival_order.compare(EXPECTED, [b'{"id":"b","n":1}', b'{"id":"a","n":1}'])
        assert result.summary() == {
            "expected": 2, "missing": 0, "extra": 0, "differing": 0, "duplicates": 0, "exact": True,
        }

    def test_identical_copies_are_counted_not_faulted(self) -> None:
        result = arrival_order.compare(EXPECTED, [*EXPECTED.values(), b'{"id":"a","n":1}'])
        assert (result.exact, result.duplicates) == (True, 1)

    def test_missing_extra_and_differing_events_are_named(self) -> None:
        result = arrival_order.compare(EXPECTED, [b'{"id":"b","n":2}', b'{"id":"c","n":1}'])
        assert (result.missing, result.extra, result.differing, result.exact) == (["a"], ["c"], ["b"], False)

    def test_two_versions_of_one_event_differ_even_if_one_is_right(self) -> None:
        result = arrival_order.compare(
            EXPECTED, [*EXPECTED.values(), b'{"id":"a","n":2}']
        )
        assert (result.differing, result.duplicates, result.exact) == (["a"], 0, False)
