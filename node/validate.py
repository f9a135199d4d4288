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
    if isinstance(v, bool) or not isinstance(v, int):
        raise InvalidArgument(f"field {name!r} must be an integer", field=name)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise InvalidArgument(f"field {name!r} must be in [{lo}, {hi}]", field=name)
    return v


def number(data: dict[str, Any], name: str, default: Any = _MISSING, *, lo: float | None = None,
           hi: float | None = None) -> Any:
    v = _get(data, name, default)
    if v is default and default is not _MISSING:
        return v
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
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
        arr = np.frombuffer(bytes(v), dtype="<f4").astype(np.float32)
    elif isinstance(v, list):
        if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in v):
            raise InvalidArgument(f"field {name!r} must be a list of numbers", field=name)
        arr = np.asarray(v, dtype=np.float32)
    else:
        raise InvalidArgument(f"field {name!r} must be a list of numbers or float32 bytes", field=name)
    if arr.shape[0] != dim:
        raise DimensionMismatch(f"vector has dimension {arr.shape[0]}, this network uses {dim}",
                                expected=dim, got=int(arr.shape[0]))
    if not np.all(np.isfinite(arr)):
        raise InvalidArgument(f"field {name!r} contains NaN or infinity", field=name)
    norm = float(np.linalg.norm(arr))
    if norm == 0.0:
        raise InvalidArgument(f"field {name!r} is the zero vector", field=name)
    return arr / norm


def encoded_size(value: Any) -> int:
    """Size of a JSON-able value as stored (compact JSON), for the byte limits."""
    try:
        return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode())
    except UnicodeEncodeError:
        raise InvalidArgument("value contains invalid Unicode (lone surrogate)") from None
    except (TypeError, ValueError):
        raise InvalidArgument("value is not representable as JSON (bytes or non-finite numbers?)") from None
