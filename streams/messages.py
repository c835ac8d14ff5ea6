"""Input messages (SPEC §2): raw bytes → validated, typed operations, or `Invalid` with a reason.

Validation is complete up front so that no later step can fail on a message's shape: a message
either becomes an operation here or goes to the dead-letter topic unchanged.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

from streams import exact_json, timestamps
from streams.errors import Invalid
from streams.timestamps import type_name

Json = Any


# Per-message values (here, and Event, Membership, InRecord, Out, Source) are plain slotted
# dataclasses and never mutated. Not frozen: a frozen dataclass's __init__ sets each field through
# object.__setattr__ (785 ns against 168 for seven fields), which was 15% of the steps' instructions.
# Named stays frozen: one instance is shared by every message its cache (_valid_named) serves, and
# it is built only on a cache miss.
@dataclass(frozen=True, slots=True)
class Named:
    """A run-context part: an id and the name Prefect shows for it."""

    id: str
    name: str


@dataclass(slots=True)
class RunContext:
    """The client run context an operation happened in; every part optional."""

    flow_run: Named | None = None
    task_run: Named | None = None
    flow: Named | None = None
    deployment: Named | None = None
    work_queue: Named | None = None
    work_pool: Named | None = None
    tags: tuple[str, ...] = ()


NO_CONTEXT = RunContext()
CONTEXT_PARTS = ("flow_run", "task_run", "flow", "deployment", "work_queue", "work_pool")


@dataclass(slots=True)
class Artifact:
    """An artifact as created; `data` is opaque JSON."""

    id: str
    key: str | None
    type: str | None
    data: Json
    description: str | None
    flow_run_id: str | None
    task_run_id: str | None
    created_us: timestamps.Instant


@dataclass(slots=True)
class ArtifactCreate:
    occurred_us: int
    context: RunContext
    artifact: Artifact

    @property
    def artifact_id(self) -> str:
        return self.artifact.id


@dataclass(slots=True)
class ArtifactUpdate:
    """A PATCH: `changes` holds exactly the fields that were set, in Prefect's field order."""

    occurred_us: int
    artifact_id: str
    context: RunContext
    changes: dict[str, Json]


@dataclass(slots=True)
class ArtifactDelete:
    occurred_us: int
    artifact_id: str


ArtifactOp = ArtifactCreate | ArtifactUpdate | ArtifactDelete

#: Prefect's ArtifactUpdate fields, in the order its client dumps them into the event payload.
UPDATABLE = ("data", "description", "metadata_")


@dataclass(slots=True)
class Asset:
    """An asset key with the resource labels its properties give (empty: no properties set)."""

    key: str
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True)
class Materialized:
    """A downstream asset of a task run and the materialization metadata recorded for it."""

    asset: Asset
    metadata: dict[str, Json]


@dataclass(slots=True)
class TaskResult:
    """One finished task run attempt (SPEC §2.2)."""

    task_run_id: str
    flow_run_id: str | None
    occurred_us: int
    context: RunContext
    state_type: str
    state_name: str
    downstream: tuple[Materialized, ...]
    upstream: tuple[Asset, ...]
    upstream_task_run_ids: tuple[str, ...]
    materialized_by: str | None
    #: Metadata nested past what an event can carry: refused only if the result emits events
    #: (streams.assets.events); a result that emits none still passes its assets on (SPEC §5).
    too_deep: Invalid | None = None


# --- decoding ---------------------------------------------------------------------------------


def decode(raw: bytes) -> dict[str, Json]:
    """UTF-8 JSON object, or Invalid."""
    try:
        value = exact_json.read(raw)
    except orjson.JSONDecodeError as exc:
        raise Invalid("invalid_json", f"not UTF-8 JSON: {exc}") from None
    if not isinstance(value, dict):
        raise Invalid("wrong_type", f"message must be a JSON object, got {type_name(value)}")
    return value


#: orjson serializes at most 254 nested containers. Only the values a message carries into its
#: events are held to it, at the depth they take there: a keyed create's `data` and an update's
#: `changes.data` (event → payload → data, also the deepest it sits in a state record) and a
#: materialization's `metadata` (event → payload).
#: Fields the spec ignores may nest as deep as orjson reads (1024).
MAX_DEPTH = 254
_DATA_DEPTH = MAX_DEPTH - 2
_METADATA_DEPTH = MAX_DEPTH - 1


def _may_nest_too_deep(raw: bytes) -> bool:
    """Counting brackets is C-speed and bounds any depth from above: walk only when it could be over."""
    return raw.count(b"[") + raw.count(b"{") > _DATA_DEPTH


def _check_depth(value: Json, where: str, limit: int) -> None:
    if _depth_over(value, limit):
        raise Invalid(
            "too_deep",
            f"{where} nests objects/arrays more than {limit} levels deep: its events could not be written",
        )


def _depth_over(value: Json, limit: int) -> bool:
    """Whether containers nest deeper than `limit` (iterative: orjson reads up to 1024 levels)."""
    stack: list[tuple[Json, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, dict | list))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item if isinstance(v, dict | list))
    return False


