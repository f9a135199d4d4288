"""SQL for signals (LWW registers with TTL and compare-and-set), agent states, and the change log.

Every change appends to `changes` in the same transaction, so a watcher resuming from a sequence
number sees exactly what it missed. Merges use ring.merge.lww_merge so replication can reuse them.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from crypto.errors import Conflict, NotFound, Resync
from node.database import Applied
from node.effects import Change
from ring.merge import Versioned, lww_merge


def _append_change(conn: sqlite3.Connection, topic: str, ns: str, key: str, event: dict[str, Any]) -> Change:
    cur = conn.execute(
        "INSERT INTO changes(topic, ns, key, event) VALUES(?,?,?,?)",
        (topic, ns, key, json.dumps(event, separators=(",", ":"))),
    )
    return Change(int(cur.lastrowid or 0), topic, ns, key, event)


def _current(conn: sqlite3.Connection, ns: str, key: str) -> Versioned | None:
    row = conn.execute(
        "SELECT value, version, writer, expires_ms, deleted FROM signals WHERE ns=? AND key=?", (ns, key)
    ).fetchone()
    if row is None:
        return None
    return Versioned(json.loads(row[0]), int(row[1]), str(row[2]), bool(row[4]), row[3])


def _visible(v: Versioned | None, now_ms: int) -> bool:
    return v is not None and not v.deleted and (v.expires_ms is None or v.expires_ms > now_ms)


def signal_get(conn: sqlite3.Connection, ns: str, key: str, now_ms: int) -> dict[str, Any]:
    v = _current(conn, ns, key)
    if v is None or not _visible(v, now_ms):
        raise NotFound(f"no signal {key!r} in namespace {ns!r}", key=key)
    out: dict[str, Any] = {"key": key, "value": v.value, "version": v.hlc, "writer": v.writer}
    if v.expires_ms is not None:
        out["expires_ms"] = v.expires_ms
    return out


def signal_put(
    conn: sqlite3.Connection, ns: str, key: str, incoming: Versioned, *, if_version: int | None, now_ms: int
) -> Applied[dict[str, Any]]:
    """Set or delete (incoming.deleted) a signal. `if_version` is a compare-and-set on the visible
    version (0 = must not exist); it is exact here because one writer thread applies all writes."""
    cur = _current(conn, ns, key)
    visible_version = cur.hlc if _visible(cur, now_ms) and cur is not None else 0
    if if_version is not None and if_version != visible_version:
        raise Conflict("version mismatch", key=key, expected=if_version, current=visible_version)
    if incoming.deleted and visible_version == 0:
        raise NotFound(f"no signal {key!r} in namespace {ns!r}", key=key)
    merged = lww_merge(cur, incoming)
    if merged is not incoming and merged != incoming:
        # An older write (possible once replicas exchange writes) loses: report the winner.
        return Applied({"key": key, "version": merged.hlc if merged else 0, "applied": False})
    conn.execute(
        "INSERT INTO signals(ns, key, value, version, writer, expires_ms, deleted) VALUES(?,?,?,?,?,?,?)"
        " ON CONFLICT(ns, key) DO UPDATE SET value=excluded.value, version=excluded.version,"
        " writer=excluded.writer, expires_ms=excluded.expires_ms, deleted=excluded.deleted",
        (ns, key, json.dumps(incoming.value, separators=(",", ":")), incoming.hlc, incoming.writer,
         incoming.expires_ms, int(incoming.deleted)),
    )
    event: dict[str, Any] = {
        "op": "delete" if incoming.deleted else "set", "ns": ns, "key": key, "version": incoming.hlc,
        "writer": incoming.writer,
    }
    if not incoming.deleted:
        event["value"] = incoming.value
        if incoming.expires_ms is not None:
            event["expires_ms"] = incoming.expires_ms
    change = _append_change(conn, "signal", ns, key, event)
    return Applied({"key": key, "version": incoming.hlc, "applied": True}, (change,))


def signal_sweep(conn: sqlite3.Connection, now_ms: int, hlc: int, limit: int = 10_000) -> Applied[int]:
    """Turn expired signals into tombstones and tell watchers with an `expire` event."""
    rows = conn.execute(
        "SELECT ns, key, version FROM signals WHERE expires_ms IS NOT NULL AND expires_ms <= ? AND deleted=0 LIMIT ?",
        (now_ms, limit),
    ).fetchall()
    changes = []
    for ns, key, version in rows:
        conn.execute("UPDATE signals SET deleted=1, value='null' WHERE ns=? AND key=?", (ns, key))
        changes.append(_append_change(conn, "signal", ns, key, {"op": "expire", "ns": ns, "key": key, "version": version}))
    return Applied(len(rows), tuple(changes))


def signal_list(conn: sqlite3.Connection, ns: str, prefix: str, limit: int, now_ms: int) -> dict[str, Any]:
    rows = conn.execute(
        "SELECT key, value, version, writer, expires_ms FROM signals WHERE ns=? AND key >= ? AND key < ? AND deleted=0"
        " AND (expires_ms IS NULL OR expires_ms > ?) ORDER BY key LIMIT ?",
        (ns, prefix, prefix + "\U0010ffff", now_ms, limit + 1),
    ).fetchall()
    items = [{"key": k, "value": json.loads(v), "version": ver, "writer": w, "expires_ms": e} for k, v, ver, w, e in rows[:limit]]
    return {"items": items, "truncated": len(rows) > limit}


def state_publish(conn: sqlite3.Connection, agent: str, doc: Any, hlc: int) -> Applied[dict[str, Any]]:
    conn.execute(
        "INSERT INTO states(agent, doc, version) VALUES(?,?,?) ON CONFLICT(agent) DO UPDATE SET"
        " doc=excluded.doc, version=excluded.version WHERE excluded.version > states.version",
        (agent, json.dumps(doc, separators=(",", ":")), hlc),
    )
    change = _append_change(conn, "state", agent, "", {"op": "publish", "agent": agent, "doc": doc, "version": hlc})
    return Applied({"agent": agent, "version": hlc}, (change,))


def state_get(conn: sqlite3.Connection, agent: str) -> dict[str, Any]:
    row = conn.execute("SELECT doc, version FROM states WHERE agent=?", (agent,)).fetchone()
    if row is None:
        raise NotFound(f"agent {agent!r} has published no state", agent=agent)
    return {"agent": agent, "doc": json.loads(row[0]), "version": int(row[1])}


# ---- change log ----

def changes_since(
    conn: sqlite3.Connection, topic: str, ns: str, prefix: str, exact: bool, since: int, limit: int
) -> list[Change]:
    """Changes after `since` matching (topic, ns, key or key prefix); Resync if compacted away."""
    row = conn.execute("SELECT v FROM meta WHERE k='changes_compacted_through'").fetchone()
    compacted = int(row[0]) if row else 0
    if since < compacted:
        raise Resync(f"history before seq {compacted + 1} was compacted; re-read current values",
                     compacted_through=compacted)
    if exact:
        rows = conn.execute(
            "SELECT seq, key, event FROM changes WHERE topic=? AND ns=? AND key=? AND seq>? ORDER BY seq LIMIT ?",
            (topic, ns, prefix, since, limit),
        ).fetchall()
    else:
        rows = conn.execute(
            "SELECT seq, key, event FROM changes WHERE topic=? AND ns=? AND key>=? AND key<? AND seq>? ORDER BY seq LIMIT ?",
            (topic, ns, prefix, prefix + "\U0010ffff", since, limit),
        ).fetchall()
    return [Change(int(s), topic, ns, k, json.loads(e)) for s, k, e in rows]


def last_seq(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT MAX(seq) FROM changes").fetchone()
    return int(row[0] or 0)


def compact_changes(conn: sqlite3.Connection, retain: int) -> Applied[int]:
    through = last_seq(conn) - retain
    if through <= 0:
        return Applied(0)
    cur = conn.execute("DELETE FROM changes WHERE seq <= ?", (through,))
    conn.execute(
        "INSERT INTO meta(k, v) VALUES('changes_compacted_through', ?) ON CONFLICT(k) DO UPDATE SET v=excluded.v"
        " WHERE CAST(excluded.v AS INTEGER) > CAST(meta.v AS INTEGER)",
        (str(through),),
    )
    return Applied(cur.rowcount)
