"""JSON integers beyond 64 bits, kept exact: `data` and `metadata` are carried into events as
the producer wrote them, and Prefect (Python's json, pydantic) keeps such integers exact.

orjson reads an integer outside [-2**63, 2**64) as the nearest float, so
`123456789012345678901234567890` would leave as `1.2345678901234568e+29`. Where a value carried
into events came out of orjson as a float or a non-empty container (`may_be_rounded`), and the
document holds a run of 19 or more digits (the fewest such an integer has), the document is read
again with Python's json (`reread`), each wide integer becoming an `orjson.Fragment` of its
digits, which orjson writes back unchanged. The second reading only ever follows orjson's, so
anything orjson refuses (NaN, 1e400, a lone surrogate) is still refused, and a document Python's
json cannot read within its own limits (nesting near 1,000 levels) keeps orjson's reading.

Most values are strings (Prefect's markdown, table and link artifacts) and cost one type check;
the digit scan is C-speed, about 1.5 µs for the benchmark's mean message of 1.7 KB.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

# Every byte to "." but digits to "1": a run of 19 digits becomes a run of 19 "1"s.
_DIGITS = bytes(0x31 if 0x30 <= b <= 0x39 else 0x2E for b in range(256))
_WIDE_RUN = b"1" * len(str(2**63))  # 19: -2**63 - 1 and 2**64 have at least as many digits
_LOW, _HIGH = -(2**63), 2**64  # what orjson reads as an int


def may_be_rounded(value: Any) -> bool:
    """Whether orjson's reading of `value` can hold a rounded wide integer."""
    return type(value) is float or (type(value) in (dict, list) and bool(value))


def reread(raw: bytes) -> Any | None:
    """`raw`, which orjson has read, read with every integer exact; None when it holds none
    (or Python's json cannot read it)."""
    if raw.translate(_DIGITS).find(_WIDE_RUN) == -1:
        return None
    try:
        return json.loads(raw, parse_int=_int)
    except (ValueError, RecursionError):
        return None


def at(raw: bytes, value: Any, *path: str | int) -> Any:
    """`value`, orjson's reading of `raw` at `path`, with its integers beyond 64 bits exact."""
    if not may_be_rounded(value):
        return value
    exact = reread(raw)
    if exact is None:
        return value
    for part in path:
        exact = exact[part]
    return exact


def loads(raw: bytes) -> Any:
    """orjson.loads (raising what it raises), with integers beyond 64 bits exact."""
    value = orjson.loads(raw)
    exact = reread(raw) if may_be_rounded(value) else None
    return value if exact is None else exact


def _int(digits: str) -> int | orjson.Fragment:
    number = int(digits)
    return number if _LOW <= number < _HIGH else orjson.Fragment(digits)
