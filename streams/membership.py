"""Which collection an artifact belongs to: the per-artifact-id step of the artifact pipeline.

Updates and deletes carry only the artifact id, so this step (state keyed by artifact id) decides
whether an operation concerns a collection and, if so, hands it on to the collection step under
the collection's key. Events that depend on no collection state are emitted here, but for a
keyed artifact's, which the collection step emits behind its create's (and delete's).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from streams import artifacts
from streams.envelope import Event
from streams.messages import ArtifactCreate, ArtifactDelete, ArtifactOp, ArtifactUpdate


# A per-message value, never mutated; not frozen for speed (streams.messages says why).
@dataclass(slots=True)
class Membership:
    """What is known of one artifact id: its collection key (None: unkeyed) and, once deleted,
    when (a tombstone, so that a replayed create cannot bring the artifact back; kept for the
    retention, then forgotten).

    For a keyed artifact the tombstone says a delete was handed on, not that it took: the
    collections step may still dead-letter it (its collection event over a limit, SPEC §6), and
    then the artifact lives on there. So updates and deletes of a keyed artifact are handed on
    whether or not it has a tombstone, and the collections step, which knows its members, decides
    (an artifact it does not hold is an unknown delete there). Likewise a keyed create that the
    collections step refused (its collection event over a limit) leaves a membership here; a
    retry of it is handed on and refused there again."""

    key: str | None
    deleted_us: int | None = None

    @property
    def deleted(self) -> bool:
        return self.deleted_us is not None

    def to_json(self) -> list[object]:
        return [self.key, self.deleted_us]

    @classmethod
    def from_json(cls, value: list[object]) -> Membership:
        key, deleted_us = value
        assert key is None or isinstance(key, str)
        assert deleted_us is None or isinstance(deleted_us, int)
        return cls(key, deleted_us)


def _forgotten(current: Membership, occurred_us: int, retention_us: int) -> bool:
    return current.deleted_us is not None and occurred_us - current.deleted_us > retention_us


@dataclass(slots=True)
class MembershipStep:
    membership: Membership | None
    changed: bool = False
    events: list[Event] = field(default_factory=list)
    forward_to: str | None = None  # collection key the op must be applied to next
    unknown_delete: bool = False
    # A keyed create handed on although its artifact is deleted (a producer retry): the
    # collections step emits its event again and changes nothing (collection.apply's `deleted`).
    deleted: bool = False


def apply(current: Membership | None, op: ArtifactOp, content: bytes, retention_us: int) -> MembershipStep:
    """Apply one operation to what is known of its artifact id. Raises Invalid (nothing changes).

    A tombstone is forgotten by the message's own `occurred`, as a flow run's lineage is: once
    more than the retention after the delete, the artifact id counts as never seen. So whether
    the retention sweep has removed it yet changes no event (streams.retention)."""
    if current is not None and _forgotten(current, op.occurred_us, retention_us):
        if isinstance(op, ArtifactUpdate) and current.key is not None:
            # Its event still comes from the collections step, behind any of the artifact's
            # own that the hop carries (SPEC §4 order); a non-member's is the same bytes there.
            return MembershipStep(current, forward_to=current.key)
        current = None
    step = MembershipStep(current)
    if isinstance(op, ArtifactCreate):
        key = op.artifact.key
        if current is not None and current.key is not None and not current.deleted:
            # The same artifact created again (a producer retry): the collections step holds it
            # (its own event again, no state) or refused it (refused again, as the first time).
            step.forward_to = current.key
        elif current is not None and current.key is not None:
            # A retry of a deleted artifact: its own event again, no state. From the collections
            # step, behind the create's and the delete's events, which the same hop carries.
            step.forward_to, step.deleted = current.key, True
        elif current is not None:
            # A retry of a deleted unkeyed artifact: its own event again, no state.
            step.events.append(artifacts.created_event(op, content))
        elif key is None:
            step.events.append(artifacts.created_event(op, content))
            step.membership, step.changed = Membership(None), True
        else:
            # Its events, and whether any is over a limit, are the collection step's: only there is
            # it known whether the artifact becomes the latest (SPEC §6 refuses a message for the
            # events it would produce, not for those a later delete might).
            step.membership, step.changed, step.forward_to = Membership(key), True, key
    elif isinstance(op, ArtifactUpdate):
        if current is not None and current.key is not None:
            # Its event comes from the collection step, behind the create's events that the same
            # hop carries: emitted here, it could overtake them (SPEC §4 order).
            step.forward_to = current.key
        else:
            step.events.append(artifacts.updated_event(op, content))
    elif isinstance(op, ArtifactDelete):
        if current is None or (current.deleted and current.key is None):
            step.unknown_delete = True
        else:
            if not current.deleted:
                step.membership, step.changed = Membership(current.key, op.occurred_us), True
            step.forward_to = current.key
    return step
