"""Chaos run: a seeded mixed workload through `prefect-events worker` while it is SIGKILLed and
rebalanced, then every output record compared with `prefect-events process` over the same input.

    .venv/bin/python bench/chaos.py [--messages N] [--kills K] [--seed S] [--partitions P]

What it does
------------
1. Generates a deterministic workload (``--seed``): artifact creates/updates/deletes over many
   collection keys (several versions per key, creates whose ``created`` is older than the latest,
   deletes of the latest / a non-latest / the last version, PATCHes with some, none or all fields,
   producer retries that resend a create's exact bytes, updates and deletes of unknown or deleted
   ids, unkeyed artifacts), task results of flow runs with lineage chains (A materializes X → B
   plain → C materializes Y, ``wait_for`` edges, asset deps, Cached, FAILED then retried, RUNNING,
   CRASHED, task runs without a flow run) and a few invalid messages of each stream. Records are
   keyed like a real producer: artifact ops by artifact id, task results by flow run id (task run
   id when there is none); invalid ones with a random key or none. Partitions are chosen with the
   Kafka default partitioner (murmur2 of the key), so the raw topics look as a producer makes them.
2. Starts the embedded Tansu broker (or uses ``KAFKA_BOOTSTRAP_SERVERS``), creates the topics
   (all names carry a per-run tag, so runs never see each other's records), starts the worker as
   a subprocess and produces the input at a steady rate (``--rate``), in rounds.
3. SIGKILLs a worker at ``--kills`` random points (spread over the input; some during start-up and
   changelog recovery, most while it is processing) and restarts it at once; in the middle of the
   run a second worker joins the same consumer group (rebalance) and later one of the two is
   SIGKILLed for good (second rebalance; ``--leave-with SIGTERM`` stops it instead, and with
   ``--standby-replicas 1`` the first worker leaves, so the one that takes its partitions over has
   held them only as standbys). A worker that dies on its own is restarted and reported.
4. After the last kill, waits until every input is processed and the output topics are quiet,
   stops the workers with SIGTERM (exit code and time are reported), reads the output topics and
   compares them, per stream, with what ``prefect-events process`` prints for the same input:

   lost         expected event id never seen
   wrong        seen id that is not expected, or seen with bytes other than the expected ones
                (also: record key not the resource id, or header prefect-event not the name)
   dup ident.   extra records of an id, byte-identical (allowed: at-least-once)
   dup confl.   ids seen with more than one distinct value (each is also counted in wrong)
   dead letters distinct (source topic, partition, offset) expected / seen

   and exits non-zero when lost, wrong or conflicting is above 0, or a dead letter is missing or
   unexpected. Details (ids, both byte strings, the input message that caused each event) go to
   ``OUT/details.json``; the input files, worker logs and the offline output stay in ``OUT``.

Why rounds and barriers (the choice that makes the expected output well defined)
--------------------------------------------------------------------------------
Artifact events depend on the order in which operations on *different* artifacts of one
collection key are applied (whether a create is announced as ``collection.created`` or
``updated``, which version a delete re-points to). The worker repartitions by artifact id, then
by collection key, so two artifacts of one key travel through different raw and ``by-id``
partitions and meet only in the ``by-key`` partition, in whatever order the steps upstream
happened to forward them. Producing them in order and flushing is not enough: after a kill the
restarted worker may fetch one raw or by-id partition in a batch before another, and Kafka orders
nothing across partitions. Comparing only order-independent properties would hide exactly the
conflicts this script is for. So the input is produced in **rounds**:

* within a round every collection key (and every artifact id) is touched at most once, so the
  order of a round's operations at the collection step does not matter;
* after each round come **probes**: for every path (raw partition i, by-id partition j, by-key
  partition k) one create of a fresh key whose artifact id and key hash to exactly that path (when
  the raw partition already owns the id, i == j, the worker applies it in place: still the same
  path, in the same order; with as many raw as internal partitions that is the only kind of
  path, `paths`). Each
  partition is processed in offset order at every step, so once a probe's ``collection.created``
  event is on the output topic, everything that went down its path before it has been forwarded
  into its ``by-key`` partition. The next round is produced only when all probes of the round are
  out (a barrier, ``--barrier-timeout``), so operations of one key reach its by-key partition in
  round order, which is the order of the input file given to ``prefect-events process``.

Task results need no barrier: lineage is per flow run, and a flow run's records share one raw
partition and one internal partition end to end. One probe per (raw, internal) partition pair
per round still checks that the asset path keeps moving. Within a round the order of messages is
their ``occurred`` order; rounds follow each other in event time. Probes are ordinary input: they
are in the input files and in the counts (``msgs in`` includes them; ``probes`` says how many).

What the barrier does NOT hide: a replay that re-applies an old operation after newer ones (the
bug class this script hunts) still lands among later rounds' operations, because a restarted
worker re-reads raw records from its last committed offsets whenever they are.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402
from aiokafka.partitioner import DefaultPartitioner  # noqa: E402

from topology.records import partition_for  # noqa: E402

ARTIFACTS = "artifacts"
ASSETS = "assets"
STREAMS = (ARTIFACTS, ASSETS)
EPOCH = datetime(2026, 11, 24, 10, 0, 0, tzinfo=UTC)
WORDS = [
    "rows", "loaded", "quality", "check", "passed", "failed", "warehouse", "model", "training",
    "epoch", "loss", "accuracy", "customers", "orders", "revenue", "region", "latency",
    "snapshot", "partition", "backfill", "daily", "hourly",
]
_PARTITIONER = DefaultPartitioner()


def ts(us: int) -> str:
    return (EPOCH + timedelta(microseconds=us)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def raw_partition(key: bytes, partitions: int) -> int:
    """The partition a Kafka client's default partitioner picks for a keyed record."""
    every = list(range(partitions))
    return int(_PARTITIONER(key, every, every))


def paths(input_partitions: int, partitions: int) -> list[tuple[int, int]]:
    """(raw partition, internal partition) pairs a keyed record can take. The worker partitions
    internal topics as a producer's default partitioner does (murmur2), so with as many raw as
    internal partitions a well-keyed record stays in its partition (raw i → internal i)."""
    return [(i, j) for i in range(input_partitions) for j in range(partitions)
            if input_partitions != partitions or i == j]


# --- the workload -------------------------------------------------------------------------------


@dataclass
class Message:
    stream: str  # ARTIFACTS | ASSETS
    key: bytes | None
    value: bytes
    partition: int
    round: int
    kind: str  # what the generator meant it to be, for the details file
    probe: bool = False
    collection: str | None = None  # the collection key a keyed artifact operation concerns


@dataclass
class Workload:
    rounds: list[list[Message]]  # each round: its messages, then its probes
    partitions: int
    input_partitions: int
    seed: int

    @property
    def messages(self) -> list[Message]:
        return [m for r in self.rounds for m in r]

    def of(self, stream: str) -> list[Message]:
        return [m for m in self.messages if m.stream == stream]


@dataclass
class _Version:
    id: str
    created_us: int
    create_bytes: bytes


@dataclass
class _Key:
    live: dict[str, _Version] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)

    def latest(self) -> _Version:
        return max(self.live.values(), key=lambda v: (v.created_us, v.id))


@dataclass
class _Task:
    id: str
    name: str
    upstream: list[str]
    downstream: list[dict[str, Any]]
    deps: list[dict[str, Any]]
    state: dict[str, str]
    materialized_by: str | None


@dataclass
class _FlowRun:
    id: str | None
    name: str
    flow: dict[str, str]
    deployment: dict[str, str] | None
    work_pool: dict[str, str] | None
    work_queue: dict[str, str] | None
    tags: list[str]
    plan: list[tuple[_Task, dict[str, str]]]  # (task, state of this attempt), in report order
    reported: int = 0


