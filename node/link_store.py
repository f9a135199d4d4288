"""SQL for context links between memories: add (upsert) and breadth-first `related` traversal.

Storage rules only; callers check permissions on both namespaces.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from crypto.errors import NotFound
from node.database import Applied
from node.memory_store import COLUMNS, row_to_memory


def _require_live(conn: sqlite3.Connection, ns: str, mid: str, now_ms: int) -> None:
    row = conn.execute(
        "SELECT 1 FROM memories WHERE ns=? AND id=? AND deleted=0 AND (expires_ms IS NULL OR expires_ms > ?)",
        (ns, mid, now_ms),
    ).fetchone()
    if row is None:
        raise NotFound(f"no memory {mid!r} in namespace {ns!r}", id=mid, ns=ns)


def link(
    conn: sqlite3.Connection, *, ns: str, from_id: str, to_ns: str, to_id: str, relation: str,
    weight: float, hlc: int, owner: str, now_ms: int,
) -> Applied[dict[str, Any]]:
    _require_live(conn, ns, from_id, now_ms)
    _require_live(conn, to_ns, to_id, now_ms)
    conn.execute(
        "INSERT INTO links(ns, from_id, to_ns, to_id, relation, weight, created, owner) VALUES(?,?,?,?,?,?,?,?)"
        " ON CONFLICT(ns, from_id, to_ns, to_id, relation) DO UPDATE SET weight=excluded.weight,"
        " created=excluded.created, owner=excluded.owner",
        (ns, from_id, to_ns, to_id, relation, weight, hlc, owner),
    )
    return Applied({"from": from_id, "to": to_id, "to_ns": to_ns, "relation": relation, "weight": weight})


def unlink(conn: sqlite3.Connection, *, ns: str, from_id: str, to_ns: str, to_id: str, relation: str) -> Applied[dict[str, Any]]:
    cur = conn.execute(
        "DELETE FROM links WHERE ns=? AND from_id=? AND to_ns=? AND to_id=? AND relation=?",
        (ns, from_id, to_ns, to_id, relation),
    )
    if cur.rowcount == 0:
        raise NotFound("no such link")
    return Applied({"removed": True})


def _neighbours(
    conn: sqlite3.Connection, ns: str, mid: str, relation: str | None, direction: str
) -> list[tuple[str, str, str, float, str]]:
    """(ns, id, relation, weight, direction) of the memories linked to (ns, mid)."""
    out: list[tuple[str, str, str, float, str]] = []
    rel_sql, rel_args = (" AND relation=?", [relation]) if relation is not None else ("", [])
    if direction in ("out", "both"):
        for to_ns, to_id, rel, w in conn.execute(
            "SELECT to_ns, to_id, relation, weight FROM links WHERE ns=? AND from_id=?" + rel_sql, [ns, mid, *rel_args]
        ):
            out.append((to_ns, to_id, rel, w, "out"))
    if direction in ("in", "both"):
        for f_ns, f_id, rel, w in conn.execute(
            "SELECT ns, from_id, relation, weight FROM links WHERE to_ns=? AND to_id=?" + rel_sql, [ns, mid, *rel_args]
        ):
            out.append((f_ns, f_id, rel, w, "in"))
    return out


def related(
    conn: sqlite3.Connection, ns: str, mid: str, *, depth: int, relation: str | None, direction: str,
    limit: int, now_ms: int, readable: Any = None,
) -> dict[str, Any]:
    """Breadth-first from (ns, mid) up to `depth` hops; each memory is reported once, at its
    shortest distance, with the link that reached it. `readable(ns) -> bool` hides namespaces the
    caller may not read (their memories are neither returned nor traversed)."""
    _require_live(conn, ns, mid, now_ms)
    seen = {(ns, mid)}
    frontier = [(ns, mid)]
    items: list[dict[str, Any]] = []
    truncated = False
    for d in range(1, depth + 1):
        nxt: list[tuple[str, str]] = []
        for f_ns, f_id in frontier:
            for n_ns, n_id, rel, w, dirn in _neighbours(conn, f_ns, f_id, relation, direction):
                if (n_ns, n_id) in seen or (readable is not None and not readable(n_ns)):
                    continue
                row = conn.execute(
                    f"SELECT {COLUMNS} FROM memories WHERE ns=? AND id=? AND deleted=0"
                    " AND (expires_ms IS NULL OR expires_ms > ?)", (n_ns, n_id, now_ms),
                ).fetchone()
                if row is None:
                    continue
                seen.add((n_ns, n_id))
                if len(items) >= limit:
                    truncated = True
                    break
                mem = row_to_memory(row)
                mem.update({"depth": d, "relation": rel, "weight": w, "direction": dirn, "via": f_id})
                items.append(mem)
                nxt.append((n_ns, n_id))
        frontier = nxt
        if not frontier or truncated:
            break
    return {"items": items, "truncated": truncated}
