"""Client operations in cluster mode: each memory/signal/state action becomes a Record written to, or
read from, the key's replicas through the node's Replication (quorum, consistency per request).

Owns the mapping between the API's results and replicated Records, and the read-modify-write of the
CRDT signal kinds; it must not check permissions (the actions do) or know how replicas are reached.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import trio

from crypto.errors import Forbidden, InvalidArgument, NotFound, Unavailable
from node.memory_records import memory_from_record, memory_record, tombstone_record
from node.memory_store import NewMemory
from ring.crdt import ORSet, PNCounter
from ring.merge import Versioned
from ring.messages import Done
from ring.quorum import Consistency, parse_consistency
from ring.records import Kind, Record, merge

if TYPE_CHECKING:
    from node.replication import Replication

SIGNAL_KINDS = {"register": Kind.REGISTER, "counter": Kind.COUNTER, "set": Kind.SET}


def consistency_of(data: Mapping[str, Any]) -> Consistency | int | None:
    """The request's `consistency`: "one", "quorum", "all" or a replica count (default: the node's W/R)."""
    raw = data.get("consistency")
    return None if raw is None else parse_consistency(raw)


def _check(done: Done, what: str) -> Done:
    if not done.ok:
        raise Unavailable(f"{what}: {done.details.get('reason', 'quorum not reached')} {dict(done.details)}",
                          **{k: _plain(v) for k, v in done.details.items()})
    return done


def _plain(v: Any) -> Any:
    if isinstance(v, frozenset | set | tuple):
        return sorted(v) if all(isinstance(x, str) for x in v) else list(v)
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    return v


class ClusterOps:
    """What the actions call when the node runs in cluster mode."""

    def __init__(self, replication: Replication) -> None:
        self.r = replication
        self._locks: dict[tuple[str, str, str], trio.Lock] = {}

    # ---- memories ----
    async def store_memory(self, m: NewMemory, consistency: Consistency | int | None) -> dict[str, Any]:
        done = _check(await self.r.write(memory_record(m), consistency), "memory not stored")
        return {"id": m.id, "created": True, "hlc": m.created, "acked": _acked(done)}

    async def get_memory(self, ns: str, mid: str, now_ms: int, consistency: Consistency | int | None, *,
                         include_vector: bool = False) -> dict[str, Any]:
        done = _check(await self.r.read(Kind.MEMORY, (ns, mid), consistency), "memory not read")
        out = None if done.record is None else memory_from_record(done.record, now_ms, include_vector=include_vector)
        if out is None:
            raise NotFound(f"no memory {mid!r} in namespace {ns!r}", id=mid)
        return out

    async def delete_memory(self, ns: str, mid: str, hlc: int, now_ms: int, author: str | None,
                            consistency: Consistency | int | None) -> dict[str, Any]:
        current = await self.get_memory(ns, mid, now_ms, Consistency.QUORUM)
        if author is not None and current.get("owner") != author:
            raise Forbidden("only the memory's owner or the namespace owner may delete it", id=mid)
        _check(await self.r.write(tombstone_record(ns, mid, hlc, str(current.get("owner", ""))), consistency),
               "memory not deleted")
        return {"id": mid, "deleted": True}

    # ---- signals: registers ----
    async def signal_put(self, ns: str, key: str, v: Versioned, consistency: Consistency | int | None) -> dict[str, Any]:
        done = _check(await self.r.write(Record(Kind.REGISTER, (ns, key), v), consistency), "signal not written")
        out: dict[str, Any] = {"key": key, "version": v.hlc, "applied": True, "acked": _acked(done)}
        if v.deleted:
            out["deleted"] = True
        return out

    async def signal_get(self, ns: str, key: str, now_ms: int, kind: str | None,
                         consistency: Consistency | int | None) -> dict[str, Any]:
        kinds = [SIGNAL_KINDS[kind]] if kind is not None else list(SIGNAL_KINDS.values())
        dones: list[Done] = []

        async def one(k: Kind) -> None:  # never raises: errors are raised after the nursery, unwrapped
            dones.append(await self.r.read(k, (ns, key), consistency))

        async with trio.open_nursery() as nursery:
            for k in kinds:
                nursery.start_soon(one, k)
        found = []
        for done in dones:
            _check(done, "signal not read")
            view = None if done.record is None else signal_view(key, done.record, now_ms)
            if view is not None:
                found.append(view)
        if not found:
            raise NotFound(f"no signal {key!r} in namespace {ns!r}", key=key)
        return max(found, key=lambda x: int(x["version"]))

    # ---- signals: counters and sets (read-modify-write of this node's CRDT entry) ----
    async def signal_update(self, ns: str, key: str, kind: Kind, hlc: int, op: str, arg: Any,
                            consistency: Consistency | int | None) -> dict[str, Any]:
        """Read at QUORUM, merge in this node's own last update of the key (durable: a read may miss
        it), apply the operation as this node (the counter's actor, the set's tag source), remember
        the result durably, then write it. One update per key at a time on this node: this node's
        counter entry is its running total, so two concurrent read-modify-writes here would lose one.
        A write that fails `unavailable` may still land later (it reached some replica, and the next
        update here builds on it): as everywhere in a Dynamo-style store, unavailable is not undone."""
        lock_key = (ns, key, kind.value)
        lock = self._locks.setdefault(lock_key, trio.Lock())
        try:
            async with lock:
                read = _check(await self.r.read(kind, (ns, key), Consistency.QUORUM), "signal not read").record
                cur = merge(read, self.r.store.own_update(kind, (ns, key)))
                body = _crdt_body(kind, cur)
                state = _apply(kind, body["state"], self.r.me, hlc, op, arg)
                new = Record(kind, (ns, key), {"hlc": max(hlc, int(body["hlc"]) + 1), "epoch": body["epoch"],
                                               "deleted": False, "state": state.to_wire()})
                await self.r.store.remember_own_update(new)
                done = _check(await self.r.write(new, consistency), "signal not written")
        finally:  # the last one out (done, failed or cancelled, even while waiting) removes the entry
            if not lock.locked() and not lock.statistics().tasks_waiting and self._locks.get(lock_key) is lock:
                del self._locks[lock_key]
        view = signal_view(key, done.record or new, 0) or {}
        return {**view, "acked": _acked(done)}

    async def signal_delete(self, ns: str, key: str, hlc: int, writer: str,
                            consistency: Consistency | int | None) -> dict[str, Any]:
        """Delete every kind under the key: a register tombstone and, for counters and sets, a new
        epoch (the delete wins over updates it did not see, as on a single node)."""
        await self.signal_get(ns, key, 0, None, Consistency.QUORUM)  # NotFound if nothing is there
        empty = {Kind.COUNTER: PNCounter().to_wire(), Kind.SET: ORSet().to_wire()}
        writes = [Record(Kind.REGISTER, (ns, key), Versioned(None, hlc, writer, True, None))]
        writes += [Record(k, (ns, key), {"hlc": hlc, "epoch": hlc, "deleted": True, "state": s}) for k, s in empty.items()]
        dones: list[Done] = []

        async def write(rec: Record) -> None:
            dones.append(await self.r.write(rec, consistency))

        async with trio.open_nursery() as nursery:
            for rec in writes:
                nursery.start_soon(write, rec)
        for done in dones:
            _check(done, "signal not deleted")
        return {"key": key, "deleted": True, "version": hlc}

    # ---- states ----
    async def state_publish(self, agent: str, doc: Any, hlc: int, consistency: Consistency | int | None) -> dict[str, Any]:
        done = _check(await self.r.write(Record(Kind.STATE, (agent,), Versioned(doc, hlc, agent)), consistency),
                      "state not published")
        return {"agent": agent, "version": hlc, "acked": _acked(done)}

    async def state_get(self, agent: str, consistency: Consistency | int | None) -> dict[str, Any]:
        done = _check(await self.r.read(Kind.STATE, (agent,), consistency), "state not read")
        rec = done.record
        if rec is None or not isinstance(rec.body, Versioned) or rec.body.deleted:
            raise NotFound(f"agent {agent!r} has published no state", agent=agent)
        return {"agent": agent, "doc": rec.body.value, "version": rec.body.hlc}


def _acked(done: Done) -> int:
    return len(done.details.get("acked", ())) if done.details else 0


def _crdt_body(kind: Kind, rec: Record | None) -> dict[str, Any]:
    empty = (PNCounter() if kind is Kind.COUNTER else ORSet()).to_wire()
    if rec is None:
        return {"hlc": 0, "epoch": 0, "state": empty}
    b = rec.body
    return {"hlc": int(b["hlc"]), "epoch": int(b.get("epoch", 0)), "state": b["state"]}


def _apply(kind: Kind, wire: Any, me: str, hlc: int, op: str, arg: Any) -> PNCounter | ORSet:
    if kind is Kind.COUNTER:
        return PNCounter.from_wire(wire).incr(me, int(arg))
    s = ORSet.from_wire(wire)
    for element in arg:
        s = s.add(element, f"{me}:{hlc}") if op == "add" else s.remove(element)
    return s


def signal_view(key: str, rec: Record, now_ms: int) -> dict[str, Any] | None:
    """A signal Record as signal.get returns it; None if deleted or expired."""
    b = rec.body
    if isinstance(b, Versioned):
        if b.deleted or (b.expires_ms is not None and now_ms and b.expires_ms <= now_ms):
            return None
        out: dict[str, Any] = {"key": key, "kind": "register", "value": b.value, "version": b.hlc, "writer": b.writer}
        if b.expires_ms is not None:
            out["expires_ms"] = b.expires_ms
        return out
    if b.get("deleted"):
        return None
    if rec.kind is Kind.COUNTER:
        return {"key": key, "kind": "counter", "value": PNCounter.from_wire(b["state"]).value, "version": int(b["hlc"]),
                "writer": ""}
    if rec.kind is Kind.SET:
        return {"key": key, "kind": "set", "value": ORSet.from_wire(b["state"]).elements(), "version": int(b["hlc"]),
                "writer": ""}
    raise InvalidArgument("not a signal record", kind=rec.kind.value)
