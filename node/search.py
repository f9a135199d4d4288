"""Semantic search: filter compilation to SQL, the vector search with filtered over-fetch, and hits.

Runs on the reader connection in a worker thread (one call per search); permissions are resolved
by the caller into the list of namespaces to search.
"""

from __future__ import annotations

import math
import re
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from crypto.errors import InvalidArgument
from node.memory_store import COLUMNS, row_to_memory
from node.validate import INT_MAX, INT_MIN, check_text
from node.vector_index import VectorIndex

_FIELD = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_OPS = {"eq": "=", "ne": "!=", "gt": ">", "lt": "<", "gte": ">=", "lte": "<="}
HLC_SHIFT = 16  # created values are HLC stamps: unix ms << 16


@dataclass(frozen=True, slots=True)
class SearchFilter:
    """A compiled filter: a SQL condition over `memories` and its arguments. `only_liveness` when
    the caller asked for nothing beyond "not deleted, not expired"."""

    sql: str
    args: tuple[Any, ...]
    now_ms: int = 0
    only_liveness: bool = False


def compile_filter(data: dict[str, Any], now_ms: int) -> SearchFilter:
    """memory_type (str or list), metadata {field: value | {op: value}}, created_after_ms/created_before_ms."""
    conds = ["deleted = 0", "(expires_ms IS NULL OR expires_ms > ?)"]
    args: list[Any] = [now_ms]
    mtype = data.get("memory_type")
    if mtype is not None:
        types = [mtype] if isinstance(mtype, str) else mtype
        if not isinstance(types, list) or not types or not all(isinstance(t, str) for t in types) or len(types) > 64:
            raise InvalidArgument("memory_type must be a string or a list of 1-64 strings", field="memory_type")
        for t in types:
            check_text(t, "memory_type", 64)
        conds.append(f"memory_type IN ({','.join('?' * len(types))})")
        args += types
    meta = data.get("metadata")
    if meta is not None:
        if not isinstance(meta, dict) or len(meta) > 32:
            raise InvalidArgument("metadata filter must be a map of at most 32 fields", field="metadata")
        for name, cond in meta.items():
            if not isinstance(name, str) or not _FIELD.match(name):
                raise InvalidArgument(f"bad metadata field name {name!r}", field="metadata")
            path = "$." + ".".join(f'"{p}"' for p in name.split("."))
            ops = cond if isinstance(cond, dict) else {"eq": cond}
            if not ops:
                raise InvalidArgument(f"empty condition for metadata field {name!r}", field="metadata")
            for op, val in ops.items():
                expr = "json_extract(metadata, ?)"
                if op == "in":
                    if not isinstance(val, list) or not val or len(val) > 256 or not all(_scalar(v) for v in val):
                        raise InvalidArgument(f"metadata {name}: `in` needs a list of 1-256 scalars", field="metadata")
                    conds.append(f"{expr} IN ({','.join('?' * len(val))})")
                    args += [path, *val]
                elif op in _OPS:
                    if not _scalar(val):
                        raise InvalidArgument(f"metadata {name}: {op} needs a scalar", field="metadata")
                    conds.append(f"{expr} {_OPS[op]} ?")
                    args += [path, val]
                else:
                    raise InvalidArgument(f"unknown metadata operator {op!r} (eq ne in gt lt gte lte)", field="metadata")
    for name, op in (("created_after_ms", ">"), ("created_before_ms", "<")):
        v = data.get(name)
        if v is not None:
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**47 - 1:
                raise InvalidArgument(f"{name} must be unix milliseconds (0 <= ms < 2**47)", field=name)
            conds.append(f"created {op} ?")
            args.append(v << HLC_SHIFT if op == "<" else ((v + 1) << HLC_SHIFT) - 1)
    return SearchFilter(" AND ".join(conds), tuple(args), now_ms, only_liveness=len(conds) == 2)


def _scalar(v: Any) -> bool:
    if isinstance(v, str):
        check_text(v, "metadata", 4096)
        return True
    if isinstance(v, float):
        return math.isfinite(v)
    if isinstance(v, int) and not isinstance(v, bool):
        return INT_MIN <= v <= INT_MAX
    return v is None or isinstance(v, bool)


def run_search(
    conn: sqlite3.Connection, index: VectorIndex | None, query: np.ndarray, *, k: int, groups: list[int],
    flt: SearchFilter, expiring: Mapping[int, int] | None = None,
) -> tuple[list[tuple[dict[str, Any], float]], bool]:
    """Top-k (memory, score) matching the filter in the given namespace groups; and `exhaustive`.

    Deleted records leave the index at commit, so with no user filter only expiry can disqualify a
    candidate: `expiring` (rowid -> expires_ms of every live record that has a TTL) answers that
    without a SQL round trip per candidate batch (~1.4 ms of a ~2.3 ms search, measured)."""
    if index is None or not groups:
        return [], True

    def not_expired(keys: np.ndarray) -> np.ndarray:
        assert expiring is not None
        now = flt.now_ms
        return np.fromiter((expiring.get(int(x), now + 1) > now for x in keys), dtype=bool, count=len(keys))

    def accept(keys: np.ndarray) -> np.ndarray:
        ok: set[int] = set()
        key_list = [int(x) for x in keys]
        for i in range(0, len(key_list), 500):  # stay well under SQLite's bound-parameter limit
            chunk = key_list[i:i + 500]
            sql = f"SELECT rowid FROM memories WHERE rowid IN ({','.join('?' * len(chunk))}) AND {flt.sql}"
            ok.update(r[0] for r in conn.execute(sql, (*chunk, *flt.args)))
        return np.fromiter((x in ok for x in key_list), dtype=bool, count=len(key_list))

    def fetch(hits: list[tuple[int, float]]) -> list[tuple[dict[str, Any], float]]:
        if not hits:
            return []
        keys = [h[0] for h in hits]
        rows = conn.execute(
            f"SELECT {COLUMNS} FROM memories WHERE rowid IN ({','.join('?' * len(keys))}) AND {flt.sql}",
            (*keys, *flt.args)).fetchall()
        by_rowid = {r[0]: r for r in rows}
        return [(row_to_memory(by_rowid[key]), float(score)) for key, score in hits if key in by_rowid]

    if flt.only_liveness and expiring is not None:
        result = index.search(query, k, groups=groups, accept=not_expired if expiring else None)
        out = fetch(result.hits)
        if len(out) == len(result.hits):
            return out, result.exhaustive
        # The index and this read snapshot disagree (a write committed between them): decide
        # every candidate against the snapshot instead, so the page is neither short nor wrong.
    result = index.search(query, k, groups=groups, accept=accept)
    return fetch(result.hits), result.exhaustive
