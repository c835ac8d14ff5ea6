"""bench/traffic.py: the worker's records, to be written without its processing, are all of them
(no broker needed; the loop that writes them is the benchmark's `traffic` phase)."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import traffic  # noqa: E402
import workload as wl  # noqa: E402
from topology_driver import Driver  # noqa: E402

MESSAGES = wl.mixed(3000, seed=11).messages


def _driven() -> Driver:
    return traffic.drive(MESSAGES, 4)


def test_the_changelog_rebuilds_every_table() -> None:
    """Writes and deletes in the order the steps made them: replayed, they are the tables."""
    driver = _driven()
    assert driver.changelog is not None
    rebuilt: dict[str, dict[bytes, bytes]] = {}
    for table, _partition, key, value in driver.changelog:
        state = rebuilt.setdefault(table, {})
        if value is None:
            state.pop(key, None)
        else:
            state[key] = value
    assert rebuilt == {name: state for name, state in driver.tables.items() if name in rebuilt}
    assert set(rebuilt) == {"memberships", "collections", "lineage"}
    assert Counter(v is None for *_, v in driver.changelog)[True] > 0  # the workload deletes


def test_the_plan_holds_every_record_the_steps_write() -> None:
    driver = _driven()
    plan = traffic.plan(MESSAGES, 4, "p")
    t = driver.topics
    by_topic = Counter(f"p.{topic}" for (topic, _), log in driver.logs.items()
                       if not t.is_raw(topic) for _ in log)
    assert Counter(r.topic for r in [*plan.handed_on, *plan.events]) == by_topic
    assert {r.topic for r in plan.handed_on} == {f"p.{t.artifacts_by_key}"}
    assert sorted(r.value or b"" for r in plan.handed_on) == sorted(
        r.value or b"" for (topic, _), log in driver.logs.items() if topic == t.artifacts_by_key
        for r in log)
    assert driver.changelog is not None
    assert [(r.topic, r.partition, r.key, r.value) for r in plan.changelog] == [
        (f"p.{table}-changelog", partition, key, value)
        for table, partition, key, value in driver.changelog]