def parse_artifact_op(raw: bytes) -> ArtifactOp:
    msg = decode(raw)
    op = _required(msg, "op", "")
    occurred = timestamps.parse(_required(msg, "occurred", ""), "occurred")
    if op == "create":
        artifact = _artifact(_object(msg, "artifact", ""))
        # Only a keyed artifact's data reaches an event (its collection's); artifact.created
        # leaves it out, so an unkeyed one may nest as deep as any field the spec ignores.
        if artifact.key is not None and _may_nest_too_deep(raw):
            _check_depth(artifact.data, "artifact.data", _DATA_DEPTH)
        artifact.data = exact_json.at(raw, artifact.data, "artifact", "data")
        return ArtifactCreate(occurred, _context(msg), artifact)
    if op == "update":
        changes = _object(msg, "changes", "")
        picked: dict[str, Json] = {}
        for name in UPDATABLE:
            if name in changes:
                picked[name] = changes[name]
        if "data" in picked and _may_nest_too_deep(raw):
            _check_depth(picked["data"], "changes.data", _DATA_DEPTH)
        if "data" in picked:
            picked["data"] = exact_json.at(raw, picked["data"], "changes", "data")
        if "description" in picked:
            _check_optional_str(picked["description"], "changes.description")
        if "metadata_" in picked:
            _check_metadata(picked["metadata_"], "changes.metadata_")
        return ArtifactUpdate(occurred, _uuid(msg, "artifact_id", ""), _context(msg), picked)
    if op == "delete":
        return ArtifactDelete(occurred, _uuid(msg, "artifact_id", ""))
    if isinstance(op, str):
        raise Invalid("unknown_op", f"op must be create, update or delete, got {op[:64]!r}")
    raise Invalid("wrong_type", f"op must be a string, got {type_name(op)}")


def parse_task_result(raw: bytes) -> TaskResult:
    msg = decode(raw)
    state = _object(msg, "state", "")
    downstream = tuple(
        Materialized(_asset(item, f"downstream_assets[{i}]"), _metadata(item, i))
        for i, item in enumerate(_list(msg, "downstream_assets", ""))
    )
    too_deep = None
    if downstream and _may_nest_too_deep(raw):
        try:
            for i, m in enumerate(downstream):
                _check_depth(m.metadata, f"downstream_assets[{i}].metadata", _METADATA_DEPTH)
        except Invalid as exc:
            too_deep = exc.bare()  # no traceback: it would hold this frame, and the batch
    if any(exact_json.may_be_rounded(m.metadata) for m in downstream):
        exact = exact_json.reread(raw)
        if exact is not None:
            for i, m in enumerate(downstream):
                if exact_json.may_be_rounded(m.metadata):
                    m.metadata = exact["downstream_assets"][i]["metadata"]
    upstream = tuple(
        _asset(item, f"upstream_assets[{i}]") for i, item in enumerate(_list(msg, "upstream_assets", ""))
    )
    upstream_ids = tuple(
        _canonical_uuid(item, f"upstream_task_run_ids[{i}]")
        for i, item in enumerate(_list(msg, "upstream_task_run_ids", ""))
    )
    return TaskResult(
        task_run_id=_uuid(msg, "task_run_id", ""),
        flow_run_id=_optional_uuid(msg, "flow_run_id", ""),
        occurred_us=timestamps.parse(_required(msg, "occurred", ""), "occurred"),
        context=_context(msg),
        state_type=_str(state, "type", "state."),
        state_name=_str(state, "name", "state."),
        downstream=downstream,
        upstream=upstream,
        upstream_task_run_ids=upstream_ids,
        materialized_by=_optional_str(msg, "materialized_by", ""),
        too_deep=too_deep,
    )


# --- parts ------------------------------------------------------------------------------------


def _artifact(obj: Mapping[str, Json]) -> Artifact:
    p = "artifact."
    _check_metadata(obj.get("metadata_"), "artifact.metadata_")
    return Artifact(
        id=_uuid(obj, "id", p),
        key=_optional_str(obj, "key", p),
        type=_optional_str(obj, "type", p),
        data=obj.get("data"),
        description=_optional_str(obj, "description", p),
        flow_run_id=_optional_uuid(obj, "flow_run_id", p),
        task_run_id=_optional_uuid(obj, "task_run_id", p),
        created_us=timestamps.parse_instant(_required(obj, "created", p), "artifact.created"),
    )


def _context(msg: Mapping[str, Json]) -> RunContext:
    ctx = msg.get("context")
    if ctx is None:
        return NO_CONTEXT
    if not isinstance(ctx, dict):
        raise Invalid("wrong_type", f"context must be an object or null, got {type_name(ctx)}")
    parts: dict[str, Named | None] = {}
    for part, where in _CONTEXT_WHERE:
        value = ctx.get(part)
        parts[part] = None if value is None else _named(value, where)
    tags = ctx.get("tags")
    if tags is None:
        tags = []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise Invalid("wrong_type", "context.tags must be a list of strings")
    return RunContext(tags=tuple(tags), **parts)


_CONTEXT_WHERE = tuple((part, f"context.{part}.") for part in CONTEXT_PARTS)


