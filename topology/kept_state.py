"""A kept RocksDB directory checked against the changelogs it is to be recovered from.

A store remembers the last changelog offset it applied, and a restart reads only the changelog
after it. Against a changelog that ends before that offset (a new broker, topics deleted and
created again) the store holds state the changelog never had: Faust stops its recovery with a
ConsistencyError traceback once the worker has joined its group, or, when the store's offset is 0,
uses the stale state without a word. Checked before the worker starts, with one line that says
what to do.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.stores.rocksdb import Store
from rocksdict import AccessType, Options, Rdict

from topology.config import ConfigError

OFFSET_KEY: bytes = Store.offset_key


def earlier_layout(data_dir: str) -> Path | None:
    """Faust's default table directory, where versions before one directory per app_id kept
    their stores, when it holds any."""
    old = Path(data_dir, "v1", "tables")
    return old if old.is_dir() and any(old.glob("*.db")) else None


def applied_offsets(
    table_dir: Path, changelogs: Mapping[str, str], partitions: int
) -> dict[TopicPartition, tuple[Path, int]]:
    """Per changelog partition with a kept store: that store and the last offset it applied.
    `changelogs`: table name → its changelog topic."""
    applied = {}
    for table, topic in changelogs.items():
        for partition in range(partitions):
            path = table_dir / f"{table}-{partition}.db"  # faust.stores.rocksdb.Store.partition_path
            if not path.is_dir():
                continue
            try:
                db = Rdict(str(path), Options(raw_mode=True), access_type=AccessType.read_only())
            except Exception:  # rocksdict raises plain Exception
                continue  # not a store yet (a kill during its first open): Faust creates it
            try:
                raw = db.get(OFFSET_KEY)
            finally:
                db.close()
            if raw is not None:
                applied[TopicPartition(topic, partition)] = (path, int(raw))
    return applied


def ahead_of_changelog(
    applied: Mapping[TopicPartition, tuple[Path, int]], ends: Mapping[TopicPartition, int]
) -> Iterable[str]:
    """One line per store that has applied an offset its changelog does not reach."""
    for tp, (path, offset) in sorted(applied.items()):
        end = ends.get(tp)
        if end is not None and offset >= end:
            yield (
                f"the kept table store {path} has applied {tp.topic}[{tp.partition}] up to offset "
                f"{offset}, but that changelog ends at offset {end}"
            )


async def check(
    bootstrap_servers: str, table_dir: Path, changelogs: Mapping[str, str], partitions: int
) -> None:
    """Raise ConfigError with one line when a kept store is ahead of its changelog."""
    applied = applied_offsets(table_dir, changelogs, partitions)
    if not applied:
        return
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(list(applied))
    finally:
        await consumer.stop()
    problems = list(ahead_of_changelog(applied, ends))
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConfigError(
            f"data_dir: {problems[0]}{more}: the directory was written against another broker or "
            f"topics since deleted; remove {table_dir} (the tables are rebuilt from their "
            "changelogs) or use another data_dir"
        )
