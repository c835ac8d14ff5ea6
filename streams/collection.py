"""Artifact collections by key (SPEC §4): the latest artifact of each key, decided by event time."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from streams import artifacts
from streams.artifacts import (
    COLLECTION_CREATED,
    COLLECTION_DELETED,
    COLLECTION_UPDATED,
    Version,
)
from streams.envelope import Event
from streams.members import Members, Rank
from streams.messages import ArtifactCreate, ArtifactDelete, ArtifactOp, ArtifactUpdate
from streams.timestamps import Instant

_NAMESPACE = uuid.UUID("5d3c4a8e-6f1b-4f0e-9a57-0c2b8e1d7a42")


def collection_id(key: str, first_artifact_id: str) -> str:
    """Stable while the collection lives; a collection restarted after a full delete gets a new one."""
    return str(uuid.uuid5(_NAMESPACE, f"{key}\x00{first_artifact_id}"))


@dataclass(slots=True)
class Collection:
    """Which live artifact of one key is the latest. The members themselves are a `Members`
    (streams.members); their versions (data, description, run ids) live in records of their own
    (`VersionOf`)."""

    id: str
    latest: str
    latest_created_us: Instant

    @property
    def latest_rank(self) -> Rank:
        """Latest = greatest `created`, ties broken by the greater id (Version.rank)."""
        return (self.latest_created_us, self.latest)


VersionOf = Callable[[str], Version]  # a live member's version, by artifact id


@dataclass(slots=True)
class CollectionStep:
    collection: Collection | None
    changed: bool = False
    events: list[Event] = field(default_factory=list)
    versions: dict[str, Version | None] = field(default_factory=dict)  # written; None = forgotten
    unknown_delete: bool = False  # of an artifact not a member: deleted already, or its create refused


def apply(
    current: Collection | None,
    members: Members,
    key: str,
    op: ArtifactOp,
    content: bytes,
    version_of: VersionOf,
    *,
    deleted: bool = False,
) -> CollectionStep:
    """Apply one operation that concerns collection `key`, updating `members` with it. Raises
    Invalid before `members` changes (nothing changes then).

    `deleted`: the memberships step holds a tombstone for the artifact of a create (a producer
    retry after its delete), which this step cannot tell from a first create once the delete has
    removed the member: its own event again, no state (a retry must not bring it back)."""
    if isinstance(op, ArtifactCreate):
        if deleted:
            return CollectionStep(current, False, [artifacts.created_event(op, content)])
        return _create(current, members, key, op, content)
    if isinstance(op, ArtifactUpdate):
        return _update(current, members, op, content, version_of)
    assert isinstance(op, ArtifactDelete)
    return _delete(current, members, key, op, content, version_of)


def _create(
    current: Collection | None, members: Members, key: str, op: ArtifactCreate, content: bytes
) -> CollectionStep:
    new = artifacts.version_of(op)
    if current is None:
        coll = Collection(collection_id(key, new.id), new.id, new.created_us)
        event = artifacts.collection_event(COLLECTION_CREATED, op.occurred_us, key, coll.id, new, content)
        events = [event, artifacts.created_event(op, content)]
        members.add(new.id, new.created_us)
        return CollectionStep(coll, True, events, {new.id: new})
    if new.id in members:  # a producer retry: its own event again, state as it is
        return CollectionStep(current, False, [artifacts.created_event(op, content)])
    if new.rank > current.latest_rank:
        coll = Collection(current.id, new.id, new.created_us)
        event = artifacts.collection_event(COLLECTION_UPDATED, op.occurred_us, key, coll.id, new, content)
        events = [event, artifacts.created_event(op, content)]
    else:
        coll, events = current, [artifacts.created_event(op, content)]
    members.add(new.id, new.created_us)
    return CollectionStep(coll, True, events, {new.id: new})


def _update(
    current: Collection | None,
    members: Members,
    op: ArtifactUpdate,
    content: bytes,
    version_of: VersionOf,
) -> CollectionStep:
    """A PATCH changes what later collection events carry; it emits no collection event itself,
    only `artifact.updated` (here, not in the membership step, so that it follows its artifact's
    `artifact.created`, which this step emits). The collection counts as changed: its record keeps
    the replay mark of the PATCH."""
    events = [artifacts.updated_event(op, content)]
    if current is None or op.artifact_id not in members:
        return CollectionStep(current, events=events)
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
    return CollectionStep(current, True, events, {old.id: patched})


def _delete(
    current: Collection | None,
    members: Members,
    key: str,
    op: ArtifactDelete,
    content: bytes,
    version_of: VersionOf,
) -> CollectionStep:
    if current is None or op.artifact_id not in members:
        return CollectionStep(current, unknown_delete=True)
    forgotten: dict[str, Version | None] = {op.artifact_id: None}
    if op.artifact_id != current.latest:
        members.remove(op.artifact_id)
        return CollectionStep(current, True, [], forgotten)
    following = members.best(excluding=op.artifact_id)
    if following is None:
        gone = version_of(op.artifact_id)
        event = artifacts.collection_event(COLLECTION_DELETED, op.occurred_us, key, current.id, gone, content)
        members.remove(op.artifact_id)
        return CollectionStep(None, True, [event], forgotten)
    latest = version_of(following[1])
    event = artifacts.collection_event(COLLECTION_UPDATED, op.occurred_us, key, current.id, latest, content)
    members.remove(op.artifact_id)
    return CollectionStep(Collection(current.id, latest.id, latest.created_us), True, [event], forgotten)
