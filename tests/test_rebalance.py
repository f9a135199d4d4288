"""Rebalancing: after a join or a removal every moved partition ends with identical digests on its new
owners, an old owner drops a partition only once every new owner holds everything it held, writes
during the move (to either placement's owners) are never lost, and loss, duplication and a dead old
owner only delay the move."""

from __future__ import annotations

import random
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ring.config import ReplicationConfig
from ring.memstore import MemoryReplicaStore
from ring.messages import (
    ApplyRecords,
    DropPartitions,
    ItemRef,
    RbConfirm,
    RbPage,
    RbPages,
    RbPull,
    RbPullMany,
    RbSweepMe,
    Send,
)
from ring.partition import Placement, StorageNode, diff
from ring.rebalance import Rebalancer
from ring.records import Kind, Record, merge
from ring.replicaview import MemoryView, wire_bytes

BITS = 5
CONFIG = ReplicationConfig(rebalance_transfers_in_flight_max=3, rebalance_records_per_page_max=4,
                           rebalance_request_timeout_s=1.0, rebalance_retry_backoff_s=2.0,
                           rebalance_nudge_interval_s=5.0)
Item = tuple[Kind, tuple[str, ...]]


def mem(mid: str, hlc: int, content: str = "x") -> Record:
    return Record(Kind.MEMORY, ("ns", mid), {"id": mid, "ns": "ns", "hlc": hlc, "deleted": False, "content": content})


def placement(names: Iterable[str]) -> Placement:
    return Placement([StorageNode(n) for n in names], n_replicas=3, partition_bits=BITS)


class Cluster:
    """Rebalancers and stores over an in-memory link (seeded loss, duplication, reordering, dead nodes),
    a virtual clock, and a client writing to either placement's owners while the move runs."""

    def __init__(self, old: Placement, new: Placement, seed: int = 0, loss: float = 0.0, dup: float = 0.0,
                 dead: Iterable[str] = (), writes: int = 0, initial: int = 120,
                 config: ReplicationConfig = CONFIG) -> None:
        self.old, self.new, self.config = old, new, config
        self.rng = random.Random(seed)
        self.loss, self.dup, self.dead = loss, dup, set(dead)
        names = sorted(set(old.nodes) | set(new.nodes))
        self.stores = {n: MemoryReplicaStore(BITS) for n in names}
        self.engines = {n: Rebalancer(n, MemoryView(self.stores[n], n), config, random.Random(seed * 31 + i), 0.0)
                        for i, n in enumerate(names)}
        self.model: dict[Item, Record] = {}
        self.dropped: set[tuple[str, int]] = set()
        self.queue: list[tuple[str, str, object]] = []
        self.sent: list[tuple[str, str, object]] = []
        self.writes_left, self.next_id, self.now = writes, 0, 0.0
        for _ in range(initial):
            self.write(old)
        self.movements = diff(old, new)
        for n in self.live:
            self.effects(n, self.engines[n].plan(self.movements, 0.0))

    @property
    def live(self) -> list[str]:
        return [n for n in self.engines if n not in self.dead]

    def write(self, pl: Placement) -> None:
        """A new memory or a newer version of an old one, stored on every owner of `pl` (a coordinator
        on the old placement whose write an old owner refuses after dropping retries on the new one)."""
        if self.model and self.rng.random() < 0.3:
            old = self.rng.choice(sorted(self.model.values(), key=lambda r: r.key))
            r = mem(old.key[1], old.hlc + 1, "v2")
        else:
            self.next_id += 1
            r = mem(f"m{self.next_id}", 1)
        p = r.partition(BITS)
        owners = pl.preference(p)
        if any((n, p) in self.dropped for n in owners):
            owners = self.new.preference(p)
        for n in owners:
            if n not in self.dead:
                self.stores[n].apply(r)
        m = merge(self.model.get((r.kind, r.key)), r)
        assert m is not None
        self.model[(r.kind, r.key)] = m

    def effects(self, node: str, effects: Iterable[object]) -> None:
        for e in effects:
            if isinstance(e, Send):
                self.sent.append((node, e.to, e.msg))
                if e.to in self.dead or self.rng.random() < self.loss:
                    continue
                self.queue.append((node, e.to, e.msg))
                if self.rng.random() < self.dup:
                    self.queue.append((node, e.to, e.msg))
            elif isinstance(e, ApplyRecords):
                for r in e.records:
                    self.stores[node].apply(r)
            elif isinstance(e, DropPartitions):
                for p in e.partitions:
                    self.check_safe_to_drop(node, p)
                    self.stores[node].drop([p])
                    self.dropped.add((node, p))

    def check_safe_to_drop(self, node: str, p: int) -> None:
        """The safety property: every copy the dropping node holds is merged into every new owner's copy."""
        assert node not in self.new.preference(p)
        for owner in self.new.preference(p):
            if owner in self.dead:
                continue
            for r in self.stores[node].records(p):
                theirs = self.stores[owner].get(r.kind, r.key)
                assert theirs is not None and merge(theirs, r) == theirs, (node, owner, p, r.key)

    def run(self, steps_max: int = 100_000) -> None:
        for _ in range(steps_max):
            for n in self.live:
                e = self.engines[n]
                assert len(e._active) + len(e._groups) <= self.config.rebalance_transfers_in_flight_max  # back-pressure
            if self.queue:
                if self.writes_left and self.rng.random() < 0.1:
                    self.writes_left -= 1
                    self.write(self.old if self.rng.random() < 0.5 else self.new)
                src, dst, msg = self.queue.pop(self.rng.randrange(len(self.queue)))
                self.effects(dst, self.engines[dst].handle(src, msg, self.now))
                continue
            if all(self.engines[n].settled() for n in self.live):
                return
            self.now = max(self.now, min(self.engines[n].next_deadline() for n in self.live))
            for n in self.live:
                self.effects(n, self.engines[n].tick(self.now))
        raise AssertionError("rebalancing did not settle")

    def assert_moved(self) -> None:
        for p in range(1 << BITS):
            owners = [n for n in self.new.preference(p) if n not in self.dead]
            digests = {n: self.stores[n].digest(p) for n in owners}
            assert len({(d.sum, d.count) for d in digests.values()}) == 1, (p, digests)
            want = {k: r for k, r in self.model.items() if r.partition(BITS) == p}
            for n in owners:
                assert {(r.kind, r.key): r for r in self.stores[n].records(p)} == want, (p, n)
        for m in self.movements:
            for n in m.lost:
                if n not in self.dead:
                    assert not list(self.stores[n].records(m.partition)) and (n, m.partition) in self.dropped


