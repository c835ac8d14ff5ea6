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
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from topology_driver import Driver, topics  # noqa: E402

from bench import workload as wl  # noqa: E402
from topology import config  # noqa: E402
from topology.runner import tune_gc  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=500, help="the worker's default")
    parser.add_argument("--only-generate", action="store_true",
                        help="stop before processing (the callgrind baseline)")
    parser.add_argument("--python-gc", action="store_true",
                        help="keep Python's collector thresholds instead of the worker's")
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
