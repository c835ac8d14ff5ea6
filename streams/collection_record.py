"""How the worker stores a collection key, all in the key's partition of the collections table:

* the collection record (key: the collection key): which member is the latest, and the members'
  summary (streams.members.MemberPages), with the replay marks around it (topology.steps.Stamped);
* one record per page of members (0xFE, the page number, the collection key);
* one record per member's version (0xFF, the artifact id): its data, description and run ids,
  which only collection events need, and its page. Like pages, a version is written before the
  collection record and read as of it: it says since which change (`since`, the count of
  streams.members.MemberPages.seq) it holds its data and description, and what they were before
  (None: it did not exist before), so a replay does not read a later batch's PATCH.

0xFE and 0xFF never occur in UTF-8, so neither prefix can collide with a collection key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streams import exact_json
from streams.artifacts import Version
from streams.collection import Collection
from streams.members import INLINE, MemberPages
from streams.timestamps import instant_from_json


@dataclass(slots=True)
class CollectionState:
    """A key's collection (None: no live member) and its members, as one batch reads and changes
    them. The members' counters outlive the collection, so that a page number or stamp is never
    reused by a collection restarted under the same key."""

    collection: Collection | None
    members: MemberPages

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"members": self.members.summary()}
        if self.collection is not None:
            c = self.collection
            out.update(id=c.id, latest=c.latest, created=c.latest_created_us)
        return out


def decode(
    value: dict[str, Any] | None,
    load_page: Callable[[int], bytes | None],
    stored_page: Callable[[str, int], int | None],
) -> CollectionState:
    """A stored collection record (None: none yet). A record from before pages held every member
    (`members`: id -> created); those stay inline in it until they are deleted."""
    if value is None:
        return CollectionState(None, MemberPages(None, load_page, stored_page))
    members = value["members"]
    if "seq" not in members:  # from before pages
        legacy = Collection(value["id"], value["latest"], members[value["latest"]])
        return CollectionState(legacy, MemberPages(None, load_page, stored_page, inline=members))
    coll = (
        None
        if "id" not in value
        else Collection(value["id"], value["latest"], instant_from_json(value["created"]))
    )
    return CollectionState(coll, MemberPages(members, load_page, stored_page))


def version_key(artifact_id: str) -> bytes:
    return b"\xff" + artifact_id.encode()


def page_key(collection_key: bytes, page: int) -> bytes:
    return b"\xfe" + page.to_bytes(4, "big") + collection_key


def version_to_json(v: Version, page: int, since: int, before: Version | None) -> list[Any]:
    prior = None if before is None else [before.data, before.description]
    return [v.created_us, v.type, v.data, v.description, v.flow_run_id, v.task_run_id, page, since, prior]


def load_version(artifact_id: str, raw: bytes, as_of: int) -> tuple[Version, int] | None:
    """A stored version record, its `data` (now and before `since`) as exact as the input's."""
    value = exact_json.read(raw)
    prior = value[8] if len(value) > 8 else None
    if exact_json.may_be_rounded(value[2]) or (prior is not None and exact_json.may_be_rounded(prior[0])):
        value = exact_json.reread(raw) or value
    return version_from_json(artifact_id, value, as_of)


def version_from_json(artifact_id: str, value: list[Any], as_of: int) -> tuple[Version, int] | None:
    """A version as of the collection record's count of changes, and its page; None if it did not
    exist yet. A version written before pages has neither page (INLINE) nor `since`."""
    created, type_, data, description, flow_run_id, task_run_id = value[:6]
    page, since, prior = value[6:] if len(value) > 6 else (INLINE, 0, None)
    if since > as_of:
        if prior is None:
            return None
        data, description = prior
    version = Version(
        artifact_id, instant_from_json(created), type_, data, description, flow_run_id, task_run_id
    )
    return version, page