def test_join_moves_partitions_to_the_newcomer_and_old_owners_drop_after_confirming() -> None:
    old, new = placement(["a", "b", "c", "d"]), placement(["a", "b", "c", "d", "e"])
    c = Cluster(old, new)
    gained = [m.partition for m in c.movements if "e" in m.gained]
    assert gained and all(m.gained == ("e",) for m in c.movements)
    assert all(c.engines["e"].pending(p) for p in gained)
    c.run()
    c.assert_moved()
    s = c.engines["e"].statistics()
    assert s.partitions_gained == s.partitions_pulled == len(gained)
    assert s.confirms_sent >= len(gained) and s.timeouts == 0
    assert sum(c.engines[n].statistics().partitions_dropped for n in "abcd") == len(c.movements)


@pytest.mark.parametrize("before", [["a", "b", "c", "d", "e"], ["a", "b", "e"]])
def test_graceful_removal_hands_the_leavers_partitions_over(before: list[str]) -> None:
    """With three nodes left of three the partitions gain no owner: the remaining owners vouch instead
    (they sweep the leaver when it asks)."""
    old, new = placement(before), placement([n for n in before if n != "e"])
    c = Cluster(old, new)
    assert all(m.lost == ("e",) for m in c.movements)
    c.run()
    c.assert_moved()
    assert not c.stores["e"].partitions() and c.engines["e"].settled()


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32), st.booleans())
def test_writes_during_the_move_are_not_lost(seed: int, join: bool) -> None:
    five, four = placement(["a", "b", "c", "d", "e"]), placement(["a", "b", "c", "d"])
    c = Cluster(four, five, seed=seed, writes=80) if join else Cluster(five, four, seed=seed, writes=80)
    c.run()
    c.assert_moved()


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**32), st.floats(0.0, 0.3), st.floats(0.0, 0.3))
def test_loss_and_duplication_only_delay_the_move(seed: int, loss: float, dup: float) -> None:
    c = Cluster(placement(["a", "b", "c", "d"]), placement(["a", "b", "c", "d", "e"]), seed=seed, loss=loss, dup=dup,
                writes=30)
    c.run()
    c.assert_moved()


