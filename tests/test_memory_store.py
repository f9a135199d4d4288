"""Storage rules for memories and links, on a bare SQLite connection (no trio, no network)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.errors import Conflict, InvalidArgument, NotFound
from node import link_store, memory_store
from node.database import connect, init_schema
from node.effects import IndexAdd, IndexRemove
from node.memory_store import NewMemory


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    c = connect(tmp_path / "m.sqlite3", fsync="normal")
    init_schema(c)
    return c


def mem(mid: str, content: str, created: int = 1, ns: str = "ns", expires_ms: int | None = None) -> NewMemory:
    v = np.zeros(4, dtype=np.float32)
    v[hash(content) % 4] = 1.0
    return NewMemory(ns, mid, "owner", "note", content, {}, v, "sp", created, expires_ms)


def test_store_effects_and_idempotence(conn: sqlite3.Connection) -> None:
    r = memory_store.store(conn, mem("a", "hello"), now_ms=0)
    assert r.value["created"] and isinstance(r.effects[0], IndexAdd)
    again = memory_store.store(conn, mem("a", "hello"), now_ms=0)
    assert again.value == {"id": "a", "created": False} and again.effects == ()
    dup = memory_store.store(conn, mem("b", "hello"), now_ms=0)
    assert dup.value == {"id": "a", "created": False, "duplicate": True}
    with pytest.raises(Conflict):
        memory_store.store(conn, mem("a", "other"), now_ms=0)
    other_ns = memory_store.store(conn, mem("a", "hello", ns="ns2"), now_ms=0)
    assert other_ns.value["created"]  # duplicates are per namespace


def test_delete_is_a_tombstone(conn: sqlite3.Connection) -> None:
    memory_store.store(conn, mem("a", "hello"), now_ms=0)
    d = memory_store.delete(conn, "ns", "a", hlc=5, now_ms=0)
    assert isinstance(d.effects[0], IndexRemove)
    with pytest.raises(NotFound):
        memory_store.get(conn, "ns", "a", 0)
    row = conn.execute("SELECT deleted, content, vector FROM memories WHERE id='a'").fetchone()
    assert row == (1, "", None)
    with pytest.raises(Conflict):
        memory_store.store(conn, mem("a", "hello"), now_ms=0)
    # The content itself is free again under a new id.
    assert memory_store.store(conn, mem("c", "hello"), now_ms=0).value["created"]


def test_expiry_hides_and_frees(conn: sqlite3.Connection) -> None:
    memory_store.store(conn, mem("a", "temp", expires_ms=100), now_ms=0)
    assert memory_store.get(conn, "ns", "a", 99)["content"] == "temp"
    with pytest.raises(NotFound):
        memory_store.get(conn, "ns", "a", 100)
    assert memory_store.list_page(conn, "ns", limit=10, cursor=None, memory_type=None, now_ms=100)["items"] == []
    r = memory_store.store(conn, mem("b", "temp"), now_ms=100)
    assert r.value["created"] and any(isinstance(e, IndexRemove) for e in r.effects)
    swept = memory_store.sweep_expired(conn, now_ms=200, hlc=9)
    assert swept.value == 0  # already retired when its content was reused


def test_malformed_cursor(conn: sqlite3.Connection) -> None:
    with pytest.raises(InvalidArgument):
        memory_store.list_page(conn, "ns", limit=10, cursor="!!notbase64", memory_type=None, now_ms=0)
    with pytest.raises(InvalidArgument):
        memory_store.list_page(conn, "ns", limit=10, cursor=memory_store.encode_cursor(1), memory_type=None, now_ms=0)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 40), limit=st.integers(1, 12), created=st.lists(st.integers(1, 5), min_size=40, max_size=40))
def test_paging_never_skips_or_repeats(tmp_path_factory: pytest.TempPathFactory, n: int, limit: int,
                                       created: list[int]) -> None:
    c = connect(tmp_path_factory.mktemp("p") / "m.sqlite3", fsync="normal")
    init_schema(c)
    for i in range(n):  # many equal `created` values: the rowid tie-break must hold
        memory_store.store(c, mem(f"m{i}", f"text {i}", created=created[i]), now_ms=0)
    seen: list[str] = []
    cursor = None
    while True:
        page = memory_store.list_page(c, "ns", limit=limit, cursor=cursor, memory_type=None, now_ms=0)
        seen += [m["id"] for m in page["items"]]
        if not page["truncated"]:
            break
        cursor = page["next_cursor"]
    assert sorted(seen) == sorted(f"m{i}" for i in range(n)) and len(seen) == n
    c.close()


def test_related_breadth_first_and_permission_filter(conn: sqlite3.Connection) -> None:
    for mid in "abc":
        memory_store.store(conn, mem(mid, f"t{mid}"), now_ms=0)
    memory_store.store(conn, mem("s", "secret", ns="hidden"), now_ms=0)
    link_store.link(conn, ns="ns", from_id="a", to_ns="ns", to_id="b", relation="r", weight=1, hlc=1, owner="o", now_ms=0)
    link_store.link(conn, ns="ns", from_id="a", to_ns="hidden", to_id="s", relation="r", weight=1, hlc=1, owner="o", now_ms=0)
    link_store.link(conn, ns="ns", from_id="b", to_ns="ns", to_id="c", relation="r", weight=1, hlc=1, owner="o", now_ms=0)
    out = link_store.related(conn, "ns", "a", depth=2, relation=None, direction="out", limit=10, now_ms=0,
                             readable=lambda ns: ns != "hidden")
    assert [(m["id"], m["depth"], m["via"]) for m in out["items"]] == [("b", 1, "a"), ("c", 2, "b")]
    capped = link_store.related(conn, "ns", "a", depth=2, relation=None, direction="out", limit=1, now_ms=0)
    assert capped["truncated"] and len(capped["items"]) == 1
    memory_store.delete(conn, "ns", "b", hlc=3, now_ms=0)
    assert link_store.related(conn, "ns", "a", depth=2, relation=None, direction="out", limit=10, now_ms=0,
                              readable=lambda ns: ns != "hidden")["items"] == []


def test_search_fast_path_falls_back_when_index_and_snapshot_disagree(conn: sqlite3.Connection) -> None:
    """A record deleted in SQLite but not yet removed from the index must not shorten the page."""
    from node.search import compile_filter, run_search
    from node.vector_index import VectorIndex, VectorIndexConfig

    idx = VectorIndex(4, None, VectorIndexConfig())
    rng = np.random.default_rng(3)
    for i in range(6):
        v = rng.standard_normal(4).astype(np.float32)
        r = memory_store.store(conn, NewMemory("ns", f"m{i}", "o", "note", f"text {i}", {}, v, "sp", i + 1, None), 0)
        for e in r.effects:
            idx.add(e.rowid, e.vector, e.group)
    q = rng.standard_normal(4).astype(np.float32)
    top = idx.search(q, 1, groups=[1]).hits[0][0]
    top_id = conn.execute("SELECT id FROM memories WHERE rowid=?", (top,)).fetchone()[0]
    conn.execute("UPDATE memories SET deleted=1 WHERE rowid=?", (top,))  # committed, index not yet told
    flt = compile_filter({}, 0)
    for expiring in ({}, {999: 1}):
        found, exhaustive = run_search(conn, idx, q, k=3, groups=[1], flt=flt, expiring=expiring)
        assert len(found) == 3 and exhaustive and top_id not in {m["id"] for m, _ in found}
