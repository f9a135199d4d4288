"""The memory Record body: NewMemory -> Record -> msgpack wire -> Record keeps its version (so digests
agree across replicas), reads back as memory_store.get's dict, and tombstones win every merge."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.errors import InvalidArgument
from node import memory_store
from node.database import connect, init_schema
from node.memory_records import check_memory_record, memory_from_record, memory_record, tombstone_record
from node.memory_store import NewMemory
from ring.records import Kind, Record, merge

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.text(max_size=5),
                      st.floats(allow_nan=False, allow_infinity=False))
metadata = st.dictionaries(st.text(max_size=4), st.recursive(
    json_leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6), max_size=4)


@st.composite
def new_memories(draw: st.DrawFn) -> NewMemory:
    dim = draw(st.sampled_from([0, 3, 8]))
    vec = np.array(draw(st.lists(st.floats(-2, 2, width=32), min_size=dim, max_size=dim)), dtype=np.float32) \
        if dim else None
    signed = draw(st.booleans())
    return NewMemory(
        ns=draw(st.text(min_size=1, max_size=6)), id=draw(st.text(min_size=1, max_size=6)),
        owner=draw(st.text(min_size=1, max_size=6)), memory_type=draw(st.sampled_from(["note", "fact"])),
        content=draw(st.text(max_size=30)), metadata=draw(metadata), vector=vec,
        embedder=draw(st.sampled_from(["hash-v1", "e5"])) if vec is not None else draw(st.none() | st.just("x")),
        created=draw(st.integers(1, 2**62)), expires_ms=draw(st.none() | st.integers(0, 2**40)),
        author_sig=draw(st.binary(min_size=64, max_size=64)) if signed else None,
        author_pk=draw(st.binary(min_size=32, max_size=32)) if signed else None)


def through_msgpack(r: Record) -> Record:
    raw = msgpack.packb(r.to_wire(), use_bin_type=True)
    return Record.from_wire(msgpack.unpackb(raw, raw=False))


@settings(max_examples=200)
@given(m=new_memories(), now=st.integers(0, 2**40))
def test_memory_record_round_trips_through_the_wire(m: NewMemory, now: int) -> None:
    r = memory_record(m)
    check_memory_record(r)
    back = through_msgpack(r)
    assert back.version == r.version and back.digest_hash() == r.digest_hash()
    assert back.key == (m.ns, m.id) and back.hlc == m.created
    assert merge(r, back) is not None and merge(r, back).version == r.version  # type: ignore[union-attr]
    got = memory_from_record(back, now, include_vector=True)
    if m.expires_ms is not None and m.expires_ms <= now:
        assert got is None
        return
    assert got is not None and got["content"] == m.content and got["metadata"] == m.metadata
    assert got["created"] == m.created and got["owner"] == m.owner
    if m.vector is None:
        assert "vector" not in got and got["embedder"] is None
    else:
        assert got["vector"] == m.vector.tolist() and got["embedder"] == m.embedder
    assert ("provenance" in got) == (m.author_sig is not None)


@settings(max_examples=100)
@given(m=new_memories(), tomb_hlc=st.integers(1, 2**62))
def test_a_tombstone_beats_every_live_copy(m: NewMemory, tomb_hlc: int) -> None:
    live, tomb = memory_record(m), tombstone_record(m.ns, m.id, tomb_hlc, m.owner)
    check_memory_record(tomb)
    for merged in (merge(live, tomb), merge(tomb, live), merge(through_msgpack(tomb), live)):
        assert merged is not None and merged.body["deleted"] is True
        assert memory_from_record(merged, 0) is None
    assert tomb.digest_hash() != live.digest_hash()


def test_read_shape_matches_the_single_node_store(tmp_path: Path) -> None:
    conn = connect(tmp_path / "m.sqlite3", fsync="normal")
    init_schema(conn)
    vec = np.array([0.5, -1.0, 2.0], dtype=np.float32)
    for m in (NewMemory("ns", "a", "o", "note", "hello", {"k": [1, 2.5, None]}, vec, "sp", 7, 10**12,
                        b"s" * 64, b"p" * 32),
              NewMemory("ns", "b", "o", "fact", "bye", {}, None, "sp", 8, None)):
        memory_store.store(conn, m, now_ms=0)
        for include in (False, True):
            expected = memory_store.get(conn, m.ns, m.id, 0, include_vector=include)
            assert memory_from_record(through_msgpack(memory_record(m)), 0, include_vector=include) == expected


def bad(body: dict[str, Any]) -> Record:
    base: dict[str, Any] = {"id": "a", "ns": "ns", "owner": "o", "memory_type": "note", "content": "c", "metadata": {},
            "vector": None, "embedder": None, "hlc": 1, "expires_ms": None, "deleted": False,
            "author_pk": None, "author_sig": None}
    return Record(Kind.MEMORY, ("ns", "a"), {**base, **body})


@pytest.mark.parametrize("body", [{"id": "b"}, {"ns": "x"}, {"hlc": "1"}, {"hlc": True}, {"deleted": 1},
                                  {"content": None}, {"metadata": []}, {"metadata": {"k": b"x"}},
                                  {"vector": b"abc", "embedder": "e"}, {"vector": b"abcd"}, {"expires_ms": 1.5}])
def test_malformed_memory_bodies_are_refused(body: dict[str, Any]) -> None:
    check_memory_record(bad({}))
    with pytest.raises(InvalidArgument):
        check_memory_record(bad(body))
