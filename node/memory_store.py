"""SQL for memories and links: functions that run on a sqlite3 connection inside a transaction.

Pure storage rules (idempotent ids, atomic duplicate detection, tombstones, expiry, paging);
no permissions, no trio, no embedding: callers validate input and pass vectors in.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
from dataclasses import dataclass
from typing import Any

import numpy as np

from crypto.errors import Conflict, Forbidden, InvalidArgument, NotFound
from node.database import Applied
from node.effects import IndexAdd, IndexRemove

COLUMNS = "rowid, ns, id, owner, memory_type, content, metadata, embedder, created, expires_ms, deleted"


@dataclass(frozen=True, slots=True)
class NewMemory:
    ns: str
    id: str
    owner: str
    memory_type: str
    content: str
    metadata: dict[str, Any]
    vector: np.ndarray | None
    embedder: str | None
    created: int
    expires_ms: int | None
    author_sig: bytes | None = None  # the author's record signature (crypto/provenance.py), if sent
    author_pk: bytes | None = None


def content_hash(content: str) -> bytes:
    return hashlib.sha256(content.encode("utf-8")).digest()


def namespace_code(conn: sqlite3.Connection, ns: str) -> int:
    """The small integer the vector index uses for `ns` (created on first use)."""
    row = conn.execute("SELECT code FROM namespaces WHERE ns=?", (ns,)).fetchone()
    if row is not None:
        return int(row[0])
    return int(conn.execute("INSERT INTO namespaces(ns) VALUES(?)", (ns,)).lastrowid or 0)


def row_to_memory(row: tuple[Any, ...]) -> dict[str, Any]:
    rowid, ns, mid, owner, mtype, content, metadata, embedder, created, expires_ms, _deleted = row
    out: dict[str, Any] = {
        "id": mid, "ns": ns, "owner": owner, "memory_type": mtype, "content": content,
        "metadata": json.loads(metadata), "created": created, "embedder": embedder,
    }
    if expires_ms is not None:
        out["expires_ms"] = expires_ms
    return out


def _is_live(deleted: int, expires_ms: int | None, now_ms: int) -> bool:
    return not deleted and (expires_ms is None or expires_ms > now_ms)


def bump_vector_epoch(conn: sqlite3.Connection) -> None:
    """Count every change to the vectors in this transaction's database: the fingerprint a saved
    index must match to be trusted at start-up (node/vector_spaces.py)."""
    conn.execute("INSERT INTO meta(k, v) VALUES('vector_epoch', '1') ON CONFLICT(k) DO UPDATE"
                 " SET v = CAST(CAST(v AS INTEGER) + 1 AS TEXT)")


def vector_epoch(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT v FROM meta WHERE k='vector_epoch'").fetchone()
    return int(row[0]) if row else 0


def _retire(conn: sqlite3.Connection, rowid: int, hlc: int) -> None:
    """Turn a record into a tombstone: content and vector are dropped, the id stays taken."""
    conn.execute(
        "UPDATE memories SET deleted=1, deleted_hlc=?, content='', metadata='{}', vector=NULL WHERE rowid=?",
        (hlc, rowid),
    )


def _drop_links(conn: sqlite3.Connection, ns: str, mid: str) -> None:
    """A memory that ends (deleted, expired, replaced) takes its links in both directions with it."""
    conn.execute("DELETE FROM links WHERE (ns=? AND from_id=?) OR (to_ns=? AND to_id=?)", (ns, mid, ns, mid))


def store(conn: sqlite3.Connection, m: NewMemory, now_ms: int) -> Applied[dict[str, Any]]:
    h = content_hash(m.content)
    effects: list[Any] = []
    row = conn.execute(
        "SELECT rowid, content_hash, deleted, expires_ms, embedder FROM memories WHERE ns=? AND id=?",
        (m.ns, m.id),
    ).fetchone()
    if row is not None:
        rowid, old_hash, deleted, expires_ms, old_space = row
        if deleted:
            raise Conflict(f"memory {m.id!r} was deleted; ids are never reused", id=m.id)
        if _is_live(deleted, expires_ms, now_ms):
            if bytes(old_hash) == h:
                return Applied({"id": m.id, "created": False})
            raise Conflict(f"memory {m.id!r} exists with different content; memories are immutable", id=m.id)
        # Expired but not yet swept: it is gone for readers, so the id may start a new life
        # (without the old record's links).
        conn.execute("DELETE FROM memories WHERE rowid=?", (rowid,))
        _drop_links(conn, m.ns, m.id)
        if old_space:
            effects.append(IndexRemove(old_space, rowid))
    # The predicate must match the partial unique index memories_content (deleted = 0 AND replica = 0)
    # or SQLite scans the namespace on every store (tests/test_query_plans.py).
    dup = conn.execute(
        "SELECT rowid, id, expires_ms, embedder FROM memories"
        " WHERE ns=? AND content_hash=? AND deleted=0 AND replica=0",
        (m.ns, h),
    ).fetchone()
    if dup is not None:
        dup_rowid, dup_id, dup_exp, dup_space = dup
        if dup_exp is None or dup_exp > now_ms:
            return Applied({"id": dup_id, "created": False, "duplicate": True}, tuple(effects))
        _retire(conn, dup_rowid, m.created)
        if dup_space:
            effects.append(IndexRemove(dup_space, dup_rowid))
    vec_blob = None if m.vector is None else np.ascontiguousarray(m.vector, dtype="<f4").tobytes()
    try:
        cur = conn.execute(
            "INSERT INTO memories(ns, id, owner, memory_type, content, metadata, content_hash, vector,"
            " embedder, created, expires_ms, author_pk, author_sig) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (m.ns, m.id, m.owner, m.memory_type, m.content, json.dumps(m.metadata, separators=(",", ":")),
             h, vec_blob, m.embedder if m.vector is not None else None, m.created, m.expires_ms,
             m.author_pk, m.author_sig),
        )
    except sqlite3.IntegrityError as e:  # only reachable if the checks above were bypassed
        raise Conflict(f"duplicate memory: {e}") from None
    rowid = int(cur.lastrowid or 0)
    if m.vector is not None and m.embedder:
        effects.append(IndexAdd(m.embedder, rowid, m.vector, namespace_code(conn, m.ns), m.expires_ms))
    if effects:
        bump_vector_epoch(conn)
    return Applied({"id": m.id, "created": True, "hlc": m.created}, tuple(effects))


def get(conn: sqlite3.Connection, ns: str, mid: str, now_ms: int, *, include_vector: bool = False) -> dict[str, Any]:
    row = conn.execute(f"SELECT {COLUMNS}, vector, author_pk, author_sig FROM memories WHERE ns=? AND id=?",
                       (ns, mid)).fetchone()
    if row is None or not _is_live(row[10], row[9], now_ms):
        raise NotFound(f"no memory {mid!r} in namespace {ns!r}", id=mid)
    out = row_to_memory(row[:11])
    if include_vector and row[11] is not None:
        out["vector"] = np.frombuffer(row[11], dtype="<f4").tolist()
    if row[13] is not None:
        out["provenance"] = {"pk": bytes(row[12]).hex(), "sig": bytes(row[13]).hex(), "scheme": "mnemonet-record-v1"}
    return out


def delete(conn: sqlite3.Connection, ns: str, mid: str, hlc: int, now_ms: int, *,
           author: str | None = None) -> Applied[dict[str, Any]]:
    """Tombstone a memory; with `author`, only if that agent wrote it (else Forbidden)."""
    row = conn.execute(
        "SELECT rowid, deleted, expires_ms, embedder, owner FROM memories WHERE ns=? AND id=?", (ns, mid)
    ).fetchone()
    if row is None or not _is_live(row[1], row[2], now_ms):
        raise NotFound(f"no memory {mid!r} in namespace {ns!r}", id=mid)
    rowid, _, _, space, owner = row
    if author is not None and owner != author:
        raise Forbidden("only the memory's owner or the namespace owner may delete it", id=mid)
    _retire(conn, rowid, hlc)
    _drop_links(conn, ns, mid)
    effects = (IndexRemove(space, rowid),) if space else ()
    if effects:
        bump_vector_epoch(conn)
    return Applied({"id": mid, "deleted": True}, effects)


# ---- paging ----

def encode_cursor(*parts: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(parts, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, arity: int) -> list[Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        parts = json.loads(raw)
    except (ValueError, TypeError):
        raise InvalidArgument("malformed cursor") from None
    if not isinstance(parts, list) or len(parts) != arity:
        raise InvalidArgument("malformed cursor")
    return parts


def list_page(
    conn: sqlite3.Connection, ns: str, *, limit: int, cursor: str | None, memory_type: str | None, now_ms: int
) -> dict[str, Any]:
    """Newest first, keyset-paged on (created, rowid) so pages never skip or repeat under writes."""
    sql = f"SELECT {COLUMNS} FROM memories WHERE ns=? AND deleted=0 AND (expires_ms IS NULL OR expires_ms > ?)"
    args: list[Any] = [ns, now_ms]
    if memory_type is not None:
        sql += " AND memory_type=?"
        args.append(memory_type)
    if cursor is not None:
        created, rowid = decode_cursor(cursor, 2)
        if not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**63 for x in (created, rowid)):
            raise InvalidArgument("malformed cursor")
        sql += " AND (created < ? OR (created = ? AND rowid < ?))"
        args += [created, created, rowid]
    sql += " ORDER BY created DESC, rowid DESC LIMIT ?"
    args.append(limit + 1)
    rows = conn.execute(sql, args).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    out: dict[str, Any] = {"items": [row_to_memory(r) for r in rows], "truncated": more}
    if more:
        out["next_cursor"] = encode_cursor(rows[-1][8], rows[-1][0])
    return out


def sweep_expired(conn: sqlite3.Connection, now_ms: int, hlc: int, limit: int = 10_000) -> Applied[int]:
    rows = conn.execute(
        "SELECT rowid, ns, id, embedder FROM memories WHERE expires_ms IS NOT NULL AND expires_ms <= ? AND deleted=0 LIMIT ?",
        (now_ms, limit),
    ).fetchall()
    effects = []
    for rowid, ns, mid, space in rows:
        _retire(conn, rowid, hlc)
        _drop_links(conn, ns, mid)
        if space:
            effects.append(IndexRemove(space, rowid))
    if effects:
        bump_vector_epoch(conn)
    return Applied(len(rows), tuple(effects))
