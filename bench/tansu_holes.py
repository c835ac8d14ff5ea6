"""Does a fetch at a partition's tail skip records while several producers write to it?

Measured on the embedded Tansu broker (or KAFKA_BOOTSTRAP_SERVERS): `--producers` producers write
one-record batches to the same 4 partitions while 2 readers follow the tail. A reader that gets
offset n+k after n has met a hole; it seeks back to n at once and times how long until n shows up.
On Kafka a hole is a transaction marker or a compacted record and never fills; on Tansu 0.6 holes
appear with 2+ concurrent writers and fill within milliseconds, and a consumer that moved on
never reads those records (the commit ledger re-reads a gap before it believes it:
topology/commits.py).

    .venv/bin/python -m bench.tansu_holes [--records 5000] [--producers 3] [--fetch-wait-ms 100]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

PARTITIONS = 4
TOPIC = "tail-holes"


@dataclass
class Holes:
    read: int = 0
    filled_ms: list[float] = field(default_factory=list)
    seen_again: int = 0
    open: int = 0


async def produce(bootstrap: str, records: int, tag: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_batch_size=1, linger_ms=0, acks="all")
    await producer.start()
    try:
        pending = []
        for i in range(records):
            for partition in range(PARTITIONS):
                key = f"{tag}-{i}".encode()
                pending.append(await producer.send(TOPIC, b"y" * 150, key=key, partition=partition))
            if len(pending) > 400:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def follow(bootstrap: str, total: int, fetch_wait_ms: int, deadline_s: float) -> Holes:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=fetch_wait_ms
    )
    await consumer.start()
    holes, opened = Holes(), dict[tuple[TopicPartition, int], float]()
    try:
        tps = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        last = {tp: -1 for tp in tps}
        deadline = time.monotonic() + deadline_s
        while holes.read < total and time.monotonic() < deadline:
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                for record in records:
                    if record.offset != last[tp] + 1:
                        hole = (tp, last[tp] + 1)
                        if hole in opened:
                            holes.seen_again += 1
                        else:
                            opened[hole] = time.monotonic()
                        consumer.seek(tp, last[tp] + 1)
                        break
                    started = opened.pop((tp, record.offset), None)
                    if started is not None:
                        holes.filled_ms.append(round((time.monotonic() - started) * 1000, 1))
                    last[tp] = record.offset
                    holes.read += 1
    finally:
        await consumer.stop()
    holes.open = len(opened)
    return holes


async def run(bootstrap: str, records: int, producers: int, fetch_wait_ms: int) -> list[Holes]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)])
    finally:
        await admin.close()
    total = records * PARTITIONS * producers
    readers = [asyncio.create_task(follow(bootstrap, total, fetch_wait_ms, 300.0)) for _ in range(2)]
    await asyncio.sleep(0.5)
    await asyncio.gather(*(produce(bootstrap, records, f"p{j}") for j in range(producers)))
    return list(await asyncio.gather(*readers))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=5000, help="per producer and partition")
    parser.add_argument("--producers", type=int, default=3)
    parser.add_argument("--fetch-wait-ms", type=int, default=100)
    args = parser.parse_args(argv)
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    broker = None
    if not bootstrap:
        from topology.embedded_broker import EmbeddedBroker

        broker = EmbeddedBroker().start()
        bootstrap = broker.bootstrap_servers
    try:
        results = asyncio.run(run(bootstrap, args.records, args.producers, args.fetch_wait_ms))
    finally:
        if broker is not None:
            broker.stop()
    total = args.records * PARTITIONS * args.producers
    print(f"{args.producers} producers x {PARTITIONS} partitions x {args.records} one-record batches")
    for i, h in enumerate(results):
        print(
            f"reader {i}: {h.read}/{total} read, {len(h.filled_ms)} holes filled on re-read after "
            f"{h.filled_ms} ms, seen again {h.seen_again}, never filled {h.open}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