class Generator:
    """Seeded; every choice comes from one Random, so a seed always gives the same bytes."""

    def __init__(self, seed: int, partitions: int, input_partitions: int) -> None:
        self.rng = random.Random(seed)
        self.partitions = partitions
        self.input_partitions = input_partitions
        self.clock_us = 0
        self.keys: dict[str, _Key] = {}
        self.unkeyed: list[str] = []
        self.unkeyed_deleted: list[str] = []
        self.flow_runs: list[_FlowRun] = []
        self.recent_contexts: list[dict[str, Any]] = []
        self.assets = [f"s3://lake/{self.rng.choice(WORDS)}/table_{i}" for i in range(300)]
        self.asset_props: dict[str, dict[str, Any] | None] = {}
        self.probe_serial = 0

    # --- small helpers

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def word(self) -> str:
        return self.rng.choice(WORDS)

    def tick(self) -> int:
        self.clock_us += self.rng.randint(20, 300)
        return self.clock_us

    def data(self) -> Any:
        r = self.rng.random()
        if r < 0.6:
            return "# " + " ".join(self.word() for _ in range(self.rng.randint(2, 25)))
        if r < 0.85:
            return [
                {"name": self.word(), "value": self.rng.randint(0, 10**6)}
                for _ in range(self.rng.randint(1, 4))
            ]
        if r < 0.95:
            return {"rows": self.rng.randint(0, 10**9), "ok": self.rng.random() < 0.9}
        return self.rng.choice([None, 42, 1.5, True])

    def description(self) -> str | None:
        return None if self.rng.random() < 0.4 else f"{self.word()} {self.word()}"

    def metadata(self) -> dict[str, str] | None:
        return None if self.rng.random() < 0.6 else {"source": self.word()}

    def keyed(self, stream: str, key: bytes, value: bytes, rnd: int, kind: str) -> Message:
        return Message(stream, key, value, raw_partition(key, self.input_partitions), rnd, kind)

    # --- run contexts and flow runs

    def new_flow_run(self, with_id: str | None = None, no_flow_run: bool = False) -> _FlowRun:
        fr_id = None if no_flow_run else (with_id or self.uuid())
        deployed = self.rng.random() < 0.6
        tags = sorted(self.rng.sample(["etl", "prod", "nightly", "team-a", "b", "ml"],
                                      self.rng.randint(0, 3)))
        return _FlowRun(
            id=fr_id,
            name=f"{self.word()}-{self.word()}-{self.rng.randint(1, 999)}",
            flow={"id": self.uuid(), "name": f"{self.word()}-flow"},
            deployment={"id": self.uuid(), "name": "nightly"} if deployed else None,
            work_pool={"id": self.uuid(), "name": "default-pool"} if deployed else None,
            work_queue=(
                {"id": self.uuid(), "name": "default"}
                if deployed and self.rng.random() < 0.5 else None
            ),
            tags=tags,
            plan=[],
        )

    def context(self, fr: _FlowRun, task: _Task | None) -> dict[str, Any] | None:
        ctx: dict[str, Any] = {}
        if fr.id is not None:
            ctx["flow_run"] = {"id": fr.id, "name": fr.name}
        if task is not None:
            ctx["task_run"] = {"id": task.id, "name": task.name}
        ctx["flow"] = fr.flow
        for part in ("deployment", "work_queue", "work_pool"):
            if getattr(fr, part) is not None:
                ctx[part] = getattr(fr, part)
        if fr.tags:
            ctx["tags"] = fr.tags
        return ctx

    def artifact_context(self) -> dict[str, Any] | None:
        if not self.recent_contexts or self.rng.random() < 0.3:
            return None
        return self.rng.choice(self.recent_contexts)

    # --- artifacts

    def create(self, rnd: int, key: str | None, kind: str, backfill_before: int | None = None,
               art_id: str | None = None) -> tuple[Message, _Version]:
        occurred = self.tick()
        created = occurred
        if backfill_before is not None:  # created before the current latest: not the new latest
            created = max(0, backfill_before - self.rng.randint(1, 5_000_000))
        art_id = art_id or self.uuid()
        ctx = self.artifact_context()
        msg = {
            "op": "create",
            "occurred": ts(occurred),
            "context": ctx,
            "artifact": {
                "id": art_id,
                "key": key,
                "type": self.rng.choice(["markdown", "table", "link", "progress", None]),
                "data": self.data(),
                "description": self.description(),
                "metadata_": self.metadata(),
                "flow_run_id": (ctx or {}).get("flow_run", {}).get("id"),
                "task_run_id": (ctx or {}).get("task_run", {}).get("id"),
                "created": ts(created),
            },
        }
        value = orjson.dumps(msg)
        return self.keyed(ARTIFACTS, art_id.encode(), value, rnd, kind), _Version(
            art_id, created, value
        )

    def update(self, rnd: int, art_id: str, kind: str) -> Message:
        fields = [f for f in ("data", "description", "metadata_") if self.rng.random() < 0.5]
        changes: dict[str, Any] = {}
        for f in fields:
            changes[f] = {"data": self.data, "description": self.description,
                          "metadata_": self.metadata}[f]()
        msg = {"op": "update", "occurred": ts(self.tick()), "artifact_id": art_id,
               "context": self.artifact_context(), "changes": changes}
        return self.keyed(ARTIFACTS, art_id.encode(), orjson.dumps(msg), rnd, kind)

    def delete(self, rnd: int, art_id: str, kind: str) -> Message:
        msg = {"op": "delete", "occurred": ts(self.tick()), "artifact_id": art_id}
        return self.keyed(ARTIFACTS, art_id.encode(), orjson.dumps(msg), rnd, kind)

    def keyed_op(self, rnd: int, name: str) -> Message:
        msg = self._keyed_op(rnd, name)
        msg.collection = name
        return msg

    def _keyed_op(self, rnd: int, name: str) -> Message:
        state = self.keys.setdefault(name, _Key())
        n = len(state.live)
        if n == 0:
            msg, version = self.create(rnd, name, "create-first" if not state.deleted
                                       else "create-restart")
            state.live[version.id] = version
            return msg
        r = self.rng.random()
        if n >= 6:  # keep collections small: mostly deletes
            r = 0.6 + 0.28 * self.rng.random()
        if r < 0.38:
            backfill = self.rng.random() < 0.12
            latest = state.latest()
            msg, version = self.create(
                rnd, name, "create-backfill" if backfill else "create-version",
                backfill_before=latest.created_us if backfill else None,
            )
            state.live[version.id] = version
            return msg
        if r < 0.60:
            target = state.latest() if self.rng.random() < 0.5 else self.rng.choice(
                list(state.live.values()))
            kind = "update-latest" if target.id == state.latest().id else "update-other"
            return self.update(rnd, target.id, kind)
        if r < 0.88:
            latest = state.latest()
            if n == 1:
                target, kind = latest, "delete-last"
            elif self.rng.random() < 0.5:
                target, kind = latest, "delete-latest"
            else:
                target = self.rng.choice([v for v in state.live.values() if v.id != latest.id])
                kind = "delete-other"
            del state.live[target.id]
            state.deleted.append(target.id)
            return self.delete(rnd, target.id, kind)
        if r < 0.93:  # a producer retry: the exact bytes of an earlier create, again
            version = self.rng.choice(list(state.live.values()))
            return self.keyed(ARTIFACTS, version.id.encode(), version.create_bytes, rnd,
                              "create-retry")
        if r < 0.97 and state.deleted:
            return self.update(rnd, self.rng.choice(state.deleted), "update-deleted")
        if state.deleted:
            return self.delete(rnd, self.rng.choice(state.deleted), "delete-deleted")
        return self.update(rnd, state.latest().id, "update-latest")

    def unkeyed_op(self, rnd: int, used: set[str]) -> Message:
        r = self.rng.random()
        free = [a for a in self.unkeyed[-200:] if a not in used]
        if r < 0.45 or not free:
            msg, version = self.create(rnd, None, "create-unkeyed")
            self.unkeyed.append(version.id)
            used.add(version.id)
            return msg
        if r < 0.75:
            art_id = self.rng.choice(free)
            used.add(art_id)
            return self.update(rnd, art_id, "update-unkeyed")
        if r < 0.90:
            art_id = self.rng.choice(free)
            used.add(art_id)
            self.unkeyed.remove(art_id)
            self.unkeyed_deleted.append(art_id)
            return self.delete(rnd, art_id, "delete-unkeyed")
        if r < 0.95:
            return self.update(rnd, self.uuid(), "update-unknown")
        return self.delete(rnd, self.uuid(), "delete-unknown")

    # --- task results

    def asset(self, with_metadata: bool) -> dict[str, Any]:
        key = self.rng.choice(self.assets)
        if key not in self.asset_props or self.rng.random() < 0.1:
            props: dict[str, Any] | None = None
            if self.rng.random() < 0.6:
                props = {"name": key.rsplit("/", 1)[-1]}
                if self.rng.random() < 0.5:
                    props["description"] = f"{self.word()} data"
                if self.rng.random() < 0.3:
                    props["url"] = "https://example.com/" + key[5:]
                if self.rng.random() < 0.4:
                    props["owners"] = self.rng.sample(["data-team", "ml", "finance"],
                                                      self.rng.randint(0, 2))
            self.asset_props[key] = props
        asset: dict[str, Any] = {"key": key, "properties": self.asset_props[key]}
        if with_metadata:
            asset["metadata"] = (
                {"rows": self.rng.randint(0, 10**7)} if self.rng.random() < 0.7 else {}
            )
        return asset

    def plan_flow_run(self) -> _FlowRun:
        fr = self.new_flow_run(no_flow_run=self.rng.random() < 0.02)
        tasks: list[_Task] = []

        def task(upstream: list[str], downstream: int, deps: int, state: dict[str, str]) -> _Task:
            t = _Task(
                id=self.uuid(),
                name=f"{self.word()}-{len(tasks)}",
                upstream=upstream,
                downstream=[self.asset(True) for _ in range(downstream)],
                deps=[self.asset(False) for _ in range(deps)],
                state=state,
                materialized_by=None,
            )
            if t.downstream and self.rng.random() < 0.2:
                t.materialized_by = self.rng.choice(["dbt", "spark"])
            tasks.append(t)
            return t

        completed = {"type": "COMPLETED", "name": "Completed"}
        if self.rng.random() < 0.4:  # the canonical chain: A materializes X → B plain → C → Y
            a = task([], 1, 0, completed)
            b = task([a.id], 0, 0, completed)
            task([b.id], 1, self.rng.randint(0, 1), completed)
        for _ in range(self.rng.randint(1, 6)):
            upstream = [t.id for t in tasks[-self.rng.randint(1, 2):]] if tasks else []
            if tasks and self.rng.random() < 0.15:  # a wait_for edge to an older task
                upstream.append(self.rng.choice(tasks).id)
            r = self.rng.random()
            state = (completed if r < 0.78 else
                     {"type": "COMPLETED", "name": "Cached"} if r < 0.86 else
                     {"type": "FAILED", "name": "Failed"} if r < 0.94 else
                     {"type": "RUNNING", "name": "Running"} if r < 0.97 else
                     {"type": "CRASHED", "name": "Crashed"})
            task(upstream,
                 self.rng.randint(1, 2) if self.rng.random() < 0.5 else 0,
                 self.rng.randint(1, 2) if self.rng.random() < 0.25 else 0,
                 state)
        plan: list[tuple[_Task, dict[str, str]]] = []
        for t in tasks:
            if t.state["type"] == "FAILED" and self.rng.random() < 0.7:
                plan.append((t, t.state))  # this attempt failed; a retry comes later
                plan.append((t, completed))
            elif t.state["type"] == "COMPLETED" and self.rng.random() < 0.05:
                plan.append((t, {"type": "FAILED", "name": "Failed"}))  # retried, then done
                plan.append((t, t.state))
            else:
                plan.append((t, t.state))
        # A retry may be reported after later tasks started: move some retries back a little.
        for i in range(len(plan) - 1, 0, -1):
            if plan[i][0] is plan[i - 1][0] and self.rng.random() < 0.3 and i + 1 < len(plan):
                plan.insert(i + 1, plan.pop(i))
        fr.plan = plan
        return fr

    def task_result(self, rnd: int) -> Message:
        active = [fr for fr in self.flow_runs if fr.reported < len(fr.plan)]
        if len(active) < 12 or self.rng.random() < 0.12:
            fr = self.plan_flow_run()
            self.flow_runs.append(fr)
            if fr.id is not None:
                self.recent_contexts.append(self.context(fr, None) or {})
                self.recent_contexts = self.recent_contexts[-50:]
        else:
            fr = self.rng.choice(active)
        self.flow_runs = [f for f in self.flow_runs if f.reported < len(f.plan)]
        t, state = fr.plan[fr.reported]
        fr.reported += 1
        msg = {
            "task_run_id": t.id,
            "flow_run_id": fr.id,
            "occurred": ts(self.tick()),
            "context": self.context(fr, t),
            "state": state,
            "downstream_assets": t.downstream,
            "upstream_assets": t.deps,
            "upstream_task_run_ids": t.upstream,
            "materialized_by": t.materialized_by,
        }
        key = (fr.id or t.id).encode()
        return self.keyed(ASSETS, key, orjson.dumps(msg), rnd, f"task-{state['name'].lower()}")

    # --- invalid input

    def invalid(self, rnd: int, stream: str) -> Message:
        now = ts(self.tick())
        good_id = self.uuid()
        if stream == ARTIFACTS:
            choices = [
                ("truncated-json", b'{"op": "create", "occurred": "' + now.encode()),
                ("not-utf8", b"\xff\xfe{\"op\": \"delete\"}"),
                ("not-an-object", b"[1, 2, 3]"),
                ("unknown-op", orjson.dumps({"op": "upsert", "occurred": now,
                                             "artifact_id": good_id})),
                ("bad-uuid", orjson.dumps({"op": "update", "occurred": now,
                                           "artifact_id": "not-a-uuid", "changes": {}})),
                ("bad-timestamp", orjson.dumps({"op": "delete", "occurred": "yesterday",
                                                "artifact_id": good_id})),
                ("missing-id", orjson.dumps({"op": "create", "occurred": now, "context": None,
                                             "artifact": {"key": "x", "created": now}})),
            ]
        else:
            choices = [
                ("truncated-json", b'{"task_run_id": "' + good_id.encode()),
                ("not-an-object", b'"just a string"'),
                ("missing-state", orjson.dumps({"task_run_id": good_id, "flow_run_id": None,
                                                "occurred": now, "downstream_assets": [],
                                                "upstream_assets": [],
                                                "upstream_task_run_ids": []})),
                ("bad-flow-run", orjson.dumps({"task_run_id": good_id, "flow_run_id": "nope",
                                               "occurred": now,
                                               "state": {"type": "COMPLETED", "name": "x"},
                                               "downstream_assets": [], "upstream_assets": [],
                                               "upstream_task_run_ids": []})),
                ("asset-without-key", orjson.dumps({
                    "task_run_id": good_id, "flow_run_id": self.uuid(), "occurred": now,
                    "state": {"type": "COMPLETED", "name": "Completed"},
                    "downstream_assets": [{"properties": None, "metadata": {}}],
                    "upstream_assets": [], "upstream_task_run_ids": []})),
            ]
        kind, value = self.rng.choice(choices)
        if self.rng.random() < 0.5:
            key: bytes | None = None
            partition = self.rng.randrange(self.input_partitions)
        else:
            key = self.uuid().encode()
            partition = raw_partition(key, self.input_partitions)
        return Message(stream, key, value, partition, rnd, f"invalid-{kind}")

    # --- probes: one per path through the partitions (module docstring)

    def _id_for(self, raw: int, internal: int) -> str:
        while True:
            candidate = self.uuid()
            b = candidate.encode()
            if (raw_partition(b, self.input_partitions) == raw
                    and partition_for(b, self.partitions) == internal):
                return candidate

    def probes(self, rnd: int) -> list[Message]:
        out: list[Message] = []
        pin, p = self.input_partitions, self.partitions
        for i, j in paths(pin, p):
            for k in range(p):
                while True:
                    self.probe_serial += 1
                    key = f"chaos-probe-{self.probe_serial}"
                    if partition_for(key.encode(), p) == k:
                        break
                art_id = self._id_for(i, j)
                occurred = self.tick()
                value = orjson.dumps({
                    "op": "create", "occurred": ts(occurred), "context": None,
                    "artifact": {"id": art_id, "key": key, "type": "markdown",
                                 "data": f"probe {i}/{j}/{k}", "description": None,
                                 "metadata_": None, "flow_run_id": None,
                                 "task_run_id": None, "created": ts(occurred)},
                })
                msg = Message(ARTIFACTS, art_id.encode(), value, i, rnd, "probe", True)
                out.append(msg)
        for i, j in paths(pin, p):
            fr_id = self._id_for(i, j)
            self.probe_serial += 1
            value = orjson.dumps({
                "task_run_id": self.uuid(), "flow_run_id": fr_id, "occurred": ts(self.tick()),
                "context": None, "state": {"type": "COMPLETED", "name": "Completed"},
                "downstream_assets": [{"key": f"chaos://probe/{self.probe_serial}",
                                       "properties": None, "metadata": {}}],
                "upstream_assets": [], "upstream_task_run_ids": [], "materialized_by": None,
            })
            out.append(Message(ASSETS, fr_id.encode(), value, i, rnd, "probe", True))
        return out


