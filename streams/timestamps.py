"""Event time: parsed once to integer microseconds, rendered the one way Prefect writes it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache

from streams.errors import Invalid

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
# A UUIDv7 carries 48 bits of milliseconds; datetime stops at year 9999, well inside that. The
# bound is on the UTC instant: `9999-12-31T23:59:59-01:00` parses, but is past what renders.
_MAX_US = (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC) - _EPOCH) // _US


def parse(value: object, where: str, *, rendered: bool = True) -> int:
    """ISO 8601 → microseconds since the epoch (UTC). Naive times are taken as UTC, as Prefect does.

    A time that is `rendered` (an event's `occurred`, which also feeds its UUIDv7 id) must lie in
    1970..9999 UTC; one that only ranks (an artifact's `created`) may be any instant datetime reads.
    """
    if not isinstance(value, str):
        raise Invalid("wrong_type", f"{where} must be an ISO 8601 string, got {type_name(value)}")
    text = value.strip()
    if "T" not in text.upper() and " " not in text:  # a bare date is not an instant
        raise Invalid("invalid_timestamp", f"{where} is not an ISO 8601 date-time: {value[:64]!r}")
    if text[-1] in "zZ":
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise Invalid("invalid_timestamp", f"{where} is not an ISO 8601 date-time: {value[:64]!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    micros = (parsed - _EPOCH) // _US
    if rendered and not 0 <= micros <= _MAX_US:
        raise Invalid("invalid_timestamp", f"{where} is outside 1970..9999 (UTC): {value[:64]!r}")
    return micros


def render(micros: int) -> str:
    """Microseconds → `YYYY-MM-DDTHH:MM:SS.ffffffZ`."""
    seconds, fraction = divmod(micros, 1_000_000)
    return f"{_render_second(seconds)}.{fraction:06d}Z"


@lru_cache(maxsize=1 << 12)
def _render_second(seconds: int) -> str:
    """Every event renders its time, and a busy second has thousands: the date part is made once."""
    return (datetime(1970, 1, 1) + timedelta(seconds=seconds)).isoformat()


def type_name(value: object) -> str:
    """JSON's name for a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
