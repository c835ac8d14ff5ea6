"""Event time: parsed once to integer microseconds, rendered the one way Prefect writes it."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext
from functools import lru_cache
from typing import Any

from orjson import Fragment

from streams.errors import Invalid

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
# A UUIDv7 carries 48 bits of milliseconds; datetime stops at year 9999, well inside that. The
# bound is on the UTC instant: `9999-12-31T23:59:59-01:00` parses, but is past what renders.
_MAX_US = (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC) - _EPOCH) // _US


# The forms Prefect's Event model (pendulum) reads, which `fromisoformat` alone is laxer than: it
# also takes a dot without digits, blanks around the text or before the offset, offsets with
# seconds (silently shifting the instant), an hour or minute with a fraction, and mixed basic and
# extended forms. Extended (`2026-11-24T10:00:00.5`, also a week date `2026-W48-2`) or basic
# (`20261124T100000.5`); separator T, t or a space; a fraction (`.` or `,`) only on the seconds;
# then Z, z, or an offset in hours, ±HH, ±HH:MM or ±HHMM. `fromisoformat` then checks the ranges.
_ISO_8601 = re.compile(
    r"(?:[0-9]{4}-(?:[0-9]{2}-[0-9]{2}|W[0-9]{2}-[0-9])[Tt ]"  # extended
    r"[0-9]{2}(?::[0-9]{2}(?::[0-9]{2}(?:[.,]([0-9]+))?)?)?"
    r"|[0-9]{8}[Tt ][0-9]{2}(?:[0-9]{2}(?:[0-9]{2}(?:[.,]([0-9]+))?)?)?)"  # basic
    r"(?:[Zz]|[+-][0-9]{2}(?::?[0-9]{2})?)?\Z"
)
# Prefect's own rendering, which nearly every message has: matched first, in about half the time.
_CANONICAL = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.([0-9]+))?Z\Z")


def parse(value: object, where: str, *, rendered: bool = True) -> int:
    """ISO 8601 → microseconds since the epoch (UTC). Naive times are taken as UTC, as Prefect does.

    A time that is `rendered` (an event's `occurred`, which also feeds its UUIDv7 id) must lie in
    1970..9999 UTC; one that only ranks (an artifact's `created`) may be any instant datetime reads.
    """
    micros, _ = _read(value, where)
    if rendered and not 0 <= micros <= _MAX_US:
        assert isinstance(value, str)  # _read refused anything else
        raise Invalid("invalid_timestamp", f"{where} is outside 1970..9999 (UTC): {value[:64]!r}")
    return micros


def _read(value: object, where: str) -> tuple[int, str]:
    """Microseconds since the epoch and the fraction's digits below them (`""`: none)."""
    if not isinstance(value, str):
        raise Invalid("wrong_type", f"{where} must be an ISO 8601 string, got {type_name(value)}")
    shape = _CANONICAL.match(value) or _ISO_8601.match(value)
    if shape is None:
        raise Invalid("invalid_timestamp", f"{where} is not an ISO 8601 date-time: {value[:64]!r}")
    try:  # Python 3.11's reads `Z`, not `z`
        parsed = datetime.fromisoformat(value[:-1] + "Z" if value[-1] == "z" else value)
    except ValueError:
        raise Invalid("invalid_timestamp", f"{where} is not an ISO 8601 date-time: {value[:64]!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    fraction = shape[shape.lastindex] if shape.lastindex else ""  # the one group that matched
    return (parsed - _EPOCH) // _US, fraction[6:]


#: An instant that only ranks (an artifact's `created`), in microseconds since the epoch: an int,
#: or a Decimal when the input had digits below the microsecond. Python's datetime drops those,
#: and two creates a few hundred nanoseconds apart must still rank as their times say (SPEC §4).
Instant = int | Decimal


def parse_instant(value: object, where: str) -> Instant:
    """ISO 8601 → microseconds since the epoch, exactly: any instant datetime reads, every digit."""
    micros, below = _read(value, where)
    rest = below.rstrip("0")
    if not rest:
        return micros
    with localcontext() as exact:  # datetime truncated toward the past: the rest is added
        exact.prec = len(str(abs(micros))) + len(rest) + 1
        return Decimal(micros) + Decimal("0." + rest)


def instant_json(value: Any) -> str:
    """orjson's `default` for state records: a Decimal instant as its exact digits, a JSON string."""
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def instant_from_json(value: Any) -> Any:
    """An instant as `instant_json` stored it (anything else passes as it is)."""
    return Decimal(value) if type(value) is str else value


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
    if isinstance(value, int | float | Fragment):  # a Fragment: an integer beyond 64 bits
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
