"""A step's intake: the records of its topics, handed over a fetch at a time.

Faust delivers records one at a time: per record its fetch loop starts two tasks and an
``asyncio.wait`` (``wait_first`` of the delivery and the flow-suspend event), the conductor
builds an Event and puts it on the agent's queue, and the stream takes it off again. The steps
work in batches anyway, so :class:`topology.transport.WorkerConsumer` appends the records of a
step's topics to its intake once per fetch, and the step takes them in batches. Everything else
(group membership, recovery, changelogs, standbys, commits) stays Faust's.

What the intake keeps of Faust's contract for a stream: a bounded buffer (the fetch loop waits
for room, and gives up when flow is suspended); closed while flow is stopped (a rebalance, a
shutdown): it hands out no batch and drops what arrives, as Faust's flow control stops its
streams; emptied when flow resumes (what it held was fetched before the partitions were sought
to their committed offsets); and ``idle()``, which ``wait_empty`` awaits so that the batch in
flight finishes before partitions are revoked or the worker stops. Records dropped are read
again: the commit ledger rewinds their partitions when flow resumes (``topology.commits``).

A batch takes records across partitions in timestamp order, as Kafka Streams picks a task's next
record: operations on different artifacts of one collection key come from different partitions,
and the collections step decides what becomes the latest in the order it sees them. A broker
hands partitions over unevenly (on the embedded one a fetch brought 2,292 records of one
partition and none of three others), so taking a fetch's records as they came let a drained
backlog reach a key out of order. Per partition the order is never changed. A partition that
the consumer knows to hold records not yet fetched (``lagging``) and that has none queued holds
the batch back for at most ``align_wait_s``. (Also ending a batch where such a partition's queued
records run out cost ~10% of the throughput in smaller batches and ordered no better:
bench/NOTES.md.)
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
from collections import deque
from collections.abc import Callable, Collection, Sequence
from typing import Any

Message = Any  # faust.types.Message: topic, partition, offset, tp, key, value, headers, timestamp
Lagging = Callable[[], Collection[Any]]  # partitions (tp) known to hold records not yet fetched


class Intake:
    """Records waiting for one step, per partition; at most one batch of them in flight."""

    def __init__(
        self, name: str, max_records: int, lagging: Lagging = tuple, align_wait_s: float = 0.0
    ) -> None:
        self.name = name
        self.max_records = max_records
        self.align_wait_s = align_wait_s
        self._lagging = lagging
        self._lanes: dict[Any, deque[Message]] = {}  # tp → its records, in offset order
        self._count = 0
        self.waits = 0  # batches held back for a lagging partition
        self.waits_given_up = 0  # ... that went ahead without it after align_wait_s
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._open = asyncio.Event()
        self._open.set()

    def __len__(self) -> int:
        return self._count

    @property
    def in_flight(self) -> bool:
        return not self._idle.is_set()

    @property
    def open(self) -> bool:
        return self._open.is_set()

    async def put(self, messages: Sequence[Message]) -> None:
        """Queue one fetch's records; waits while the intake is full (backpressure), unless they
        bring records of a partition that has none queued (a batch may be waiting for them).
        Dropped while the intake is closed."""
        while self._count >= self.max_records and self.open and not self._fills_a_lane(messages):
            self._room.clear()
            await self._room.wait()
        if self.open:
            lanes = self._lanes
            for m in messages:
                lane = lanes.get(m.tp)
                if lane is None:
                    lane = lanes[m.tp] = deque()
                lane.append(m)
            self._count += len(messages)
            self._arrived.set()

    async def take(self, limit: int) -> list[Message]:
        """The next batch (at most `limit` records), in timestamp order across partitions; it is
        in flight until `done()`."""
        loop, deadline = asyncio.get_running_loop(), None
        while True:
            while not (self._count and self.open):
                if not self.open:
                    await self._open.wait()
                    continue
                self._arrived.clear()
                await self._arrived.wait()
            lagging = set(self._lagging())
            if not any(not self._lanes.get(tp) for tp in lagging):
                break
            if deadline is None:
                deadline = loop.time() + self.align_wait_s
                self.waits += 1
            if loop.time() >= deadline:
                self.waits_given_up += 1
                break
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), deadline - loop.time())
        batch = self._earliest(limit)
        self._idle.clear()
        self._room.set()
        return batch

    def _earliest(self, limit: int) -> list[Message]:
        """A k-way merge of the partitions' queued records by timestamp (ties: the order the
        partitions first arrived in), up to `limit`."""
        heads = [(_time(lane[0]), i, lane) for i, lane in enumerate(self._lanes.values()) if lane]
        heapq.heapify(heads)
        batch: list[Message] = []
        while heads and len(batch) < limit:
            _, i, lane = heads[0]
            batch.append(lane.popleft())
            if lane:
                heapq.heapreplace(heads, (_time(lane[0]), i, lane))
            else:
                heapq.heappop(heads)
        self._count -= len(batch)
        return batch

    def _fills_a_lane(self, messages: Sequence[Message]) -> bool:
        lanes = self._lanes
        return any(not lanes.get(m.tp) for m in messages)

    def done(self) -> None:
        self._idle.set()

    def close(self) -> int:
        """Flow stopped: hand out nothing, take nothing; drops what is queued (returns how many)."""
        self._open.clear()
        return self._clear()

    def reopen(self) -> int:
        """Flow resumes: start empty (returns how many stale records were dropped)."""
        dropped = self._clear()
        self._open.set()
        return dropped

    def _clear(self) -> int:
        dropped = self._count
        self._lanes.clear()
        self._count = 0
        self._room.set()  # a put waiting for room wakes up and drops its records
        return dropped

    async def idle(self) -> None:
        """Return once no batch is in flight."""
        await self._idle.wait()


def _time(m: Message) -> float:
    return m.timestamp or 0.0
