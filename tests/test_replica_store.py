"""The SQLite replica store behaves exactly like the in-memory reference (ring.memstore): same copies,
same digests, same pages; digests survive a reopen; drop, tombstone GC and hints; memories of the
ring are materialised for local reads (tombstones stay dead, equal contents under two ids both live)."""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crypto.errors import InvalidArgument, NotFound
from node import memory_store
from node.database import SCHEMA_VERSION, Database, connect, migrate, schema_version
from node.effects import DigestDelta, IndexAdd, IndexRemove
from node.memory_records import memory_record, tombstone_record
from node.memory_store import NewMemory
from node.replica_store import ReplicaStore
from ring.digest import RangeDigest
from ring.handoff import HintQueue
from ring.memstore import MemoryReplicaStore
from ring.merge import Versioned
from ring.messages import Hint, PutAck
from ring.records import Kind, Record
from ring.replicaview import MemoryView
from tests.crdt_strategies import counter_states, set_states

BITS = 3  # 8 partitions: several items share one, so paging is exercised
NOW = 1_000
hlcs = st.integers(1, 40)
writers = st.sampled_from(["w1", "w2"])
values = st.one_of(st.integers(-3, 3), st.text(max_size=3), st.none(), st.lists(st.integers(0, 2), max_size=2))
MEM_KEYS = [("ns", "m1"), ("ns", "m2"), ("x", "m3"), ("ns", "m4")]


@asynccontextmanager
async def running(path: Path) -> AsyncIterator[tuple[ReplicaStore, list[Any]]]:
    """A real Database with a ReplicaStore chained into its on_commit; yields (store, effects seen)."""
    db = Database(path, fsync="normal")
    store = ReplicaStore(db, partition_bits=BITS)
    seen: list[Any] = []

    def on_commit(effects: list[Any]) -> None:
        store.on_commit(effects)
        seen.extend(effects)

    db.on_commit = on_commit
    try:
        async with trio.open_nursery() as n:
            await n.start(db.run)
            yield store, seen
            n.cancel_scope.cancel()
    finally:
        store.close()
        await db.aclose()


def mem(key: tuple[str, str], content: str, hlc: int, *, expires_ms: int | None = None,
        vector: bool = True) -> Record:
    v = np.array([len(content), 1.0, hlc], dtype=np.float32) if vector else None
    return memory_record(NewMemory(key[0], key[1], "o", "note", content, {"h": hlc}, v, "sp", hlc, expires_ms))


@st.composite
def memories(draw: st.DrawFn) -> Record:
    key = draw(st.sampled_from(MEM_KEYS))
    if draw(st.integers(0, 3)) == 0:
        return tombstone_record(key[0], key[1], draw(hlcs), "o")
    return mem(key, draw(st.sampled_from(["a", "b"])), draw(hlcs),
               expires_ms=draw(st.sampled_from([None, None, NOW - 1, NOW + 1])), vector=draw(st.booleans()))


@st.composite
def registers(draw: st.DrawFn) -> Record:
    kind, key = draw(st.sampled_from([(Kind.REGISTER, ("ns", "k1")), (Kind.REGISTER, ("ns", "k2")),
                                      (Kind.STATE, ("agent",)), (Kind.LINK, ("ns", "m1", "ns", "m2", "rel"))]))
    return Record(kind, key, Versioned(draw(values), draw(hlcs), draw(writers), draw(st.booleans())))


@st.composite
def crdts(draw: st.DrawFn) -> Record:
    kind = draw(st.sampled_from([Kind.COUNTER, Kind.SET]))
    state = draw(counter_states(writers, st.integers(-5, 5), 3) if kind is Kind.COUNTER else
                 set_states(st.integers(0, 3), st.sampled_from("xy"), 4, tag_per_element=True))
    return Record(kind, ("ns", "c"), {"hlc": draw(hlcs), "epoch": draw(st.sampled_from([0, 0, 10])),
                                      "deleted": draw(st.booleans()), "state": state})


batches = st.lists(st.lists(st.one_of(memories(), registers(), crdts()), min_size=1, max_size=5), max_size=8)


def same(a: Record | None, b: Record | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and a.version == b.version)


def pages(view: Any, method: str, partition: int, limit: int) -> list[Any]:
    """Walk a partition page by page with cursors, as anti-entropy and rebalancing do."""
    out: list[Any] = []
    after = None
    while True:
        page = getattr(view, method)(partition, after, limit)
        out += [x.version if isinstance(x, Record) else x for x in page]
        if len(page) < limit:
            return out
        last = page[-1]
        after = (last.kind.value, last.key) if isinstance(last, Record) else (last[0], last[1])


