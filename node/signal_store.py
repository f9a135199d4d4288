"""SQL for signals (registers with TTL and compare-and-set, PN-counters, add-wins sets), agent
states, and the change log; no permissions or request parsing here.

Every change appends to `changes` in the same transaction, so a watcher resuming from a sequence
number sees exactly what it missed. Merges use ring.merge / ring.crdt so replication can reuse them.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from crypto.errors import Conflict, InvalidArgument, NotFound, Resync, TooLarge
from node.database import Applied
from node.effects import Change
from ring.crdt import ORSet, PNCounter, element_order_key
from ring.merge import Versioned, lww_merge

KINDS = ("register", "counter", "set")
# Bounds on one key's CRDT state (it is read and rewritten whole on every update).
COUNTER_WRITERS_MAX = 1024  # distinct agents with a contribution; one more is `too_large`
SET_ELEMENTS_MAX = 1024  # present elements; an add beyond is `too_large`
# (element, removed tag) pairs kept for merging with replicas that have not seen the removes yet;
# beyond this the oldest tags (by the HLC in the tag) are forgotten down to 3/4 of it. Not an error:
# a set must not wear out with churn.
SET_TOMBSTONES_MAX = 1024
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _append_change(conn: sqlite3.Connection, topic: str, ns: str, key: str, event: dict[str, Any]) -> Change:
    cur = conn.execute(
        "INSERT INTO changes(topic, ns, key, event) VALUES(?,?,?,?)",
        (topic, ns, key, json.dumps(event, separators=(",", ":"))),
    )
    return Change(int(cur.lastrowid or 0), topic, ns, key, event)


@dataclass(frozen=True, slots=True)
class _Row:
    kind: str
    value: Any  # the materialised value (a counter's int, a set's sorted list)
    state: str | None  # canonical CRDT state for counters and sets
    version: int
    writer: str
    expires_ms: int | None
    deleted: bool

    def visible(self, now_ms: int) -> bool:
        return not self.deleted and (self.expires_ms is None or self.expires_ms > now_ms)

    def versioned(self) -> Versioned:
        return Versioned(self.value, self.version, self.writer, self.deleted, self.expires_ms)


def _row(conn: sqlite3.Connection, ns: str, key: str) -> _Row | None:
    row = conn.execute(
        "SELECT kind, value, state, version, writer, expires_ms, deleted FROM signals WHERE ns=? AND key=?", (ns, key)
    ).fetchone()
    if row is None:
        return None
    return _Row(str(row[0]), json.loads(row[1]), row[2], int(row[3]), str(row[4]), row[5], bool(row[6]))


def _live(conn: sqlite3.Connection, ns: str, key: str, now_ms: int) -> _Row | None:
    r = _row(conn, ns, key)
    return r if r is not None and r.visible(now_ms) else None


def _write_row(conn: sqlite3.Connection, ns: str, key: str, r: _Row) -> None:
    conn.execute(
        "INSERT INTO signals(ns, key, kind, value, state, version, writer, expires_ms, deleted)"
        " VALUES(?,?,?,?,?,?,?,?,?) ON CONFLICT(ns, key) DO UPDATE SET kind=excluded.kind, value=excluded.value,"
        " state=excluded.state, version=excluded.version, writer=excluded.writer, expires_ms=excluded.expires_ms,"
        " deleted=excluded.deleted",
        (ns, key, r.kind, json.dumps(r.value, separators=(",", ":")), r.state, r.version, r.writer,
         r.expires_ms, int(r.deleted)),
    )


def _view(key: str, r: _Row) -> dict[str, Any]:
    out: dict[str, Any] = {"key": key, "kind": r.kind, "value": r.value, "version": r.version, "writer": r.writer}
    if r.expires_ms is not None:
        out["expires_ms"] = r.expires_ms
    return out


def _kind_conflict(key: str, kind: str, wanted: str) -> Conflict:
    return Conflict(f"signal {key!r} is a {kind}, not a {wanted}: delete it first to reuse the key as a {wanted}",
                    key=key, kind=kind)


def signal_get(conn: sqlite3.Connection, ns: str, key: str, now_ms: int) -> dict[str, Any]:
    r = _live(conn, ns, key, now_ms)
    if r is None:
        raise NotFound(f"no signal {key!r} in namespace {ns!r}", key=key)
    return _view(key, r)


def signal_put(
    conn: sqlite3.Connection, ns: str, key: str, incoming: Versioned, *, if_version: int | None, now_ms: int
) -> Applied[dict[str, Any]]:
    """Set a register or delete (incoming.deleted) a signal of any kind. `if_version` is a
    compare-and-set on the visible version (0 = must not exist); it is exact here because one writer
    thread applies all writes."""
    row = _row(conn, ns, key)
    live = row if row is not None and row.visible(now_ms) else None
    if live is not None and live.kind != "register" and not incoming.deleted:
        raise _kind_conflict(key, live.kind, "register")
    visible_version = live.version if live is not None else 0
    if if_version is not None and if_version != visible_version:
        raise Conflict("version mismatch", key=key, expected=if_version, current=visible_version)
    if incoming.deleted and live is None:
        raise NotFound(f"no signal {key!r} in namespace {ns!r}", key=key)
    cur = row.versioned() if row is not None else None
    merged = lww_merge(cur, incoming)
    if merged is not incoming and merged != incoming:
        # An older write (possible once replicas exchange writes) loses: report the winner.
        return Applied({"key": key, "version": merged.hlc if merged else 0, "applied": False})
    # A tombstone has no kind: the key may come back as any kind.
    _write_row(conn, ns, key, _Row("register", incoming.value, None, incoming.hlc, incoming.writer,
                                   incoming.expires_ms, incoming.deleted))
    event: dict[str, Any] = {
        "op": "delete" if incoming.deleted else "set", "ns": ns, "key": key, "version": incoming.hlc,
        "writer": incoming.writer,
    }
    if not incoming.deleted:
        event["kind"] = "register"
        event["value"] = incoming.value
        if incoming.expires_ms is not None:
            event["expires_ms"] = incoming.expires_ms
    change = _append_change(conn, "signal", ns, key, event)
    return Applied({"key": key, "version": incoming.hlc, "applied": True}, (change,))


# ---- counters and sets (CRDT kinds) ----

Crdt = PNCounter | ORSet


def load_state(kind: str, state: str | None) -> Crdt:
    """The CRDT of a counter or set row (`None`: a fresh one)."""
    if kind == "counter":
        return PNCounter() if state is None else PNCounter.from_json(state)
    if kind == "set":
        return ORSet() if state is None else ORSet.from_json(state)
    raise InvalidArgument(f"signal kind {kind!r} has no CRDT state", kind=kind)


def materialise(crdt: Crdt) -> Any:
    """What reads return: a counter's value, or a set's elements in element_order_key order."""
    if isinstance(crdt, PNCounter):
        return crdt.value
    return sorted(crdt.elements(), key=element_order_key)


def _tag_hlc(tag: str) -> int:
    head, _, tail = tag.rpartition(":")
    return int(tail) if head and tail.isdigit() else 0  # foreign tags count as oldest


def _bounded_tombstones(s: ORSet) -> ORSet:
    if s.tombstone_count() <= SET_TOMBSTONES_MAX:
        return s
    # Prune to 3/4 of the bound, so the sort below runs once per many removes, not on every one.
    pairs = s.tombstone_tags()
    excess = len(pairs) - SET_TOMBSTONES_MAX * 3 // 4
    per_tag = Counter(pairs)
    drop: list[str] = []
    for tag in sorted(per_tag, key=lambda t: (_tag_hlc(t), t)):
        if excess <= 0:
            break
        drop.append(tag)
        excess -= per_tag[tag]
    return s.forget_tombstones(drop)


def _update(conn: sqlite3.Connection, ns: str, key: str, kind: str, op: str, args: dict[str, Any],
            step: Callable[[Any], Crdt], *, hlc: int, writer: str, expires_ms: int | None, now_ms: int,
            must_exist: bool = False) -> Applied[dict[str, Any]]:
    live = _live(conn, ns, key, now_ms)
    if live is not None and live.kind != kind:
        raise _kind_conflict(key, live.kind, kind)
    if live is None and must_exist:
        raise NotFound(f"no signal {key!r} in namespace {ns!r}", key=key)
    new = step(load_state(kind, live.state if live is not None else None))
    state = new.to_json()
    if live is not None and state == live.state and expires_ms == live.expires_ms:
        return Applied(_view(key, live))  # nothing changed: no new version, no event
    row = _Row(kind, materialise(new), state, hlc, writer, expires_ms, False)
    _write_row(conn, ns, key, row)
    event = {"op": op, "ns": ns, **_view(key, row), **args}
    return Applied(_view(key, row), (_append_change(conn, "signal", ns, key, event),))


def signal_incr(conn: sqlite3.Connection, ns: str, key: str, by: int, *, hlc: int, writer: str,
                expires_ms: int | None, now_ms: int) -> Applied[dict[str, Any]]:
    """Add `by` (may be negative) to a counter, as `writer`'s contribution; creates the counter."""
    def step(c: PNCounter) -> PNCounter:
        try:
            out = c.incr(writer, by)
        except InvalidArgument:  # a writer's own running total (of increments or of decrements) is int64 too
            raise InvalidArgument(f"counter {key!r}: this writer's total would leave the signed 64-bit range",
                                  key=key, field="by") from None
        if writer not in c.writers() and len(out.writers()) > COUNTER_WRITERS_MAX:
            raise TooLarge(f"counter {key!r} already has contributions from {COUNTER_WRITERS_MAX} writers",
                           key=key, limit=COUNTER_WRITERS_MAX)
        if not INT64_MIN <= out.value <= INT64_MAX:
            raise InvalidArgument(f"counter {key!r} would leave the signed 64-bit range", key=key, field="by")
        return out
    return _update(conn, ns, key, "counter", "incr", {"by": by}, step, hlc=hlc, writer=writer,
                   expires_ms=expires_ms, now_ms=now_ms)


