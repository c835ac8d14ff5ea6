"""Partitions moving away (a rebalance): what a revocation waits for before it commits, and what the
worker no longer writes once a partition is another worker's. Without transactions nothing fences a
worker that writes after its partitions moved: the changelog would take its older state after the
new owner's records, and a later recovery would bring that state back (SPEC §6, state survives)."""

from __future__ import annotations

import asyncio
from typing import Any

import faust.transport.consumer
import pytest
from faust.types import TP

from topology import config, steps, transport
from topology.app import Worker
from topology.records import partition_for
from topology.steps import Stamped
from topology.store import LocalStore
from topology.transport import WorkerConsumer

DAY_US = 86_400_000_000


def _worker() -> Worker:
    settings = {"store": "memory://", "lineage_retention_days": 7, "allowed_lateness_hours": 24}
    return Worker(config.load(settings, environ={}))


@pytest.fixture
def faust_commits(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What happens in order; Faust's own wait_empty (which ends in its commit) only says so."""
    happened: list[str] = []

    async def faust_wait_empty(self: Any) -> None:
        happened.append("commit")

    monkeypatch.setattr(faust.transport.consumer.Consumer, "wait_empty", faust_wait_empty)
    return happened


async def _in_flight(consumer: WorkerConsumer, happened: list[str], seconds: float) -> asyncio.Task[None]:
    intake = consumer.intake("lineage", ["prefect.raw.asset-task-results"], 10)
    await intake.put([object()])
    await intake.take(10)  # a batch is in flight

    async def finish() -> None:
        await asyncio.sleep(seconds)
        happened.append("batch finished")
        intake.done()

    return asyncio.ensure_future(finish())


def test_a_revocation_commits_only_after_the_batch_in_flight_has_finished(faust_commits: list[str]) -> None:
    """Committed first, the batch's offsets would be forgotten with the revoked partitions, and
    its next owner would process it again."""
    consumer = _worker().consumer

    async def revoke() -> None:
        batch = await _in_flight(consumer, faust_commits, 0.05)
        consumer._revoking = True
        await consumer.wait_empty()
        await batch

    asyncio.run(revoke())
    assert faust_commits == ["batch finished", "commit"]


def test_a_revocation_waits_for_the_retention_sweeps_writes(faust_commits: list[str]) -> None:
    consumer = _worker().consumer

    async def revoke() -> None:
        async def sweep() -> None:
            with consumer.writing():
                await asyncio.sleep(0.05)  # its tombstones on their way to the changelog
                faust_commits.append("sweep written")

        sweeping = asyncio.ensure_future(sweep())
        await asyncio.sleep(0)
        consumer._revoking = True
        await consumer.wait_empty()
        await sweeping

    asyncio.run(revoke())
    assert faust_commits == ["sweep written", "commit"]


def test_a_batch_that_outlasts_the_rebalance_timeout_makes_the_worker_exit_for_replay(
    faust_commits: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the rebalance timeout the partitions are another worker's: the batch's writes must not
    land after that worker's, so the process exits without committing, and the batch is replayed."""
    consumer = _worker().consumer
    exits: list[tuple[str, tuple[object, ...]]] = []

    def exit_for_replay(message: str, *args: object, **_: Any) -> None:
        exits.append((message, args))
        raise SystemExit(70)

    monkeypatch.setattr(transport, "exit_for_replay", exit_for_replay)
    monkeypatch.setattr(transport, "REVOKE_WAIT_SHARE", 0.01)  # 10 s → 0.1 s

    async def revoke() -> None:
        batch = await _in_flight(consumer, faust_commits, 5.0)
        consumer._revoking = True
        try:
            await consumer.wait_empty()
        finally:
            batch.cancel()

    with pytest.raises(SystemExit):
        asyncio.run(revoke())
    assert faust_commits == []
    assert exits == [
        (
            "revocation: the batch in flight did not finish within %gs of the %gs rebalance timeout",
            (pytest.approx(0.1), 10.0),
        )
    ]


def test_a_stop_waits_for_the_batch_in_flight_however_long_it_takes(faust_commits: list[str]) -> None:
    """Stopping is bounded by shutdown_timeout_s (topology.runner), not by the rebalance timeout."""
    consumer = _worker().consumer
    consumer.app.conf.broker_rebalance_timeout = 0.01

    async def stop() -> None:
        batch = await _in_flight(consumer, faust_commits, 0.1)
        await consumer.wait_empty()
        await batch

    asyncio.run(stop())
    assert faust_commits == ["batch finished", "commit"]


def _swept(worker: Worker) -> list[tuple[bytes | None, int | None]]:
    changelog: list[tuple[bytes | None, int | None]] = []

    async def publish(outputs: Any) -> dict[tuple[str, int], int]:
        changelog.extend((o.key, o.partition) for o in outputs)
        return {}

    worker._publish = publish  # type: ignore[method-assign]
    worker.ready = lambda: True  # type: ignore[method-assign]
    asyncio.run(worker.sweep())
    return changelog


def test_the_sweep_leaves_the_keys_of_partitions_moved_to_another_worker() -> None:
    """`memory://` keeps a revoked partition's keys (Faust prunes them only after a recovery);
    their tombstones would land in a changelog partition another worker now writes. A rebalance
    revokes a worker's whole assignment: every watermark goes, and only partitions whose batches
    ran since, ones the worker holds, are swept."""
    worker = _worker()
    silent = Stamped({}, {"last_seen_us": 1 * DAY_US, "passes_on": {}}).dump()
    moved_key = next(k for k in (b"fr-%d" % i for i in range(100)) if partition_for(k, 4) == 2)
    held_key = next(k for k in (b"fr-%d" % i for i in range(100)) if partition_for(k, 4) == 1)
    LocalStore(worker.lineage).write({moved_key: (2, silent), held_key: (1, silent)})
    worker.watermarks["flow runs"] = {1: 10 * DAY_US, 2: 10 * DAY_US}  # both advanced while held
    worker.watermarks["deleted artifacts"] = {3: 10 * DAY_US}
    t = worker.topics
    everything = {TP(topic, p) for topic in (t.raw_task_results, t.raw_artifacts) for p in range(4)}
    asyncio.run(worker.app.on_partitions_revoked.send(everything))
    assert worker.watermarks == {"flow runs": {}, "deleted artifacts": {}}
    assert _swept(worker) == []

    worker.advance_watermarks("flow runs", {1: 10 * DAY_US}, 10 * DAY_US)  # a batch of held p1

    assert _swept(worker) == [(held_key, 1)]
    assert dict(worker.lineage.data.items()) == {moved_key: silent}


def test_a_sweep_waiting_for_a_batch_writes_nothing_if_partitions_began_moving_meanwhile() -> None:
    """Readiness is asked once the sweep holds its table, not before it waited for the batch."""
    worker = _worker()
    silent = Stamped({}, {"last_seen_us": 1 * DAY_US, "passes_on": {}}).dump()
    key = next(k for k in (b"fr-%d" % i for i in range(100)) if partition_for(k, 4) == 1)
    LocalStore(worker.lineage).write({key: (1, silent)})
    worker.watermarks["flow runs"] = {1: 10 * DAY_US}
    moving = False
    worker.ready = lambda: not moving  # type: ignore[method-assign]

    async def publish(outputs: Any) -> dict[tuple[str, int], int]:
        raise AssertionError(f"swept during a rebalance: {outputs}")

    worker._publish = publish  # type: ignore[method-assign]

    async def batch_then_rebalance() -> None:
        nonlocal moving
        async with worker._writing[worker.lineage.name]:  # a batch in flight
            sweeping = asyncio.ensure_future(worker.sweep())
            await asyncio.sleep(0.01)  # the sweep is waiting for the table
            moving = True  # a revocation begins
        await sweeping

    asyncio.run(batch_then_rebalance())
    assert dict(worker.lineage.data.items()) == {key: silent}


def test_a_revocation_is_known_to_wait_empty_while_faust_runs_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bound on the wait applies to revocations only: WorkerConsumer marks them around Faust's
    own revocation, which is where Faust calls wait_empty."""
    consumer = _worker().consumer
    seen: list[bool] = []

    async def faust_revocation(self: Any, revoked: set[TP]) -> None:
        seen.append(self._revoking)

    monkeypatch.setattr(faust.transport.consumer.Consumer, "on_partitions_revoked", faust_revocation)
    asyncio.run(consumer.on_partitions_revoked(set()))
    assert (seen, consumer._revoking) == ([True], False)


def test_a_stopping_worker_is_not_ready_and_does_not_sweep() -> None:
    """Its last commit is behind it: a tombstone written now would mark nothing as done, and
    could reopen a store Faust has closed."""
    worker = _worker()
    recovered = asyncio.Event()
    recovered.set()
    worker.app.tables._recovery = type("Recovery", (), {"completed": recovered})()  # type: ignore[attr-defined]
    assert worker.ready()

    worker.app._stopped.set()  # type: ignore[attr-defined]

    assert not worker.ready()
    key = next(k for k in (b"fr-%d" % i for i in range(100)) if partition_for(k, 4) == 1)
    LocalStore(worker.lineage).write({key: (1, Stamped({}, {"last_seen_us": 0, "passes_on": {}}).dump())})
    worker.watermarks["flow runs"] = {1: 10 * DAY_US}
    items = lambda: list(worker.lineage.data.items())  # noqa: E731
    assert steps.expired_flow_runs(items, {1: 10 * DAY_US}, 4, 7 * DAY_US, 0) == [key]  # due
    worker._publish = lambda outputs: pytest.fail("swept while stopping")  # type: ignore[assignment,method-assign]
    asyncio.run(worker.sweep())
