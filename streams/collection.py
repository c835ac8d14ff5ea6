"""Artifact collections by key (SPEC §4): the latest artifact of each key, decided by event time."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from streams import artifacts
from streams.artifacts import (
    COLLECTION_CREATED,
    COLLECTION_DELETED,
    COLLECTION_UPDATED,
    Version,
)
from streams.envelope import Event
from streams.messages import ArtifactCreate, ArtifactDelete, ArtifactOp, ArtifactUpdate

_NAMESPACE = uuid.UUID("5d3c4a8e-6f1b-4f0e-9a57-0c2b8e1d7a42")


def collection_id(key: str, first_artifact_id: str) -> str:
    """Stable while the collection lives; a collection restarted after a full delete gets a new one."""
    return str(uuid.uuid5(_NAMESPACE, f"{key}\x00{first_artifact_id}"))


@dataclass(slots=True)
class Collection:
    """The live artifacts of one key and which of them is the latest.

    Members are kept by rank only (artifact id -> `created`); their versions (data, description,
    run ids) live in records of their own (`VersionOf`), so an operation rewrites a few dozen bytes
    per member here instead of every member's data: a key with many versions stays cheap, and its
    record far below Kafka's message size limit."""

    id: str
    latest: str
    members: dict[str, int]  # artifact id -> created_us

    def rank(self, artifact_id: str) -> tuple[int, str]:
        """Latest = greatest `created`, ties broken by the greater id (Version.rank)."""
        return (self.members[artifact_id], artifact_id)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "latest": self.latest, "members": self.members}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Collection:
        return cls(value["id"], value["latest"], value["members"])


VersionOf = Callable[[str], Version]  # a live member's version, by artifact id


@dataclass(slots=True)
class CollectionStep:
    collection: Collection | None
    changed: bool = False
    events: list[Event] = field(default_factory=list)
    versions: dict[str, Version | None] = field(default_factory=dict)  # written; None = forgotten


def apply(
    current: Collection | None, key: str, op: ArtifactOp, content: bytes, version_of: VersionOf
) -> CollectionStep:
    """Apply one operation that concerns collection `key`. Raises Invalid (nothing changes)."""
    if isinstance(op, ArtifactCreate):
        return _create(current, key, op, content)
    if isinstance(op, ArtifactUpdate):
        return _update(current, op, version_of)
    assert isinstance(op, ArtifactDelete)
    return _delete(current, key, op, content, version_of)


def _create(current: Collection | None, key: str, op: ArtifactCreate, content: bytes) -> CollectionStep:
    new = artifacts.version_of(op)
    if current is None:
        coll = Collection(collection_id(key, new.id), new.id, {new.id: new.created_us})
        event = artifacts.collection_event(COLLECTION_CREATED, op.occurred_us, key, coll.id, new, content)
        return CollectionStep(coll, True, [event, artifacts.created_event(op, content)], {new.id: new})
    if new.id in current.members:  # a producer retry: its own event again, state as it is
        return CollectionStep(current, False, [artifacts.created_event(op, content)])
    members = {**current.members, new.id: new.created_us}
    if new.rank > current.rank(current.latest):
        coll = Collection(current.id, new.id, members)
        event = artifacts.collection_event(COLLECTION_UPDATED, op.occurred_us, key, coll.id, new, content)
        return CollectionStep(coll, True, [event, artifacts.created_event(op, content)], {new.id: new})
    coll = Collection(current.id, current.latest, members)
    return CollectionStep(coll, True, [artifacts.created_event(op, content)], {new.id: new})


def _update(current: Collection | None, op: ArtifactUpdate, version_of: VersionOf) -> CollectionStep:
    """A PATCH changes what later collection events carry; it emits no collection event itself.
    The collection counts as changed: its record keeps the replay mark of the PATCH."""
    if current is None or op.artifact_id not in current.members:
        return CollectionStep(current)
    old = version_of(op.artifact_id)
    patched = Version(
        old.id,
        old.created_us,
        old.type,
        op.changes.get("data", old.data),
        op.changes.get("description", old.description),
        old.flow_run_id,
        old.task_run_id,
    )
    return CollectionStep(current, True, [], {old.id: patched})


def _delete(
    current: Collection | None, key: str, op: ArtifactDelete, content: bytes, version_of: VersionOf
) -> CollectionStep:
    if current is None or op.artifact_id not in current.members:
        return CollectionStep(current)
    forgotten: dict[str, Version | None] = {op.artifact_id: None}
    members = {aid: created for aid, created in current.members.items() if aid != op.artifact_id}
    if op.artifact_id != current.latest:
        return CollectionStep(Collection(current.id, current.latest, members), True, [], forgotten)
    if not members:
        gone = version_of(op.artifact_id)
        event = artifacts.collection_event(COLLECTION_DELETED, op.occurred_us, key, current.id, gone, content)
        return CollectionStep(None, True, [event], forgotten)
    remaining = Collection(current.id, current.latest, members)
    latest = version_of(max(members, key=remaining.rank))
    event = artifacts.collection_event(COLLECTION_UPDATED, op.occurred_us, key, current.id, latest, content)
    return CollectionStep(Collection(current.id, latest.id, members), True, [event], forgotten)


def version_to_json(v: Version) -> list[Any]:
    return [v.created_us, v.type, v.data, v.description, v.flow_run_id, v.task_run_id]


def version_from_json(artifact_id: str, value: list[Any]) -> Version:
    return Version(artifact_id, *value)