def signal_add(conn: sqlite3.Connection, ns: str, key: str, elements: Sequence[Any], *, tag: str, hlc: int,
               writer: str, expires_ms: int | None, now_ms: int) -> Applied[dict[str, Any]]:
    """Add elements to a set under one fresh `tag` (unique across replicas); creates the set."""
    def step(before: ORSet) -> ORSet:
        s = before
        for e in elements:
            # Re-adding replaces the tags seen here with the new one: the element stays, a remove that
            # is concurrent with this add cannot take it out (add wins), and live tags stay few.
            s = s.remove(e).add(e, tag)
        if len(s) > max(SET_ELEMENTS_MAX, len(before)):
            raise TooLarge(f"set {key!r} would hold more than {SET_ELEMENTS_MAX} elements", key=key,
                           limit=SET_ELEMENTS_MAX)
        return _bounded_tombstones(s)
    return _update(conn, ns, key, "set", "add", {"elements": list(elements)}, step, hlc=hlc, writer=writer,
                   expires_ms=expires_ms, now_ms=now_ms)


def signal_remove(conn: sqlite3.Connection, ns: str, key: str, elements: Sequence[Any], *, hlc: int,
                  writer: str, expires_ms: int | None, now_ms: int) -> Applied[dict[str, Any]]:
    """Remove elements as observed here (absent ones are ignored); the set must exist."""
    def step(s: ORSet) -> ORSet:
        for e in elements:
            s = s.remove(e)
        return _bounded_tombstones(s)
    return _update(conn, ns, key, "set", "remove", {"elements": list(elements)}, step, hlc=hlc, writer=writer,
                   expires_ms=expires_ms, now_ms=now_ms, must_exist=True)


