"""SlotTable: rows, tombstones, group counts, growth and compaction with writes in between."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.vector_segment import SavedIndex
from node.vector_slots import SlotTable

DIM = 4


def rows(keys: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((len(keys), DIM)).astype(np.float32)
    return np.asarray(keys, dtype=np.int64), vecs, np.asarray([k % 3 for k in keys], dtype=np.int64)


def live(table: SlotTable) -> dict[int, np.ndarray]:
    """key -> vector of every live row, checked against the key map and group counts."""
    out = {int(table.keys[s]): table.vectors[s].copy() for s in np.flatnonzero(table.alive[: table.n]).tolist()}
    assert table.slot_of == {int(table.keys[s]): s for s in np.flatnonzero(table.alive[: table.n]).tolist()}
    counts: dict[int, int] = {}
    for s in np.flatnonzero(table.alive[: table.n]).tolist():
        counts[int(table.groups[s])] = counts.get(int(table.groups[s]), 0) + 1
    assert table.group_live == counts and len(table) == len(out) and table.dead == table.n - len(out)
    return out


def test_readding_a_key_tombstones_its_old_row_and_grows_past_capacity() -> None:
    table = SlotTable(DIM, capacity=2)
    table.append(*rows([1, 2, 3]))
    keys, vecs, groups = rows([2], seed=5)
    table.append(keys, vecs, groups)
    assert table.n == 4 and table.dead == 1 and table.allowed(np.array([2])) == 1
    np.testing.assert_array_equal(live(table)[2], vecs[0])
    table.kill(2)
    table.kill(99)  # absent: no error
    assert set(live(table)) == {1, 3} and table.allowed(None) == 2


@settings(max_examples=60, deadline=None)
@given(first=st.lists(st.integers(0, 40), min_size=1, max_size=60, unique=True),
       removed=st.lists(st.integers(0, 40), max_size=30), later=st.lists(st.integers(0, 40), max_size=20, unique=True),
       removed_later=st.lists(st.integers(0, 40), max_size=10), sealed=st.integers(0, 80))
def test_compaction_keeps_the_live_rows_and_every_change_made_while_copying(
        first: list[int], removed: list[int], later: list[int], removed_later: list[int], sealed: int) -> None:
    table = SlotTable(DIM)
    table.append(*rows(first))
    for key in removed:
        table.kill(key)
    live(table)
    sealed = min(sealed, table.n)
    lock = threading.Lock()
    compacted = table.compacted(lock, sealed, spare=64)
    assert compacted.sealed == int(table.alive[:sealed].sum())
    if later:  # written and removed after the copy, before adopt
        table.append(*rows(later, seed=1))
    for key in removed_later:
        table.kill(key)
    expected = live(table)
    assert table.adopt(compacted)
    got = live(table)
    assert set(got) == set(expected)
    for key, vec in expected.items():
        np.testing.assert_array_equal(got[key], vec)


def test_adopt_refuses_when_the_rows_added_meanwhile_do_not_fit() -> None:
    table = SlotTable(DIM)
    table.append(*rows(list(range(10))))
    compacted = table.compacted(threading.Lock(), 10, spare=0)  # capacity max(1024, 10)
    table.append(*rows(list(range(100, 1200))))
    assert not table.adopt(compacted) and len(table) == 1110


def test_grow_ahead_keeps_rows_and_restore_rejects_duplicate_live_keys() -> None:
    table = SlotTable(DIM, capacity=8)
    table.append(*rows([1, 2, 3, 4, 5]))
    before = live(table)
    table.grow_ahead(threading.Lock(), headroom=10, spare=100)
    assert len(table.keys) >= 105 and live(table).keys() == before.keys()
    keys = np.array([1, 1], dtype=np.int64)
    saved = SavedIndex(np.ones((2, DIM), np.float32), keys, np.zeros(2, np.int64), np.ones(2, bool), 0, (), 0, {})
    with pytest.raises(ValueError):
        SlotTable(DIM).restore(saved, spare=8)