def test_a_dead_old_owner_is_replaced_by_the_others_and_pulls_resume_at_the_cursor() -> None:
    old, new = placement(["a", "b", "c", "d", "e"]), placement(["a", "b", "c", "d"])
    c = Cluster(old, new, dead=["e"], initial=200)
    c.run()
    c.assert_moved()
    assert sum(c.engines[n].statistics().timeouts for n in c.live) >= 1
    resumed = [msg for src, dst, msg in c.sent if isinstance(msg, RbPull) and dst != "e" and msg.after is not None]
    first_pulls_from_others = [msg for src, dst, msg in c.sent if isinstance(msg, RbPull) and dst != "e"]
    assert first_pulls_from_others and resumed  # multi-page partitions moved from the remaining owners


def test_a_loser_written_after_confirming_waits_for_a_fresh_sweep() -> None:
    old, new = placement(["a", "b", "c", "d"]), placement(["a", "b", "c", "d", "e"])
    c = Cluster(old, new, initial=40)
    m = next(m for m in c.movements if "e" in m.gained)
    p, loser = m.partition, m.lost[0]
    # deliver until e sends its confirm for p, then write to the loser before the confirm arrives
    for _ in range(10_000):
        i = next((i for i, (s, d, x) in enumerate(c.queue) if isinstance(x, RbConfirm) and x.partition == p), None)
        if i is not None:
            break
        src, dst, msg = c.queue.pop(0)
        c.effects(dst, c.engines[dst].handle(src, msg, c.now))
    else:
        raise AssertionError("no confirm")
    extra = next(mem(f"x{i}", 1) for i in range(10_000) if mem(f"x{i}", 1).partition(BITS) == p)
    for n in m.old:
        c.stores[n].apply(extra)
    c.model[(extra.kind, extra.key)] = extra
    c.run()
    c.assert_moved()
    assert c.engines[loser].statistics().confirms_stale >= 1


def test_pages_are_bounded_and_serving_is_stateless() -> None:
    store = MemoryReplicaStore(BITS)
    rs = [mem(f"m{i}", 1, "y" * 300) for i in range(400)]
    for r in rs:
        store.apply(r)
    p = rs[0].partition(BITS)
    e = Rebalancer("a", MemoryView(store, "a"),
                   ReplicationConfig(rebalance_records_per_page_max=5, rebalance_page_bytes_max=1000),
                   random.Random(1), 0.0)
    after: ItemRef | None = None
    got: list[Record] = []
    for _ in range(1000):
        out = e.handle("b", RbPull(7, p, after), 0.0)
        assert isinstance(out[0], Send) and isinstance(out[0].msg, RbPage)
        page = out[0].msg
        assert 1 <= len(page.records) <= 5 or (not page.records and page.next is None)
        got += page.records
        if page.next is None:
            break
        after = page.next
    assert got == list(store.records(p)) and page.digest == (store.digest(p).sum, store.digest(p).count)


@pytest.mark.parametrize("names", [["a", "b"], ["a", "b", "c", "d", "e", "f"]])
def test_replanning_to_the_same_move_keeps_progress(names: list[str]) -> None:
    old, new = placement(names), placement([*names, "z"])
    c = Cluster(old, new, initial=60)
    for _ in range(20):
        if c.queue:
            src, dst, msg = c.queue.pop(0)
            c.effects(dst, c.engines[dst].handle(src, msg, c.now))
    for n in c.live:
        c.effects(n, c.engines[n].plan(c.movements, c.now))
    c.run()
    c.assert_moved()


