"""Shared builders and checks for the spec tests (SPEC.md §2-§6).

Builders return plain dicts in SPEC §2 form with sensible defaults; every field can be overridden
(`None` included) and `drop=(...)` removes fields to test missing ones. `run_artifacts` /
`run_assets` push messages through a fresh (or given) pipeline and return the events as parsed
dicts. The golden normaliser is shared/golden/compare.py itself (GOLDEN_DIR).
"""

from __future__ import annotations

import datetime as dt
import gc
import importlib.util
import json
import os
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

import pytest

from streams.envelope import Event
from streams.pipeline import ArtifactPipeline, AssetPipeline, Outcome

# shared/golden beside the repository, unless PREFECT_EVENTS_GOLDEN_DIR says where it is: a clone
# elsewhere skips the tests that use it, and the run's summary says so (tests/conftest.py).
GOLDEN_DIR = Path(
    os.environ.get("PREFECT_EVENTS_GOLDEN_DIR")
    or Path(__file__).resolve().parents[2] / "shared" / "golden"
).resolve()
needs_golden = pytest.mark.skipif(
    not GOLDEN_DIR.is_dir(), reason=f"golden cases not found at {GOLDEN_DIR}"
)

ENVELOPE_KEYS = ["occurred", "event", "resource", "related", "payload", "id", "follows"]
MAX_EVENT_BYTES = 1_500_000
# What Prefect's server measures is our event plus `,"received":"<time with microseconds>Z"`.
RECEIVED_FIELD_BYTES = 41

T0 = dt.datetime(2026, 11, 24, 10, 0, 0, 123456, tzinfo=dt.UTC)
_MISSING = object()


# --- ids and times ----------------------------------------------------------------------------


def uid(n: int, prefix: str = "0000") -> str:
    """A readable canonical UUID: uid(1) == '00000000-0000-4000-8000-000000000001'."""
    return f"{prefix:0>4}0000-0000-4000-8000-{n:012x}"


