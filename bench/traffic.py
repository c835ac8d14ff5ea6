"""The worker's Kafka traffic without its processing: what its records alone cost here.

The baseline loop reads a message and writes one record. The worker, for the same messages,
also hands keyed artifact operations on through its by-collection-key topic (read back), writes
1.5 events a message on average, and writes its state's changelog records. This loop reads the
same input with one aiokafka consumer and writes, with one aiokafka producer configured as the
worker's and through the worker's own publishing (topology.publish), exactly the records the
worker's steps write for it (the topology driver's run of the same messages: the same keys,
values, headers, partitions and sizes, to as many topics), in proportion to the messages read.
It reads the handed-on records back and does nothing else: no parsing, no state, no Faust. A
fetch's outputs are acknowledged before its changelog records are sent, as a batch's are in the
worker (streams.replay): two round trips where the worker's collections step makes up to three;
up to three fetches' writes are in flight at once, as the worker's three steps each have a batch.

So its msgs/s is, roughly, what the worker would reach if its logic and Faust cost nothing.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import workload as wl  # noqa: E402
from clients import clients  # noqa: E402
from cpu import Meter  # noqa: E402
from topology_driver import Driver, topics  # noqa: E402

from topology.publish import publish  # noqa: E402
from topology.records import Out  # noqa: E402


@dataclass
class Plan:
    """What the worker writes for a workload, in the driver's order, by kind."""

    handed_on: list[Out]  # the collections step's input (read back by the loop)
    events: list[Out]  # events and dead letters
    changelog: list[Out]

    @property
    def records_out(self) -> int:
        return len(self.handed_on) + len(self.events) + len(self.changelog)

    def bytes_out(self) -> int:
        return sum(len(r.key or b"") + len(r.value or b"") + sum(len(k) + len(v) for k, v in r.headers)
                   for rs in (self.handed_on, self.events, self.changelog) for r in rs)


def drive(msgs: list[wl.Msg], partitions: int) -> Driver:
    """`msgs` through the worker's steps in its batches, with no broker, keeping the changelog."""
    t = topics(partitions, partitions)
    driver = Driver(t, batch_size=500, changelog=[])
    for m in msgs:
        driver.produce(t.raw_artifacts if m.stream == wl.ARTIFACTS else t.raw_task_results,
                       m.value, m.key)
    driver.run()
    return driver


def plan(msgs: list[wl.Msg], partitions: int, prefix: str) -> Plan:
    """The records the worker's steps write for `msgs`, renamed to `prefix`'s topics."""
    driver = drive(msgs, partitions)
    t = driver.topics
    handed_on: list[Out] = []
    events: list[Out] = []
    for (topic, partition), log in sorted(driver.logs.items()):
        if topic in (t.raw_artifacts, t.raw_task_results):
            continue
        into = handed_on if topic in (t.artifacts_by_key, t.artifacts_by_id,
                                      t.task_results_by_flow_run) else events
        name = f"{prefix}.{topic}"
        into.extend(Out(name, r.key, r.value, list(r.headers), partition) for r in log)
    assert driver.changelog is not None
    changelog = [Out(f"{prefix}.{table}-changelog", key, value, [], partition)
                 for table, partition, key, value in driver.changelog]
    return Plan(handed_on, events, changelog)


def topic_names(p: Plan) -> list[str]:
    return sorted({r.topic for rs in (p.handed_on, p.events, p.changelog) for r in rs})


async def run(bs: str, raw_topics: list[str], n: int, p: Plan, meter: Meter, *, partitions: int,
              producer: dict[str, Any], fetch_wait_ms: int, in_flight: int,
              batch: int = 500) -> dict[str, Any]:
    """Drain `n` pre-produced messages of `raw_topics`, writing `p`'s records in proportion to
    the messages read, and read the handed-on records back; msgs/s of the whole."""
    handed_topics = sorted({r.topic for r in p.handed_on})
    tps = [TopicPartition(t, i) for t in [*raw_topics, *handed_topics] for i in range(partitions)]
    raw = set(raw_topics)
    kinds = (p.handed_on, p.events, p.changelog)
    sent = [0, 0, 0]
    read_raw = read_handed = 0
    slots = asyncio.Semaphore(in_flight)
    flying: set[asyncio.Task[None]] = set()
    async with clients(bs, tps, fetch_wait_ms=fetch_wait_ms, producer=producer) as (consumer, prod):
        meter.start()
        started = time.perf_counter()
        while read_raw < n or read_handed < len(p.handed_on):
            fetched = await consumer.getmany(timeout_ms=500, max_records=batch)
            for tp, records in fetched.items():
                if tp.topic in raw:
                    read_raw += len(records)
                else:
                    read_handed += len(records)
            # What the steps wrote for the messages read so far: outputs, acknowledged, then the
            # changelog records; up to `in_flight` fetches' worth at once, as the worker's steps
            # each have a batch in flight.
            waves: list[list[Out]] = []
            for wave in ((0, 1), (2,)):
                outputs: list[Out] = []
                for kind in wave:
                    records_of = kinds[kind]
                    due = len(records_of) * read_raw // n
                    outputs += records_of[sent[kind]:due]
                    sent[kind] = due
                waves.append(outputs)
            await slots.acquire()
            flying.add(asyncio.create_task(_write(prod, waves, slots)))
            for written in [t for t in flying if t.done()]:
                flying.discard(written)
                written.result()  # a write that failed ends the run
        await asyncio.gather(*flying)
        elapsed = time.perf_counter() - started
        cores = meter.cores()
    return {"messages": n, "records_out": p.records_out, "records_in": n + len(p.handed_on),
            "seconds": round(elapsed, 3), "msgs_per_s": round(n / elapsed), "cores": cores}


async def _write(producer: AIOKafkaProducer, waves: list[list[Out]], slots: asyncio.Semaphore) -> None:
    try:
        for outputs in waves:
            if outputs:
                await publish(producer, outputs)
    finally:
        slots.release()