def check_same(store: ReplicaStore, model: MemoryReplicaStore, conn: sqlite3.Connection) -> None:
    view = MemoryView(model, "me")
    for kind, key in {(r.kind, r.key) for p in range(1 << BITS) for r in model.records(p)} | \
            {(Kind.MEMORY, k) for k in MEM_KEYS}:
        assert same(store.get(kind, key), model.get(kind, key)), (kind, key)
    for p in range(1 << BITS):
        assert store.digests([p]).get(p, RangeDigest()) == model.digest(p), p
        for limit in (1, 2, 100):
            assert pages(store, "summaries", p, limit) == pages(view, "summaries", p, limit)
            assert pages(store, "records_after", p, limit) == pages(view, "records_after", p, limit)
    assert store.partitions() == model.partitions()
    refs = [(k.value, key) for k, key in [(Kind.MEMORY, ("ns", "m1")), (Kind.SET, ("ns", "c")), (Kind.STATE, ("zz",))]]
    assert [r.version for r in store.records(refs)] == [r.version for r in view.records(refs)]
    # The memories table shows exactly the live, unexpired replica memories.
    for ns, mid in MEM_KEYS:
        r = model.get(Kind.MEMORY, (ns, mid))
        live = r is not None and not r.body["deleted"] and (r.body["expires_ms"] is None or r.body["expires_ms"] > NOW)
        try:
            got = memory_store.get(conn, ns, mid, NOW)
        except NotFound:
            got = None
        assert (got is not None) == live, (ns, mid)
        if got is not None and r is not None:
            assert got["content"] == r.body["content"] and got["created"] == r.hlc


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=batches, gc_hlc=st.integers(0, 45), drop=st.sets(st.integers(0, (1 << BITS) - 1), max_size=3))
def test_sqlite_store_matches_the_memory_reference(batches: list[list[Record]], gc_hlc: int,
                                                   drop: set[int]) -> None:
    async def main(path: Path) -> None:
        model = MemoryReplicaStore(BITS)
        conn = connect(path, fsync="normal", readonly=True)
        async with running(path) as (store, seen):
            for batch in batches:
                expected = [copy.version for copy, changed in map(model.apply, batch) if changed]
                assert [r.version for r in await store.apply(batch, NOW)] == expected
            check_same(store, model, conn)
            # Index effects pair up: every live vector row was added once and removed at most once.
            rows = {r for r, in conn.execute("SELECT rowid FROM memories WHERE vector IS NOT NULL AND deleted=0")}
            added = {e.rowid for e in seen if isinstance(e, IndexAdd)}
            removed = {e.rowid for e in seen if isinstance(e, IndexRemove)}
            assert added - removed == rows and removed <= added
        async with running(path) as (store, _):  # reopened: digests rebuilt from the file
            check_same(store, model, conn)
            n = await store.collect(gc_hlc)
            assert n == sum(model.collect(p, gc_hlc) for p in range(1 << BITS))
            check_same(store, model, conn)
            assert await store.drop(drop) == model.drop(drop)
            check_same(store, model, conn)
            stats = store.statistics()
            assert stats["items"] == len(model) and stats["partitions"] == len(model.partitions())
        conn.close()

    with tempfile.TemporaryDirectory() as d:
        trio.run(main, Path(d) / "r.sqlite3")


async def test_a_tombstone_beats_a_later_live_copy_also_in_the_memories_table(tmp_path: Path) -> None:
    async with running(tmp_path / "r.sqlite3") as (store, seen):
        live = mem(("ns", "a"), "hello", 5)
        assert [r.version for r in await store.apply([live], NOW)] == [live.version]
        rowid = store.db.writer_sync().execute("SELECT rowid FROM memories WHERE id='a'").fetchone()[0]
        assert IndexAdd in [type(e) for e in seen]
        await store.apply([tombstone_record("ns", "a", 6, "o")], NOW)
        assert IndexRemove("sp", rowid) in seen
        assert await store.apply([mem(("ns", "a"), "hello", 99), live], NOW) == []  # nothing changes
        got = store.get(Kind.MEMORY, ("ns", "a"))
        assert got is not None and got.body["deleted"] is True
        with pytest.raises(NotFound):
            await store.db.read(lambda c: memory_store.get(c, "ns", "a", NOW))
        row = store.db.writer_sync().execute("SELECT deleted, content, vector, replica FROM memories").fetchall()
        assert row == [(1, "", None, 1)]
        assert store.statistics() == {"items": 1, "tombstones": 1, "partitions": 1, "hints": 0}
        assert await store.collect(7) == 1  # past the grace period: gone everywhere
        assert store.get(Kind.MEMORY, ("ns", "a")) is None and store.partitions() == []
        assert store.db.writer_sync().execute("SELECT COUNT(*) FROM memories").fetchone() == (0,)