def test_a_join_pulls_many_partitions_per_round_trip() -> None:
    """Whole partitions travel many to a reply: with room for every record in one page, the newcomer
    pulls from each old owner in one round trip, however many partitions it gained from it."""
    old, new = placement(["a", "b", "c", "d"]), placement(["a", "b", "c", "d", "e"])
    cfg = CONFIG.replace(rebalance_records_per_page_max=1000)
    c = Cluster(old, new, initial=60, config=cfg)
    c.run()
    c.assert_moved()
    pulls = [(dst, msg) for src, dst, msg in c.sent if src == "e" and isinstance(msg, RbPull | RbPullMany)]
    sources = {loser for m in c.movements for loser in m.lost}
    gained = [m.partition for m in c.movements if "e" in m.gained]
    assert len(gained) > len(sources)
    assert sorted(dst for dst, _ in pulls) == sorted(sources)  # one pull per source
    assert sum(len(msg.partitions) for _, msg in pulls if isinstance(msg, RbPullMany)) == len(gained)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 12), st.integers(1, 4000), st.lists(st.integers(0, 1 << BITS - 1), min_size=1, max_size=12,
                                                          unique=True))
def test_a_pull_of_many_partitions_serves_whole_ones_and_cuts_only_the_last(
        records_max: int, bytes_max: int, partitions: list[int]) -> None:
    store = MemoryReplicaStore(BITS)
    for i in range(90):
        store.apply(mem(f"m{i}", 1, "z" * (i % 7) * 40))
    e = Rebalancer("a", MemoryView(store, "a"), ReplicationConfig(
        rebalance_records_per_page_max=records_max, rebalance_page_bytes_max=bytes_max), random.Random(1), 0.0)
    out = e.handle("b", RbPullMany(9, tuple(partitions)), 0.0)
    assert len(out) == 1 and isinstance(out[0], Send) and isinstance(out[0].msg, RbPages)
    pages = out[0].msg.pages
    assert [pg.partition for pg in pages] == partitions[:len(pages)]  # a prefix, in the order asked
    assert pages, "a reply always makes progress"
    for pg in pages:
        have = list(store.records(pg.partition))
        d = store.digest(pg.partition)
        assert pg.transfer == 9 and pg.after is None and pg.digest == (d.sum, d.count)
        if pg.next is None:
            assert list(pg.records) == have  # whole
        else:
            assert pg is pages[-1] and pg.records and list(pg.records) == have[:len(pg.records)]
    served = sum(len(pg.records) for pg in pages)
    assert served <= records_max
    if len(pages) < len(partitions):  # stopped early only because the budget ran out
        sent_bytes = sum(wire_bytes(r) for pg in pages for r in pg.records)
        assert pages[-1].next is not None or served >= records_max or sent_bytes >= bytes_max


def test_a_nudge_while_the_confirm_is_still_queued_costs_a_confirm_not_a_second_pull() -> None:
    """A new owner's RbConfirm waits behind its own writes (the shell sends it once the pages are
    applied). Losers nudging meanwhile get the confirm again; the partition is not transferred twice."""
    old, new = placement(["a", "b", "c", "d"]), placement(["a", "b", "c", "d", "e"])
    c = Cluster(old, new, initial=60)
    held: list[tuple[str, str, object]] = []
    while c.queue:  # deliver everything except e's confirms, which a slow lane holds back
        src, dst, msg = c.queue.pop(0)
        if src == "e" and isinstance(msg, RbConfirm):
            held.append((src, dst, msg))
            continue
        c.effects(dst, c.engines[dst].handle(src, msg, c.now))
    assert held
    c.now += CONFIG.rebalance_nudge_interval_s + 1  # every loser's nudge comes due
    for n in c.live:
        c.effects(n, c.engines[n].tick(c.now))
    assert any(isinstance(msg, RbSweepMe) for _, _, msg in c.queue)
    c.queue.extend(held)
    c.run()
    c.assert_moved()
    served: list[tuple[int, str]] = []  # (partition, loser) for every first page sent to e
    for src, dst, msg in c.sent:
        pages = msg.pages if isinstance(msg, RbPages) else (msg,) if isinstance(msg, RbPage) else ()
        served += [(pg.partition, src) for pg in pages if dst == "e" and pg.after is None]
    assert served and len(served) == len(set(served))  # each partition swept once from its loser
    assert c.engines["e"].statistics().reconfirms_sent >= 1
