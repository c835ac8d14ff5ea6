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
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any

Message = Any  # faust.types.Message: topic, partition, offset, tp, key, value, headers, timestamp


class Intake:
    """Records waiting for one step, in fetch order; at most one batch of them in flight."""

    def __init__(self, name: str, max_records: int) -> None:
        self.name = name
        self.max_records = max_records
        self._queued: deque[Message] = deque()
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._open = asyncio.Event()
        self._open.set()

    def __len__(self) -> int:
        return len(self._queued)

    @property
    def in_flight(self) -> bool:
        return not self._idle.is_set()

    @property
    def open(self) -> bool:
        return self._open.is_set()

    async def put(self, messages: Sequence[Message]) -> None:
        """Queue one fetch's records; waits while the intake is full (backpressure). Dropped
        while the intake is closed."""
        while len(self._queued) >= self.max_records and self.open:
            self._room.clear()
            await self._room.wait()
        if self.open:
            self._queued.extend(messages)
            self._arrived.set()

    async def take(self, limit: int) -> list[Message]:
        """The next batch (at most `limit` records); it is in flight until `done()`."""
        while not (self._queued and self.open):
            if not self.open:
                await self._open.wait()
                continue
            self._arrived.clear()
            await self._arrived.wait()
        queued = self._queued
        n = min(limit, len(queued))
        batch = [queued.popleft() for _ in range(n)]
        self._idle.clear()
        self._room.set()
        return batch

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
        dropped = len(self._queued)
        self._queued.clear()
        self._room.set()  # a put waiting for room wakes up and drops its records
        return dropped

    async def idle(self) -> None:
        """Return once no batch is in flight."""
        await self._idle.wait()
