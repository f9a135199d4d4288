"""Group commit: concurrent writes share transactions, a failing write rolls back alone."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio

from crypto.errors import Conflict, Internal, Unavailable
from node.database import Applied, Database


async def test_group_commit_isolates_failures(tmp_path: Path) -> None:
    db = Database(tmp_path / "t.sqlite3", fsync="normal", write_batch_max=64)
    applied: list[object] = []
    db.on_commit = applied.extend
    outcomes: dict[int, object] = {}

    def op(i: int):  # type: ignore[no-untyped-def]
        def fn(conn: sqlite3.Connection) -> Applied[int]:
            conn.execute("INSERT INTO meta(k, v) VALUES(?, ?)", (f"k{i}", str(i)))
            if i % 5 == 0:
                raise Conflict("planned failure")
            if i % 7 == 0:
                raise RuntimeError("a bug")
            return Applied(i, (f"effect{i}",))
        return fn

    async def writer(i: int) -> None:
        try:
            outcomes[i] = await db.write(op(i))
        except (Conflict, Internal) as e:
            outcomes[i] = e

    async with trio.open_nursery() as n:
        await n.start(db.run)
        async with trio.open_nursery() as w:
            for i in range(1, 41):
                w.start_soon(writer, i)
        n.cancel_scope.cancel()
    keys = {r[0] for r in db.writer_sync().execute("SELECT k FROM meta WHERE k LIKE 'k%'")}
    ok = {i for i in range(1, 41) if i % 5 and i % 7}
    assert keys == {f"k{i}" for i in ok}
    assert all(outcomes[i] == i for i in ok)
    assert all(isinstance(outcomes[i], Conflict) for i in range(5, 41, 5))
    assert isinstance(outcomes[7], Internal)
    assert sorted(applied) == sorted(f"effect{i}" for i in ok)  # type: ignore[type-var]
    assert db.batches < 40  # writes were grouped
    db.close()


async def test_write_before_run_is_unavailable(tmp_path: Path) -> None:
    db = Database(tmp_path / "t.sqlite3")
    with pytest.raises(Unavailable):
        await db.write(lambda c: Applied(None))
    db.close()


def test_bad_fsync_policy_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Database(tmp_path / "t.sqlite3", fsync="sometimes")


async def test_disk_full_fails_the_batch_cleanly_and_storage_recovers(tmp_path: Path) -> None:
    db = Database(tmp_path / "t.sqlite3", fsync="normal")
    conn = db.writer_sync()
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count={pages + 2}")  # a nearly full disk

    def big(conn: sqlite3.Connection) -> Applied[int]:
        conn.execute("INSERT INTO meta(k, v) VALUES('big', ?)", ("x" * 200_000,))
        return Applied(1)

    def small(conn: sqlite3.Connection) -> Applied[int]:
        conn.execute("INSERT INTO meta(k, v) VALUES('small', 'y')")
        return Applied(2)

    async with trio.open_nursery() as n:
        await n.start(db.run)
        with pytest.raises(Unavailable):
            await db.write(big)
        conn.execute("PRAGMA max_page_count=1000000")  # space freed
        assert await db.write(small) == 2
        n.cancel_scope.cancel()
    assert conn.execute("SELECT k FROM meta WHERE k IN ('big', 'small')").fetchall() == [("small",)]
    await db.aclose()
