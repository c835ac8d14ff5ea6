"""Crash-only recovery: when the worker cannot go on without risking its guarantees, it exits and
the restarted worker replays from the last commit, as Kafka Streams does."""

from __future__ import annotations

import logging
import os
from typing import NoReturn

log = logging.getLogger("prefect_events")

EXIT_FOR_REPLAY = 70  # EX_SOFTWARE: nothing is lost, the restart replays the uncommitted tail


def exit_for_replay(message: str, *args: object, traceback: bool = False) -> NoReturn:
    """Log why, then exit at once: no commit, no further write (os._exit skips Faust's stop)."""
    log.critical(message + ", exiting so that it is replayed", *args, exc_info=traceback)
    logging.shutdown()
    os._exit(EXIT_FOR_REPLAY)
