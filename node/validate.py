"""Typed field extraction from request `data` maps: every wrong type or range is `invalid_argument`.

Pure functions; no knowledge of actions beyond the field names callers pass.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from crypto.errors import DimensionMismatch, InvalidArgument, TooLarge

_MISSING = object()
NAME_CHARS_MAX = 256
NS_CHARS_MAX = 256


def check_text(v: str, name: str, chars_max: int) -> None:
    """Length limit, and no lone surrogates (JSON can carry them; SQLite and msgpack cannot)."""
    if len(v) > chars_max:
        raise TooLarge(f"field {name!r} is longer than {chars_max} characters", field=name, limit=chars_max)
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(f"field {name!r} is not valid Unicode (lone surrogate)", field=name) from None


def _finite(x: int | float) -> bool:
    try:
        return math.isfinite(x) and abs(x) < 3.4e38  # float32 range: vectors are stored as float32
    except OverflowError:  # an int too large for a float
        return False


def _get(data: dict[str, Any], name: str, default: Any) -> Any:
    v = data.get(name, _MISSING)
    if v is _MISSING or v is None:
        if default is _MISSING:
            raise InvalidArgument(f"field {name!r} is required", field=name)
        return default
    return v


def string(data: dict[str, Any], name: str, default: Any = _MISSING, *, chars_max: int = NAME_CHARS_MAX,
           allow_empty: bool = False) -> Any:
    v = _get(data, name, default)
    if v is default and default is not _MISSING:
        return v
    if not isinstance(v, str):
        raise InvalidArgument(f"field {name!r} must be a string, not {type(v).__name__}", field=name)
    if not v and not allow_empty:
        raise InvalidArgument(f"field {name!r} must not be empty", field=name)
    check_text(v, name, chars_max)
    return v


def integer(data: dict[str, Any], name: str, default: Any = _MISSING, *, lo: int | None = None,
            hi: int | None = None) -> Any:
    v = _get(data, name, default)
    if v is default and default is not _MISSING:
        return v
    if isinstance(v, bool) or not isinstance(v, int) or not INT_MIN <= v <= INT_MAX:
        raise InvalidArgument(f"field {name!r} must be a 64-bit integer", field=name)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise InvalidArgument(f"field {name!r} must be in [{lo}, {hi}]", field=name)
    return v


def number(data: dict[str, Any], name: str, default: Any = _MISSING, *, lo: float | None = None,
           hi: float | None = None) -> Any:
    v = _get(data, name, default)
    if v is default and default is not _MISSING:
        return v
    if isinstance(v, bool) or not isinstance(v, int | float) or not _finite(v):
        raise InvalidArgument(f"field {name!r} must be a finite number", field=name)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise InvalidArgument(f"field {name!r} must be in [{lo}, {hi}]", field=name)
    return float(v)


def boolean(data: dict[str, Any], name: str, default: bool) -> bool:
    v = _get(data, name, default)
    if not isinstance(v, bool):
        raise InvalidArgument(f"field {name!r} must be true or false", field=name)
    return v


def mapping(data: dict[str, Any], name: str, default: Any = _MISSING) -> Any:
    v = _get(data, name, default)
    if v is default and default is not _MISSING:
        return v
    if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
        raise InvalidArgument(f"field {name!r} must be a map with string keys", field=name)
    return v


def string_list(data: dict[str, Any], name: str, default: Any = _MISSING, *, items_max: int = 256) -> Any:
    v = _get(data, name, default)
    if v is default and default is not _MISSING:
        return v
    if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
        raise InvalidArgument(f"field {name!r} must be a list of non-empty strings", field=name)
    if len(v) > items_max:
        raise TooLarge(f"field {name!r} has more than {items_max} items", field=name, limit=items_max)
    for x in v:
        check_text(x, name, NAME_CHARS_MAX)
    return v


def vector(data: dict[str, Any], name: str, dim: int) -> np.ndarray | None:
    """A vector as a list of numbers or as little-endian float32 bytes; checked and L2-normalised."""
    v = data.get(name)
    if v is None:
        return None
    if isinstance(v, bytes | bytearray):
        if len(v) % 4:
            raise InvalidArgument(f"field {name!r}: float32 bytes must be a multiple of 4 long", field=name)
        arr = np.frombuffer(bytes(v), dtype="<f4").astype(np.float64)
    elif isinstance(v, list):
        if not all(isinstance(x, int | float) and not isinstance(x, bool) and _finite(x) for x in v):
            raise InvalidArgument(f"field {name!r} must be a list of finite numbers", field=name)
        arr = np.asarray(v, dtype=np.float64)
    else:
        raise InvalidArgument(f"field {name!r} must be a list of numbers or float32 bytes", field=name)
    if arr.shape[0] != dim:
        raise DimensionMismatch(f"vector has dimension {arr.shape[0]}, this network uses {dim}",
                                expected=dim, got=int(arr.shape[0]))
    if not np.all(np.isfinite(arr)):
        raise InvalidArgument(f"field {name!r} contains NaN or infinity", field=name)
    norm = float(np.linalg.norm(arr))  # in float64: float32 squares overflow for large components
    if norm == 0.0:
        raise InvalidArgument(f"field {name!r} is the zero vector", field=name)
    return (arr / norm).astype(np.float32)


INT_MIN, INT_MAX = -(2**63), 2**63 - 1  # what SQLite, msgpack and every client language can hold
DEPTH_MAX = 64


def stored_value(value: Any, name: str, bytes_max: int) -> int:
    """Check a JSON-like value a client wants stored (metadata, signal value, state document):
    nesting <= DEPTH_MAX, ints within 64 bits, finite floats, string keys, valid Unicode, and its
    compact JSON size <= bytes_max. Returns that size. Anything stored must be re-encodable for
    every reader, in either frame form, or one writer could break every reader."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        x, depth = stack.pop()
        if depth > DEPTH_MAX:
            raise InvalidArgument(f"{name} is nested deeper than {DEPTH_MAX} levels", field=name)
        if isinstance(x, dict):
            for k, item in x.items():
                if not isinstance(k, str):
                    raise InvalidArgument(f"{name}: map keys must be strings", field=name)
                check_text(k, name, bytes_max)
                stack.append((item, depth + 1))
        elif isinstance(x, list):
            stack.extend((item, depth + 1) for item in x)
        elif isinstance(x, str):
            check_text(x, name, bytes_max)
        elif isinstance(x, bool) or x is None:
            pass
        elif isinstance(x, int):
            if not INT_MIN <= x <= INT_MAX:
                raise InvalidArgument(f"{name}: integers must fit in 64 signed bits", field=name)
        elif isinstance(x, float):
            if not math.isfinite(x):
                raise InvalidArgument(f"{name}: numbers must be finite", field=name)
        else:
            raise InvalidArgument(f"{name}: values must be JSON (no {type(x).__name__})", field=name)
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    if size > bytes_max:
        raise TooLarge(f"{name} is larger than {bytes_max} bytes", field=name, limit=bytes_max)
    return size
