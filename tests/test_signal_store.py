"""Signals (LWW + CAS + TTL), states and the change log on a bare SQLite connection."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from crypto.errors import Conflict, NotFound, Resync
from node import signal_store as s
from node.database import connect, init_schema
from node.effects import Change
from ring.merge import Versioned


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    c = connect(tmp_path / "s.sqlite3", fsync="normal")
    init_schema(c)
    return c


def put(conn: sqlite3.Connection, key: str, value: object, hlc: int, *, if_version: int | None = None,
        expires: int | None = None, now: int = 0, deleted: bool = False) -> dict:  # type: ignore[type-arg]
    return s.signal_put(conn, "ns", key, Versioned(value, hlc, "w", deleted, expires), if_version=if_version,
                        now_ms=now).value


def test_cas_and_versions(conn: sqlite3.Connection) -> None:
    with pytest.raises(Conflict):
        put(conn, "k", 1, 10, if_version=3)
    assert put(conn, "k", 1, 10, if_version=0)["version"] == 10
    with pytest.raises(Conflict) as e:
        put(conn, "k", 2, 11, if_version=9)
    assert e.value.details["current"] == 10
    put(conn, "k", 2, 12, if_version=10)
    assert s.signal_get(conn, "ns", "k", 0)["value"] == 2


def test_older_write_loses(conn: sqlite3.Connection) -> None:
    put(conn, "k", "new", 20)
    r = put(conn, "k", "old", 10)
    assert r["applied"] is False and r["version"] == 20
    assert s.signal_get(conn, "ns", "k", 0)["value"] == "new"


def test_ttl_hides_and_sweep_emits_expire(conn: sqlite3.Connection) -> None:
    put(conn, "k", "v", 10, expires=100)
    assert s.signal_get(conn, "ns", "k", 99)["value"] == "v"
    with pytest.raises(NotFound):
        s.signal_get(conn, "ns", "k", 100)
    swept = s.signal_sweep(conn, now_ms=100, hlc=11)
    assert swept.value == 1 and isinstance(swept.effects[0], Change) and swept.effects[0].event["op"] == "expire"
    with pytest.raises(NotFound):
        put(conn, "k", None, 12, deleted=True, now=100)


def test_changes_since_and_resync(conn: sqlite3.Connection) -> None:
    for i, key in enumerate(["a/1", "a/2", "b/1", "a/1"]):
        put(conn, key, i, 10 + i)
    assert [c.key for c in s.changes_since(conn, "signal", "ns", "a/", False, 0, 100)] == ["a/1", "a/2", "a/1"]
    assert [c.event["value"] for c in s.changes_since(conn, "signal", "ns", "a/1", True, 1, 100)] == [3]
    assert s.compact_changes(conn, retain=2).value == 2
    with pytest.raises(Resync):
        s.changes_since(conn, "signal", "ns", "a/", False, 1, 100)
    assert [c.seq for c in s.changes_since(conn, "signal", "ns", "", False, 2, 100)] == [3, 4]


def test_state_publish_and_get(conn: sqlite3.Connection) -> None:
    with pytest.raises(NotFound):
        s.state_get(conn, "agent")
    r = s.state_publish(conn, "agent", {"x": 1}, 5)
    assert isinstance(r.effects[0], Change) and r.effects[0].topic == "state"
    assert s.state_get(conn, "agent") == {"agent": "agent", "doc": {"x": 1}, "version": 5}