def generate(
    messages: int,
    seed: int = 1,
    partitions: int = 4,
    input_partitions: int | None = None,
    rounds: int | None = None,
) -> Workload:
    """`messages` workload messages (probes come on top), in rounds, plus a final probe round.

    60% artifact operations (85% of them on collection keys, each key at most once a round),
    40% task results, 0.3% invalid messages.
    """
    input_partitions = input_partitions or partitions
    rounds = rounds or max(4, min(60, messages // 2500))
    gen = Generator(seed, partitions, input_partitions)
    per_round = messages / rounds
    keyed_per_round = max(1, int(per_round * 0.6 * 0.85))
    key_pool = [f"chaos-report-{i}" for i in range(max(2, math.ceil(keyed_per_round * 1.3)))]
    out: list[list[Message]] = []
    produced = 0
    for rnd in range(rounds):
        target = round(per_round * (rnd + 1)) - produced
        n_keyed = min(keyed_per_round, len(key_pool), int(target * 0.51))
        slots = ["keyed"] * n_keyed
        rest = target - n_keyed
        for _ in range(rest):
            r = gen.rng.random()
            # of the non-keyed 49%: 0.3% of all invalid, 9% unkeyed artifact ops, 40% tasks
            slots.append("invalid" if r < 0.006 else "unkeyed" if r < 0.19 else "task")
        gen.rng.shuffle(slots)
        keys = iter(gen.rng.sample(key_pool, n_keyed))
        used: set[str] = set()
        msgs: list[Message] = []
        for slot in slots:
            if slot == "keyed":
                msgs.append(gen.keyed_op(rnd, next(keys)))
            elif slot == "unkeyed":
                msgs.append(gen.unkeyed_op(rnd, used))
            elif slot == "task":
                msgs.append(gen.task_result(rnd))
            else:
                msgs.append(gen.invalid(rnd, ARTIFACTS if gen.rng.random() < 0.6 else ASSETS))
        produced += len(msgs)
        out.append(msgs + gen.probes(rnd))
    out.append(gen.probes(rounds))  # the final barrier, produced after the last kill
    return Workload(out, partitions, input_partitions, seed)


# --- expected output ----------------------------------------------------------------------------


@dataclass
class Expected:
    """Per stream: events (id → bytes, and which input line caused them), dead-letter lines."""

    events: dict[str, dict[str, bytes]]
    records: dict[str, int]  # output records, duplicates (producer retries) included
    cause: dict[str, dict[str, int]]  # stream → event id → input line (0-based)
    dead_letters: dict[str, list[int]]  # stream → input lines (0-based)
    conflicts: dict[str, list[str]]  # ids the offline run itself gave two values (must be none)


def expected_in_process(workload: Workload) -> dict[str, list[list[bytes]]]:
    """Per stream, per input message: the events it causes (the same code `process` runs)."""
    from streams.pipeline import ArtifactPipeline, AssetPipeline

    result: dict[str, list[list[bytes]]] = {}
    for stream in STREAMS:
        pipeline: Any = ArtifactPipeline() if stream == ARTIFACTS else AssetPipeline()
        result[stream] = [
            [e.value for e in pipeline.process(m.value).events] for m in workload.of(stream)
        ]
    return result


def event_id(value: bytes) -> str:
    return str(orjson.loads(value)["id"])


def write_inputs(workload: Workload, out: Path) -> dict[str, Path]:
    paths = {}
    for stream in STREAMS:
        path = out / f"input-{stream}.jsonl"
        with path.open("wb") as f:
            for m in workload.of(stream):
                if b"\n" in m.value or b"\r" in m.value or not m.value.strip():
                    raise ValueError(f"message not representable as one JSONL line: {m.value!r}")
                f.write(m.value + b"\n")
        paths[stream] = path
    return paths


def expected_offline(paths: dict[str, Path], out: Path) -> Expected:
    """Run `prefect-events process` per stream, as a user would."""
    events: dict[str, dict[str, bytes]] = {}
    records: dict[str, int] = {}
    dead: dict[str, list[int]] = {}
    conflicts: dict[str, list[str]] = {}
    for stream, path in paths.items():
        proc = subprocess.run(
            [*_cli(), "process", "--stream", stream, str(path)],
            capture_output=True, cwd=ROOT, check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"prefect-events process failed ({proc.returncode}): "
                               f"{proc.stderr.decode()[-2000:]}")
        (out / f"expected-{stream}.jsonl").write_bytes(proc.stdout)
        lines = proc.stdout.splitlines()
        records[stream] = len(lines)
        by_id: dict[str, bytes] = {}
        conflicts[stream] = []
        for value in lines:
            eid = event_id(value)
            if eid in by_id and by_id[eid] != value:
                conflicts[stream].append(eid)
            by_id.setdefault(eid, value)
        events[stream] = by_id
        dead[stream] = [
            int(json.loads(line)["line"]) - 1 for line in proc.stderr.decode().splitlines()
            if line.startswith("{")
        ]
    return Expected(events, records, {}, dead, conflicts)


PAGE_SIZE_ENV = "CHAOS_PAGE_SIZE"
# `prefect-events` with streams.members.PAGE_SIZE set from the environment (Config.page_size).
_WITH_PAGE_SIZE = (
    "import os, sys; import streams.members as m; "
    f"m.PAGE_SIZE = m.INLINE_SIZE = int(os.environ[{PAGE_SIZE_ENV!r}]); "
    "from topology.cli import main; sys.exit(main())"
)


def _cli(env: dict[str, str] | None = None) -> list[str]:
    if env is not None and PAGE_SIZE_ENV in env:
        return [sys.executable, "-c", _WITH_PAGE_SIZE]
    script = Path(sys.executable).with_name("prefect-events")
    return [str(script)] if script.exists() else [sys.executable, "-m", "topology.cli"]


# --- the worker processes ----------------------------------------------------------------------


@dataclass
class Slot:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    started: float
    log_offset: int = 0
    ready: bool = False
    lives: int = 1


class Workers:
    """Worker subprocesses: spawn, SIGKILL (with or without a replacement), watch, SIGTERM."""

    def __init__(self, env: dict[str, str], out: Path, say: Callable[[str], None]) -> None:
        self.env = env
        self.out = out
        self.say = say
        self.slots: list[Slot] = []
        self.spawned = 0
        self.kills = 0
        self.unexpected: list[str] = []
        self.ready_times: list[float] = []  # seconds from spawn to "Worker ready"
        self.t0 = time.monotonic()
        self.timeline: list[tuple[float, str, str]] = []  # (seconds, what, worker log)

    def note(self, what: str, slot: Slot) -> None:
        self.timeline.append((round(time.monotonic() - self.t0, 3), what, slot.log.name))

    def spawn(self, name: str | None = None) -> Slot:
        self.spawned += 1
        name = name or f"w{len(self.slots) + 1}"
        log = self.out / f"worker-{self.spawned:03d}-{name}.log"
        env = dict(self.env)
        kept = env.get("PREFECT_EVENTS_STORE", "").startswith("rocksdb")
        data = f"data-{name}" if kept else f"data-{self.spawned:03d}"
        env["PREFECT_EVENTS_DATA_DIR"] = str(self.out / data)
        proc = subprocess.Popen(
            [*_cli(env), "worker"], env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
            stdout=log.open("wb"), stderr=subprocess.STDOUT,
        )
        slot = Slot(name, proc, log, time.monotonic())
        self.slots.append(slot)
        self.note("spawn", slot)
        return slot

    def kill(self, slot: Slot, restart: bool, sig: signal.Signals = signal.SIGKILL) -> Slot | None:
        with contextlib.suppress(ProcessLookupError):
            slot.proc.send_signal(sig)
        code = slot.proc.wait(timeout=60)
        if sig == signal.SIGKILL:
            self.kills += 1
            self.note("SIGKILL", slot)
        else:
            self.note(f"{sig.name}, exit {code}", slot)
        self.slots.remove(slot)
        if not restart:
            return None
        new = self.spawn(slot.name)
        new.lives = slot.lives + 1
        return new

    def poll(self) -> None:
        """Readiness from the log; a worker that exited by itself is reported and restarted."""
        for slot in list(self.slots):
            if not slot.ready:
                try:
                    with slot.log.open("rb") as f:
                        f.seek(slot.log_offset)
                        chunk = f.read()
                except OSError:
                    chunk = b""
                if b"Worker ready" in chunk:
                    slot.ready = True
                    self.note("ready", slot)
                    self.ready_times.append(time.monotonic() - slot.started)
                slot.log_offset += max(0, len(chunk) - 64)
            code = slot.proc.poll()
            if code is not None:
                tail = slot.log.read_text(errors="replace").strip().splitlines()[-5:]
                what = f"{slot.log.name} exited by itself with code {code}: " + " | ".join(tail)
                self.unexpected.append(what)
                self.note(f"exited by itself ({code})", slot)
                self.say("UNEXPECTED " + what)
                self.slots.remove(slot)
                self.spawn(slot.name)

    def terminate_all(self, timeout_s: float = 60.0) -> list[tuple[str, int | None, float]]:
        """SIGTERM every worker; (log name, exit code or None if it had to be killed, seconds)."""
        started = time.monotonic()
        for slot in self.slots:
            with contextlib.suppress(ProcessLookupError):
                slot.proc.send_signal(signal.SIGTERM)
        result = []
        for slot in self.slots:
            remaining = max(0.1, timeout_s - (time.monotonic() - started))
            try:
                code: int | None = slot.proc.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                slot.proc.kill()
                slot.proc.wait()
                code = None
            result.append((slot.log.name, code, time.monotonic() - started))
        self.slots.clear()
        return result


# --- the run -----------------------------------------------------------------------------------


@dataclass
class Config:
    messages: int = 100_000
    kills: int = 20
    seed: int = 1
    partitions: int = 4
    rounds: int | None = None
    rate: float = 2000.0  # messages per second, within a round
    rebalance: bool = True
    bootstrap_servers: str | None = None
    out_dir: Path | None = None
    barrier_timeout_s: float = 180.0
    quiet_s: float = 5.0
    commit_interval_s: float | None = None
    session_timeout_s: float | None = None  # the worker's consumer group session timeout
    # Tansu answers ListOffsets with the last batch's base offset + 1, so Faust's changelog
    # recovery stops short unless every changelog record is its own batch (README, embedded
    # broker). Only the changelogs: events and internal topics keep the worker's default batches.
    one_record_changelog_batches: bool = False
    # The worker's fetch wait. Tansu answers a fetch with what it could read within the wait, and
    # reading a partition of one-record batches takes longer the more batches it holds: at 10 ms a
    # partition of 40k batches yields almost nothing per fetch, so changelog recovery and the
    # internal hops crawl as the run grows (README, "Tansu's defects"). 100 ms is the worker's own
    # default and serves ~160k batches per partition.
    fetch_wait_ms: int = 100
    # Members a collection page takes, and the record before pages are used (streams.members:
    # PAGE_SIZE 64, INLINE_SIZE 16): smaller makes the chaos workload's keys, a few dozen
    # versions each, fill, empty and re-point pages under the kills.
    page_size: int | None = None
    # The workers' table store. With rocksdb:// a restarted worker keeps the killed one's data
    # directory (one per worker name, as a pod keeps its volume), so restarts read their local
    # state and only the changelog after its persisted offset.
    store: str = "memory://"
    # Faust's table standbys (the worker's standby_replicas). With standbys the worker that
    # leaves in the 2-worker phase is w1, which held every partition before w2 joined: the
    # partitions w2 takes over are ones it has only followed as a standby.
    standby_replicas: int = 0
    # How that worker leaves: SIGKILL (dies) or SIGTERM (finishes its batch, commits, leaves).
    leave_with: signal.Signals = signal.SIGKILL
    verbose: bool = True


@dataclass
class StreamReport:
    stream: str
    messages_in: int = 0
    probes: int = 0
    expected_records: int = 0
    expected: int = 0
    seen_records: int = 0
    seen: int = 0
    lost: int = 0
    wrong: int = 0
    dup_identical: int = 0
    dup_conflicting: int = 0
    dead_expected: int = 0
    dead_seen: int = 0
    dead_missing: int = 0
    dead_unexpected: int = 0


#: An id a worker logged as deleted without ever being seen (topology.app, unknown deletes); a
#: batch names up to 5 of them, so this is a lower bound.
NEVER_SEEN = re.compile(r"([0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}) never seen \(")


def created_ids(workload: Workload) -> set[str]:
    """Artifact ids the workload creates (its invalid messages aside)."""
    ids: set[str] = set()
    for msgs in workload.rounds:
        for m in msgs:
            if m.stream != ARTIFACTS:
                continue
            with contextlib.suppress(orjson.JSONDecodeError, TypeError, KeyError, AttributeError):
                op = orjson.loads(m.value)
                if op.get("op") == "create":
                    ids.add(str(op["artifact"]["id"]).lower())
    return ids


@dataclass
class Report:
    streams: dict[str, StreamReport]
    kills: int = 0
    rebalances: int = 0
    assignments_logged: int = 0
    # Artifacts this workload created, named by a worker as the delete of an id it never saw:
    # the memberships step lacked state it should have had (the one failed run's signature).
    created_taken_for_unknown: list[str] = field(default_factory=list)
    unexpected_exits: list[str] = field(default_factory=list)
    stalls: list[str] = field(default_factory=list)
    shutdown: list[tuple[str, int | None, float]] = field(default_factory=list)
    rounds_produced: int = 0
    rounds_total: int = 0
    collector_check: str = ""
    timeline: list[tuple[float, str, str]] = field(default_factory=list)
    wall_s: float = 0.0
    produce_s: float = 0.0
    ready_times: list[float] = field(default_factory=list)
    raw_check: str = ""
    out_dir: str = ""
    app_id: str = ""  # the workers' consumer group; their topics and tables are named after it
    offline_agrees: bool = True

    @property
    def lost(self) -> int:
        return sum(s.lost for s in self.streams.values())

    @property
    def wrong(self) -> int:
        return sum(s.wrong for s in self.streams.values())

    @property
    def conflicting(self) -> int:
        return sum(s.dup_conflicting for s in self.streams.values())

    @property
    def dead_letter_mismatches(self) -> int:
        return sum(s.dead_missing + s.dead_unexpected for s in self.streams.values())

    @property
    def ok(self) -> bool:
        return (self.lost == 0 and self.wrong == 0 and self.conflicting == 0
                and self.dead_letter_mismatches == 0 and not self.stalls)

    def table(self) -> str:
        cols = [
            ("stream", "stream"), ("msgs in", "messages_in"), ("probes", "probes"),
            ("expected", "expected"), ("seen", "seen"), ("lost", "lost"), ("wrong", "wrong"),
            ("dup ident.", "dup_identical"), ("dup confl.", "dup_conflicting"),
            ("dead exp/seen", None),
        ]
        rows = []
        for s in self.streams.values():
            row = []
            for _, attr in cols:
                row.append(f"{s.dead_expected}/{s.dead_seen}" if attr is None
                           else str(getattr(s, attr)))
            rows.append(row)
        total = ["total"]
        for _, attr in cols[1:]:
            if attr is None:
                total.append(f"{sum(s.dead_expected for s in self.streams.values())}/"
                             f"{sum(s.dead_seen for s in self.streams.values())}")
            else:
                total.append(str(sum(getattr(s, attr) for s in self.streams.values())))
        rows.append(total)
        heads = [c[0] for c in cols]
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
        line = "  ".join(h.rjust(w) for h, w in zip(heads, widths, strict=True))
        out = [line, "-" * len(line)]
        out += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
        ready = sorted(self.ready_times)
        med = f"{ready[len(ready) // 2]:.1f}" if ready else "-"
        out.append("")
        out.append(
            f"SIGKILLs: {self.kills} (incl. the one ending the 2-worker phase, if it was one)   "
            f"rebalances (2-worker phase): {self.rebalances}   "
            f"group assignments logged: {self.assignments_logged}   "
            f"worker restarts to ready, median: {med} s"
        )
        out.append(f"wall time: {self.wall_s:.1f} s (producing + barriers: {self.produce_s:.1f} s)"
                   f"   unexpected worker exits: {len(self.unexpected_exits)}"
                   f"   barrier stalls: {len(self.stalls)}")
        out.append("SIGTERM at the end: " + ", ".join(
            f"{name} exit {code} in {took:.1f} s" for name, code, took in self.shutdown))
        out.append(f"raw topics: {self.raw_check}   output re-read: {self.collector_check}")
        out.append("deletes of created artifacts logged as never seen (lost membership): "
                   f"{len(self.created_taken_for_unknown)} {self.created_taken_for_unknown[:5]}")
        out.append(f"offline CLI = in-process pipeline: {self.offline_agrees}")
        out.append(f"details: {self.out_dir}")
        out.extend(f"STALL: {stall}" for stall in self.stalls)
        out.extend(f"UNEXPECTED EXIT: {what}" for what in self.unexpected_exits)
        out.append(f"rounds produced: {self.rounds_produced}/{self.rounds_total}")
        out.append("RESULT: " + ("OK" if self.ok else "FAILED (lost, wrong, conflicting, "
                                                     "dead-letter mismatch or stall)"))
        return "\n".join(out)


class Collector:
    """Reads the output and dead-letter topics from the start while the run goes on."""

    def __init__(self, bootstrap: str, topics: dict[str, str], dead_topic: str) -> None:
        self.bootstrap = bootstrap
        self.topics = topics  # stream → output topic
        self.dead_topic = dead_topic
        self.records: dict[str, list[tuple[bytes | None, bytes, dict[str, bytes]]]] = {
            s: [] for s in topics
        }
        self.dead: list[tuple[bytes | None, bytes | None, dict[str, bytes]]] = []
        self.ids: set[str] = set()
        self.last_record = time.monotonic()
        self._stop = asyncio.Event()
        self.error: BaseException | None = None

    async def run(self) -> None:
        by_topic = {t: s for s, t in self.topics.items()}
        consumer = AIOKafkaConsumer(
            *self.topics.values(), self.dead_topic,
            bootstrap_servers=self.bootstrap, group_id=None, auto_offset_reset="earliest",
            enable_auto_commit=False, fetch_max_wait_ms=50, max_partition_fetch_bytes=4 << 20,
        )
        await consumer.start()
        try:
            while not self._stop.is_set():
                batches = await consumer.getmany(timeout_ms=100, max_records=5000)
                for tp, batch in batches.items():
                    if not batch:
                        continue
                    self.last_record = time.monotonic()
                    for r in batch:
                        headers = {k: v for k, v in (r.headers or ())}
                        if tp.topic == self.dead_topic:
                            self.dead.append((r.key, r.value, headers))
                            continue
                        self.records[by_topic[tp.topic]].append((r.key, r.value, headers))
                        with contextlib.suppress(Exception):
                            self.ids.add(event_id(r.value))
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            await consumer.stop()

    def stop(self) -> None:
        self._stop.set()


def _env(bootstrap: str, tag: str, cfg: Config) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        PREFECT_EVENTS_APP_ID=f"chaos-{tag}",
        PREFECT_EVENTS_ARTIFACTS_TOPIC=f"chaos-{tag}.raw.artifacts",
        PREFECT_EVENTS_TASK_RESULTS_TOPIC=f"chaos-{tag}.raw.asset-task-results",
        PREFECT_EVENTS_ARTIFACT_EVENTS_TOPIC=f"chaos-{tag}.events.artifacts",
        PREFECT_EVENTS_ASSET_EVENTS_TOPIC=f"chaos-{tag}.events.assets",
        PREFECT_EVENTS_DEAD_LETTER_TOPIC=f"chaos-{tag}.raw.dead-letters",
        PREFECT_EVENTS_PARTITIONS=str(cfg.partitions),
        PREFECT_EVENTS_INPUT_PARTITIONS=str(cfg.partitions),
        PREFECT_EVENTS_STORE=cfg.store,
        PREFECT_EVENTS_METRICS_PORT="0",
        PREFECT_EVENTS_FETCH_MAX_WAIT_MS=str(cfg.fetch_wait_ms),
        PREFECT_EVENTS_LOG_LEVEL="INFO",
        PREFECT_EVENTS_LOG_FORMAT="text",
    )
    if cfg.commit_interval_s is not None:
        env["PREFECT_EVENTS_COMMIT_INTERVAL_S"] = str(cfg.commit_interval_s)
    if cfg.session_timeout_s is not None:
        env["PREFECT_EVENTS_SESSION_TIMEOUT_S"] = str(cfg.session_timeout_s)
    if cfg.one_record_changelog_batches:
        env["PREFECT_EVENTS_CHANGELOG_BATCH_RECORDS"] = "1"
    if cfg.page_size is not None:
        env[PAGE_SIZE_ENV] = str(cfg.page_size)
    if cfg.standby_replicas:
        env["PREFECT_EVENTS_STANDBY_REPLICAS"] = str(cfg.standby_replicas)
    return env


async def _wait(predicate: Callable[[], bool], timeout_s: float, poll: Callable[[], None],
                step_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        poll()
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(step_s)
    return True


async def _chaos(cfg: Config, workload: Workload, per_message: dict[str, list[list[bytes]]],
                 bootstrap: str, out: Path, report: Report,
                 say: Callable[[str], None]) -> tuple[Collector, Any, dict[str, list[tuple[int, int]]]]:
    from topology.admin import ensure_topics
    from topology.app import TopicNames
    from topology.config import load

    tag = f"{workload.seed}-{uuid.uuid4().hex[:6]}"
    env = _env(bootstrap, tag, cfg)
    settings = load(environ=env)
    await ensure_topics(bootstrap, TopicNames(settings).specs())
    raw_topics = {ARTIFACTS: settings.artifacts_topic, ASSETS: settings.task_results_topic}
    out_topics = {ARTIFACTS: settings.artifact_events_topic, ASSETS: settings.asset_events_topic}
    collector = Collector(bootstrap, out_topics, settings.dead_letter_topic)
    collector_task = asyncio.create_task(collector.run())
    workers = Workers(env, out, say)
    workers.spawn("w1")

    # Probe ids per round: the barrier.
    index = {s: 0 for s in STREAMS}
    probe_ids: list[set[str]] = []
    for rnd in workload.rounds:
        ids: set[str] = set()
        for m in rnd:
            events = per_message[m.stream][index[m.stream]]
            index[m.stream] += 1
            if m.probe:
                ids.update(event_id(v) for v in events)
        probe_ids.append(ids)

    rng = random.Random(workload.seed * 7919 + 17)
    total = sum(len(r) for r in workload.rounds[:-1])
    progress = {"produced": 0, "round": 0, "done": False}
    offsets: dict[str, list[tuple[int, int]]] = {s: [] for s in STREAMS}
    n_rounds = len(workload.rounds) - 1

    low, high = int(total * 0.03), max(int(total * 0.95), int(total * 0.03) + cfg.kills + 1)
    thresholds = sorted(rng.sample(range(low, high), cfg.kills)) if cfg.kills else []
    kills_done = [0]

    def gated() -> bool:
        """Production waits while it is more than one kill point ahead of the kills done."""
        n = kills_done[0] + 1
        return n < len(thresholds) and progress["produced"] >= thresholds[n]

    async def killer() -> None:
        for n, threshold in enumerate(thresholds, start=1):
            await _wait(lambda t=threshold: progress["produced"] >= t or progress["done"],
                        1e9, workers.poll)
            slot = rng.choice(workers.slots)
            if rng.random() < 0.25:  # in start-up, group join or changelog recovery
                after = rng.uniform(0.5, 6.0)
                await _wait(lambda s=slot, a=after: time.monotonic() - s.started >= a
                            or s not in workers.slots, 1e9, workers.poll)
                when = "starting"
            else:  # while processing
                await _wait(lambda s=slot: s.ready or s not in workers.slots, 180, workers.poll)
                await asyncio.sleep(rng.uniform(0.2, 4.0))
                when = "processing"
            if slot not in workers.slots:
                slot = rng.choice(workers.slots)
            workers.kill(slot, restart=True)
            kills_done[0] = n
            say(f"kill {n}/{cfg.kills}: SIGKILL {slot.log.name} ({when}, produced "
                f"{progress['produced']}/{total}, round {progress['round']})")

    async def rebalancer() -> None:
        if not cfg.rebalance:
            return
        start, end = n_rounds // 3, n_rounds // 3 + max(1, n_rounds // 6)
        await _wait(lambda: progress["round"] >= start or progress["done"], 1e9, workers.poll)
        extra = workers.spawn("w2")
        report.rebalances += 1
        say(f"rebalance: second worker {extra.log.name} joins (round {progress['round']})")
        await _wait(lambda: progress["round"] >= end or progress["done"], 1e9, workers.poll)
        # Both members ready and one more round processed by the two of them, then one goes.
        await _wait(lambda: len(workers.slots) > 1 and all(s.ready for s in workers.slots),
                    180, workers.poll)
        shared_from = progress["round"]
        await _wait(lambda: progress["round"] > shared_from or progress["done"], 1e9,
                    workers.poll)
        await asyncio.sleep(rng.uniform(0.5, 3.0))
        victim = rng.choice(workers.slots)
        if cfg.standby_replicas:  # w2 takes over what it has followed as a standby (Config)
            victim = next((s for s in workers.slots if s.name == "w1"), victim)
        workers.kill(victim, restart=False, sig=cfg.leave_with)
        report.rebalances += 1
        say(f"rebalance: {victim.log.name} {cfg.leave_with.name} for good, one worker left "
            f"(round {progress['round']})")

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                max_request_size=4 << 20)
    await producer.start()

    async def produce(msgs: list[Message], rate: float | None) -> None:
        started = time.monotonic()
        pending = []
        for i, m in enumerate(msgs):
            if gated():
                paused = time.monotonic()
                await _wait(lambda: not gated(), 1e9, workers.poll)
                started += time.monotonic() - paused
            if rate:
                delay = started + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            pending.append((m, await producer.send(raw_topics[m.stream], m.value, key=m.key,
                                                   partition=m.partition)))
            if not m.probe:
                progress["produced"] += 1
            if i % 200 == 0:
                workers.poll()
        for m, fut in pending:
            md = await fut
            if md.partition != m.partition:
                raise RuntimeError(f"record went to partition {md.partition}, not {m.partition}")
            offsets[m.stream].append((md.partition, md.offset))

    kill_task = asyncio.create_task(killer())
    phase_task = asyncio.create_task(rebalancer())
    t0 = time.monotonic()
    try:
        for rnd, msgs in enumerate(workload.rounds):
            last = rnd == n_rounds
            if last:
                progress["done"] = True
                await kill_task
                await phase_task
            progress["round"] = rnd
            await produce([m for m in msgs if not m.probe], cfg.rate)
            await produce([m for m in msgs if m.probe], None)
            ids = probe_ids[rnd]
            ok = await _wait(lambda ids=ids: ids <= collector.ids, cfg.barrier_timeout_s,
                             workers.poll)
            if collector.error is not None:
                raise RuntimeError(f"output collector failed: {collector.error!r}")
            report.rounds_produced = rnd + 1
            if not ok:
                missing = len(ids - collector.ids)
                report.stalls.append(f"round {rnd}: {missing} probe events not seen within "
                                     f"{cfg.barrier_timeout_s:g} s; run aborted, compared "
                                     f"over the input produced so far")
                say("STALL " + report.stalls[-1])
                break
            say(f"round {rnd + 1}/{n_rounds + 1} done: produced {progress['produced']}/{total}, "
                f"{time.monotonic() - t0:.0f} s, workers {[s.log.name for s in workers.slots]}")
        report.produce_s = time.monotonic() - t0
        # Quiescence: nothing new on the output for quiet_s (at most two minutes more).
        await _wait(lambda: time.monotonic() - collector.last_record > cfg.quiet_s, 120,
                    workers.poll, 0.2)
    finally:
        for task in (kill_task, phase_task):
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        await producer.stop()
        workers.poll()
        report.kills = workers.kills
        report.unexpected_exits = workers.unexpected
        report.ready_times = workers.ready_times
        report.shutdown = workers.terminate_all()
        report.timeline = workers.timeline
        await asyncio.sleep(1.0)
        collector.stop()
        with contextlib.suppress(BaseException):
            await collector_task
    logs = [p.read_text(errors="replace") for p in sorted(out.glob("worker-*.log"))]
    report.assignments_logged = sum(text.count("Worker ready") for text in logs)
    report.created_taken_for_unknown = sorted(
        {m for text in logs for m in NEVER_SEEN.findall(text)} & created_ids(workload)
    )
    report.raw_check = await _check_raw(bootstrap, raw_topics, offsets)
    # The collector ran all along; a fresh read of the output and dead-letter topics checks it
    # did not miss any. It can: Tansu answers a tail fetch without a record that two workers'
    # producers raced for (README, "Tansu's defects"), and the comparison then uses the re-read.
    dead_topic = settings.dead_letter_topic
    again = await read_all(bootstrap, [*out_topics.values(), dead_topic])
    per_topic = Counter(r.topic for r in again)
    mine = {out_topics[s]: len(collector.records[s]) for s in STREAMS}
    mine[dead_topic] = len(collector.dead)
    if all(per_topic[t] == n for t, n in mine.items()):
        report.collector_check = "ok"
    else:
        report.collector_check = f"MISMATCH collector {mine} fresh read {dict(per_topic)}"
        by_topic = {t: s for s, t in out_topics.items()}
        collector.records = {s: [] for s in STREAMS}
        collector.dead = []
        for r in again:
            headers = {k: v for k, v in (r.headers or ())}
            if r.topic == dead_topic:
                collector.dead.append((r.key, r.value, headers))
            else:
                collector.records[by_topic[r.topic]].append((r.key, r.value, headers))
    return collector, settings, offsets


async def read_all(bootstrap: str, topics: list[str], idle_s: float = 2.0) -> list[Any]:
    """Every record of `topics`, read from the start until nothing came for `idle_s`."""
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                fetch_max_wait_ms=50, max_partition_fetch_bytes=4 << 20)
    await consumer.start()
    out: list[Any] = []
    try:
        idle = time.monotonic()
        while time.monotonic() - idle < idle_s:
            batches = await consumer.getmany(timeout_ms=200, max_records=20000)
            for batch in batches.values():
                if batch:
                    idle = time.monotonic()
                out.extend(batch)
    finally:
        await consumer.stop()
    return out