def _named(value: Json, where: str) -> Named:
    if not isinstance(value, dict):
        raise Invalid("wrong_type", f"{where[:-1]} must be an object or null, got {type_name(value)}")
    id_, name = value.get("id"), value.get("name")
    if type(id_) is str and type(name) is str:
        return _valid_named(id_, name, where)
    return Named(_uuid(value, "id", where), _str(value, "name", where))  # raises the exact Invalid


@lru_cache(maxsize=1 << 12)
def _valid_named(id_: str, name: str, where: str) -> Named:
    """One flow run's context recurs in all its task runs' messages: checked once while it does."""
    return Named(_canonical_uuid(id_, where + "id"), name)


_PROPERTY_LABELS = (
    ("name", "prefect.resource.name"),
    ("description", "prefect.asset.description"),
    ("url", "prefect.asset.url"),
)


def _asset(item: Json, where: str) -> Asset:
    if not isinstance(item, dict):
        raise Invalid("wrong_type", f"{where} must be an object, got {type_name(item)}")
    key = _str(item, "key", where + ".")
    if not key:
        raise Invalid("wrong_type", f"{where}.key must be a non-empty string")
    props = item.get("properties")
    if props is None:
        return Asset(key)
    if not isinstance(props, dict):
        raise Invalid("wrong_type", f"{where}.properties must be an object or null, got {type_name(props)}")
    labels: list[tuple[str, str]] = []
    for prop, label in _PROPERTY_LABELS:
        value = props.get(prop)
        if value is None:
            continue
        if not isinstance(value, str):
            raise Invalid("wrong_type", f"{where}.properties.{prop} must be a string")
        labels.append((label, value))
    owners = props.get("owners")
    if owners is not None:
        if not isinstance(owners, list) or not all(isinstance(o, str) for o in owners):
            raise Invalid("wrong_type", f"{where}.properties.owners must be a list of strings")
        labels.append(("prefect.asset.owners", python_json_list(owners)))
    return Asset(key, tuple(labels))


def python_json_list(items: list[str]) -> str:
    """The owners label: exactly what Python's `json.dumps` writes (`["a", "b"]`, ASCII-escaped)."""
    return json.dumps(items)


def _metadata(item: Json, i: int) -> dict[str, Json]:
    metadata = item.get("metadata") if isinstance(item, dict) else None
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise Invalid(
            "wrong_type",
            f"downstream_assets[{i}].metadata must be an object, got {type_name(metadata)}",
        )
    return metadata


def _check_metadata(value: Json, where: str) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise Invalid("wrong_type", f"{where} must be an object of strings or null")


def _check_optional_str(value: Json, where: str) -> None:
    if value is not None and not isinstance(value, str):
        raise Invalid("wrong_type", f"{where} must be a string or null, got {type_name(value)}")


def _required(obj: Mapping[str, Json], name: str, prefix: str) -> Json:
    try:
        return obj[name]
    except KeyError:
        raise Invalid("missing_field", f"{prefix}{name} is missing") from None


def _object(obj: Mapping[str, Json], name: str, prefix: str) -> dict[str, Json]:
    value = _required(obj, name, prefix)
    if not isinstance(value, dict):
        raise Invalid("wrong_type", f"{prefix}{name} must be an object, got {type_name(value)}")
    return value


def _list(obj: Mapping[str, Json], name: str, prefix: str) -> list[Json]:
    value = _required(obj, name, prefix)
    if not isinstance(value, list):
        raise Invalid("wrong_type", f"{prefix}{name} must be a list, got {type_name(value)}")
    return value


def _str(obj: Mapping[str, Json], name: str, prefix: str) -> str:
    value = _required(obj, name, prefix)
    if not isinstance(value, str):
        raise Invalid("wrong_type", f"{prefix}{name} must be a string, got {type_name(value)}")
    return value


def _optional_str(obj: Mapping[str, Json], name: str, prefix: str) -> str | None:
    value = obj.get(name)
    _check_optional_str(value, prefix + name)
    return value


def _uuid(obj: Mapping[str, Json], name: str, prefix: str) -> str:
    return _canonical_uuid(_required(obj, name, prefix), prefix + name)


def _optional_uuid(obj: Mapping[str, Json], name: str, prefix: str) -> str | None:
    value = obj.get(name)
    return None if value is None else _canonical_uuid(value, prefix + name)


def _canonical_uuid(value: Json, where: str) -> str:
    """Canonical 8-4-4-4-12 hex form only (either case); returned lower-case, as Prefect renders."""
    if not isinstance(value, str):
        raise Invalid("wrong_type", f"{where} must be a UUID string, got {type_name(value)}")
    canonical = lower_uuid(value)
    if canonical is None:
        raise Invalid("invalid_uuid", f"{where} is not a canonical UUID: {value[:64]!r}")
    return canonical


@lru_cache(maxsize=1 << 12)
def lower_uuid(value: str) -> str | None:
    """The id as the worker keys its state by it (None: not a UUID), for `produce` to key records
    by too. Ids recur across messages (a flow run's, an updated artifact's): matched once while
    they do."""
    return value.lower() if _UUID.match(value) else None


_UUID = re.compile(r"\A[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")
