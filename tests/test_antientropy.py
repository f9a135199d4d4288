"""Anti-entropy sessions: two divergent replicas converge to identical digests after one session; a
session between equal replicas costs O(1) messages; loss, duplication and reordering never corrupt a
replica, a timed-out session is retried, and every message stays within its bounds."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ring.antientropy import AntiEntropy
from ring.config import ReplicationConfig
from ring.memstore import MemoryReplicaStore
from ring.merge import Versioned
from ring.messages import (
    AeFetch,
    AeOpen,
    AeOpened,
    AePush,
    AeRecords,
    AeReject,
    AeSummaries,
    AeSummaryQuery,
    AeTreeHashes,
    AeTreeQuery,
    ApplyRecords,
    Send,
    SessionEnded,
)
from ring.partition import Placement, StorageNode
from ring.records import Kind, Record, merge
from ring.replicaview import MemoryView, wire_bytes

BITS = 6
CONFIG = ReplicationConfig(digest_fanout=4)


def mem(mid: str, hlc: int, content: str = "x", deleted: bool = False, ns: str = "ns") -> Record:
    return Record(Kind.MEMORY, (ns, mid), {"id": mid, "ns": ns, "hlc": hlc, "deleted": deleted, "content": content})


def reg(key: str, hlc: int, value: Any, writer: str = "w1") -> Record:
    return Record(Kind.REGISTER, ("ns", key), Versioned(value, hlc, writer))


class FixedView(MemoryView):
    """Both sides own the same fixed partition set (placement-free)."""

    def __init__(self, store: MemoryReplicaStore, me: str, peers: Sequence[str], shared: Sequence[int]) -> None:
        super().__init__(store, me)
        self.peers, self.shared = list(peers), list(shared)

    def co_replicas(self) -> Sequence[str]:
        return self.peers

    def shared_partitions(self, peer: str) -> Sequence[int]:
        return self.shared if peer in self.peers else []


class Net:
    """Engines over an in-memory link with seeded loss, duplication and reordering, on a virtual clock."""

    def __init__(self, engines: dict[str, AntiEntropy], stores: dict[str, MemoryReplicaStore], seed: int = 0,
                 loss: float = 0.0, dup: float = 0.0, reorder: bool = False) -> None:
        self.engines, self.stores = engines, stores
        self.rng = random.Random(seed)
        self.loss, self.dup, self.reorder = loss, dup, reorder
        self.queue: list[tuple[str, str, object]] = []
        self.sent: list[object] = []
        self.ended: list[SessionEnded] = []
        self.cut: set[str] = set()  # nodes whose messages are all dropped
        self.now = 0.0

    def effects(self, node: str, effects: Iterable[object]) -> None:
        for e in effects:
            if isinstance(e, Send):
                self.sent.append(e.msg)
                if node in self.cut or e.to in self.cut or self.rng.random() < self.loss:
                    continue
                self.queue.append((node, e.to, e.msg))
                if self.rng.random() < self.dup:
                    self.queue.append((node, e.to, e.msg))
            elif isinstance(e, ApplyRecords):
                for r in e.records:
                    self.stores[node].apply(r)
            elif isinstance(e, SessionEnded):
                self.ended.append(e)

    def run(self, until_s: float = 1e9, steps_max: int = 20_000) -> None:
        """Deliver until quiet; then jump the clock to the next deadline and tick, until `until_s`."""
        for _ in range(steps_max):
            if self.queue:
                i = self.rng.randrange(len(self.queue)) if self.reorder else 0
                src, dst, msg = self.queue.pop(i)
                self.effects(dst, self.engines[dst].handle(src, msg, self.now))
                continue
            if not any(e._out for e in self.engines.values()) and until_s >= 1e9:
                return  # no session left to finish (responders forget theirs when idle)
            t = min(e.next_deadline() for e in self.engines.values())
            if t > until_s:
                return
            self.now = max(self.now, t)
            for name, e in self.engines.items():
                self.effects(name, e.tick(self.now))
        raise AssertionError("network did not go quiet")


def pair(a_records: Iterable[Record], b_records: Iterable[Record], shared: Sequence[int] | None = None,
         bits: int = BITS, config: ReplicationConfig = CONFIG,
         **net: Any) -> tuple[Net, AntiEntropy, AntiEntropy]:
    stores = {"a": MemoryReplicaStore(bits), "b": MemoryReplicaStore(bits)}
    for r in a_records:
        stores["a"].apply(r)
    for r in b_records:
        stores["b"].apply(r)
    parts = list(range(1 << bits)) if shared is None else list(shared)
    a = AntiEntropy("a", FixedView(stores["a"], "a", ["b"], parts), config, random.Random(1), 0.0)
    b = AntiEntropy("b", FixedView(stores["b"], "b", ["a"], parts), config, random.Random(2), 0.0)
    return Net({"a": a, "b": b}, stores, **net), a, b


def contents(store: MemoryReplicaStore) -> dict[tuple[Kind, tuple[str, ...]], Record]:
    return {(r.kind, r.key): r for p in store.partitions() for r in store.records(p)}


def joined(*sides: Iterable[Record]) -> dict[tuple[Kind, tuple[str, ...]], Record]:
    out: dict[tuple[Kind, tuple[str, ...]], Record] = {}
    for side in sides:
        for r in side:
            m = merge(out.get((r.kind, r.key)), r)
            assert m is not None
            out[(r.kind, r.key)] = m
    return out


def assert_converged(net: Net, model: dict[tuple[Kind, tuple[str, ...]], Record]) -> None:
    a, b = net.stores["a"], net.stores["b"]
    for p in range(1 << a.partition_bits):
        assert a.digest(p) == b.digest(p), p
    assert contents(a) == contents(b) == model


item_ids = st.integers(0, 40).map(lambda i: f"m{i}")
records = st.one_of(
    st.builds(mem, item_ids, st.integers(1, 9), st.sampled_from("xyz"), st.booleans()),
    st.builds(reg, item_ids, st.integers(1, 9), st.integers(0, 3), st.sampled_from(["w1", "w2"])),
)
divergent = st.tuples(st.lists(records, max_size=30), st.lists(records, max_size=30), st.lists(records, max_size=30))


@settings(max_examples=60, deadline=None)
@given(divergent)
def test_one_session_converges_divergent_replicas(sides: tuple[list[Record], list[Record], list[Record]]) -> None:
    common, only_a, only_b = sides
    net, a, _ = pair(common + only_a, common + only_b)
    net.effects("a", a.start("b", range(1 << BITS), net.now))
    net.run()
    assert [e.outcome for e in net.ended] in (["in_sync"], ["repaired"])
    assert_converged(net, joined(common, only_a, only_b))


def test_equal_replicas_cost_two_messages() -> None:
    rs = [mem(f"m{i}", i + 1) for i in range(200)]
    net, a, b = pair(rs, rs)
    net.effects("a", a.start("b", range(1 << BITS), net.now))
    net.run()
    assert [type(m) for m in net.sent] == [AeOpen, AeOpened]
    assert net.ended[0].outcome == "in_sync" and not b._in  # the responder kept no state


def test_messages_stay_within_bounds() -> None:
    config = CONFIG.replace(ae_tree_hashes_per_message_max=8, ae_summaries_per_message_max=5,
                            ae_partitions_per_query_max=3, ae_records_per_message_max=4, ae_message_bytes_max=900,
                            ae_requests_in_flight_max=2)
    big = "y" * 400
    a_side = [mem(f"m{i}", 1, big) for i in range(150)]
    b_side = [reg(f"r{i}", 2, i) for i in range(150)] + [mem(f"m{i}", 2, "z") for i in range(0, 150, 3)]
    net, a, _ = pair(a_side, b_side, config=config)
    net.effects("a", a.start("b", range(1 << BITS), net.now))
    net.run()
    assert_converged(net, joined(a_side, b_side))
    for m in net.sent:
        if isinstance(m, AeOpened | AeTreeHashes):
            assert len(m.hashes) <= max(8, CONFIG.digest_fanout)
        if isinstance(m, AeTreeQuery):
            assert len(m.parents) * CONFIG.digest_fanout <= 8
        if isinstance(m, AeSummaryQuery):
            assert len(m.cursors) <= 3
        if isinstance(m, AeSummaries):
            assert sum(len(p.items) for p in m.pages) <= 5 and wire_bytes(m) <= 900 + 200
        if isinstance(m, AeFetch):
            assert len(m.items) <= 4
        if isinstance(m, AeRecords | AePush):
            assert 1 <= len(m.records) <= 4
            assert len(m.records) == 1 or wire_bytes(m) <= 900 + 100


@settings(max_examples=40, deadline=None)
@given(divergent, st.integers(0, 2**32), st.floats(0.0, 0.3), st.floats(0.0, 0.3))
def test_faults_never_corrupt_and_a_clean_session_finishes_the_job(
        sides: tuple[list[Record], list[Record], list[Record]], seed: int, loss: float, dup: float) -> None:
    common, only_a, only_b = sides
    model = joined(common, only_a, only_b)
    net, a, b = pair(common + only_a, common + only_b, seed=seed, loss=loss, dup=dup, reorder=True,
                     config=CONFIG.replace(ae_records_per_message_max=3, ae_summaries_per_message_max=4))
    for _ in range(3):
        net.effects("a", a.start("b", range(1 << BITS), net.now))
        net.effects("b", b.start("a", range(1 << BITS), net.now))
        net.run()
        for store in net.stores.values():  # every copy is one of the versions written, merged: below the join
            for item, r in contents(store).items():
                assert merge(r, model[item]) == model[item]
    net.loss = net.dup = 0.0
    net.effects("a", a.start("b", range(1 << BITS), net.now))
    net.run()
    assert_converged(net, model)


def test_timed_out_session_is_retried_at_the_next_round() -> None:
    net, a, b = pair([mem("m1", 1)], [mem("m2", 2)], config=CONFIG.replace(anti_entropy_interval_s=10.0))
    net.cut.add("b")
    net.run(until_s=a.next_deadline())  # the first scheduled round opens a session that b never answers
    net.run(until_s=net.now + 9.0)
    assert [e.outcome for e in net.ended] == ["timeout"]
    assert a.statistics().retransmits == CONFIG.ae_request_attempts_max - 1
    net.cut.clear()
    for _ in range(3):  # b's own rounds may also repair; a retries b at its next round either way
        net.run(until_s=max(a.next_deadline(), b.next_deadline()))
    assert "repaired" in [e.outcome for e in net.ended if e.peer == "b"]
    assert_converged(net, joined([mem("m1", 1), mem("m2", 2)]))


def test_responder_refuses_other_partition_sets_and_extra_sessions() -> None:
    net, a, b = pair([mem("m1", 1)], [], shared=range(10))
    b._view.shared = list(range(11))  # type: ignore[attr-defined]  # b's placement disagrees
    net.effects("a", a.start("b", range(10), net.now))
    net.run()
    assert [e.outcome for e in net.ended] == ["partitions"]
    assert AeReject in [type(m) for m in net.sent] and not net.stores["b"].partitions()

    everything = range(1 << BITS)
    busy = AntiEntropy("b", FixedView(net.stores["b"], "b", ["a", "c"], everything),
                       CONFIG.replace(ae_responder_sessions_max=1), random.Random(3), 0.0)
    out = busy.handle("a", AeOpen(7, 0, 0, 4, 0), 0.0)
    assert isinstance(out[0], Send) and out[0].msg == AeReject(7, "partitions")
    view_a = FixedView(MemoryReplicaStore(BITS), "a", ["b"], everything)
    view_a.store.apply(mem("m1", 1))
    opener = AntiEntropy("a", view_a, CONFIG, random.Random(4), 0.0)
    opener2 = AntiEntropy("c", view_a, CONFIG, random.Random(5), 0.0)
    first = opener.start("b", everything, 0.0)[0]
    second = opener2.start("b", everything, 0.0)[0]
    assert isinstance(first, Send) and isinstance(second, Send)
    assert isinstance(busy.handle("a", first.msg, 0.0)[0].msg, AeOpened)  # type: ignore[union-attr]
    assert busy.handle("c", second.msg, 0.0)[0].msg == AeReject(second.msg.session, "busy")  # type: ignore[union-attr]


def test_scheduler_uses_the_placement_and_round_robins_co_replicas() -> None:
    nodes = [StorageNode(n) for n in "abcd"]
    pl = Placement(nodes, n_replicas=2, partition_bits=BITS)
    view = MemoryView(MemoryReplicaStore(BITS), "a", pl)
    peers = list(view.co_replicas())
    assert peers and "a" not in peers
    for p in peers:
        assert set(view.shared_partitions(p)) == {q for q in range(1 << BITS) if {"a", p} <= set(pl.preference(q))}
    e = AntiEntropy("a", view, CONFIG.replace(anti_entropy_interval_s=5.0, ae_sessions_max=1), random.Random(9), 0.0)
    picked = []
    now = 0.0
    for _ in range(len(peers)):
        now = e.next_deadline()
        out = e.tick(now)
        opens = [x for x in out if isinstance(x, Send) and isinstance(x.msg, AeOpen)]
        assert len(opens) == 1
        picked.append(opens[0].to)
        e._out.clear()  # pretend the session finished
        assert 5.0 * 0.75 <= e.next_deadline() - now <= 5.0 * 1.25
    assert sorted(picked) == sorted(peers)


def test_late_duplicate_and_forged_answers_are_ignored_or_end_the_session() -> None:
    net, a, b = pair([mem("m1", 1)], [mem("m2", 1)])
    net.effects("a", a.start("b", range(1 << BITS), net.now))
    session = next(m.session for m in net.sent if isinstance(m, AeOpen))
    assert a.handle("x", AeRecords(session, 5, (), ()), 0.0) == []  # from a stranger
    assert a.handle("b", AeRecords(session, 99, (), ()), 0.0) == []  # no such request
    net.run()
    assert a.handle("b", AeTreeHashes(session, 1, (1, 2)), 0.0) == []  # session already over
    assert_converged(net, joined([mem("m1", 1), mem("m2", 1)]))


def test_one_percent_divergence_over_13k_partitions(capsys: pytest.CaptureFixture[str]) -> None:
    bits, rng = 17, random.Random(5)
    base: list[Record] = []
    parts: set[int] = set()
    i = 0
    while len(parts) < 13_107:
        r = mem(f"m{i}", 1 + i % 1000, "c" * 64)
        base.append(r)
        parts.add(r.partition(bits))
        i += 1
    by_part: dict[int, list[Record]] = {}
    for r in base:
        by_part.setdefault(r.partition(bits), []).append(r)
    diverge = rng.sample(sorted(parts), len(parts) // 100)
    a_side, b_side = list(base), list(base)
    third = len(diverge) // 3  # b newer, a newer, a lacks the item
    b_newer = {id(by_part[p][0]) for p in diverge[:third]}
    a_newer = {id(by_part[p][0]) for p in diverge[third:2 * third]}
    missing = {id(by_part[p][0]) for p in diverge[2 * third:]}
    b_side = [mem(r.key[1], r.hlc + 5000, "new") if id(r) in b_newer else r for r in b_side]
    a_side = [mem(r.key[1], r.hlc + 5000, "new") if id(r) in a_newer else r for r in a_side if id(r) not in missing]
    net, a, b = pair(a_side, b_side, shared=sorted(parts), bits=bits, config=ReplicationConfig())
    net.effects("a", a.start("b", sorted(parts), net.now))
    net.run()
    assert_converged(net, joined(a_side, b_side))
    sa, sb = a.statistics(), b.statistics()
    kinds: dict[str, int] = {}
    for m in net.sent:
        kinds[type(m).__name__] = kinds.get(type(m).__name__, 0) + 1
    with capsys.disabled():
        print(f"\n13107 partitions, {len(diverge)} differing: {len(net.sent)} messages {kinds}, "
              f"a->b {sa.bytes_sent} B, b->a {sb.bytes_sent} B, tree nodes compared {sa.tree_nodes_compared}, "
              f"records fetched {sa.records_received}, pushed {sa.records_sent}")
    assert sa.partitions_differing == len(diverge)
    assert len(net.sent) <= 30