async def trace(bootstrap: str, settings: Any, problems: list[dict[str, Any]]) -> None:
    """Follow each problem's input message through the internal topics and changelogs.

    Adds to each problem: the internal records that carry the message (by its source headers),
    and every changelog record of the state keys it touches (with their replay marks), so a
    lost or wrong event can be told apart: never routed, routed but never applied, applied
    without output, or applied against state that was missing something.
    """
    if not problems:
        return
    app = settings.app_id
    internal = [f"{app}-artifacts-by-id", f"{app}-artifacts-by-collection-key",
                f"{app}-task-results-by-flow-run"]
    changelogs = [f"{app}-{t}-changelog" for t in
                  ("artifact-memberships", "artifact-collections", "flow-run-lineage")]
    records = await read_all(bootstrap, internal + changelogs)
    wanted_sources = {(p["input_topic"], *p["input_raw"]) for p in problems if p["input_raw"]}
    wanted_keys: set[bytes] = set()
    for p in problems:
        wanted_keys.update(k.encode() for k in p.get("state_keys", []))
    carried: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    states: dict[bytes, list[dict[str, Any]]] = {}
    for r in records:
        h = {k: v.decode(errors="replace") for k, v in (r.headers or ())}
        if r.topic in internal:
            src = (h.get("prefect-source-topic", ""), int(h.get("prefect-source-partition", -1)),
                   int(h.get("prefect-source-offset", -1)))
            if src in wanted_sources:
                carried.setdefault(src, []).append(
                    {"topic": r.topic, "partition": r.partition, "offset": r.offset,
                     "key": (r.key or b"").decode(errors="replace"),
                     "via": {k: v for k, v in h.items() if k.startswith("prefect-via")}})
        elif r.key in wanted_keys:
            value = r.value.decode(errors="replace") if r.value is not None else None
            states.setdefault(r.key, []).append(
                {"topic": r.topic, "partition": r.partition, "offset": r.offset,
                 "value": value if value is None or len(value) < 600 else value[:600] + "..."})
    for p in problems:
        src = (p["input_topic"], *p["input_raw"]) if p["input_raw"] else None
        p["internal_records"] = carried.get(src, []) if src else []
        p["changelog"] = {k: states.get(k.encode(), []) for k in p.get("state_keys", [])}


