"""`prefect-events` with the fixes bench/benchmark.py found missing in topology/, applied at start.

Bench-only stand-in, used while topology/ lacks them, so the benchmark can still measure what the
worker does once they land (the JSON result says which were applied; each is a no-op once the
worker has it):

* tables (fixed in topology/app.py since): `Worker._table` built
  `app.Table(..., schema=Schema(bytes, bytes, raw, raw))`, but Faust derives a table's
  store/changelog serializers from `key_type`/`value_type` only (`json` when unset), so with
  `rocksdb://` (and after any changelog recovery) `table.get` returns a decoded dict and
  `Stamped.load` crashes. Fix: pass `key_type=bytes, value_type=bytes`.
* fetch wait (wired in topology/app.py since): PREFECT_EVENTS_FETCH_MAX_WAIT_MS was not handed
  to Faust's consumer (`topology.transport.configure_fetch_wait` was not called), so every hop
  waits up to Faust's hard-coded 1,500 ms on Tansu.

Set BENCH_PATCHES to a comma list (`tables,fetch-wait`) to choose; default both.
"""

from __future__ import annotations

import os
import sys

from topology import runner, transport
from topology.cli import main

PATCHES = set(filter(None, os.environ.get("BENCH_PATCHES", "tables,fetch-wait").split(",")))
_build = runner.build


def build(settings, metrics=None):  # type: ignore[no-untyped-def]
    worker = _build(settings, metrics)
    if "tables" in PATCHES:
        for table in (worker.memberships, worker.collections, worker.lineage):
            if table.value_serializer != "raw" or table.key_serializer != "raw":
                table.key_type = table.value_type = bytes
                table.key_serializer = table.value_serializer = "raw"
    if "fetch-wait" in PATCHES and not isinstance(
        worker.app._transport, transport.FetchWaitTransport
    ):
        transport.configure_fetch_wait(worker.app, settings.fetch_max_wait_ms)
    return worker


runner.build = build

if __name__ == "__main__":
    sys.exit(main())
