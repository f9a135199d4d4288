"""Replication records: the merge of every kind is a semilattice join, wire forms round-trip, and a
replica store's digests track its contents whatever order records arrive in."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.errors import InvalidArgument
from ring.crdt import PNCounter
from ring.digest import RangeDigest
from ring.memstore import MemoryReplicaStore
from ring.merge import Versioned
from ring.records import Kind, Record, merge
from tests.crdt_strategies import counter_states, set_states

BITS = 6
hlcs = st.integers(1, 50)
writers = st.sampled_from(["w1", "w2", "w3"])
values = st.one_of(st.integers(-3, 3), st.text(max_size=3), st.none())


@st.composite
def memory(draw: st.DrawFn, key: tuple[str, ...] = ("ns", "m1")) -> Record:
    body = {"id": key[1], "ns": key[0], "hlc": draw(hlcs), "deleted": draw(st.booleans()),
            "content": draw(st.sampled_from(["a", "b"]))}
    return Record(Kind.MEMORY, key, body)


@st.composite
def register(draw: st.DrawFn, kind: Kind = Kind.REGISTER, key: tuple[str, ...] = ("ns", "k")) -> Record:
    return Record(kind, key, Versioned(draw(values), draw(hlcs), draw(writers), draw(st.booleans())))


@st.composite
def crdt(draw: st.DrawFn, kind: Kind = Kind.COUNTER, key: tuple[str, ...] = ("ns", "c")) -> Record:
    state = draw(counter_states(writers, st.integers(-5, 5), 4) if kind is Kind.COUNTER else
                 set_states(st.integers(0, 3), st.sampled_from("xyz"), 5, tag_per_element=True))
    return Record(kind, key, {"hlc": draw(hlcs), "epoch": draw(st.sampled_from([0, 0, 10, 20])),
                              "deleted": draw(st.booleans()), "state": state})


def same_item(kind: Kind) -> st.SearchStrategy[Record]:
    if kind is Kind.MEMORY:
        return memory()
    if kind in (Kind.REGISTER, Kind.STATE, Kind.LINK):
        key = {Kind.REGISTER: ("ns", "k"), Kind.STATE: ("agent",), Kind.LINK: ("ns", "a", "ns", "b", "rel")}[kind]
        return register(kind, key)
    return crdt(kind)


def eq(a: Record | None, b: Record | None) -> bool:
    return a is b or (a is not None and b is not None and a.version == b.version)


@settings(max_examples=150)
@given(data=st.data(), kind=st.sampled_from(list(Kind)))
def test_merge_is_a_semilattice_join_for_every_kind(data: st.DataObject, kind: Kind) -> None:
    a, b, c = (data.draw(same_item(kind)) for _ in range(3))
    assert eq(merge(a, b), merge(b, a))
    assert eq(merge(merge(a, b), c), merge(a, merge(b, c)))
    assert eq(merge(a, a), a)
    assert eq(merge(a, None), a) and eq(merge(None, a), a)


@settings(max_examples=100)
@given(data=st.data(), kind=st.sampled_from(list(Kind)))
def test_wire_round_trip(data: st.DataObject, kind: Kind) -> None:
    r = data.draw(same_item(kind))
    back = Record.from_wire(r.to_wire())
    assert back.version == r.version and back.partition(BITS) == r.partition(BITS)


def test_a_delete_epoch_wins_whole_and_a_later_write_revives() -> None:
    before = Record(Kind.COUNTER, ("ns", "c"), {"hlc": 5, "epoch": 0, "state": PNCounter().incr("a", 7).to_wire()})
    deleted = Record(Kind.COUNTER, ("ns", "c"), {"hlc": 9, "epoch": 9, "deleted": True, "state": PNCounter().to_wire()})
    after = Record(Kind.COUNTER, ("ns", "c"), {"hlc": 12, "epoch": 9, "state": PNCounter().incr("b", 2).to_wire()})
    m = merge(merge(before, deleted), after)
    assert m is not None and PNCounter.from_wire(m.body["state"]).value == 2 and not m.body["deleted"]
    assert m.hlc == 12


def test_links_live_with_their_source_memory_and_bad_records_are_refused() -> None:
    link = Record(Kind.LINK, ("ns", "m1", "other", "m9", "cites"), Versioned(1.0, 3, "w"))
    mem = Record(Kind.MEMORY, ("ns", "m1"), {"id": "m1", "ns": "ns", "hlc": 1})
    assert link.partition(17) == mem.partition(17)
    with pytest.raises(InvalidArgument):
        Record(Kind.STATE, ("a", "b"), Versioned(1, 1, "w"))
    with pytest.raises(InvalidArgument):
        merge(mem, Record(Kind.MEMORY, ("ns", "m2"), {"id": "m2", "ns": "ns", "hlc": 1}))
    for bad in (["nope", ["a"], {}], ["counter", ["a", "b"], {"state": {}}], "x"):
        with pytest.raises(InvalidArgument):
            Record.from_wire(bad)


def all_items() -> st.SearchStrategy[list[Record]]:
    keys = st.sampled_from([("ns", "m1"), ("ns", "m2"), ("x", "m3")])
    mems = keys.flatmap(lambda k: memory(k))
    regs = st.sampled_from([("ns", "k1"), ("ns", "k2")]).flatmap(lambda k: register(Kind.REGISTER, k))
    sets = crdt(Kind.SET, ("ns", "s"))
    return st.lists(st.one_of(mems, regs, sets), max_size=25)


@settings(max_examples=100)
@given(records=all_items(), data=st.data())
def test_replicas_converge_in_any_delivery_order_and_digests_track_contents(records: list[Record],
                                                                          data: st.DataObject) -> None:
    a, b = MemoryReplicaStore(BITS), MemoryReplicaStore(BITS)
    for r in records:
        a.apply(r)
    for r in data.draw(st.permutations(records)) + records[: len(records) // 2]:  # reordered, some duplicated
        b.apply(r)
    assert a.partitions() == b.partitions()
    for p in a.partitions():
        assert [r.version for r in a.records(p)] == [r.version for r in b.records(p)]
        assert a.digest(p) == b.digest(p)
        fresh = RangeDigest()
        for r in a.records(p):
            fresh.add(r.digest_hash())
        assert a.digest(p) == fresh  # incremental upkeep equals recomputation


def test_collect_drops_only_old_tombstones_and_keeps_digests_exact() -> None:
    s = MemoryReplicaStore(BITS)
    old = Record(Kind.MEMORY, ("ns", "gone"), {"id": "gone", "ns": "ns", "hlc": 5, "deleted": True})
    young = Record(Kind.MEMORY, ("ns", "new"), {"id": "new", "ns": "ns", "hlc": 50, "deleted": True})
    live = Record(Kind.REGISTER, ("ns", "k"), Versioned(1, 1, "w"))
    for r in (old, young, live):
        s.apply(r)
    for p in s.partitions():
        s.collect(p, older_than_hlc=10)
    assert s.get(Kind.MEMORY, ("ns", "gone")) is None
    assert s.get(Kind.MEMORY, ("ns", "new")) is not None and s.get(Kind.REGISTER, ("ns", "k")) is not None
    for p in s.partitions():
        fresh = RangeDigest()
        for r in s.records(p):
            fresh.add(r.digest_hash())
        assert s.digest(p) == fresh
    assert s.drop(s.partitions()) == 2 and len(s) == 0