async def _check_raw(bootstrap: str, topics: dict[str, str],
                     offsets: dict[str, list[tuple[int, int]]]) -> str:
    """Count what the raw topics hold (ListOffsets is unreliable on Tansu: BROKER.md defect 1)."""
    want: Counter[tuple[str, int]] = Counter()
    for stream, pos in offsets.items():
        for partition, _ in pos:
            want[(topics[stream], partition)] += 1
    got: Counter[tuple[str, int]] = Counter()
    consumer = AIOKafkaConsumer(*topics.values(), bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                fetch_max_wait_ms=50)
    await consumer.start()
    try:
        idle = time.monotonic()
        while time.monotonic() - idle < 3.0 and got != want:
            batches = await consumer.getmany(timeout_ms=200, max_records=10000)
            for tp, batch in batches.items():
                if batch:
                    idle = time.monotonic()
                got[(tp.topic, tp.partition)] += len(batch)
    finally:
        await consumer.stop()
    if got == want:
        return f"ok ({sum(got.values())} records as produced)"
    return f"MISMATCH produced {dict(want)} read back {dict(got)}"


def state_keys(m: Message) -> list[str]:
    """The table keys an input message reads and writes (artifact id, collection key, flow run)."""
    try:
        value = orjson.loads(m.value)
    except orjson.JSONDecodeError:
        return []
    if not isinstance(value, dict):
        return []
    if m.stream == ARTIFACTS:
        keys = [value.get("artifact_id") or (value.get("artifact") or {}).get("id")]
        keys.append(m.collection or (value.get("artifact") or {}).get("key"))
    else:
        keys = [value.get("flow_run_id")]
    return [k for k in keys if isinstance(k, str)]


