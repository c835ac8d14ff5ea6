"""topology.intake: a step's records, handed over a fetch at a time (no broker needed)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from topology.intake import Intake


@dataclass(frozen=True)
class Rec:
    """What the intake reads of a Faust message: its partition and timestamp."""

    tp: str
    offset: int
    timestamp: float


def recs(tp: str, *offsets: int, at: float | None = None) -> list[Rec]:
    """Records of one partition; timestamp = offset (or `at` for all)."""
    return [Rec(tp, o, float(o) if at is None else at) for o in offsets]


def ids(batch: list[Rec]) -> list[str]:
    return [f"{r.tp}{r.offset}" for r in batch]


async def _soon(awaitable: object, timeout_s: float = 0.05) -> bool:
    """True if `awaitable` finishes within `timeout_s`."""
    try:
        await asyncio.wait_for(awaitable, timeout_s)  # type: ignore[arg-type]
    except TimeoutError:
        return False
    return True


async def test_take_returns_records_in_fetch_order_up_to_the_limit() -> None:
    intake = Intake("memberships", max_records=100)
    await intake.put(recs("a", 1, 2, 3))
    await intake.put(recs("a", 4, 5))
    assert ids(await intake.take(4)) == ["a1", "a2", "a3", "a4"]
    intake.done()
    assert ids(await intake.take(4)) == ["a5"]
    intake.done()
    assert len(intake) == 0


async def test_take_waits_for_the_next_fetch() -> None:
    intake = Intake("lineage", max_records=100)
    taking = asyncio.ensure_future(intake.take(10))
    await asyncio.sleep(0.01)
    assert not taking.done()
    await intake.put(recs("a", 1))
    assert ids(await asyncio.wait_for(taking, 1)) == ["a1"]


async def test_a_full_intake_holds_the_fetch_loop_until_a_batch_is_taken() -> None:
    intake = Intake("collections", max_records=3)
    await intake.put(recs("a", 1, 2, 3))
    putting = asyncio.ensure_future(intake.put(recs("a", 4)))
    assert not await _soon(asyncio.shield(putting))
    assert ids(await intake.take(2)) == ["a1", "a2"]
    assert await _soon(putting)
    assert ids(await intake.take(10)) == ["a3", "a4"]


async def test_a_batch_is_in_flight_from_take_until_done() -> None:
    intake = Intake("memberships", max_records=10)
    assert await _soon(intake.idle())
    await intake.put(recs("a", 1))
    await intake.take(10)
    assert intake.in_flight
    assert not await _soon(intake.idle())
    intake.done()
    assert await _soon(intake.idle())


async def test_closing_drops_what_is_queued_not_what_is_in_flight_and_frees_the_fetch_loop() -> None:
    intake = Intake("lineage", max_records=2)
    await intake.put(recs("a", 1, 2))
    assert ids(await intake.take(1)) == ["a1"]
    await intake.put(recs("a", 3))
    putting = asyncio.ensure_future(intake.put(recs("a", 4)))
    await asyncio.sleep(0)
    assert intake.close() == 2  # 2 and 3; 1 is in flight
    assert intake.in_flight
    assert await _soon(putting)  # woken, and its records dropped
    assert len(intake) == 0


async def test_a_closed_intake_hands_out_nothing_and_drops_what_arrives() -> None:
    """A rebalance closes it before wait_empty: no batch may start after that."""
    intake = Intake("collections", max_records=10)
    intake.close()
    await intake.put(recs("a", 1, 2))
    assert len(intake) == 0
    taking = asyncio.ensure_future(intake.take(10))
    assert not await _soon(asyncio.shield(taking))
    assert intake.reopen() == 0
    await intake.put(recs("a", 3))
    assert ids(await asyncio.wait_for(taking, 1)) == ["a3"]


async def test_reopening_starts_empty() -> None:
    """Records queued before flow resumes were fetched before the seek to the committed offsets."""
    intake = Intake("memberships", max_records=10)
    await intake.put([*recs("a", 1, 2), *recs("b", 1)])
    assert intake.reopen() == 3
    assert len(intake) == 0


class TestTimestampOrderAcrossPartitions:
    """Operations on one collection key come from different partitions; a fetch hands the
    partitions over one after another, and unevenly."""

    async def test_a_batch_merges_partitions_by_timestamp(self) -> None:
        intake = Intake("memberships", max_records=100)
        await intake.put([*recs("a", 1, 4, 5), *recs("b", 2, 3, 6)])
        assert ids(await intake.take(10)) == ["a1", "b2", "b3", "a4", "a5", "b6"]

    async def test_a_partitions_own_order_is_kept_whatever_its_timestamps(self) -> None:
        intake = Intake("memberships", max_records=100)
        await intake.put([Rec("a", 1, 9.0), Rec("a", 2, 1.0), Rec("b", 1, 5.0)])
        assert ids(await intake.take(10)) == ["b1", "a1", "a2"]

    async def test_the_earliest_records_go_first_when_the_limit_cuts(self) -> None:
        intake = Intake("memberships", max_records=100)
        await intake.put(recs("a", 10, 11, 12))
        await intake.put(recs("b", 1, 2))
        assert ids(await intake.take(3)) == ["b1", "b2", "a10"]
        intake.done()
        assert ids(await intake.take(3)) == ["a11", "a12"]

    async def test_equal_timestamps_keep_the_order_partitions_arrived_in(self) -> None:
        intake = Intake("memberships", max_records=100)
        await intake.put([*recs("b", 1, 2, at=7.0), *recs("a", 1, at=7.0)])
        assert ids(await intake.take(10)) == ["b1", "b2", "a1"]


class TestLaggingPartitions:
    """A partition known to hold records not yet fetched, with none queued, holds the batch
    back briefly: its records may be earlier than what is queued."""

    async def test_a_batch_waits_for_a_lagging_partition_and_merges_it_in(self) -> None:
        lagging = {"b"}
        intake = Intake("memberships", 100, lambda: lagging, align_wait_s=5.0)
        await intake.put(recs("a", 3, 4))
        taking = asyncio.ensure_future(intake.take(10))
        assert not await _soon(asyncio.shield(taking))
        lagging.clear()  # what the consumer knows once b's fetch is in
        await intake.put(recs("b", 1, 2))
        assert ids(await asyncio.wait_for(taking, 1)) == ["b1", "b2", "a3", "a4"]
        assert (intake.waits, intake.waits_given_up) == (1, 0)

    async def test_it_goes_ahead_without_it_after_the_wait(self) -> None:
        intake = Intake("memberships", 100, lambda: {"b"}, align_wait_s=0.05)
        await intake.put(recs("a", 3, 4))
        assert ids(await asyncio.wait_for(intake.take(10), 1)) == ["a3", "a4"]
        assert (intake.waits, intake.waits_given_up) == (1, 1)

    async def test_with_no_wait_configured_it_does_not_wait(self) -> None:
        intake = Intake("memberships", 100, lambda: {"b"})
        await intake.put(recs("a", 3))
        assert ids(await asyncio.wait_for(intake.take(10), 0.05)) == ["a3"]

    async def test_a_lagging_partition_with_records_queued_holds_nothing_back(self) -> None:
        """Only an empty one may hide earlier records; the batch runs past its queued ones."""
        intake = Intake("memberships", 100, lambda: {"b"}, align_wait_s=5.0)
        await intake.put([*recs("a", 1, 5, 6), *recs("b", 2, 3)])
        assert ids(await asyncio.wait_for(intake.take(10), 0.05)) == ["a1", "b2", "b3", "a5", "a6"]
        assert intake.waits == 0

    async def test_a_caught_up_partition_holds_nothing_back(self) -> None:
        intake = Intake("memberships", 100, lambda: (), align_wait_s=5.0)
        await intake.put(recs("a", 1, 5, 6))
        assert ids(await asyncio.wait_for(intake.take(10), 0.05)) == ["a1", "a5", "a6"]
        assert intake.waits == 0

    async def test_a_full_intake_still_takes_the_records_a_batch_waits_for(self) -> None:
        """Otherwise the fetch loop would wait for room while the batch waits for it."""
        lagging = {"b"}
        intake = Intake("memberships", 2, lambda: lagging, align_wait_s=5.0)
        await intake.put(recs("a", 3, 4))
        taking = asyncio.ensure_future(intake.take(10))
        assert await _soon(intake.put(recs("b", 1)))  # intake full, but b had nothing queued
        lagging.clear()
        assert ids(await asyncio.wait_for(taking, 1)) == ["b1", "a3", "a4"]
        intake.done()
        await intake.put(recs("a", 5, 6))
        assert not await _soon(intake.put(recs("a", 7)))  # full, and a has records queued
