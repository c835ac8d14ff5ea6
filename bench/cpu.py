"""CPU used by the benchmark's processes: whether a loop was busy itself or waited on the broker."""

from __future__ import annotations

import os
import time
from pathlib import Path


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of a process so far (/proc/PID/stat), None if unknown."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Meter:
    """Cores used between `start()` and `cores()`, by this process ("loop") and by `others`."""

    def __init__(self, others: dict[str, int | None]) -> None:
        self.others = others
        self._start: dict[str, float | None] = {}
        self._wall = 0.0

    def _now(self) -> dict[str, float | None]:
        return {"loop": time.process_time(), **{n: cpu_seconds(p) for n, p in self.others.items()}}

    def start(self) -> None:
        self._wall, self._start = time.perf_counter(), self._now()

    def cores(self) -> dict[str, float | None]:
        wall = time.perf_counter() - self._wall
        now = self._now()
        return {n: None if (a := self._start.get(n)) is None or (b := now[n]) is None
                else round((b - a) / wall, 2) for n in now}