def compare(workload: Workload, expected: Expected, collector: Collector,
            raw_topics: dict[str, str], offsets: dict[str, list[tuple[int, int]]],
            per_message: dict[str, list[list[bytes]]], report: Report) -> dict[str, Any]:
    details: dict[str, Any] = {}
    for stream in STREAMS:
        msgs = workload.of(stream)
        cause: dict[str, int] = {}
        for line, values in enumerate(per_message[stream]):
            for v in values:
                cause.setdefault(event_id(v), line)
        in_process = {event_id(v): v for values in per_message[stream] for v in values}
        if in_process != expected.events[stream]:
            report.offline_agrees = False
        exp = expected.events[stream]
        seen: dict[str, Counter[bytes]] = {}
        bad_meta: list[dict[str, Any]] = []
        for key, value, headers in collector.records[stream]:
            try:
                event = orjson.loads(value)
                eid = str(event["id"])
            except Exception:
                eid = f"unparseable:{value[:80]!r}"
                event = {}
            seen.setdefault(eid, Counter())[value] += 1
            resource = (event.get("resource") or {}).get("prefect.resource.id")
            if event and (key != str(resource).encode()
                          or headers.get("prefect-event") != str(event.get("event")).encode()):
                bad_meta.append({"id": eid, "key": repr(key),
                                 "header": repr(headers.get("prefect-event"))})
        s = report.streams[stream]
        s.messages_in = len(msgs)
        s.probes = sum(m.probe for m in msgs)
        s.expected_records = expected.records[stream]
        s.expected = len(exp)
        s.seen_records = len(collector.records[stream])
        s.seen = len(seen)
        lost = sorted(set(exp) - set(seen))
        unexpected = sorted(set(seen) - set(exp))
        different = sorted(i for i in set(seen) & set(exp) if set(seen[i]) != {exp[i]})
        conflicting = sorted(i for i, c in seen.items() if len(c) > 1)
        s.lost = len(lost)
        s.wrong = len(unexpected) + len(different) + len({b["id"] for b in bad_meta})
        s.dup_conflicting = len(conflicting)
        s.dup_identical = sum(n - 1 for c in seen.values() for n in c.values())

        def describe(eid: str, stream: str = stream, msgs: list[Message] = msgs,
                     cause: dict[str, int] = cause, seen: dict[str, Counter[bytes]] = seen,
                     exp: dict[str, bytes] = exp) -> dict[str, Any]:
            line = cause.get(eid)
            m = msgs[line] if line is not None else None
            return {
                "id": eid,
                "expected": exp[eid].decode(errors="replace") if eid in exp else None,
                "seen": [v.decode(errors="replace") for v in seen.get(eid, {})],
                "seen_counts": list(seen.get(eid, Counter()).values()),
                "input_line": line,
                "input_kind": m.kind if m else None,
                "input_topic": raw_topics[stream],
                "state_keys": state_keys(m) if m else [],
                "input_round": m.round if m else None,
                "input_raw": (list(offsets[stream][line]) if line is not None
                              and line < len(offsets[stream]) else None),
                "input": m.value.decode(errors="replace") if m else None,
            }

        # dead letters: distinct source coordinates
        want = {(raw_topics[stream], *offsets[stream][line])
                for line in expected.dead_letters[stream] if line < len(offsets[stream])}
        got = set()
        for _, _, headers in collector.dead:
            topic = headers.get("prefect-source-topic", b"").decode()
            if topic != raw_topics[stream]:
                continue
            got.add((topic, int(headers.get("prefect-source-partition", b"-1")),
                     int(headers.get("prefect-source-offset", b"-1"))))
        s.dead_expected, s.dead_seen = len(want), len(got)
        s.dead_missing, s.dead_unexpected = len(want - got), len(got - want)
        details[stream] = {
            "lost": [describe(i) for i in lost[:200]],
            "wrong_unexpected": [describe(i) for i in unexpected[:200]],
            "wrong_bytes": [describe(i) for i in different[:200]],
            "conflicting": [describe(i) for i in conflicting[:200]],
            "bad_key_or_header": bad_meta[:200],
            "dead_letters_missing": sorted(want - got)[:200],
            "dead_letters_unexpected": sorted(got - want)[:200],
            "offline_conflicts": expected.conflicts[stream],
        }
    return details


