"""Logging set-up: plain text or one JSON object per line, level from settings."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

from topology.config import Settings


class JsonFormatter(logging.Formatter):
    """One JSON object per line; exceptions folded into one field, never spread over lines."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


class QuietRepeats(logging.Filter):
    """aiokafka logs each failed attempt to reach a broker: about 75 ERROR lines a second while
    Kafka is down, which buried everything else and filled disks. Of its records with the same
    logger, level and message template, the first passes, the others are counted for `window_s`;
    the next to pass after that says how many were held back. Other loggers pass untouched."""

    def __init__(
        self, prefix: str = "aiokafka", window_s: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.prefix, self.window_s, self.clock = prefix, window_s, clock
        self._seen: dict[tuple[str, int, str], list[float]] = {}  # -> [passed at, held back]

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefix):
            return True
        now = self.clock()
        key = (record.name, record.levelno, str(record.msg))
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.window_s:
            seen[1] += 1
            return False
        if seen is not None and seen[1]:
            record.msg = f"{record.msg} [{seen[1]:.0f} more like this in the {now - seen[0]:.0f}s before]"
        self._seen[key] = [now, 0]
        return True


def logging_config(settings: Settings) -> dict[str, Any]:
    """A dictConfig for Faust's worker (it installs logging itself and takes this as-is)."""
    formatter: dict[str, Any]
    if settings.log_format == "json":
        formatter = {"()": f"{__name__}.JsonFormatter"}
    else:
        formatter = {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    JsonFormatter.converter = __import__("time").gmtime
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stderr",
                "filters": ["quiet_repeats"],
            }
        },
        "filters": {"quiet_repeats": {"()": f"{__name__}.QuietRepeats"}},
        "root": {"handlers": ["stderr"], "level": settings.log_level.upper()},
    }


def configure(settings: Settings) -> None:
    import logging.config

    logging.config.dictConfig(logging_config(settings))
