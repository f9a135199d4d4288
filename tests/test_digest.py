"""Anti-entropy digests: order-free multiset hashes, exact undo, and a top-down tree diff that finds
exactly the differing partitions while comparing few nodes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crypto.errors import InvalidArgument
from ring.digest import HASH_MASK, DigestTree, RangeDigest, diff, item_hash, tree

ROOT = Path(__file__).resolve().parent.parent
u64 = st.integers(0, HASH_MASK)
# A small alphabet, so equal multisets (and repeats inside one) are common.
items = st.tuples(st.sampled_from(["a", "b", "ab", ""]), st.integers(0, 2), st.booleans())


def digest_of(hashes: list[int]) -> RangeDigest:
    d = RangeDigest()
    for h in hashes:
        d.add(h)
    return d


def item(i: tuple[str, int, bool]) -> int:
    return item_hash(("ns", i[0]), [i[1], i[2]])


# ---------------------------------------------------------------- item hash


def test_item_hash_is_pinned_across_processes_and_hash_seeds() -> None:
    """The digest is compared between nodes: it must not depend on the process or PYTHONHASHSEED."""
    code = "from ring.digest import item_hash; print(item_hash(('ns', 'm1'), [17, 'w', False]))"
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip() for seed in ("0", "1", "77")}
    assert outs == {str(item_hash(("ns", "m1"), [17, "w", False]))}
    assert item_hash(("ns", "m1"), [17, "w", False]) == 0x2C9B277DB6820FB5  # change only with a wire version bump


def test_item_hash_treats_tuples_as_lists_and_keeps_meanings_apart() -> None:
    assert item_hash(("ns", "k"), (1, False)) == item_hash(["ns", "k"], [1, False])
    distinct = [item_hash(k, v) for k, v in [
        (("ns", "ab"), 1), (("nsa", "b"), 1), (("ns", "ab"), True), (("ns", "ab"), 1.0), (("ns", "ab"), "1"),
        (("ns", "ab"), [1, False]), (("ns", "ab"), [1, True]), (["ns", "ab", 1], None), ("\ud800", 0),
    ]]
    assert len(set(distinct)) == len(distinct)
    assert all(0 <= h <= HASH_MASK for h in distinct)


# ---------------------------------------------------------------- range digest


@given(st.lists(u64, max_size=30), st.randoms(use_true_random=False))
def test_digest_is_independent_of_insertion_order(hashes: list[int], rng: Any) -> None:
    assert digest_of(hashes) == digest_of(rng.sample(hashes, len(hashes)))


@given(st.lists(u64, max_size=10), u64)
def test_add_then_remove_restores_the_digest(hashes: list[int], h: int) -> None:
    d = digest_of(hashes)
    before = d.copy()
    d.add(h)
    assert d != before
    d.remove(h)
    assert d == before
    d.remove(h)  # and the other way round: a group, so a remove may come first
    d.add(h)
    assert d == before


@given(st.lists(items, max_size=6), st.lists(items, max_size=6))
def test_equal_multisets_iff_equal_digests(a: list[Any], b: list[Any]) -> None:
    same = digest_of([item(i) for i in a]) == digest_of([item(i) for i in b])
    assert same == (Counter(a) == Counter(b))


@given(st.lists(items, min_size=1, max_size=8), st.data())
def test_superseding_a_version_matches_a_fresh_digest(stored: list[Any], data: st.DataObject) -> None:
    """remove(old) + add(new) on a write gives the digest a replica that only ever saw `new` has."""
    victim = data.draw(st.sampled_from(stored))
    replacement = data.draw(items)
    d = digest_of([item(i) for i in stored])
    d.remove(item(victim))
    d.add(item(replacement))
    after = list(stored)
    after[after.index(victim)] = replacement
    assert d == digest_of([item(i) for i in after])


def test_range_digest_validates_and_round_trips() -> None:
    d = digest_of([1, 2, HASH_MASK])
    assert (d.sum, d.count) == (2, 3)
    assert RangeDigest.from_wire(json.loads(json.dumps(d.to_wire()))) == d
    for bad in (-1, 1 << 64, True, 1.0, "1"):
        with pytest.raises(InvalidArgument):
            d.add(bad)  # type: ignore[arg-type]
    for wire in ([1], [1, -1], "x", None):
        with pytest.raises(InvalidArgument):
            RangeDigest.from_wire(wire)


# ---------------------------------------------------------------- tree and diff


@st.composite
def tree_pair(draw: st.DrawFn) -> tuple[list[int], dict[int, RangeDigest], dict[int, RangeDigest], int]:
    ids = draw(st.lists(st.integers(0, 5000), unique=True, max_size=300))
    fanout = draw(st.sampled_from([2, 3, 16]))
    seeds = draw(st.lists(u64, min_size=len(ids), max_size=len(ids)))
    a = {p: RangeDigest(s, s % 7) for p, s in zip(ids, seeds, strict=True)}
    b = {p: d.copy() for p, d in a.items()}
    changed = draw(st.lists(st.sampled_from(ids), unique=True, max_size=10)) if ids else []
    for p in changed:
        b[p].add(draw(u64))  # the count changes, so the digest always does
    drop_one: bool = draw(st.booleans())
    if changed and drop_one:
        del a[changed[0]]  # a partition one side has no digest for counts as empty
    return ids, a, b, fanout


@given(tree_pair())
def test_diff_returns_exactly_the_differing_partitions(case: Any) -> None:
    ids, a, b, fanout = case
    expected = sorted(p for p in ids if a.get(p, RangeDigest()) != b[p])
    ta, tb = tree(ids, a, fanout), tree(list(reversed(ids)), b, fanout)
    assert diff(ta, tb).partitions == expected
    assert diff(tb, ta).partitions == expected
    assert (ta.root == tb.root) == (not expected)
    # Top-down: only children of differing nodes are looked at.
    assert diff(ta, tb).nodes_compared <= 1 + len(expected) * fanout * (ta.depth - 1)


@given(tree_pair())
def test_identical_trees_compare_only_the_root(case: Any) -> None:
    ids, a, _, fanout = case
    result = diff(tree(ids, a, fanout), tree(ids, {p: d.copy() for p, d in a.items()}, fanout))
    assert result.partitions == [] and result.nodes_compared == 1


def test_one_difference_among_a_nodes_share_of_partitions_costs_a_few_dozen_comparisons() -> None:
    ids = list(range(0, 1 << 17, 10))  # 13 108 partitions: a 30-node cluster's share at N=3
    a = {p: RangeDigest(p, 1) for p in ids}
    b = {p: d.copy() for p, d in a.items()}
    b[ids[4321]].add(99)
    ta, tb = tree(ids, a), tree(ids, b)
    result = diff(ta, tb)
    assert result.partitions == [ids[4321]]
    assert ta.depth == 5 and result.nodes_compared <= 1 + 16 * 4


@given(tree_pair())
def test_wire_round_trip_and_a_remote_diff_step_by_step(case: Any) -> None:
    ids, a, b, fanout = case
    local, remote = tree(ids, a, fanout), tree(ids, b, fanout)
    received = DigestTree.from_wire(json.loads(json.dumps(remote.to_wire())))
    assert received == remote and received.root == remote.root
    # The message exchange a node would run: ask for the hashes of the frontier, descend where they differ.
    frontier, level = [0], 0
    while True:
        frontier = local.differing(level, frontier, received.hashes(level, frontier))
        if not frontier or level == local.depth - 1:
            break
        frontier, level = local.children(level, frontier), level + 1
    assert local.partitions_at(frontier) == diff(local, remote).partitions


def test_trees_over_different_partitions_are_not_compared() -> None:
    a, b = tree([1, 2, 3], {}), tree([1, 2, 4], {})
    assert a.root != b.root
    with pytest.raises(InvalidArgument):
        diff(a, b)
    with pytest.raises(InvalidArgument):
        diff(tree([1, 2, 3], {}, 2), tree([1, 2, 3], {}, 3))
    empty = tree([], {})
    assert diff(empty, tree([], {})).nodes_compared == 1 and empty.root != tree([0], {}).root


def test_tree_rejects_bad_input() -> None:
    for ids in ([1, 1], [-1], [True], ["1"], [1.5], "12"):
        with pytest.raises(InvalidArgument):
            tree(ids, {})  # type: ignore[arg-type]
    for fanout in (1, 257, True):
        with pytest.raises(InvalidArgument):
            tree([1], {}, fanout)
    t = tree([1, 2, 3], {}, 2)
    with pytest.raises(InvalidArgument):
        t.hashes(t.depth, [0])
    with pytest.raises(InvalidArgument):
        t.hashes(0, [1])
    with pytest.raises(InvalidArgument):
        t.differing(0, [0], [])
    good = t.to_wire()
    bad: object
    for bad in ({**good, "ids": [2, 1, 3]}, {**good, "leaves": good["leaves"][:2]}, {**good, "fanout": 0},
                {**good, "leaves": [-1, 0, 0]}, {"ids": [], "leaves": []}, [good]):
        with pytest.raises(InvalidArgument):
            DigestTree.from_wire(bad)


def test_numpy_partition_ids_are_accepted() -> None:
    np = pytest.importorskip("numpy")
    arr = np.array([5, 3, 9], dtype=np.int64)
    assert tree(arr, {3: RangeDigest(1, 1)}).ids == (3, 5, 9)
    assert tree(arr, {3: RangeDigest(1, 1)}) == tree([3, 5, 9], {3: RangeDigest(1, 1)})
