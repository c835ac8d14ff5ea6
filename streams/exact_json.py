"""JSON integers beyond 64 bits, kept exact: `data` and `metadata` are carried into events as
the producer wrote them, and Prefect (Python's json, pydantic) keeps such integers exact.

orjson reads an integer outside [-2**63, 2**64) as the nearest float, so
`123456789012345678901234567890` would leave as `1.2345678901234568e+29`. Where a value carried
into events came out of orjson as a float or a non-empty container (`may_be_rounded`), and the
document holds a run of 19 or more digits (the fewest such an integer has), the document is read
again with Python's json (`reread`), each wide integer becoming an `orjson.Fragment` of its
digits, which orjson writes back unchanged. A document Python's json cannot read within its own
limits (nesting near 1,000 levels) keeps orjson's reading.

An integer of 309 digits or more is beyond any double, and orjson refuses the whole document
("number is infinity"). `read` then reads it with Python's json alone, holding it to what orjson
would have let through otherwise: strict UTF-8, no NaN or Infinity, no float beyond a double
(`1e400`), no lone surrogate, nesting within Python's recursion limit. Only documents orjson
refuses pay for that.

Most values are strings (Prefect's markdown, table and link artifacts) and cost one type check;
the digit scan is C-speed, about 1.5 µs for the benchmark's mean message of 1.7 KB.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

# Every byte to "." but digits to "1": a run of 19 digits becomes a run of 19 "1"s.
_DIGITS = bytes(0x31 if 0x30 <= b <= 0x39 else 0x2E for b in range(256))
_WIDE_RUN = b"1" * len(str(2**63))  # 19: -2**63 - 1 and 2**64 have at least as many digits
_LOW, _HIGH = -(2**63), 2**64  # what orjson reads as an int
_BEYOND_DOUBLE_RUN = b"1" * len(str(2**1024))  # 309: the fewest digits orjson calls infinity
# Python's json turns these escapes into surrogates, paired or not; orjson refuses a lone one.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def read(raw: bytes) -> Any:
    """orjson.loads, raising what it raises, except that a document it refuses only for an integer
    beyond any double is read with Python's json, such integers exact (see the module docstring)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        value = _beyond_double(raw)
        if value is None:
            raise
        return value


def _beyond_double(raw: bytes) -> Any | None:
    if raw.translate(_DIGITS).find(_BEYOND_DOUBLE_RUN) == -1:
        return None
    try:  # decoded first: json.loads(bytes) would also take UTF-16 and UTF-32
        value = json.loads(raw.decode(), parse_int=_int, parse_float=_finite, parse_constant=_refuse)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    if _SURROGATE_ESCAPE.search(raw) and _holds_lone_surrogate(value):
        return None
    return value


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number is infinity: {text[:20]}")
    return number


def _refuse(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _holds_lone_surrogate(value: Any) -> bool:
    """Whether a string (key or value) in `value` holds a surrogate, which UTF-8 cannot encode:
    decoded UTF-8 has none, so it came from an escape without a partner (Python's json pairs
    the others)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode()
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


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
    """`read` (raising what orjson raises), with integers beyond 64 bits exact."""
    value = read(raw)
    exact = reread(raw) if may_be_rounded(value) else None
    return value if exact is None else exact


def _int(digits: str) -> int | orjson.Fragment:
    number = int(digits)
    return number if _LOW <= number < _HIGH else orjson.Fragment(digits)
