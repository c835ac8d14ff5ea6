"""The one event envelope builder (SPEC §3): key order, deterministic ids, Prefect's limits.

Ids are UUIDv7-shaped (48-bit millisecond `occurred`) with the remaining bits taken from a hash
of the input message's bytes, the event name and the resource id: the same input always gives
byte-identical events, so Prefect's dedup-by-id and idempotent sinks absorb at-least-once replays.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from streams import timestamps
from streams.errors import Invalid

# Prefect's own limits (prefect.settings: events.maximum_*).
MAX_LABELS_PER_RESOURCE = 500
MAX_RELATED = 100
MAX_EVENT_BYTES = 1_500_000
MAX_NAME_LENGTH = 1024
# Prefect's server measures an event as it publishes it, with the `received` time it adds
# (prefect/server/events/messaging.py: `len(ReceivedEvent.model_dump_json().encode())`), and
# drops it, answering 204, when that is over MAX_EVENT_BYTES. That JSON is ours byte for byte
# plus this field, at most this long (a time with microseconds).
RECEIVED_FIELD_BYTES = len(b',"received":"2026-11-24T10:00:00.123456Z"')  # 41

Labels = dict[str, str]

EVENT_HEADER = "prefect-event"
TRUNCATED_HEADER = "prefect-related-truncated"


# A per-message value, never mutated; not frozen for speed (streams.messages says why).
@dataclass(slots=True)
class Event:
    """One output record, ready to publish: key = resource id, value = the event's JSON bytes."""

    name: str
    resource_id: str
    value: bytes
    related_dropped: int = 0

    @property
    def key(self) -> bytes:
        return self.resource_id.encode()

    @property
    def headers(self) -> list[tuple[str, bytes]]:
        headers = [(EVENT_HEADER, self.name.encode())]
        if self.related_dropped:
            headers.append((TRUNCATED_HEADER, str(self.related_dropped).encode()))
        return headers


def event_id(occurred_us: int, name: str, resource_id: str, content: bytes) -> str:
    """UUIDv7 layout: 48-bit ms timestamp, version 7, variant 10, 74 bits of content hash."""
    digest = _content_hash(content).copy()
    n, r = name.encode(), resource_id.encode()
    digest.update(b"".join((len(n).to_bytes(8, "big"), n, len(r).to_bytes(8, "big"), r)))
    h = digest.digest()
    x = ((occurred_us // 1000).to_bytes(6, "big") + h).hex()
    # version 7 in the 13th hex digit, variant 10 in the top bits of the 17th
    return f"{x[:8]}-{x[8:12]}-7{x[13:16]}-{_VARIANT[x[16]]}{x[17:20]}-{x[20:]}"


_VARIANT = {d: "89ab"[int(d, 16) & 3] for d in "0123456789abcdef"}

# The hash state after the last message's bytes: a message makes its events one after another (up
# to a few hundred for a task run), and hashing its bytes once instead of per event saves ~1.3 µs
# an event for a 2 KB message. Held with the bytes, so `is` cannot match a different message.
_last_content: tuple[bytes, Any] = (b"", None)


def _content_hash(content: bytes) -> Any:
    global _last_content
    last, digest = _last_content
    if last is content and digest is not None:
        return digest
    digest = hashlib.blake2b(len(content).to_bytes(8, "big"), digest_size=10, person=b"prefect-events")
    digest.update(content)
    _last_content = (content, digest)
    return digest


def build(
    *,
    occurred_us: int,
    name: str,
    resource: Labels,
    related: Sequence[Labels],
    payload: Mapping[str, Any],
    content: bytes,
) -> Event:
    """Assemble, check against Prefect's limits and serialize one event.

    A related list over the limit keeps its first MAX_RELATED entries (SPEC §5) and says how many
    it dropped in a header; every other limit raises Invalid, so the caller drops the whole message.
    """
    resource_id = resource["prefect.resource.id"]
    if not resource_id:
        raise Invalid("wrong_type", f"{name}: prefect.resource.id must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise Invalid("name_too_long", f"event name is over {MAX_NAME_LENGTH} characters")
    dropped = max(0, len(related) - MAX_RELATED)
    if dropped:
        related = related[:MAX_RELATED]
    if len(resource) > MAX_LABELS_PER_RESOURCE or any(len(r) > MAX_LABELS_PER_RESOURCE for r in related):
        raise Invalid("too_many_labels", f"{name} for {resource_id[:200]}: a resource has over 500 labels")
    try:
        value = orjson.dumps(
            {
                "occurred": timestamps.render(occurred_us),
                "event": name,
                "resource": resource,
                "related": related,
                "payload": payload,
                "id": event_id(occurred_us, name, resource_id, content),
                "follows": None,
            }
        )
    except orjson.JSONEncodeError as exc:  # e.g. nesting past orjson's limit: a bad message
        raise Invalid("unserializable", f"{name} for {resource_id[:200]}: {exc}") from None
    if prefect_size(len(value)) > MAX_EVENT_BYTES:
        raise TooLarge(f"{name} for {resource_id[:200]}", len(value))
    return Event(name, resource_id, value, dropped)


class TooLarge(Invalid):
    """An event over MAX_EVENT_BYTES as Prefect measures it; `size` is its own length, so that a
    caller checking an event that may happen later can say so in its own words."""

    def __init__(self, what: str, size: int) -> None:
        super().__init__("event_too_large", f"{what} would be {too_large(size)}")
        self.size = size


def prefect_size(value_bytes: int) -> int:
    """The size Prefect's server holds against MAX_EVENT_BYTES for an event of `value_bytes`."""
    return value_bytes + RECEIVED_FIELD_BYTES


def too_large(value_bytes: int) -> str:
    """Why an event of `value_bytes` is refused, for a dead letter's reason."""
    return (
        f"{value_bytes} bytes, {prefect_size(value_bytes)} with the received time Prefect's "
        f"server adds, over its limit of {MAX_EVENT_BYTES}"
    )


def related_entry(resource_id: str, role: str, name: str | None = None) -> Labels:
    entry = {"prefect.resource.id": resource_id, "prefect.resource.role": role}
    if name is not None:
        entry["prefect.resource.name"] = name
    return entry