def run(cfg: Config, say: Callable[[str], None] | None = None) -> Report:
    """Generate, run the chaos, compare; returns the report (never raises for a bad result)."""
    say = say or ((lambda s: print(s, flush=True)) if cfg.verbose else (lambda s: None))
    started = time.monotonic()
    out = cfg.out_dir or Path(tempfile.mkdtemp(prefix="chaos-"))
    out.mkdir(parents=True, exist_ok=True)
    workload = generate(cfg.messages, cfg.seed, cfg.partitions, rounds=cfg.rounds)
    say(f"workload: {len(workload.messages)} messages ({cfg.messages} + probes) in "
        f"{len(workload.rounds) - 1} rounds + final probes, seed {cfg.seed}; output in {out}")
    per_message = expected_in_process(workload)
    report = Report({s: StreamReport(s) for s in STREAMS}, out_dir=str(out),
                    rounds_total=len(workload.rounds))

    broker = None
    bootstrap = cfg.bootstrap_servers or os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        from topology.embedded_broker import EmbeddedBroker

        broker = EmbeddedBroker().start()
        bootstrap = broker.bootstrap_servers
        say(f"embedded broker at {bootstrap}")
        cfg = dataclasses.replace(
            cfg, one_record_changelog_batches=True, session_timeout_s=cfg.session_timeout_s or 2.0
        )
    try:
        collector, settings, offsets = asyncio.run(
            _chaos(cfg, workload, per_message, bootstrap, out, report, say))
        report.app_id = settings.app_id
        raw_topics = {ARTIFACTS: settings.artifacts_topic, ASSETS: settings.task_results_topic}
        # Compared over what was produced (all of it, unless a stall aborted the run).
        done = dataclasses.replace(workload, rounds=workload.rounds[:report.rounds_produced])
        per_message = {s: per_message[s][:len(done.of(s))] for s in STREAMS}
        expected = expected_offline(write_inputs(done, out), out)
        details = compare(done, expected, collector, raw_topics, offsets, per_message, report)
        report.wall_s = time.monotonic() - started
        problems = [p for stream in STREAMS for what in
                    ("lost", "wrong_unexpected", "wrong_bytes", "conflicting")
                    for p in details[stream][what][:25]]
        asyncio.run(trace(bootstrap, settings, problems))
    finally:
        if broker is not None:
            broker.stop()
    summary = dataclasses.asdict(report)
    (out / "details.json").write_text(json.dumps({"report": summary, **details}, indent=1))
    (out / "report.txt").write_text(report.table() + "\n")
    return report


