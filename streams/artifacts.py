"""Artifact event builders (SPEC §4): what each artifact or collection event looks like."""

from __future__ import annotations

from dataclasses import dataclass

from streams import envelope
from streams.context import run_context_related
from streams.envelope import Event, Labels, related_entry
from streams.messages import ArtifactCreate, ArtifactUpdate, Json
from streams.timestamps import Instant

ARTIFACT_CREATED = "prefect.artifact.created"
ARTIFACT_UPDATED = "prefect.artifact.updated"
COLLECTION_CREATED = "prefect.artifact-collection.created"
COLLECTION_UPDATED = "prefect.artifact-collection.updated"
COLLECTION_DELETED = "prefect.artifact-collection.deleted"


@dataclass(slots=True)
class Version:
    """What a collection event needs of one live artifact of its key."""

    id: str
    created_us: Instant
    type: str | None
    data: Json
    description: str | None
    flow_run_id: str | None
    task_run_id: str | None

    @property
    def rank(self) -> tuple[Instant, str]:
        """Latest = greatest `created`, ties broken by the greater id: decided by event time."""
        return (self.created_us, self.id)


def created_event(op: ArtifactCreate, content: bytes) -> Event:
    """Named after its key as Prefect's client names it: only a non-empty key (`if key:`). The
    collection events keep an empty key as their name, as Prefect's server does."""
    a = op.artifact
    resource: Labels = {"prefect.resource.id": "prefect.artifact." + a.id}
    if a.key:
        resource["prefect.resource.name"] = a.key
    return envelope.build(
        occurred_us=op.occurred_us,
        name=ARTIFACT_CREATED,
        resource=resource,
        related=run_context_related(op.context),
        payload={"key": a.key, "type": a.type, "description": a.description},
        content=content,
    )


def updated_event(op: ArtifactUpdate, content: bytes) -> Event:
    return envelope.build(
        occurred_us=op.occurred_us,
        name=ARTIFACT_UPDATED,
        resource={"prefect.resource.id": "prefect.artifact." + op.artifact_id},
        related=run_context_related(op.context),
        payload=op.changes,
        content=content,
    )


def collection_event(
    name: str, occurred_us: int, key: str, collection_id: str, latest: Version, content: bytes
) -> Event:
    related = [related_entry("prefect.artifact." + latest.id, "latest")]
    if latest.flow_run_id is not None:
        related.append(related_entry("prefect.flow-run." + latest.flow_run_id, "flow-run"))
    if latest.task_run_id is not None:
        related.append(related_entry("prefect.task-run." + latest.task_run_id, "task-run"))
    return envelope.build(
        occurred_us=occurred_us,
        name=name,
        resource={
            "prefect.resource.id": "prefect.artifact-collection." + collection_id,
            "prefect.resource.name": key,
        },
        related=related,
        payload={
            "key": key,
            "type": latest.type,
            "data": latest.data,
            "description": latest.description,
        },
        content=content,
    )


def version_of(op: ArtifactCreate) -> Version:
    a = op.artifact
    return Version(a.id, a.created_us, a.type, a.data, a.description, a.flow_run_id, a.task_run_id)
