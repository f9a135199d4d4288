"""Placement properties (issue 4): distinct owners, minimal movement on joins and removals, balance,
capacity proportionality, exact diffs, and determinism across processes and hash seeds."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.errors import InvalidArgument
from ring.partition import (
    Placement,
    StorageNode,
    _targets,
    diff,
    memory_key,
    partition_of,
    partition_range,
    signal_key,
    state_key,
)

ROOT = Path(__file__).resolve().parent.parent
node_ids = st.lists(st.text("abcdef0123456789", min_size=4, max_size=16), min_size=1, max_size=40, unique=True)


def equal(ids: list[str]) -> list[StorageNode]:
    return [StorageNode(i) for i in ids]


@settings(max_examples=60, deadline=None)
@given(ids=node_ids, n=st.integers(1, 5), keys=st.lists(st.tuples(st.text(max_size=8), st.text(max_size=8)), max_size=30))
def test_every_key_has_min_n_nodes_distinct_owners(ids: list[str], n: int, keys: list[tuple[str, str]]) -> None:
    p = Placement(equal(ids), n_replicas=n, partition_bits=8)
    want = min(n, len(ids))
    for ns, k in keys:
        for h in (memory_key(ns, k), signal_key(ns, k), state_key(k)):
            owners = p.owners(h)
            assert len(owners) == want and len(set(owners)) == want and set(owners) <= set(ids)


@settings(max_examples=25, deadline=None)
@given(ids=st.lists(st.text("0123456789abcdef", min_size=8, max_size=8), min_size=3, max_size=30, unique=True),
       newcomer=st.text("ghijk", min_size=8, max_size=8))
def test_a_join_moves_data_only_to_the_new_node_and_about_its_fair_share(ids: list[str], newcomer: str) -> None:
    before = Placement(equal(ids), partition_bits=14)
    after = Placement(equal([*ids, newcomer]), partition_bits=14)
    moves = diff(before, after)
    for m in moves:
        assert m.gained == (newcomer,) and len(m.lost) == 1, m  # nobody else gains anything
    moved = len(moves)  # replicas moved: one per changed partition
    ideal = 3 * before.partitions / (len(ids) + 1)
    assert abs(moved - ideal) <= 0.10 * ideal
    assert after.replica_counts()[newcomer] == moved


@settings(max_examples=25, deadline=None)
@given(ids=st.lists(st.text("0123456789abcdef", min_size=8, max_size=8), min_size=4, max_size=30, unique=True),
       data=st.data())
def test_a_removal_moves_only_the_removed_nodes_data(ids: list[str], data: st.DataObject) -> None:
    gone = data.draw(st.sampled_from(ids))
    before = Placement(equal(ids), partition_bits=12)
    after = Placement(equal([i for i in ids if i != gone]), partition_bits=12)
    moves = diff(before, after)
    assert {m.partition for m in moves} == set(before.partitions_of(gone).tolist())
    for m in moves:
        assert m.lost == (gone,) and len(m.gained) == 1


@settings(max_examples=4, deadline=None)
@given(salt=st.text("xyz", min_size=1, max_size=6))
def test_thirty_equal_nodes_are_balanced_within_five_percent(salt: str) -> None:
    p = Placement(equal([f"{salt}-node-{i}" for i in range(30)]))
    counts = np.array(list(p.replica_counts().values()))
    assert counts.sum() == 3 * p.partitions
    assert counts.max() / counts.mean() <= 1.05


@settings(max_examples=4, deadline=None)
@given(caps=st.lists(st.sampled_from([1.0, 1.5, 2.0, 4.0]), min_size=12, max_size=30), salt=st.text("xyz", max_size=4))
def test_load_is_proportional_to_capacity(caps: list[float], salt: str) -> None:
    p = Placement([StorageNode(f"{salt}n{i}", c) for i, c in enumerate(caps)])
    target = _targets(np.array(p.capacities), 3) * p.partitions
    counts = np.array([p.replica_counts()[n] for n in p.nodes])
    assert np.all(np.abs(counts / target - 1) <= 0.05), counts / target


def test_a_node_bigger_than_a_replica_share_holds_every_partition_once() -> None:
    p = Placement([StorageNode("big", 100.0), *(StorageNode(f"s{i}") for i in range(5))], partition_bits=12)
    assert p.replica_counts()["big"] == pytest.approx(p.partitions, rel=0.02)
    assert all(len(set(p.preference(q))) == 3 for q in range(0, p.partitions, 97))


@settings(max_examples=30, deadline=None)
@given(a=node_ids, b=node_ids, n=st.integers(1, 4))
def test_diff_is_exactly_the_partitions_whose_owner_sets_differ(a: list[str], b: list[str], n: int) -> None:
    old, new = Placement(equal(a), n, partition_bits=7), Placement(equal(b), n, partition_bits=7)
    got = {m.partition: m for m in diff(old, new)}
    want = {q for q, (x, y) in enumerate(zip(old.owner_sets(), new.owner_sets(), strict=True)) if x != y}
    assert set(got) == want
    for q, m in got.items():
        assert set(m.gained) == set(new.preference(q)) - set(old.preference(q))
        assert set(m.lost) == set(old.preference(q)) - set(new.preference(q))


@settings(max_examples=20, deadline=None)
@given(ids=node_ids, data=st.data())
def test_input_order_does_not_matter(ids: list[str], data: st.DataObject) -> None:
    shuffled = data.draw(st.permutations(ids))
    assert np.array_equal(Placement(equal(ids), partition_bits=8).table, Placement(equal(shuffled), partition_bits=8).table)


@settings(max_examples=30, deadline=None)
@given(ids=st.lists(st.text("abc123", min_size=3, max_size=6), min_size=5, max_size=12, unique=True),
       part=st.integers(0, 255), count=st.integers(1, 4), data=st.data())
def test_stand_ins_follow_the_owners_and_skip_the_unavailable(ids: list[str], part: int, count: int,
                                                             data: st.DataObject) -> None:
    p = Placement(equal(ids), partition_bits=8)
    down = set(data.draw(st.lists(st.sampled_from(ids), max_size=3)))
    got = p.stand_ins(part, down, count)
    assert not set(got) & (set(p.preference(part)) | down) and len(set(got)) == len(got)
    assert len(got) == min(count, len(set(ids) - set(p.preference(part)) - down))
    # Rendezvous order: with nobody down, the stand-ins continue the preference list, i.e. a
    # placement with more replicas would name exactly these next.
    wider = Placement(equal(ids), n_replicas=3 + count, partition_bits=8).preference(part)
    assert p.stand_ins(part, set(), count) == list(wider[3:3 + count])


def test_partitions_are_equal_ranges_of_the_key_space() -> None:
    bits = 10
    lo, hi = partition_range(5, bits)
    assert hi - lo == 1 << 54 and partition_of(lo, bits) == 5 and partition_of(hi - 1, bits) == 5
    assert partition_range(2**bits - 1, bits)[1] == 1 << 64
    assert memory_key("ns", "a") != signal_key("ns", "a") != state_key("a")  # kinds never collide by design


def test_bad_placements_are_refused() -> None:
    with pytest.raises(InvalidArgument):
        Placement([StorageNode("a"), StorageNode("a")])
    with pytest.raises(InvalidArgument):
        Placement([StorageNode("a", 0.0)])
    with pytest.raises(InvalidArgument):
        Placement([StorageNode("a")], n_replicas=0)
    assert Placement([], partition_bits=4).owners(123) == ()


def _table_digest(ids: list[str], caps: list[float]) -> str:
    p = Placement([StorageNode(i, c) for i, c in zip(ids, caps, strict=True)], partition_bits=12)
    return hashlib.sha256(p.table.tobytes() + repr(p.nodes).encode()).hexdigest()


def test_placement_is_the_same_in_other_processes_and_hash_seeds() -> None:
    ids = [f"node-{i}" for i in range(12)]
    caps = [1.0, 2.0, 3.0] * 4
    here = (_table_digest(ids, [1.0] * 12), _table_digest(ids, caps))
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from tests.test_partition import _table_digest as d; "
            "ids=[f'node-{i}' for i in range(12)]; print(d(ids, [1.0]*12), d(ids, [1.0, 2.0, 3.0]*4))")
    for seed in ("0", "12345"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": seed}).stdout.split()
        assert tuple(out) == here
