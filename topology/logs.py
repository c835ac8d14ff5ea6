"""Logging set-up: plain text or one JSON object per line, level from settings."""

from __future__ import annotations

import logging
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
            }
        },
        "root": {"handlers": ["stderr"], "level": settings.log_level.upper()},
    }


def configure(settings: Settings) -> None:
    import logging.config

    logging.config.dictConfig(logging_config(settings))
