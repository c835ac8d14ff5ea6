"""A generated, realistic input workload for the benchmark (seeded, so every run sees the same).

Two streams, interleaved on one event-time axis (every message's `occurred` is unique and
increasing, which also lets the latency probe map an event back to the message that caused it):

* artifacts: creates (80% with a collection key, drawn from a pool of keys), updates (PATCH of
  `data` or `description`) and deletes of live artifacts; `data` is a markdown or table string of
  100 B to 10 KB (log-uniform, so most are small and some are large, like real reports);
* task results: flow runs of 3 to 10 task runs in lineage chains (`upstream_task_run_ids` point to
  the previous one or two tasks), about half materializing 1 or 2 assets, some with `asset_deps`;
  states mostly COMPLETED, some FAILED, Cached and RUNNING.
"""

from __future__ import annotations

import math
import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import orjson

ARTIFACTS = "artifacts"
TASK_RESULTS = "task_results"
EPOCH = datetime(2026, 11, 24, 10, 0, 0, tzinfo=UTC)
WORDS = (  # noqa: SIM905 (a sentence reads better than 23 quoted words)
    "rows loaded quality check passed failed warehouse model training epoch loss accuracy "
    "customers orders revenue region latency p99 snapshot partition backfill daily hourly"
).split()


def ts(us: int) -> str:
    return (EPOCH + timedelta(microseconds=us)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Msg:
    stream: str  # ARTIFACTS | TASK_RESULTS
    key: bytes
    value: bytes
    occurred: str


@dataclass
class Workload:
    messages: list[Msg] = field(default_factory=list)

    def of(self, stream: str) -> list[Msg]:
        return [m for m in self.messages if m.stream == stream]

    @property
    def bytes(self) -> int:
        return sum(len(m.value) for m in self.messages)


class Generator:
    def __init__(self, seed: int = 5, collection_keys: int | None = None) -> None:
        self.rng = random.Random(seed)
        self.collection_keys = collection_keys
        self.clock_us = 0
        self.live: list[str] = []  # live artifact ids (swap-remove)
        self.asset_pool = [f"s3://lake/{self._word()}/table_{i}" for i in range(2000)]
        self.flow_runs: list[dict] = []

    # --- helpers --------------------------------------------------------------------------------

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _word(self) -> str:
        return self.rng.choice(WORDS)

    def _tick(self) -> str:
        self.clock_us += self.rng.randint(50, 400)
        return ts(self.clock_us)

    def _size(self) -> int:
        return int(math.exp(self.rng.uniform(math.log(100), math.log(10_000))))

    def _markdown(self, size: int) -> str:
        parts = [f"# {self._word().title()} report\n\n"]
        n = len(parts[0])
        while n < size:
            line = f"- **{self._word()}**: {self.rng.randint(0, 10**6)} {self._word()}\n"
            parts.append(line)
            n += len(line)
        return "".join(parts)[:size]

    def _table(self, size: int) -> str:
        rows = []
        n = 2
        while n < size:
            row = {"name": self._word(), "value": self.rng.randint(0, 10**6),
                   "ok": self.rng.random() < 0.9}
            rows.append(row)
            n += 45
        return orjson.dumps(rows).decode()

    def _data(self) -> tuple[str, str]:
        size = self._size()
        if self.rng.random() < 0.7:
            return "markdown", self._markdown(size)
        return "table", self._table(size)

    def _context(self, flow_run: dict | None = None) -> dict:
        fr = flow_run or self._new_flow_run()
        ctx = {
            "flow_run": {"id": fr["id"], "name": fr["name"]},
            "flow": {"id": fr["flow_id"], "name": fr["flow_name"]},
            "tags": fr["tags"],
        }
        if fr["deployment"]:
            ctx["deployment"] = fr["deployment"]
            ctx["work_pool"] = {"id": fr["pool_id"], "name": "default-pool"}
        if fr["tasks"]:
            ctx["task_run"] = {"id": fr["tasks"][-1]["id"], "name": fr["tasks"][-1]["name"]}
        return ctx

    def _new_flow_run(self) -> dict:
        flow = self.rng.randint(0, 49)
        deployed = self.rng.random() < 0.6
        return {
            "id": self._uuid(),
            "name": f"{self._word()}-{self._word()}-{self.rng.randint(0, 999)}",
            "flow_id": str(uuid.UUID(int=flow + 1)),
            "flow_name": f"etl-{flow}",
            "tags": sorted(self.rng.sample(WORDS, self.rng.randint(0, 3))),
            "deployment": {"id": str(uuid.UUID(int=flow + 1000)), "name": f"etl-{flow}/prod"}
            if deployed else None,
            "pool_id": str(uuid.UUID(int=7)),
            "tasks": [],
            "length": self.rng.randint(3, 10),
        }

    # --- artifacts ------------------------------------------------------------------------------

    def artifact_op(self, keys: int, small: bool = False, only_create: bool = False) -> Msg:
        r = self.rng.random()
        if only_create or not self.live or r < 0.55:
            return self._create(keys, small)
        if r < 0.85:
            return self._update()
        return self._delete()

    def _create(self, keys: int, small: bool, key: str | None = None) -> Msg:
        occurred = self._tick()
        art_id = self._uuid()
        if key is None and (small or self.rng.random() < 0.8):
            key = f"report-{self.rng.randrange(keys)}"
        kind, data = ("markdown", self._markdown(120)) if small else self._data()
        fr = self.flow_runs[-1] if self.flow_runs and self.rng.random() < 0.7 else None
        ctx = self._context(fr)
        msg = {
            "op": "create", "occurred": occurred, "context": ctx,
            "artifact": {
                "id": art_id, "key": key, "type": kind, "data": data,
                "description": f"{self._word()} {self._word()}" if self.rng.random() < 0.5 else None,
                "metadata_": {"source": self._word()} if self.rng.random() < 0.3 else None,
                "flow_run_id": ctx["flow_run"]["id"],
                "task_run_id": ctx.get("task_run", {}).get("id"),
                "created": occurred,
            },
        }
        self.live.append(art_id)
        return Msg(ARTIFACTS, art_id.encode(), orjson.dumps(msg), occurred)

    def _pick_live(self, remove: bool) -> str:
        i = self.rng.randrange(len(self.live))
        art_id = self.live[i]
        if remove:
            self.live[i] = self.live[-1]
            self.live.pop()
        return art_id

    def _update(self) -> Msg:
        occurred = self._tick()
        art_id = self._pick_live(remove=False)
        if self.rng.random() < 0.6:
            changes = {"data": self._data()[1]}
        else:
            changes = {"description": f"updated {self._word()}"}
        msg = {"op": "update", "occurred": occurred, "artifact_id": art_id,
               "context": self._context(self.flow_runs[-1] if self.flow_runs else None),
               "changes": changes}
        return Msg(ARTIFACTS, art_id.encode(), orjson.dumps(msg), occurred)

    def _delete(self) -> Msg:
        occurred = self._tick()
        art_id = self._pick_live(remove=True)
        msg = {"op": "delete", "occurred": occurred, "artifact_id": art_id}
        return Msg(ARTIFACTS, art_id.encode(), orjson.dumps(msg), occurred)

    # --- task results ---------------------------------------------------------------------------

    def _asset(self, with_metadata: bool) -> dict:
        key = self.rng.choice(self.asset_pool)
        props = None
        if self.rng.random() < 0.5:
            props = {"name": key.rsplit("/", 1)[-1], "description": f"{self._word()} data",
                     "owners": ["data-team"]}
            if self.rng.random() < 0.3:
                props["url"] = "https://" + key[5:]
        asset = {"key": key, "properties": props}
        if with_metadata:
            asset["metadata"] = {"rows": self.rng.randint(0, 10**7)} if self.rng.random() < 0.7 else {}
        return asset

    def task_result(self) -> Msg:
        active = [fr for fr in self.flow_runs[-20:] if len(fr["tasks"]) < fr["length"]]
        if len(active) < 8 or self.rng.random() < 0.1:
            fr = self._new_flow_run()
            self.flow_runs.append(fr)
            if len(self.flow_runs) > 200:
                del self.flow_runs[:100]
        else:
            fr = self.rng.choice(active)
        occurred = self._tick()
        task = {"id": self._uuid(), "name": f"{self._word()}-{len(fr['tasks'])}"}
        upstream = [t["id"] for t in fr["tasks"][-self.rng.randint(1, 2):]] if fr["tasks"] else []
        fr["tasks"].append(task)
        r = self.rng.random()
        state = ({"type": "COMPLETED", "name": "Completed"} if r < 0.85 else
                 {"type": "FAILED", "name": "Failed"} if r < 0.92 else
                 {"type": "COMPLETED", "name": "Cached"} if r < 0.97 else
                 {"type": "RUNNING", "name": "Running"})
        downstream = ([self._asset(True) for _ in range(self.rng.randint(1, 2))]
                      if self.rng.random() < 0.5 else [])
        deps = ([self._asset(False) for _ in range(self.rng.randint(1, 2))]
                if self.rng.random() < 0.3 else [])
        msg = {
            "task_run_id": task["id"], "flow_run_id": fr["id"], "occurred": occurred,
            "context": self._context(fr), "state": state,
            "downstream_assets": downstream, "upstream_assets": deps,
            "upstream_task_run_ids": upstream,
            "materialized_by": "dbt" if downstream and self.rng.random() < 0.2 else None,
        }
        return Msg(TASK_RESULTS, fr["id"].encode(), orjson.dumps(msg), occurred)

    def next(self, keys: int, artifact_share: float = 0.6) -> Msg:
        if self.rng.random() < artifact_share:
            return self.artifact_op(keys)
        return self.task_result()


def mixed(n: int, seed: int = 5) -> Workload:
    """The realistic mix: 60% artifact operations over n/10 collection keys, 40% task results."""
    gen = Generator(seed)
    keys = max(50, n // 10)
    return Workload([gen.next(keys) for _ in range(n)])


def creates(n: int, keys: int, seed: int = 7) -> Workload:
    """Only keyed creates with small data: n creates over `keys` collection keys (keys == n: every
    create starts its own collection, so the state holds n memberships and n collections)."""
    gen = Generator(seed)
    out = []
    for i in range(n):
        key = f"coll-{i}" if keys >= n else f"coll-{gen.rng.randrange(keys)}"
        out.append(gen._create(keys, small=True, key=key))
    return Workload(out)
