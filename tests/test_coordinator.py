"""Replication coordinator: fan-out, W/R counting, stand-ins, resends, deadlines, read repair, bounds;
and the quorum-intersection property (W + R > N, sloppy off) under any delivery, loss and failure order."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ring.config import ReplicationConfig
from ring.coordinator import Coordinator
from ring.memstore import MemoryReplicaStore
from ring.merge import Versioned
from ring.messages import (
    HANDOFF_REQ_LIMIT,
    Done,
    GetRecord,
    GetReply,
    PutAck,
    PutRecord,
    Send,
    is_handoff_req,
)
from ring.partition import Placement, StorageNode
from ring.quorum import Consistency
from ring.records import Kind, Record, merge

BITS = 4
NODES = [f"n{i}" for i in range(5)]
PLACEMENT = Placement([StorageNode(n) for n in NODES], 3, BITS)
KEY = ("ns", "k0")  # owners n3, n2, n4; stand-ins n1, n0 (checked below)
OWNERS = PLACEMENT.owners(Record(Kind.REGISTER, KEY, None).ring_hash)


def reg(value: object, hlc: int, key: tuple[str, ...] = KEY, writer: str = "w") -> Record:
    return Record(Kind.REGISTER, key, Versioned(value, hlc, writer))


def coord(node: str = "n0", sloppy: bool = True, alive: list[str] | None = None, rng: Any = None,
          **cfg: Any) -> Coordinator:
    c = Coordinator(node, ReplicationConfig(sloppy_quorum=sloppy, request_timeout_s=2.0, **cfg), rng)
    c.set_view(PLACEMENT, frozenset(NODES if alive is None else alive))
    return c


def sends(effects: list[Any]) -> dict[str, Any]:
    return {e.to: e.msg for e in effects if isinstance(e, Send)}


def done(effects: list[Any]) -> list[Done]:
    return [e for e in effects if isinstance(e, Done)]


def test_layout_assumed_by_these_tests() -> None:
    part = Record(Kind.REGISTER, KEY, None).partition(BITS)
    assert OWNERS == ("n3", "n2", "n4") and PLACEMENT.stand_ins(part, [], 2) == ["n1", "n0"]


def test_write_goes_to_every_owner_and_succeeds_at_w_distinct_acks() -> None:
    c = coord("n0")
    out = c.write(7, reg("a", 1), Consistency.QUORUM, 0.0)
    puts = sends(out)
    assert set(puts) == set(OWNERS) and all(m.hint_for is None for m in puts.values())
    req = puts["n3"].req
    assert not is_handoff_req(req) and req >= HANDOFF_REQ_LIMIT
    assert done(c.handle("n3", PutAck(req, True), 0.01)) == []
    assert done(c.handle("n3", PutAck(req, True), 0.01)) == []  # a duplicate ack counts once
    assert done(c.handle("n1", PutAck(req, True), 0.01)) == []  # not a target: ignored
    [d] = done(c.handle("n2", PutAck(req, True), 0.02))
    assert d.ok and d.client_req == 7 and d.details["acked"] == ["n2", "n3"] and d.details["hints"] == []
    assert c.pending == 0 and c.next_deadline() is None
    assert c.handle("n4", PutAck(req, True), 0.03) == []  # late ack of a finished request


def test_down_owner_gets_a_stand_in_with_a_hint_when_sloppy() -> None:
    c = coord("n0", alive=["n0", "n1", "n2", "n3"])
    puts = sends(c.write(1, reg("a", 1), None, 0.0))
    assert set(puts) == {"n3", "n2", "n1"} and puts["n1"].hint_for == "n4"
    req = puts["n1"].req
    c.handle("n1", PutAck(req, True), 0.01)
    [d] = done(c.handle("n3", PutAck(req, True), 0.01))
    assert d.ok and d.details["hints"] == [("n1", "n4")]


def test_strict_quorum_fails_fast_and_says_how_many_acked() -> None:
    c = coord("n0", sloppy=False, alive=["n0", "n1", "n3"])
    out = c.write(1, reg("a", 1), Consistency.QUORUM, 0.0)
    [d] = done(out)
    assert not d.ok and d.code == "unavailable"
    assert d.details["acked"] == 0 and d.details["required"] == 2 and set(d.details["failed"]) == {"n2", "n4"}
    assert c.pending == 0


def test_strict_resends_to_a_silent_owner_then_times_out_without_false_success() -> None:
    c = coord("n0", sloppy=False)
    req = sends(c.write(1, reg("a", 1), Consistency.ALL, 0.0))["n3"].req
    c.handle("n3", PutAck(req, True), 0.1)
    c.handle("n2", PutAck(req, True), 0.1)
    assert c.next_deadline() == pytest.approx(0.5)
    again = c.tick(0.5)
    assert set(sends(again)) == {"n4"} and not done(again)  # only the silent owner, same request
    t = 0.5
    finished: list[Done] = []
    while not finished:
        nd = c.next_deadline()
        assert nd is not None
        t = nd
        finished = done(c.tick(t))
    assert t == pytest.approx(2.0)
    [d] = finished
    assert not d.ok and d.details["timed_out"] and d.details["acked"] == 2 and d.details["required"] == 3


def test_failing_owner_is_replaced_by_a_stand_in_then_the_next() -> None:
    c = coord("n0")
    req = sends(c.write(1, reg("a", 1), Consistency.ALL, 0.0))["n3"].req
    to_n1 = sends(c.handle("n4", PutAck(req, False, "unavailable"), 0.01))
    assert to_n1 == {"n1": PutRecord(req, reg("a", 1), "n4")}
    to_n0 = sends(c.handle("n1", PutAck(req, False, "unavailable"), 0.02))
    assert to_n0 == {"n0": PutRecord(req, reg("a", 1), "n4")}  # the coordinator itself may stand in
    # Both stand-ins used up: the slot fails once its last target fails, and ALL is out of reach.
    [d] = done(c.handle("n0", PutAck(req, False, "unavailable"), 0.03))
    assert not d.ok and d.details["failed"] == {"n4": "unavailable"}


def test_a_silent_owner_gets_a_stand_in_after_the_replica_timeout() -> None:
    c = coord("n0")
    req = sends(c.write(1, reg("a", 1), Consistency.ALL, 0.0))["n3"].req
    c.handle("n3", PutAck(req, True), 0.1)
    c.handle("n2", PutAck(req, True), 0.1)
    out = sends(c.tick(0.5))
    assert out["n4"] == PutRecord(req, reg("a", 1), None) and out["n1"].hint_for == "n4"
    [d] = done(c.handle("n1", PutAck(req, True), 0.6))
    assert d.ok and d.details["acked"] == ["n1", "n2", "n3"]


def test_a_restarted_coordinator_ignores_acks_meant_for_its_previous_life() -> None:
    before = coord("n0", rng=random.Random(1))
    old_req = sends(before.write(1, reg("a", 1), None, 0.0))["n3"].req
    after = coord("n0", rng=random.Random(2))
    new_req = sends(after.write(1, reg("b", 2), None, 5.0))["n3"].req
    assert new_req != old_req
    after.handle("n3", PutAck(old_req, True), 5.01)
    assert done(after.handle("n2", PutAck(old_req, True), 5.01)) == []


def test_consistency_levels_and_bounds() -> None:
    c = coord("n0")
    [d] = done(c.write(1, reg("a", 1), 4, 0.0))
    assert not d.ok and d.details["reason"] == "consistency exceeds replicas"
    req = sends(c.write(2, reg("a", 1), Consistency.ONE, 0.0))["n4"].req
    [d] = done(c.handle("n4", PutAck(req, True), 0.01))
    assert d.ok
    small = coord("n0", pending_requests_max=2)
    small.write(1, reg("a", 1), None, 0.0)
    small.read(2, Kind.REGISTER, KEY, None, 0.0)
    [d] = done(small.write(3, reg("a", 1), None, 0.0))
    assert not d.ok and d.details["reason"] == "coordinator overloaded" and small.stats["overloaded"] == 1
    blind = Coordinator("n0")
    [d] = done(blind.read(1, Kind.REGISTER, KEY, None, 0.0))
    assert not d.ok and d.details["reason"] == "no placement yet"


def test_read_merges_answers_and_repairs_stale_replicas_including_late_ones() -> None:
    c = coord("n0")
    asks = sends(c.read(9, Kind.REGISTER, KEY, Consistency.QUORUM, 0.0))
    assert set(asks) == set(OWNERS) and all(isinstance(m, GetRecord) for m in asks.values())
    req = asks["n3"].req
    old, new, newest = reg("a", 1), reg("b", 2), reg("c", 3)
    c.handle("n3", GetReply(req, old), 0.01)
    out = c.handle("n2", GetReply(req, new), 0.01)
    [d] = done(out)
    assert d.ok and d.record == new and d.client_req == 9
    assert sends(out) == {"n3": PutRecord(sends(out)["n3"].req, new, None)}
    # A late, newer answer: both early responders are repaired with it; the client already has its answer.
    late = c.handle("n4", GetReply(req, newest), 0.02)
    assert not done(late) and set(sends(late)) == {"n2", "n3"}
    assert all(m.record == newest for m in sends(late).values())
    assert c.pending == 0 and c.stats["repairs"] == 3


def test_read_fails_when_too_few_owners_are_up_and_retries_silent_ones() -> None:
    c = coord("n0", alive=["n0", "n3"])
    [d] = done(c.read(1, Kind.REGISTER, KEY, Consistency.QUORUM, 0.0))
    assert not d.ok and d.details["answered"] == 0 and d.details["required"] == 2
    c = coord("n0", alive=["n0", "n3", "n2"])
    req = sends(c.read(2, Kind.REGISTER, KEY, Consistency.QUORUM, 0.0))["n3"].req
    c.handle("n3", GetReply(req, None), 0.01)
    c.set_view(PLACEMENT, frozenset(NODES))
    assert set(sends(c.tick(0.5))) == {"n2", "n4"}  # the silent one again, and the owner now up
    [d] = done(c.handle("n4", GetReply(req, None), 0.6))
    assert d.ok and d.record is None
    failing = coord("n0")
    req = sends(failing.read(3, Kind.REGISTER, KEY, Consistency.ALL, 0.0))["n3"].req
    [d] = done(failing.handle("n2", GetReply(req, None, ok=False, code="unavailable"), 0.01))
    assert not d.ok and d.details["failed"] == {"n2": "unavailable"}


# ---------------------------------------------------------------- W + R > N, sloppy off


class Pool:
    """Replicas with real stores and one coordinator per node; messages wait in a pool until the
    test delivers, drops or fails them, in whatever order hypothesis picks."""

    def __init__(self, alive: frozenset[str]) -> None:
        cfg = ReplicationConfig(sloppy_quorum=False)
        self.stores = {n: MemoryReplicaStore(BITS) for n in NODES}
        self.coords = {n: Coordinator(n, cfg, random.Random(i)) for i, n in enumerate(NODES)}
        for c in self.coords.values():
            c.set_view(PLACEMENT, alive)
        self.queue: list[tuple[str, str, Any]] = []  # (src, dst, msg)
        self.done: dict[int, Done] = {}

    def effects(self, node: str, effects: list[Any]) -> None:
        for e in effects:
            if isinstance(e, Send):
                self.queue.append((node, e.to, e.msg))
            else:
                self.done[e.client_req] = e

    def step(self, index: int, action: str, now: float) -> None:
        src, dst, msg = self.queue.pop(index % len(self.queue))
        if action == "drop":
            return
        if isinstance(msg, PutRecord):
            if action == "fail":
                self.queue.append((dst, src, PutAck(msg.req, False, "unavailable")))
            else:
                self.stores[dst].apply(msg.record)
                self.queue.append((dst, src, PutAck(msg.req, True)))
        elif isinstance(msg, GetRecord):
            reply = GetReply(msg.req, None, False, "unavailable") if action == "fail" else \
                GetReply(msg.req, self.stores[dst].get(msg.kind, msg.key))
            self.queue.append((dst, src, reply))
        else:
            self.effects(dst, self.coords[dst].handle(src, msg, now))

    def run(self, data: st.DataObject, now: float) -> None:
        actions = st.sampled_from(["deliver", "deliver", "deliver", "drop", "fail", "tick"])
        t = now
        while self.queue:
            action = data.draw(actions)
            if action == "tick":  # time passes: resends, stand-ins, deadlines
                t += 0.3
                for c in self.coords.values():
                    self.effects(c.node_id, c.tick(t))
            else:
                self.step(data.draw(st.integers(0, 50)), action, t)
        for c in self.coords.values():  # what was never answered times out
            self.effects(c.node_id, c.tick(t + 10.0))


def dominates(a: Record | None, b: Record) -> bool:
    m = merge(a, b)
    return a is not None and m is not None and m.version == a.version


@settings(max_examples=200, deadline=None)
@given(data=st.data(), alive=st.sets(st.sampled_from(NODES), min_size=2))
def test_a_quorum_read_sees_every_acknowledged_write_whatever_the_order(data: st.DataObject,
                                                                        alive: set[str]) -> None:
    pool = Pool(frozenset(alive))
    writes = {i: reg(f"v{i}", 10 + i, writer=f"w{i}") for i in range(data.draw(st.integers(1, 3)))}
    for i, rec in writes.items():
        node = data.draw(st.sampled_from(NODES))
        pool.effects(node, pool.coords[node].write(i, rec, Consistency.QUORUM, 0.0))
    pool.run(data, 0.0)
    acked = [writes[i] for i, d in pool.done.items() if d.ok]
    for i, d in pool.done.items():  # never a false success: ok means W distinct replicas hold it
        holders = [n for n in OWNERS if dominates(pool.stores[n].get(Kind.REGISTER, KEY), writes[i])]
        assert not d.ok or len(holders) >= 2, (d, holders)
    assert len(pool.done) == len(writes)
    for j in range(2):
        node = data.draw(st.sampled_from(NODES))
        pool.effects(node, pool.coords[node].read(100 + j, Kind.REGISTER, KEY, Consistency.QUORUM, 20.0 * (j + 1)))
        pool.run(data, 20.0 * (j + 1))
        d = pool.done[100 + j]
        if d.ok:
            assert all(dominates(d.record, w) for w in acked), (d.record, acked)
