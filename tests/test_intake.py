"""topology.intake: a step's records, handed over a fetch at a time (no broker needed)."""

from __future__ import annotations

import asyncio

from topology.intake import Intake


async def _soon(awaitable: object, timeout_s: float = 0.05) -> bool:
    """True if `awaitable` finishes within `timeout_s`."""
    try:
        await asyncio.wait_for(awaitable, timeout_s)  # type: ignore[arg-type]
    except TimeoutError:
        return False
    return True


async def test_take_returns_records_in_fetch_order_up_to_the_limit() -> None:
    intake = Intake("memberships", max_records=100)
    await intake.put([1, 2, 3])
    await intake.put([4, 5])
    assert await intake.take(4) == [1, 2, 3, 4]
    intake.done()
    assert await intake.take(4) == [5]
    intake.done()
    assert len(intake) == 0


async def test_take_waits_for_the_next_fetch() -> None:
    intake = Intake("lineage", max_records=100)
    taking = asyncio.ensure_future(intake.take(10))
    await asyncio.sleep(0.01)
    assert not taking.done()
    await intake.put(["a"])
    assert await asyncio.wait_for(taking, 1) == ["a"]


async def test_a_full_intake_holds_the_fetch_loop_until_a_batch_is_taken() -> None:
    intake = Intake("collections", max_records=3)
    await intake.put([1, 2, 3])
    putting = asyncio.ensure_future(intake.put([4]))
    assert not await _soon(asyncio.shield(putting))
    assert await intake.take(2) == [1, 2]
    assert await _soon(putting)
    assert await intake.take(10) == [3, 4]


async def test_a_batch_is_in_flight_from_take_until_done() -> None:
    intake = Intake("memberships", max_records=10)
    assert await _soon(intake.idle())
    await intake.put([1])
    await intake.take(10)
    assert intake.in_flight
    assert not await _soon(intake.idle())
    intake.done()
    assert await _soon(intake.idle())


async def test_closing_drops_what_is_queued_not_what_is_in_flight_and_frees_the_fetch_loop() -> None:
    intake = Intake("lineage", max_records=2)
    await intake.put([1, 2])
    assert await intake.take(1) == [1]
    await intake.put([3])
    putting = asyncio.ensure_future(intake.put([4]))
    await asyncio.sleep(0)
    assert intake.close() == 2  # 2 and 3; 1 is in flight
    assert intake.in_flight
    assert await _soon(putting)  # woken, and its records dropped
    assert len(intake) == 0


async def test_a_closed_intake_hands_out_nothing_and_drops_what_arrives() -> None:
    """A rebalance closes it before wait_empty: no batch may start after that."""
    intake = Intake("collections", max_records=10)
    intake.close()
    await intake.put([1, 2])
    assert len(intake) == 0
    taking = asyncio.ensure_future(intake.take(10))
    assert not await _soon(asyncio.shield(taking))
    assert intake.reopen() == 0
    await intake.put([3])
    assert await asyncio.wait_for(taking, 1) == [3]


async def test_reopening_starts_empty() -> None:
    """Records queued before flow resumes were fetched before the seek to the committed offsets."""
    intake = Intake("memberships", max_records=10)
    await intake.put([1, 2, 3])
    assert intake.reopen() == 3
    assert len(intake) == 0
