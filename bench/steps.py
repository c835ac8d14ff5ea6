"""The worker's steps alone: the benchmark's mixed workload through the same processors the
agents run, routed between them by the broker-free topology driver (tests/topology_driver.py),
in batches of the worker's size. No Kafka, no Faust: what the logic costs per message.

    .venv/bin/python bench/steps.py --messages 20000
    valgrind --tool=callgrind .venv/bin/python bench/steps.py --messages 5000 --only-generate
    valgrind --tool=callgrind .venv/bin/python bench/steps.py --messages 5000

msgs/s drifts with the machine's load; instructions under callgrind do not: the second count
minus the first is the steps' cost, comparable between commits (README, "Performance").
Python's cyclic collector runs as the worker's does (topology.runner.tune_gc); `--python-gc`
keeps Python's own thresholds, as every count before `b2eb181` did.

    .venv/bin/python bench/steps.py --touch --messages 150000

`--touch` asks what a key's versions cost, without the broker (README, the flatness target): after
`--messages` keyed creates over 1,000 keys, and again over as many keys as creates, it times the
collections step on one more create at a time, into a key of `messages/1000` versions and into a
new key. The state is built first and frozen out of the collector's way, and each create is its
own batch, so neither the driver's growing logs nor other keys of a batch count.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from topology_driver import Driver, topics  # noqa: E402

from bench import workload as wl  # noqa: E402
from topology import config, steps  # noqa: E402
from topology.records import partition_for  # noqa: E402
from topology.runner import tune_gc  # noqa: E402

TOUCH_KEYS = 1000  # the benchmark's few keys (bench/benchmark.py, keys phase)
TOUCH_PROBES = 2000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=500, help="the worker's default")
    parser.add_argument("--only-generate", action="store_true",
                        help="stop before processing (the callgrind baseline)")
    parser.add_argument("--python-gc", action="store_true",
                        help="keep Python's collector thresholds instead of the worker's")
    parser.add_argument("--touch", action="store_true",
                        help="time one create into a key of messages/1000 versions and into a new key")
    args = parser.parse_args()
    if args.touch:
        hot = touch_us(args.messages, TOUCH_KEYS, args.python_gc)
        new = touch_us(args.messages, args.messages + TOUCH_PROBES, args.python_gc)
        print(f"collections step, one create a batch: into a key of {args.messages // TOUCH_KEYS:,} "
              f"versions {hot:.1f} us, into a new key {new:.1f} us ({hot / new - 1:+.0%})")
        return
    if not args.python_gc:
        tune_gc(config.load({}, environ={}).gc_gen0_threshold)
    t = topics(4, 4)
    driver = Driver(t, batch_size=args.batch_size)
    for m in wl.mixed(args.messages).messages:
        driver.produce(t.raw_artifacts if m.stream == wl.ARTIFACTS else t.raw_task_results,
                       m.value, m.key)
    if args.only_generate:
        return
    started = time.perf_counter()
    driver.run()
    elapsed = time.perf_counter() - started
    events = sum(len(driver.events(topic)) for topic in (t.artifact_events, t.asset_events))
    print(f"{args.messages:,} messages, {events:,} events in {elapsed:.2f} s: "
          f"{args.messages / elapsed:,.0f} msgs/s")


def touch_us(messages: int, keys: int, python_gc: bool, rounds: int = 5) -> float:
    """Microseconds of the collections step for one create, the best of `rounds` over the same
    TOUCH_PROBES creates (each round reads the same state: results are not written back)."""
    gc.disable()
    t = topics(4, 4)
    driver = Driver(t, batch_size=500)
    work = wl.creates(messages + TOUCH_PROBES, keys=keys, seed=21).messages
    for m in work[:messages]:
        driver.produce(t.raw_artifacts, m.value, m.key)
    driver.run()
    memberships, collections = driver.tables["memberships"], driver.tables["collections"]

    def load_membership(key: bytes, _partition: int) -> bytes | None:
        return memberships.get(key)

    def load_collection(key: bytes, _partition: int) -> bytes | None:
        return collections.get(key)

    probes: list[steps.InRecord] = []
    for i, m in enumerate(work[messages:], start=10**9):  # after every offset the state marks
        record = steps.InRecord(t.raw_artifacts, partition_for(m.key, 4), i, m.key, m.value)
        result = steps.apply_memberships(t, [record], load_membership)
        for out in result.outputs:
            if out.topic == t.artifacts_by_key:
                assert out.key is not None
                probes.append(steps.InRecord(out.topic, partition_for(out.key, 4), i,
                                             out.key, out.value, tuple(out.headers)))
    assert len(probes) == TOUCH_PROBES, len(probes)
    for record in probes:  # each a create the step applies, not a replay it skips
        result = steps.apply_collections(t, [record], load_collection)
        assert not result.replays_skipped and result.writes, result
    gc.freeze()  # the state built above is not what a touch costs
    if not python_gc:
        tune_gc(config.load({}, environ={}).gc_gen0_threshold)
    gc.enable()
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for record in probes:
            steps.apply_collections(t, [record], load_collection)
        best = min(best, time.perf_counter() - started)
    gc.unfreeze()
    return best / len(probes) * 1e6


if __name__ == "__main__":
    main()
