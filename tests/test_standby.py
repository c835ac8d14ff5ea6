"""Standby replicas (`standby_replicas` 1): a worker follows the changelogs of the partitions
another one owns, so that it takes them over from its own copy instead of the whole changelog."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import faust.transport.consumer
import faust.transport.drivers.aiokafka
import pytest
from faust.types import TP

from topology import config
from topology.app import Worker

STANDBY = TP("app-artifact-collections-changelog", 1)  # another worker's partition, followed here
STREAM = TP("app-artifacts-by-collection-key", 0)


@pytest.fixture
def standby_consumer(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, list[tuple[TP, int]]]:
    """A worker's consumer following STANDBY, whose recovery service has taken offset 41; the
    seeks it makes, and no broker (an empty fetch)."""
    worker = Worker(config.load({"store": "memory://", "standby_replicas": 1}, environ={}))
    recovery = type("Recovery", (), {"standby_tps": {STANDBY}, "standby_offsets": Counter({STANDBY: 41})})
    worker.app.tables._recovery = recovery()  # type: ignore[attr-defined]
    consumer = worker.consumer
    seeks: list[tuple[TP, int]] = []

    async def seek(self: Any, tp: TP, offset: int) -> None:
        seeks.append((tp, offset))

    async def fetch(self: Any, active_partitions: Any, timeout: float) -> dict[TP, list[Any]]:
        return {}

    monkeypatch.setattr(faust.transport.consumer.Consumer, "seek", seek)
    monkeypatch.setattr(faust.transport.drivers.aiokafka.Consumer, "_getmany", fetch)
    monkeypatch.setattr(consumer, "assignment", lambda: {STANDBY, STREAM})
    return consumer, seeks


def test_after_a_flow_resume_standby_partitions_are_read_again_from_what_recovery_took(
    standby_consumer: tuple[Any, list[tuple[TP, int]]],
) -> None:
    """Faust's flow resume empties its changelog queue, standby records included, after the
    consumer has fetched them: read from where the recovery service stands, once, before the
    next fetch (what it took already it skips by offset)."""
    consumer, seeks = standby_consumer

    async def fetches() -> None:
        await consumer._getmany(None, 0.0)
        assert seeks == []
        consumer.resume_flow()
        await consumer._getmany(None, 0.0)
        await consumer._getmany(None, 0.0)

    asyncio.run(fetches())
    assert seeks == [(STANDBY, 42)]


def test_standby_records_fetched_before_a_flow_resume_do_not_reach_the_recovery_service(
    standby_consumer: tuple[Any, list[tuple[TP, int]]],
) -> None:
    """The queue they would have followed is gone: handed on, they would move the standby's
    offset past the records it lost, and the partition is read again from before them anyway."""
    consumer, _ = standby_consumer
    delivered: list[TP] = []

    async def callback(message: Any) -> None:
        delivered.append(message.tp)

    consumer.callback = callback
    fetch = [type("Message", (), {"tp": tp})() for tp in (STANDBY, STREAM)]

    async def deliver() -> None:
        await consumer._deliver(fetch, consumer._resumes)
        began = consumer._resumes
        consumer.resume_flow()
        await consumer._deliver(fetch, began)

    asyncio.run(deliver())
    assert delivered == [STANDBY, STREAM, STREAM]
