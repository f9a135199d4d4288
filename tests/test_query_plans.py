"""Per-request storage work must not grow with the size of the store.

A statement that walks a namespace or a table costs O(rows) on every request, so ingest turns
quadratic without any small-data test failing: the duplicate-content check once stopped matching its
partial unique index (migration 3 added `replica = 0` to it) and single-node stores slowed from
~600/s to ~70/s by 20k memories. Here each request's SQLite virtual-machine instructions are counted
with the same request at two table sizes 30x apart; index lookups grow by a B-tree level or two.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from node import link_store, memory_store, signal_store
from node.database import connect, init_schema
from node.memory_store import NewMemory
from ring.merge import Versioned

SMALL, LARGE = 100, 3000
GROWTH_MAX = 2.0  # instructions at LARGE / at SMALL; a scan of the namespace gives ~30


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    c = connect(tmp_path / "q.sqlite3", fsync="normal")
    init_schema(c)
    yield c
    c.close()


def _mem(mid: str, content: str) -> NewMemory:
    v = np.ones(4, dtype=np.float32) / 2
    return NewMemory("ns", mid, "owner", "note", content, {}, v, "sp", 1, None)


def _instructions(conn: sqlite3.Connection, run: Callable[[], object]) -> int:
    count = [0]

    def tick() -> int:
        count[0] += 1
        return 0
    conn.set_progress_handler(tick, 1)
    try:
        run()
    finally:
        conn.set_progress_handler(None, 1)
    return count[0]


def _growth(conn: sqlite3.Connection, fill: Callable[[int, int], None],
            request: Callable[[str], object]) -> dict[str, float]:
    fill(0, SMALL)
    small = _instructions(conn, lambda: request("s"))
    fill(SMALL, LARGE)
    large = _instructions(conn, lambda: request("l"))
    return {"small": small, "large": large, "growth": large / small}


def _fill_memories(conn: sqlite3.Connection) -> Callable[[int, int], None]:
    def fill(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            memory_store.store(conn, _mem(f"seed{i}", f"seed text {i}"), now_ms=0)
    return fill


def test_memory_store_work_is_independent_of_size(conn: sqlite3.Connection) -> None:
    def request(tag: str) -> None:
        memory_store.store(conn, _mem(f"{tag}a", f"{tag} hello"), now_ms=0)
        memory_store.store(conn, _mem(f"{tag}a", f"{tag} hello"), now_ms=0)  # idempotent repeat
        memory_store.store(conn, _mem(f"{tag}b", f"{tag} hello"), now_ms=0)  # duplicate content
        memory_store.get(conn, "ns", f"{tag}a", 0)
        memory_store.delete(conn, "ns", f"{tag}a", hlc=3, now_ms=0)
    g = _growth(conn, _fill_memories(conn), request)
    assert g["growth"] < GROWTH_MAX, g


def test_link_work_is_independent_of_size(conn: sqlite3.Connection) -> None:
    def request(tag: str) -> None:
        memory_store.store(conn, _mem(f"{tag}x", f"{tag} x"), now_ms=0)
        memory_store.store(conn, _mem(f"{tag}y", f"{tag} y"), now_ms=0)
        link_store.link(conn, ns="ns", from_id=f"{tag}x", to_ns="ns", to_id=f"{tag}y", relation="r",
                        weight=1.0, hlc=2, owner="owner", now_ms=0)
        link_store.related(conn, "ns", f"{tag}x", depth=2, relation=None, direction="both", limit=10, now_ms=0)
    g = _growth(conn, _fill_memories(conn), request)
    assert g["growth"] < GROWTH_MAX, g


def test_signal_and_state_work_is_independent_of_size(conn: sqlite3.Connection) -> None:
    def fill(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            signal_store.signal_put(conn, "ns", f"k{i}", Versioned(i, i + 1, "w"), if_version=None, now_ms=0)
            signal_store.state_publish(conn, f"agent{i}", {"i": i}, i + 1)

    def request(tag: str) -> None:
        signal_store.signal_put(conn, "ns", f"{tag}x", Versioned("v", 10_000, "w"), if_version=None, now_ms=0)
        signal_store.signal_get(conn, "ns", f"{tag}x", 0)
        signal_store.signal_incr(conn, "ns", f"{tag}n", 2, hlc=10_001, writer="w", expires_ms=None, now_ms=0)
        signal_store.state_publish(conn, f"{tag}agent", {"s": 1}, 10_002)
        signal_store.state_get(conn, f"{tag}agent")
    g = _growth(conn, fill, request)
    assert g["growth"] < GROWTH_MAX, g
