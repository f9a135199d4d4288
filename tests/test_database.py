"""Group commit: concurrent writes share transactions, a failing write rolls back alone. Schema
migrations: ordered steps in one start-up transaction; a version-1 file opens; newer is refused."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from crypto.errors import Conflict, Internal, Unavailable
from node.database import (
    MIGRATIONS,
    SCHEMA_V1,
    SCHEMA_VERSION,
    Applied,
    Database,
    Migration,
    connect,
    migrate,
    run_script,
    schema_version,
)


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


async def test_write_each_keeps_every_write_atomic_on_its_own_and_in_order(tmp_path: Path) -> None:
    db = Database(tmp_path / "t.sqlite3", fsync="normal", write_batch_max=8)

    def op(i: int):  # type: ignore[no-untyped-def]
        def fn(conn: sqlite3.Connection) -> Applied[int]:
            conn.execute("INSERT INTO meta(k, v) VALUES('seq', ?) ON CONFLICT(k) DO UPDATE SET v=v || ',' || excluded.v",
                         (str(i),))
            conn.execute("INSERT INTO meta(k, v) VALUES(?, 'x')", (f"w{i}",))
            if i % 4 == 0:
                raise Conflict("planned failure after two statements")
            return Applied(i)
        return fn

    async with trio.open_nursery() as n:
        await n.start(db.run)
        out = await db.write_each([op(i) for i in range(1, 20)])
        n.cancel_scope.cancel()
    ok = [i for i in range(1, 20) if i % 4]
    assert [x for x in out if not isinstance(x, Conflict)] == ok
    assert [i for i, x in zip(range(1, 20), out, strict=True) if isinstance(x, Conflict)] == [4, 8, 12, 16]
    conn = db.writer_sync()
    assert conn.execute("SELECT v FROM meta WHERE k='seq'").fetchone()[0] == ",".join(map(str, ok))  # in order
    assert {r[0] for r in conn.execute("SELECT k FROM meta WHERE k LIKE 'w%'")} == {f"w{i}" for i in ok}
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


# ---------------------------------------------------------------- migrations


def v1_file(path: Path) -> sqlite3.Connection:
    """A database as the version-1 program left it: its schema script, then the version row."""
    conn = connect(path, fsync="normal")
    conn.executescript(SCHEMA_V1)
    conn.execute("INSERT INTO meta(k, v) VALUES('schema_version', '1')")
    return conn


def shape(conn: sqlite3.Connection) -> dict[str, object]:
    """Columns (name, type, not null, default, pk) and indexes of every table: what queries rely on."""
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
    return {t: ([tuple(r[1:]) for r in conn.execute(f"PRAGMA table_info({t})")],
                sorted(tuple(r[1:3]) for r in conn.execute(f"PRAGMA index_list({t})"))) for t in tables}


def test_version_1_schema_is_frozen() -> None:
    # Databases in the field were created from exactly this text: change the schema with a Migration.
    assert hashlib.sha256(SCHEMA_V1.encode()).hexdigest() == (
        "d6eb0ad53e27af1feaea8980afe149cf5336dcca311870c97a1bab0ab977f3e9")
    assert [m.version for m in MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1)) and SCHEMA_VERSION >= 2


def test_fresh_and_upgraded_databases_have_the_same_shape(tmp_path: Path) -> None:
    fresh = connect(tmp_path / "fresh.sqlite3", fsync="normal")
    assert migrate(fresh) == 0 and schema_version(fresh) == SCHEMA_VERSION
    old = v1_file(tmp_path / "old.sqlite3")
    assert migrate(old) == 1 and schema_version(old) == SCHEMA_VERSION
    assert shape(old) == shape(fresh)
    assert migrate(old) == SCHEMA_VERSION  # nothing left to do


def test_version_1_rows_survive_the_upgrade(tmp_path: Path) -> None:
    conn = v1_file(tmp_path / "old.sqlite3")
    conn.execute("INSERT INTO signals(ns, key, value, version, writer) VALUES('n', 'k', '\"v\"', 7, 'w')")
    conn.close()
    db = Database(tmp_path / "old.sqlite3", fsync="normal")
    row = db.writer_sync().execute("SELECT value, version, writer, kind, state FROM signals").fetchone()
    assert row == ('"v"', 7, "w", "register", None)
    assert schema_version(db.writer_sync()) == SCHEMA_VERSION
    db.close()


def test_newer_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    conn = connect(tmp_path / "new.sqlite3", fsync="normal")
    migrate(conn)
    conn.execute("UPDATE meta SET v=? WHERE k='schema_version'", (str(SCHEMA_VERSION + 1),))
    before = shape(conn)
    conn.close()
    with pytest.raises(RuntimeError, match="newer than this program"):
        Database(tmp_path / "new.sqlite3")
    conn = connect(tmp_path / "new.sqlite3", fsync="normal")
    assert schema_version(conn) == SCHEMA_VERSION + 1 and shape(conn) == before


def test_a_failing_step_rolls_back_every_step_of_the_upgrade(tmp_path: Path) -> None:
    ran: list[int] = []

    def step(n: int, fail: bool = False) -> Callable[[sqlite3.Connection], None]:
        def apply(conn: sqlite3.Connection) -> None:
            ran.append(n)
            conn.execute(f"CREATE TABLE t{n}(x)")
            if fail:
                raise sqlite3.OperationalError("planned failure")
        return apply

    steps = (MIGRATIONS[0], Migration(2, "t2", step(2)), Migration(3, "t3", step(3, fail=True)))
    conn = v1_file(tmp_path / "old.sqlite3")
    with pytest.raises(sqlite3.OperationalError):
        migrate(conn, migrations=steps)
    assert ran == [2, 3] and not conn.in_transaction
    assert schema_version(conn) == 1 and "t2" not in shape(conn)
    ran.clear()
    assert migrate(conn, migrations=steps[:2]) == 1 and ran == [2]  # steps run in order, each once
    assert migrate(conn, migrations=steps[:2]) == 2 and ran == [2]


def test_target_version_and_bad_chains(tmp_path: Path) -> None:
    conn = connect(tmp_path / "t.sqlite3", fsync="normal")
    assert migrate(conn, target=1) == 0 and schema_version(conn) == 1
    assert "kind" not in [c[0] for c in shape(conn)["signals"][0]]  # type: ignore[index]
    assert migrate(conn) == 1 and schema_version(conn) == SCHEMA_VERSION
    with pytest.raises(ValueError):
        migrate(conn, target=SCHEMA_VERSION + 1)
    with pytest.raises(ValueError):
        migrate(conn, migrations=(MIGRATIONS[1],))  # numbering must start at 1, without gaps


def test_run_script_splits_statements_inside_one_transaction(tmp_path: Path) -> None:
    conn = connect(tmp_path / "t.sqlite3", fsync="normal")
    conn.execute("BEGIN")
    run_script(conn, """
        -- a comment; with a semicolon
        CREATE TABLE a(x TEXT DEFAULT 'x;y');
        INSERT INTO a(x) VALUES('1;2');
    """)
    assert conn.in_transaction  # executescript would have committed here
    conn.execute("ROLLBACK")
    assert "a" not in shape(conn)
    with pytest.raises(ValueError, match="incomplete"):
        run_script(conn, "CREATE TABLE b(x); CREATE TABLE c(x)")