def ts(seconds: float = 0.0, base: dt.datetime = T0) -> str:
    """T0 + seconds, as `...Z` with microseconds."""
    return (base + dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def rendered(seconds: float = 0.0) -> str:
    """How the envelope renders ts(seconds)."""
    return ts(seconds)


def us(seconds: float = 0.0) -> int:
    return (T0 - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1) + round(
        seconds * 1_000_000
    )


# --- run context ------------------------------------------------------------------------------

FLOW_RUN = uid(0xF1, "f1")
TASK_RUN = uid(0x71, "71")
FLOW = uid(0xF0, "f0")


def context(
    flow_run: str | None = FLOW_RUN,
    task_run: str | None = None,
    flow: str | None = FLOW,
    deployment: str | None = None,
    work_queue: str | None = None,
    work_pool: str | None = None,
    tags: Sequence[str] | None = (),
    names: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A RUN_CONTEXT; names default to '<part>-name'."""
    names = names or {}
    ctx: dict[str, Any] = {}
    for part, value in (
        ("flow_run", flow_run),
        ("task_run", task_run),
        ("flow", flow),
        ("deployment", deployment),
        ("work_queue", work_queue),
        ("work_pool", work_pool),
    ):
        if value is not None:
            ctx[part] = {"id": value, "name": names.get(part, f"{part}-name")}
    if tags is not None:
        ctx["tags"] = list(tags)
    return ctx


def ctx_related(
    ctx: dict[str, Any] | None,
) -> list[dict[str, str]]:
    """The related entries SPEC §3.1 says a context gives (for expectations)."""
    if not ctx:
        return []
    out = []
    for part, prefix, role in (
        ("flow_run", "prefect.flow-run.", "flow-run"),
        ("task_run", "prefect.task-run.", "task-run"),
        ("flow", "prefect.flow.", "flow"),
        ("deployment", "prefect.deployment.", "deployment"),
        ("work_queue", "prefect.work-queue.", "work-queue"),
        ("work_pool", "prefect.work-pool.", "work-pool"),
    ):
        if ctx.get(part):
            out.append(
                {
                    "prefect.resource.id": prefix + ctx[part]["id"].lower(),
                    "prefect.resource.role": role,
                    "prefect.resource.name": ctx[part]["name"],
                }
            )
    for tag in sorted(set(ctx.get("tags") or [])):
        out.append({"prefect.resource.id": "prefect.tag." + tag, "prefect.resource.role": "tag"})
    return out


def rel(resource_id: str, role: str) -> dict[str, str]:
    return {"prefect.resource.id": resource_id, "prefect.resource.role": role}


# --- artifact messages ------------------------------------------------------------------------


def _apply(msg: dict[str, Any], overrides: dict[str, Any], drop: Iterable[str]) -> dict[str, Any]:
    msg.update(overrides)
    for name in drop:
        msg.pop(name, None)
    return msg


def artifact(
    id: str = uid(1),
    key: str | None = "report",
    created: str | None = None,
    *,
    drop: Iterable[str] = (),
    **overrides: Any,
) -> dict[str, Any]:
    art = {
        "id": id,
        "key": key,
        "type": "markdown",
        "data": f"# data of {id[-4:]}",
        "description": f"description of {id[-4:]}",
        "metadata_": None,
        "flow_run_id": FLOW_RUN,
        "task_run_id": None,
        "created": created if created is not None else ts(),
    }
    return _apply(art, overrides, drop)


def create(
    id: str = uid(1),
    key: str | None = "report",
    at: float = 0.0,
    *,
    created: float | str | None = None,
    ctx: Any = _MISSING,
    drop: Iterable[str] = (),
    occurred: str | None = None,
    **artifact_overrides: Any,
) -> dict[str, Any]:
    """An `op: create`; `at` = occurred (seconds after T0), `created` (seconds after T0, or the
    timestamp itself) defaults to `at`."""
    return _apply(
        {
            "op": "create",
            "occurred": occurred if occurred is not None else ts(at),
            "context": context() if ctx is _MISSING else ctx,
            "artifact": artifact(
                id,
                key,
                created if isinstance(created, str) else ts(at if created is None else created),
                **artifact_overrides,
            ),
        },
        {},
        drop,
    )


def update(
    artifact_id: str = uid(1),
    changes: dict[str, Any] | None = None,
    at: float = 1.0,
    *,
    ctx: Any = _MISSING,
    drop: Iterable[str] = (),
    **overrides: Any,
) -> dict[str, Any]:
    return _apply(
        {
            "op": "update",
            "occurred": ts(at),
            "artifact_id": artifact_id,
            "context": context() if ctx is _MISSING else ctx,
            "changes": {} if changes is None else changes,
        },
        overrides,
        drop,
    )


def delete(
    artifact_id: str = uid(1), at: float = 2.0, *, drop: Iterable[str] = (), **overrides: Any
) -> dict[str, Any]:
    return _apply(
        {"op": "delete", "occurred": ts(at), "artifact_id": artifact_id}, overrides, drop
    )


# --- asset messages ---------------------------------------------------------------------------


def asset(key: str, **properties: Any) -> dict[str, Any]:
    """ASSET; no keyword → properties null."""
    return {"key": key, "properties": properties or None}


def materialized(key: str, metadata: dict[str, Any] | None = None, **properties: Any) -> dict:
    return {**asset(key, **properties), "metadata": {} if metadata is None else metadata}


def task_result(
    task_run_id: str = uid(0x100),
    downstream: Sequence[dict[str, Any]] = (),
    upstream: Sequence[dict[str, Any]] = (),
    upstream_runs: Sequence[str] = (),
    at: float = 0.0,
    *,
    flow_run_id: str | None = FLOW_RUN,
    state: str = "COMPLETED",
    state_name: str | None = None,
    materialized_by: str | None = None,
    ctx: Any = _MISSING,
    drop: Iterable[str] = (),
    **overrides: Any,
) -> dict[str, Any]:
    """A task run attempt; the default context is its flow run, task run and flow."""
    if ctx is _MISSING:
        ctx = context(flow_run=flow_run_id, task_run=task_run_id)
    return _apply(
        {
            "task_run_id": task_run_id,
            "flow_run_id": flow_run_id,
            "occurred": ts(at),
            "context": ctx,
            "state": {"type": state, "name": state_name or state.capitalize()},
            "downstream_assets": list(downstream),
            "upstream_assets": list(upstream),
            "upstream_task_run_ids": list(upstream_runs),
            "materialized_by": materialized_by,
        },
        overrides,
        drop,
    )


# --- running ----------------------------------------------------------------------------------


def nested(levels: int) -> Any:
    """A string inside `levels` nested lists: JSON that nests `levels` deep."""
    value: Any = "x"
    for _ in range(levels):
        value = [value]
    return value


def encode(message: Any) -> bytes:
    if isinstance(message, bytes | bytearray):
        return bytes(message)
    return json.dumps(message).encode()


def outcomes(pipeline: ArtifactPipeline | AssetPipeline, messages: Iterable[Any]) -> list[Outcome]:
    return [pipeline.process(encode(m)) for m in messages]


def raw_events(pipeline: ArtifactPipeline | AssetPipeline, messages: Iterable[Any]) -> list[Event]:
    """All events, asserting no message was dead-lettered."""
    out: list[Event] = []
    for i, outcome in enumerate(outcomes(pipeline, messages)):
        assert outcome.dead_letter is None, f"message {i} dead-lettered: {outcome.dead_letter}"
        out.extend(outcome.events)
    return out


def parsed(events: Iterable[Event]) -> list[dict[str, Any]]:
    return [json.loads(e.value) for e in events]


def run_artifacts(
    messages: Iterable[Any], pipeline: ArtifactPipeline | None = None
) -> list[dict[str, Any]]:
    return parsed(raw_events(pipeline if pipeline is not None else ArtifactPipeline(), messages))


def run_assets(
    messages: Iterable[Any], pipeline: AssetPipeline | None = None, **kwargs: Any
) -> list[dict[str, Any]]:
    return parsed(raw_events(pipeline if pipeline is not None else AssetPipeline(**kwargs), messages))


def names(events: Iterable[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in events]


def strip_ids(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in e.items() if k != "id"} for e in events]


# --- envelope checks (SPEC §3) ----------------------------------------------------------------


def occurred_ms(occurred: str) -> int:
    instant = dt.datetime.fromisoformat(occurred.replace("Z", "+00:00"))
    return (instant - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(milliseconds=1)


def check_event_id(event: dict[str, Any]) -> None:
    """A UUID with the UUIDv7 layout whose 48-bit timestamp is `occurred` in milliseconds."""
    u = uuid.UUID(event["id"])
    assert str(u) == event["id"], "id must be the canonical lower-case form"
    assert u.version == 7, f"version nibble of {u} is {u.version}"
    assert u.variant == uuid.RFC_4122, f"variant of {u} is not 10"
    assert int.from_bytes(u.bytes[:6], "big") == occurred_ms(event["occurred"])


def check_envelope(value: bytes) -> dict[str, Any]:
    """Every SPEC §3 rule that holds for any single event; returns the parsed event."""
    assert len(value) + RECEIVED_FIELD_BYTES <= MAX_EVENT_BYTES
    event = json.loads(value)
    assert list(event) == ENVELOPE_KEYS
    assert isinstance(event["occurred"], str)
    assert dt.datetime.strptime(event["occurred"], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert len(event["occurred"]) == 27
    assert isinstance(event["event"], str) and 0 < len(event["event"]) <= 1024
    resource = event["resource"]
    assert isinstance(resource, dict) and 1 <= len(resource) <= 500
    assert next(iter(resource)) == "prefect.resource.id"
    assert isinstance(resource["prefect.resource.id"], str) and resource["prefect.resource.id"]
    assert all(isinstance(v, str) for v in resource.values())
    related = event["related"]
    assert isinstance(related, list) and len(related) <= 100
    for entry in related:
        assert isinstance(entry, dict) and len(entry) <= 500
        assert isinstance(entry.get("prefect.resource.id"), str) and entry["prefect.resource.id"]
        assert isinstance(entry.get("prefect.resource.role"), str)
        assert all(isinstance(v, str) for v in entry.values())
    assert isinstance(event["payload"], dict)
    assert event["follows"] is None
    check_event_id(event)
    return event


# --- golden files -----------------------------------------------------------------------------


def garbage_left_by(run: Callable[[], Any]) -> list[str]:
    """What of ours `run` left to Python's collector (reference cycles), by type or frame, with
    counts: the worker collects rarely, so a cycle per message or key keeps whole batches alive.
    Only our objects count, so that another thread's garbage meanwhile cannot fail a test."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        result = run()
        del result
        gc.collect()
        found = [_ours(item) for item in gc.garbage]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    return sorted(f"{name} x{n}" for name, n in Counter(found).items() if name is not None)


def _ours(item: Any) -> str | None:
    if isinstance(item, FrameType):
        where = item.f_code.co_filename
        return f"frame {item.f_code.co_name}" if "/streams/" in where or "/topology/" in where else None
    module = type(item).__module__ or ""
    return type(item).__qualname__ if module.split(".")[0] in ("streams", "topology") else None


def load_compare() -> ModuleType | None:
    """GOLDEN_DIR/compare.py, the golden normaliser (None when not there)."""
    path = GOLDEN_DIR / "compare.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("golden_compare", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def golden_cases(stream: str | None = None) -> list[str]:
    """The golden cases' names, all or those of one stream ("artifacts": inputs with an `op`)."""
    if not GOLDEN_DIR.is_dir():
        return []
    cases = []
    for case in sorted(GOLDEN_DIR.iterdir()):
        if not (case / "expected.jsonl").is_file() or not (case / "input.jsonl").is_file():
            continue
        first = (case / "input.jsonl").read_bytes().split(b"\n", 1)[0]
        if stream is None or (b'"op"' in first) == (stream == "artifacts"):
            cases.append(case.name)
    return cases


def require_golden() -> None:
    if not (GOLDEN_DIR / "compare.py").is_file():
        pytest.skip(f"golden cases not found at {GOLDEN_DIR}")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def golden_lines(case: str, name: str) -> list[bytes]:
    with open(GOLDEN_DIR / case / name, "rb") as f:
        return [line.rstrip(b"\r\n") for line in f if line.strip()]
