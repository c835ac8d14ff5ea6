"""A table's local store, read and written by partition.

The steps know the partition of every key they touch: the record's. Faust's table API works it
out again from the stream's current event, and answers `get` with a containment check and then a
read, two RocksDB look-ups and two key encodings per key (with writes, 15% of a saturated
worker's samples). This reads a partition's database directly and writes each partition's changes
in one RocksDB write batch, as Faust's own changelog recovery does (`Store.apply_changelog_batch`).
Changelog records and persisted offsets stay with the caller (topology.app).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import rocksdict

Change = tuple[int, bytes | None]  # (partition, value); None deletes the key


class LocalStore:
    """The local state of one table: `rocksdb://` (one database per partition) or `memory://`."""

    def __init__(self, table: Any) -> None:
        self._store = table.data  # Faust's Store for the table, created on first access
        self._by_partition = hasattr(self._store, "_db_for_partition")

    def get(self, key: bytes, partition: int) -> bytes | None:
        if self._by_partition:
            value: bytes | None = self._db(partition).get(key)
            return value
        return self._store.data.get(key)  # type: ignore[no-any-return]  # memory://: one dict

    def write(self, changes: Mapping[bytes, Change]) -> None:
        if not self._by_partition:
            data = self._store.data
            for key, (_, value) in changes.items():
                if value is None:
                    data.pop(key, None)
                else:
                    data[key] = value
            return
        batches: dict[int, rocksdict.WriteBatch] = {}
        for key, (partition, value) in changes.items():
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = rocksdict.WriteBatch(raw_mode=True)
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        for partition, batch in batches.items():
            self._db(partition).write(batch)

    def _db(self, partition: int) -> Any:
        # Faust's own accessor: opens the partition's database on first use after an assignment.
        return self._store._db_for_partition(partition)