@dataclass(frozen=True, slots=True)
class ReplicaState:
    """A counter or set as another replica holds it: what replication ships and `signal_join` takes."""

    kind: str
    state: str  # canonical JSON (PNCounter/ORSet.to_json)
    version: int
    writer: str
    expires_ms: int | None = None


def replica_state(conn: sqlite3.Connection, ns: str, key: str, now_ms: int) -> ReplicaState | None:
    """This node's live counter or set at (ns, key), in the form `signal_join` takes."""
    r = _live(conn, ns, key, now_ms)
    if r is None or r.state is None:
        return None
    return ReplicaState(r.kind, r.state, r.version, r.writer, r.expires_ms)


def signal_join(conn: sqlite3.Connection, ns: str, key: str, remote: ReplicaState, now_ms: int) -> Applied[bool]:
    """Merge a replica's counter or set into ours; True if ours changed. A live key of the same kind
    takes the CRDT join of both states (so no update of either is lost) and the higher version with
    its writer and expiry; anything else (absent, a tombstone, an expired key, a register, the other
    kind) loses whole to the newer (version, writer). No bounds: a join cannot refuse what replicas
    already accepted."""
    incoming = load_state(remote.kind, remote.state)
    row = _row(conn, ns, key)
    newer = row is None or (remote.version, remote.writer) > (row.version, row.writer)
    if row is not None and row.visible(now_ms) and row.kind == remote.kind:
        merged = load_state(row.kind, row.state).merge(incoming)  # type: ignore[arg-type]
        top = remote if newer else row
        out = _Row(row.kind, materialise(merged), merged.to_json(), top.version, top.writer, top.expires_ms, False)
        if out == row:
            return Applied(False)
    elif newer:
        out = _Row(remote.kind, materialise(incoming), incoming.to_json(), remote.version, remote.writer,
                   remote.expires_ms, False)
    else:
        return Applied(False)
    _write_row(conn, ns, key, out)
    return Applied(True, (_append_change(conn, "signal", ns, key, {"op": "merge", "ns": ns, **_view(key, out)}),))


def signal_sweep(conn: sqlite3.Connection, now_ms: int, hlc: int, limit: int = 10_000) -> Applied[int]:
    """Turn expired signals into tombstones and tell watchers with an `expire` event."""
    rows = conn.execute(
        "SELECT ns, key, version FROM signals WHERE expires_ms IS NOT NULL AND expires_ms <= ? AND deleted=0 LIMIT ?",
        (now_ms, limit),
    ).fetchall()
    changes = []
    for ns, key, version in rows:
        conn.execute("UPDATE signals SET deleted=1, value='null', kind='register', state=NULL WHERE ns=? AND key=?",
                     (ns, key))
        changes.append(_append_change(conn, "signal", ns, key, {"op": "expire", "ns": ns, "key": key, "version": version}))
    return Applied(len(rows), tuple(changes))


def signal_list(conn: sqlite3.Connection, ns: str, prefix: str, limit: int, now_ms: int) -> dict[str, Any]:
    rows = conn.execute(
        "SELECT key, kind, value, version, writer, expires_ms FROM signals WHERE ns=? AND key >= ? AND key < ?"
        " AND deleted=0 AND (expires_ms IS NULL OR expires_ms > ?) ORDER BY key LIMIT ?",
        (ns, prefix, prefix + "\U0010ffff", now_ms, limit + 1),
    ).fetchall()
    items = [{"key": k, "kind": kind, "value": json.loads(v), "version": ver, "writer": w, "expires_ms": e}
             for k, kind, v, ver, w, e in rows[:limit]]
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
