"""Artifact collections by key (SPEC §4): the latest artifact of each key, decided by event time."""

from __future__ import annotations

import uuid
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
    """The live artifacts of one key and which of them is the latest."""

    id: str
    latest: str
    members: dict[str, Version]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "latest": self.latest,
            "members": {
                v.id: [v.created_us, v.type, v.data, v.description, v.flow_run_id, v.task_run_id]
                for v in self.members.values()
            },
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Collection:
        return cls(
            value["id"],
            value["latest"],
            {aid: Version(aid, *fields) for aid, fields in value["members"].items()},
        )


@dataclass(slots=True)
class CollectionStep:
    collection: Collection | None
    changed: bool = False
    events: list[Event] = field(default_factory=list)


def apply(current: Collection | None, key: str, op: ArtifactOp, content: bytes) -> CollectionStep:
    """Apply one operation that concerns collection `key`. Raises Invalid (nothing changes)."""
    if isinstance(op, ArtifactCreate):
        return _create(current, key, op, content)
    if isinstance(op, ArtifactUpdate):
        return _update(current, op)
    assert isinstance(op, ArtifactDelete)
    return _delete(current, key, op, content)


def _create(current: Collection | None, key: str, op: ArtifactCreate, content: bytes) -> CollectionStep:
    new = artifacts.version_of(op)
    if current is None:
        coll = Collection(collection_id(key, new.id), new.id, {new.id: new})
        event = artifacts.collection_event(COLLECTION_CREATED, op.occurred_us, key, coll.id, new, content)
        return CollectionStep(coll, True, [event, artifacts.created_event(op, content)])
    if new.id in current.members:  # a producer retry: its own event again, state as it is
        return CollectionStep(current, False, [artifacts.created_event(op, content)])
    members = {**current.members, new.id: new}
    if new.rank > current.members[current.latest].rank:
        coll = Collection(current.id, new.id, members)
        event = artifacts.collection_event(COLLECTION_UPDATED, op.occurred_us, key, coll.id, new, content)
        return CollectionStep(coll, True, [event, artifacts.created_event(op, content)])
    coll = Collection(current.id, current.latest, members)
    return CollectionStep(coll, True, [artifacts.created_event(op, content)])


def _update(current: Collection | None, op: ArtifactUpdate) -> CollectionStep:
    """A PATCH changes what later collection events carry; it emits no collection event itself."""
    if current is None or op.artifact_id not in current.members:
        return CollectionStep(current)
    old = current.members[op.artifact_id]
    patched = Version(
        old.id,
        old.created_us,
        old.type,
        op.changes.get("data", old.data),
        op.changes.get("description", old.description),
        old.flow_run_id,
        old.task_run_id,
    )
    return CollectionStep(Collection(current.id, current.latest, {**current.members, old.id: patched}), True)


def _delete(current: Collection | None, key: str, op: ArtifactDelete, content: bytes) -> CollectionStep:
    if current is None or op.artifact_id not in current.members:
        return CollectionStep(current)
    members = {aid: v for aid, v in current.members.items() if aid != op.artifact_id}
    if op.artifact_id != current.latest:
        return CollectionStep(Collection(current.id, current.latest, members), True)
    if not members:
        gone = current.members[op.artifact_id]
        event = artifacts.collection_event(COLLECTION_DELETED, op.occurred_us, key, current.id, gone, content)
        return CollectionStep(None, True, [event])
    latest = max(members.values(), key=lambda v: v.rank)
    event = artifacts.collection_event(COLLECTION_UPDATED, op.occurred_us, key, current.id, latest, content)
    return CollectionStep(Collection(current.id, latest.id, members), True, [event])
