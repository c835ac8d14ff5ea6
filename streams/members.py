"""A collection's live members by rank: what `streams.collection` needs to re-point "latest".

Two forms behind one protocol. `MemberSet` holds them in a dict (the offline pipeline).
`MemberPages` is the worker's. Up to `INLINE_SIZE` members stay inline in the collection record,
as every member once did: most keys have a few live versions, and then an operation reads and
writes the one record. Members beyond that go to pages of up to `PAGE_SIZE`, each a record of its own
beside the collection's, and the collection record holds only a summary per page (live count and
best member). An operation on a large key rewrites one page and the summary, so a key's cost no
longer grows with its versions the way a record holding every member did (bench/NOTES.md,
note 8), and a key reaches Kafka's 1 MB message limit at ~1M live versions instead of ~15,000.

Pages and the replay rule (streams.replay). Pages are written before their collection record and
deleted after it, like members' versions, so a message replayed after a crash can find a page that
already holds what its first run did. Each entry is therefore stamped with the mutation that added
it and the one that removed it (`seq` counts a key's mutations and is kept in the collection
record), and a page is read as of the collection record's `seq`: later additions are dropped,
later removals undone, and earlier removals compacted away, so the replay sees exactly what the
first run saw and does the same again, stamp for stamp.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from streams.timestamps import Instant, instant_from_json, instant_json

PAGE_SIZE = 64  # live members a page takes before a new one is opened
# Live members kept in the collection record before pages are used: the mixed benchmark's keys
# have at most ~10; a large key rewrites these ~0.9 KB with every batch that touches it.
INLINE_SIZE = 16
INLINE = -1  # the "page" of members kept inside the collection record

Rank = tuple[Instant, str]  # (created_us, artifact id): the latest is the greatest
Entry = list[Any]  # [created_us, added (seq), removed (seq) or None]


class Members(Protocol):
    """The live artifacts of one collection key, by artifact id."""

    def __contains__(self, artifact_id: str) -> bool: ...

    def add(self, artifact_id: str, created_us: Instant) -> None: ...

    def remove(self, artifact_id: str) -> None: ...

    def best(self, excluding: str | None = None) -> Rank | None:
        """The greatest rank among live members other than `excluding`."""
        ...


@dataclass(slots=True)
class MemberSet:
    created: dict[str, Instant] = field(default_factory=dict)  # artifact id -> created_us

    def __contains__(self, artifact_id: str) -> bool:
        return artifact_id in self.created

    def __iter__(self) -> Iterator[str]:
        return iter(self.created)

    def add(self, artifact_id: str, created_us: Instant) -> None:
        self.created[artifact_id] = created_us

    def remove(self, artifact_id: str) -> None:
        del self.created[artifact_id]

    def best(self, excluding: str | None = None) -> Rank | None:
        return max(((c, a) for a, c in self.created.items() if a != excluding), default=None)


class MemberPages:
    """One key's pages, as of its collection record, for one batch; `written()` and `emptied` are
    what the batch must write before the collection record and delete after it.

    `load_page(n)` reads page n's stored record; `stored_page(artifact_id, as_of)` is the page a
    member's stored version names as of the collection record (INLINE for one kept inline, None
    without a version). It is asked only when the collection has stored pages: an inline member
    is found in the record itself. It is given `as_of` rather than reading it from these pages:
    a reader holding its state made every state a reference cycle, which only Python's collector
    frees; at saturation that was all the garbage it found, ~32k objects a collection."""

    def __init__(
        self,
        summary: dict[str, Any] | None,
        load_page: Callable[[int], bytes | None],
        stored_page: Callable[[str, int], int | None],
        inline: dict[str, Any] | None = None,
    ) -> None:
        summary = summary or {}
        self.seq: int = summary.get("seq", 0)
        self.next_page: int = summary.get("next", 0)
        self.open: int | None = summary.get("open")
        # page -> [live count, created_us of its best, id of its best]
        self.pages: dict[int, list[Any]] = {
            p[0]: [p[1], instant_from_json(p[2]), p[3]] for p in summary.get("pages", ())
        }
        self._as_of: int = self.seq
        self._load_page, self._stored_page = load_page, stored_page
        self._entries: dict[int, dict[str, Entry]] = {}
        self.placed: dict[str, int] = {}  # members added by this batch -> their page
        self.changed: set[int] = set()
        self.emptied: set[int] = set()
        if inline is None:
            inline = summary.get("inline")
        # Part of the collection record itself, so never ahead of it: no stamps to read them by.
        self._entries[INLINE] = {
            aid: [instant_from_json(created), 0, None] for aid, created in (inline or {}).items()
        }
        if inline:
            self.pages[INLINE] = _summarize(self._entries[INLINE])

    # --- Members ---------------------------------------------------------------------------------

    def __contains__(self, artifact_id: str) -> bool:
        entry = self._entry(artifact_id)
        return entry is not None and entry[2] is None

    def add(self, artifact_id: str, created_us: Instant) -> None:
        self.stamp()
        entry = self._entry(artifact_id)
        page = None if entry is None else self.page_of(artifact_id)
        if entry is not None and page is not None:
            # Removed earlier in this batch (earlier removals are compacted away), which the
            # membership step's tombstones rule out; kept exact all the same: live again where it
            # was, with the stamp it had as of the collection record, where a replay finds it.
            assert entry[2] is not None, f"{artifact_id} is a member already"
            entry[0], entry[2] = created_us, None
            self.emptied.discard(page)
            self.pages.setdefault(page, [0, None, None])
        elif not self._paged() and self.pages.get(INLINE, [0])[0] < INLINE_SIZE:
            page = INLINE
            self._entries[INLINE][artifact_id] = [created_us, self.seq, None]
            self.pages.setdefault(INLINE, [0, None, None])
        else:
            if self.open is None or self.pages[self.open][0] >= PAGE_SIZE:
                self.open, self.next_page = self.next_page, self.next_page + 1
                self.pages[self.open] = [0, None, None]
                self._entries[self.open] = {}  # a new page: nothing stored under its number
            page = self.open
            self._page(page)[artifact_id] = [created_us, self.seq, None]
        summary = self.pages[page]
        summary[0] += 1
        if summary[1] is None or (created_us, artifact_id) > (summary[1], summary[2]):
            summary[1], summary[2] = created_us, artifact_id
        self.placed[artifact_id] = page
        self.changed.add(page)

    def remove(self, artifact_id: str) -> None:
        page = self.page_of(artifact_id)
        entry = self._entry(artifact_id)
        assert page is not None and entry is not None and entry[2] is None, artifact_id
        entry[2] = self.stamp()
        self.changed.add(page)
        summary = self.pages[page]
        summary[0] -= 1
        if summary[0] == 0:
            del self.pages[page]
            if page != INLINE:
                self.emptied.add(page)
            if page == self.open:
                self.open = None
        elif summary[2] == artifact_id:
            self.pages[page] = _summarize(self._page(page))

    def best(self, excluding: str | None = None) -> Rank | None:
        best: Rank | None = None
        for page, (_, created, aid) in self.pages.items():
            candidate: Rank | None = (created, aid)
            if aid == excluding:
                candidate = max(
                    ((e[0], a) for a, e in self._page(page).items() if e[2] is None and a != excluding),
                    default=None,
                )
            if candidate is not None and (best is None or candidate > best):
                best = candidate
        return best

    # --- storage ---------------------------------------------------------------------------------

    def stamp(self) -> int:
        """Count one change of the collection (a member added or removed, a version patched)."""
        self.seq += 1
        return self.seq

    @property
    def as_of(self) -> int:
        """The collection record's count of changes, which this batch reads records as of."""
        return self._as_of

    def page_of(self, artifact_id: str) -> int | None:
        placed = self.placed.get(artifact_id)
        if placed is not None:
            return placed
        if artifact_id in self._entries[INLINE]:
            return INLINE
        return self._stored_page(artifact_id, self._as_of)

    def summary(self) -> dict[str, Any]:
        """The collection record's part: counters and each stored page's live count and best."""
        out: dict[str, Any] = {
            "seq": self.seq,
            "next": self.next_page,
            "open": self.open,
            "pages": [[page, *s] for page, s in sorted(self.pages.items()) if page != INLINE],
        }
        if INLINE in self.pages:
            out["inline"] = {a: e[0] for a, e in self._entries[INLINE].items() if e[2] is None}
        return out

    def written(self) -> Iterator[tuple[int, bytes]]:
        """Pages this batch changed, with their removals since the collection record kept as
        stamps: durable before the record (a replay reads them as of it)."""
        for page in sorted(self.changed - {INLINE}):
            yield page, orjson.dumps(self._entries[page], default=instant_json)

    # --- reading ---------------------------------------------------------------------------------

    def _paged(self) -> bool:
        """Whether any member lives outside the record (this batch's emptied pages count)."""
        return len(self.pages) > (INLINE in self.pages) or bool(self.emptied)

    def _entry(self, artifact_id: str) -> Entry | None:
        inline = self._entries[INLINE].get(artifact_id)
        if inline is not None:
            return inline
        if not self._paged() and artifact_id not in self.placed:
            return None  # every member is inline: no need to look its version up
        page = self.page_of(artifact_id)
        if page is None or (page not in self.pages and page not in self.emptied):
            return None
        return self._page(page).get(artifact_id)

    def _page(self, page: int) -> dict[str, Entry]:
        entries = self._entries.get(page)
        if entries is None:
            raw = self._load_page(page)  # INLINE is always in _entries: never loaded
            entries = self._entries[page] = {} if raw is None else self._as_of_record(orjson.loads(raw))
        return entries

    def _as_of_record(self, stored: dict[str, Entry]) -> dict[str, Entry]:
        """The page as the collection record knows it: what a crashed run of a later batch added is
        dropped and what it removed is live again; what was removed before is compacted away.
        Usually there is nothing to undo and the page is taken as read: a hot key reads its open
        page with every touch, and copying its 64 entries took about as long as parsing them."""
        seq = self.as_of
        for created, added, removed in stored.values():
            if added > seq or removed is not None or type(created) is str:
                break
        else:
            return stored
        out = {}
        for aid, entry in stored.items():
            added, removed = entry[1], entry[2]
            if added > seq or (removed is not None and removed <= seq):
                continue
            entry[0], entry[2] = instant_from_json(entry[0]), None
            out[aid] = entry
        return out


def _summarize(entries: dict[str, Entry]) -> list[Any]:
    live = [(e[0], a) for a, e in entries.items() if e[2] is None]
    if not live:
        return [0, None, None]
    created, aid = max(live)
    return [len(live), created, aid]
