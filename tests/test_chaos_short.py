"""A short chaos run (bench/chaos.py): SIGKILLed and restarted workers lose and change nothing.

~2.5k messages, 3 SIGKILLs (some during start-up or recovery, as the seed says), two partitions,
about 65 s; the worker's output must equal `prefect-events process` over the same input: no
expected event missing, no event with other bytes, no id with two values, every dead letter.
The full-size run and what it measures are in README, "Operating".
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import chaos  # noqa: E402


def test_the_worker_log_names_the_ids_of_deletes_it_never_saw() -> None:
    """The harness reads the worker's unknown-delete line (topology.app) and keeps the ids of
    artifacts its workload created: those lost their membership."""
    line = (
        "3 deletes of artifacts without a live membership, nothing emitted: "
        "0b7c4a43-5a5e-4a53-9a0e-2f2b5f0c9a12 never seen (raw[0]@7), "
        "0b7c4a43-5a5e-4a53-9a0e-2f2b5f0c9a13 deleted already (raw[0]@8), "
        "0b7c4a43-5a5e-4a53-9a0e-2f2b5f0c9a14 never seen (raw[1]@2)"
    )
    assert chaos.NEVER_SEEN.findall(line) == [
        "0b7c4a43-5a5e-4a53-9a0e-2f2b5f0c9a12",
        "0b7c4a43-5a5e-4a53-9a0e-2f2b5f0c9a14",
    ]
    workload = chaos.generate(2500, seed=3, partitions=2)
    messages = [m for r in workload.rounds for m in r]
    created = chaos.created_ids(workload)

    def ids(kind: str) -> set[str]:
        return {m.key.decode() for m in messages if m.kind == kind}

    assert ids("create-first") and ids("create-first") <= created
    assert ids("delete-unknown") and not ids("delete-unknown") & created


def test_workload_is_deterministic() -> None:
    a = chaos.generate(600, seed=3, partitions=2, rounds=4)
    b = chaos.generate(600, seed=3, partitions=2, rounds=4)
    assert [(m.key, m.value, m.partition) for m in a.messages] == [
        (m.key, m.value, m.partition) for m in b.messages
    ]
    # Every round touches a collection key at most once (module docstring of bench/chaos.py).
    for rnd in a.rounds:
        keys = [m.collection for m in rnd if m.collection is not None]
        assert len(keys) == len(set(keys))
    kinds = {m.kind for m in a.messages}
    assert {"create-first", "delete-last", "probe", "task-completed"} <= kinds


@pytest.mark.broker
@pytest.mark.timeout(240)
def test_short_chaos_run_loses_and_changes_nothing(
    bootstrap_servers: str, broker_kind: str, tmp_path: Path
) -> None:
    """The session broker (conftest): embedded Tansu, or KAFKA_BOOTSTRAP_SERVERS when set."""
    cfg = chaos.Config(
        messages=2500,
        kills=3,
        seed=11,
        partitions=2,
        rounds=6,
        rate=200.0,
        rebalance=False,
        bootstrap_servers=bootstrap_servers,
        out_dir=tmp_path,
        barrier_timeout_s=90.0,
        quiet_s=2.0,
        verbose=False,
        # A SIGKILLed member's session must expire before the group moves on: short sessions
        # (Kafka's minimum is 6 s); and on Tansu one record per changelog batch (its end offsets
        # are wrong otherwise; README, embedded broker).
        session_timeout_s=6.0,
        one_record_changelog_batches=broker_kind == "embedded",
        page_size=2,  # collection pages fill, empty and re-point under the kills
    )
    report = chaos.run(cfg)
    table = report.table()
    assert report.kills == 3, table
    assert report.rounds_produced == report.rounds_total, table
    assert report.lost == 0, table
    assert report.wrong == 0, table
    assert report.conflicting == 0, table
    assert report.dead_letter_mismatches == 0, table
    assert report.created_taken_for_unknown == [], table  # no membership went missing
    assert report.offline_agrees, table
    for stream in report.streams.values():
        assert stream.seen == stream.expected > 0, table
