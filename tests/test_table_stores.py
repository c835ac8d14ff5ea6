"""The worker's tables: RocksDB stores sized by the settings, not by Faust's 2 GB-per-store defaults."""

from __future__ import annotations

from pathlib import Path

from topology import config
from topology.app import Worker


def test_every_table_store_gets_the_configured_memory(tmp_path: Path) -> None:
    settings = config.load(
        {
            "store": "rocksdb://",
            "data_dir": str(tmp_path),
            "rocksdb_write_buffer_mb": 4,
            "rocksdb_block_cache_mb": 8,
        },
        environ={},
    )
    worker = Worker(settings)

    for table in (worker.memberships, worker.collections, worker.lineage):
        options = table.data.rocksdb_options  # type: ignore[attr-defined]
        assert (options.write_buffer_size, options.max_write_buffer_number, options.block_cache_size) == (
            4 * 2**20,
            2,
            8 * 2**20,
        )


def test_defaults_bound_a_store_to_tens_of_megabytes() -> None:
    settings = config.load(environ={})
    assert (settings.rocksdb_write_buffer_mb, settings.rocksdb_block_cache_mb) == (8, 16)