async def test_two_ids_with_the_same_content_both_materialise(tmp_path: Path) -> None:
    async with running(tmp_path / "r.sqlite3") as (store, seen):
        await store.apply([mem(("ns", "a"), "same", 1), mem(("ns", "b"), "same", 2)], NOW)
        page = await store.db.read(lambda c: memory_store.list_page(c, "ns", limit=10, cursor=None,
                                                                    memory_type=None, now_ms=NOW))
        assert sorted(m["id"] for m in page["items"]) == ["a", "b"]
        assert len([e for e in seen if isinstance(e, IndexAdd)]) == 2
        rows = store.db.writer_sync().execute("SELECT id, replica, deleted FROM memories ORDER BY id").fetchall()
        assert rows == [("a", 1, 0), ("b", 1, 0)]


async def test_drop_forgets_partitions_and_their_memories(tmp_path: Path) -> None:
    async with running(tmp_path / "r.sqlite3") as (store, seen):
        recs = [mem(("ns", f"m{i}"), f"c{i}", i) for i in range(20)]
        await store.apply(recs, NOW)
        part = recs[0].partition(BITS)
        in_part = [r for r in recs if r.partition(BITS) == part]
        before = store.statistics()["items"]
        assert await store.drop([part]) == len(in_part)
        assert store.digests([part]).get(part, RangeDigest()) == RangeDigest() and part not in store.partitions()
        assert store.records_after(part, None, 100) == [] and store.statistics()["items"] == before - len(in_part)
        removed = [e for e in seen if isinstance(e, IndexRemove)]
        assert len(removed) == len(in_part)
        left = {r for r, in store.db.writer_sync().execute("SELECT id FROM memories")}
        assert left == {r.key[1] for r in recs if r not in in_part}
        deltas = [e for e in seen if isinstance(e, DigestDelta) and e.partition == part]
        assert sum(e.added is not None for e in deltas) == sum(e.removed is not None for e in deltas)


async def test_hints_persist_across_reopen_and_ids_are_never_reused(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    rec = Record(Kind.REGISTER, ("ns", "k"), Versioned([1, "x"], 5, "w"))
    async with running(path) as (store, _):
        for i in (1, 2, 3):
            await store.put_hint(Hint(i, f"owner{i % 2}", rec, 10.0 + i))
        await store.drop_hint(2)
    async with running(path) as (store, _):
        hints, next_id = store.load_hints()
        assert [(h.hint_id, h.owner, h.created) for h in hints] == [(1, "owner1", 11.0), (3, "owner1", 13.0)]
        assert hints[0].record.version == rec.version and next_id == 4
        q = HintQueue()
        q.restore(hints, next_id)
        assert len(q) == 2 and q.next_id == 4
        await store.persist_hints([e for h in hints for e in q.on_ack(h.owner, PutAck(h.hint_id, True), 0.0)])
        assert store.load_hints() == ([], 4)  # every hint gone, the id counter kept
        assert store.statistics()["hints"] == 0


async def test_malformed_memory_records_are_refused_before_writing(tmp_path: Path) -> None:
    async with running(tmp_path / "r.sqlite3") as (store, _):
        bad = Record(Kind.MEMORY, ("ns", "a"), {"id": "a", "ns": "ns", "hlc": 1, "deleted": False})
        with pytest.raises(InvalidArgument):
            await store.apply([mem(("ns", "b"), "ok", 1), bad], NOW)
        assert store.statistics()["items"] == 0


def test_a_version_2_file_migrates_and_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    conn = connect(path, fsync="normal")
    assert migrate(conn, target=2) == 0
    # A row as version 2 wrote it (today's memory_store expects the version-3 `replica` column).
    conn.execute("INSERT INTO memories(ns, id, owner, memory_type, content, metadata, content_hash, vector,"
                 " embedder, created) VALUES('ns', 'a', 'o', 'note', 'hello', '{\"k\":1}', ?, ?, 'sp', 7)",
                 (memory_store.content_hash("hello"), np.ones(3, dtype="<f4").tobytes()))
    conn.close()
    db = Database(path, fsync="normal")
    w = db.writer_sync()
    assert schema_version(w) == SCHEMA_VERSION >= 3
    assert memory_store.get(w, "ns", "a", 0)["content"] == "hello"
    assert w.execute("SELECT replica FROM memories").fetchall() == [(0,)]
    # Local rows keep the atomic duplicate check; replica rows may share a content.
    ins = ("INSERT INTO memories(ns, id, owner, memory_type, content, metadata, content_hash, created, replica)"
           " VALUES('ns', ?, 'o', 'note', 'hello', '{}', ?, 1, ?)")
    with pytest.raises(sqlite3.IntegrityError):
        w.execute(ins, ("b", memory_store.content_hash("hello"), 0))
    w.execute(ins, ("c", memory_store.content_hash("hello"), 1))
    assert {t for t, in w.execute("SELECT name FROM sqlite_master WHERE type='table'")} >= {"replica_items", "hints"}
    db.close()