def main(argv: Iterable[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=100_000,
                   help="workload messages (probes come on top; default 100000)")
    p.add_argument("--kills", type=int, default=20, help="SIGKILLs of a worker (default 20)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--partitions", type=int, default=4,
                   help="partitions of the raw, internal and output topics (default 4)")
    p.add_argument("--rounds", type=int, default=None,
                   help="rounds (default: messages/2500, between 4 and 60)")
    p.add_argument("--rate", type=float, default=2000.0,
                   help="produce rate within a round, messages/s (default 2000)")
    p.add_argument("--no-rebalance", action="store_true", help="skip the 2-worker phase")
    p.add_argument("--barrier-timeout", type=float, default=180.0,
                   help="seconds to wait for a round's probes before giving up (default 180)")
    p.add_argument("--commit-interval", type=float, default=None,
                   help="worker offset commit interval, seconds (default: the worker's)")
    p.add_argument("--session-timeout", type=float, default=None,
                   help="worker consumer group session timeout, seconds (default: the worker's)")
    p.add_argument("--fetch-wait-ms", type=int, default=100,
                   help="the worker's fetch wait, ms (default 100, the worker's own default)")
    p.add_argument("--page-size", type=int, default=None,
                   help="members a collection page, and the collection record before pages, "
                        "take (default: the worker's 64 and 16; 2 makes pages fill, empty and "
                        "re-point all the time)")
    p.add_argument("--store", choices=["memory://", "rocksdb://"], default="memory://",
                   help="the workers' table store (default memory://); with rocksdb:// a "
                        "restarted worker keeps the killed one's data directory")
    p.add_argument("--standby-replicas", type=int, default=0,
                   help="the workers' standby_replicas (default 0); with standbys the first "
                        "worker is the one that leaves the 2-worker phase")
    p.add_argument("--leave-with", choices=["SIGKILL", "SIGTERM"], default="SIGKILL",
                   help="how a worker leaves the 2-worker phase (default SIGKILL)")
    p.add_argument("--out", type=Path, default=None, help="directory for inputs, logs, details")
    p.add_argument("--quiet", action="store_true", help="print the table only")
    args = p.parse_args(list(argv) if argv is not None else None)
    if args.page_size is not None and args.page_size < 1:
        p.error("--page-size must be >= 1")
    if args.messages < 100 or args.kills < 0 or args.partitions < 1 or args.fetch_wait_ms < 0:
        p.error("--messages must be >= 100, --kills >= 0, --partitions >= 1, --fetch-wait-ms >= 0")
    cfg = Config(
        messages=args.messages, kills=args.kills, seed=args.seed, partitions=args.partitions,
        rounds=args.rounds, rate=args.rate, rebalance=not args.no_rebalance,
        barrier_timeout_s=args.barrier_timeout, out_dir=args.out,
        commit_interval_s=args.commit_interval, session_timeout_s=args.session_timeout,
        fetch_wait_ms=args.fetch_wait_ms, page_size=args.page_size, store=args.store,
        standby_replicas=args.standby_replicas, leave_with=signal.Signals[args.leave_with],
        verbose=not args.quiet,
    )
    report = run(cfg)
    print(report.table())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
