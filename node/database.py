"""SQLite in WAL mode behind trio: a group-committing writer and a reader, each on its own thread call.

Owns the connections, the schema and the commit path; it knows nothing of actions or permissions.
Every write is acknowledged only after its transaction committed (fsync policy: NodeConfig.fsync).
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import trio

from crypto.errors import Internal, MnemonetError, Unavailable

T = TypeVar("T")

# Version 1, frozen: every later change is a Migration below (tests pin this text's hash). All of it
# is IF NOT EXISTS, so re-running it on a version-1 file changes nothing.
SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS meta(k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS namespaces(code INTEGER PRIMARY KEY, ns TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS memories(
    -- AUTOINCREMENT: a rowid is never reused, so a vector index key always means one record.
    rowid INTEGER PRIMARY KEY AUTOINCREMENT,
    ns TEXT NOT NULL,
    id TEXT NOT NULL,
    owner TEXT NOT NULL,
    memory_type TEXT NOT NULL,
    content TEXT NOT NULL,
    metadata TEXT NOT NULL,
    content_hash BLOB NOT NULL,
    vector BLOB,
    embedder TEXT,
    created INTEGER NOT NULL,
    expires_ms INTEGER,
    deleted INTEGER NOT NULL DEFAULT 0,
    deleted_hlc INTEGER,
    author_pk BLOB,
    author_sig BLOB,
    UNIQUE(ns, id)
);
-- The atomic duplicate check: one live record per (namespace, content hash), enforced by SQLite
-- inside the write transaction, so two concurrent stores of one text cannot both insert.
CREATE UNIQUE INDEX IF NOT EXISTS memories_content ON memories(ns, content_hash) WHERE deleted = 0;
CREATE INDEX IF NOT EXISTS memories_by_created ON memories(ns, created);
CREATE INDEX IF NOT EXISTS memories_by_expiry ON memories(expires_ms) WHERE expires_ms IS NOT NULL;
CREATE TABLE IF NOT EXISTS links(
    ns TEXT NOT NULL, from_id TEXT NOT NULL, to_ns TEXT NOT NULL, to_id TEXT NOT NULL,
    relation TEXT NOT NULL, weight REAL NOT NULL, created INTEGER NOT NULL, owner TEXT NOT NULL,
    PRIMARY KEY(ns, from_id, to_ns, to_id, relation)
);
CREATE INDEX IF NOT EXISTS links_by_target ON links(to_ns, to_id);
CREATE TABLE IF NOT EXISTS signals(
    ns TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, version INTEGER NOT NULL,
    writer TEXT NOT NULL, expires_ms INTEGER, deleted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY(ns, key)
);
CREATE INDEX IF NOT EXISTS signals_by_expiry ON signals(expires_ms) WHERE expires_ms IS NOT NULL;
CREATE TABLE IF NOT EXISTS states(
    agent TEXT PRIMARY KEY, doc TEXT NOT NULL, version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS changes(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL, ns TEXT NOT NULL, key TEXT NOT NULL, event TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS changes_by_topic ON changes(topic, ns, key, seq);
CREATE TABLE IF NOT EXISTS grants(
    ns TEXT NOT NULL, gid TEXT NOT NULL, grantee TEXT NOT NULL, exp_ms INTEGER NOT NULL,
    token TEXT NOT NULL, PRIMARY KEY(ns, gid)
);
CREATE INDEX IF NOT EXISTS grants_by_grantee ON grants(grantee, ns);
CREATE TABLE IF NOT EXISTS revocations(ns TEXT NOT NULL, gid TEXT NOT NULL, token TEXT NOT NULL, PRIMARY KEY(ns, gid));
"""

_SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL"}


def connect(path: Path, *, fsync: str, readonly: bool = False) -> sqlite3.Connection:
    """Open one connection with our pragmas. Autocommit mode: transactions are explicit."""
    if fsync not in _SYNCHRONOUS:
        raise ValueError(f"fsync must be one of {sorted(_SYNCHRONOUS)}, not {fsync!r}")
    conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={_SYNCHRONOUS[fsync]}")
    conn.execute("PRAGMA foreign_keys=ON")
    if readonly:
        conn.execute("PRAGMA query_only=ON")
    return conn


# Version 2: signal kinds. `kind` says which merge rule a key follows; `state` holds a counter's or
# set's CRDT state as canonical JSON (ring/crdt.py), NULL for registers and tombstones, while `value`
# keeps the materialised value that reads return.
SIGNAL_KINDS_V2 = """
ALTER TABLE signals ADD COLUMN kind TEXT NOT NULL DEFAULT 'register'
    CHECK(kind IN ('register', 'counter', 'set'));
ALTER TABLE signals ADD COLUMN state TEXT;
"""


# Version 3: cluster mode (node/replica_store.py). `replica_items` holds one ring.records.Record per
# (kind, key): `key` is json.dumps(list(key)), `body` msgpack of Record.to_wire(), `dhash` its digest
# hash as a signed 64-bit int, `tomb` 1 for a tombstone. `hints` are ring.messages.Hint rows.
# Memories materialised from replicas carry replica=1; they are distinct ring keys, so the atomic
# duplicate-content check applies to single-node rows only.
REPLICAS_V3 = """
CREATE TABLE replica_items(
    kind TEXT NOT NULL, key TEXT NOT NULL, part INTEGER NOT NULL, dhash INTEGER NOT NULL,
    hlc INTEGER NOT NULL, tomb INTEGER NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY(kind, key)
);
CREATE INDEX replica_items_by_part ON replica_items(part);
CREATE INDEX replica_items_tombs ON replica_items(hlc) WHERE tomb = 1;
CREATE TABLE hints(hint_id INTEGER PRIMARY KEY, owner TEXT NOT NULL, record BLOB NOT NULL, created REAL NOT NULL);
ALTER TABLE memories ADD COLUMN replica INTEGER NOT NULL DEFAULT 0;
DROP INDEX memories_content;
CREATE UNIQUE INDEX memories_content ON memories(ns, content_hash) WHERE deleted = 0 AND replica = 0;
"""


# Version 4: the counter and set updates this node coordinated in cluster mode: its own last write of
# each key (msgpack of Record.to_wire()), merged into the quorum read before its next update, so a
# read that misses that write (acked at ONE, or only by stand-ins) cannot roll this node's entry back.
OWN_UPDATES_V4 = """
CREATE TABLE own_updates(kind TEXT NOT NULL, key TEXT NOT NULL, body BLOB NOT NULL, PRIMARY KEY(kind, key));
"""


def run_script(conn: sqlite3.Connection, script: str) -> None:
    """Run SQL statements one at a time inside the caller's transaction (`executescript` would
    COMMIT first, splitting a migration across transactions). A statement must end a line."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            conn.execute(pending)
            pending = ""
    if any(x.strip() and not x.strip().startswith("--") for x in pending.splitlines()):
        raise ValueError(f"incomplete SQL statement at the end of a script: {pending.strip()[:80]!r}")


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step: turns a database at `version - 1` into `version`. It runs inside the
    start-up transaction, so it must not COMMIT; `run_script` runs plain SQL that way."""

    version: int
    summary: str
    apply: Callable[[sqlite3.Connection], None]


def _sql(script: str) -> Callable[[sqlite3.Connection], None]:
    return lambda conn: run_script(conn, script)


# Append only, numbered 1, 2, 3, ...; never edit a released step (databases in the field ran it).
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "base schema", _sql(SCHEMA_V1)),
    Migration(2, "signal kinds: signals.kind and signals.state (CRDT state as canonical JSON)",
              _sql(SIGNAL_KINDS_V2)),
    Migration(3, "cluster replicas: replica_items, hints, memories.replica (content check on local rows only)",
              _sql(REPLICAS_V3)),
    Migration(4, "own_updates: this node's last coordinated write of each counter and set (cluster mode)",
              _sql(OWN_UPDATES_V4)),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


def schema_version(conn: sqlite3.Connection) -> int:
    """The version recorded in `meta` (0 for an empty file)."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone() is None:
        return 0
    row = conn.execute("SELECT v FROM meta WHERE k='schema_version'").fetchone()
    # A meta table without a version: a version-1 start-up interrupted between its two steps.
    return 0 if row is None else int(row[0])


def migrate(conn: sqlite3.Connection, *, target: int | None = None,
            migrations: tuple[Migration, ...] = MIGRATIONS) -> int:
    """Run the steps above the stored version up to `target` (default: the newest), all in one
    transaction with the version update, so a failing step leaves the file as it was. Refuses a
    database newer than `migrations` knows. Returns the version found."""
    known = migrations[-1].version if migrations else 0
    if [m.version for m in migrations] != list(range(1, len(migrations) + 1)):
        raise ValueError("migrations must be numbered 1, 2, 3, ... in order")
    target = known if target is None else target
    if not 0 <= target <= known:
        raise ValueError(f"target version {target} is not in [0, {known}]")
    conn.execute("BEGIN IMMEDIATE")  # one migrator at a time, even across processes
    try:
        found = schema_version(conn)
        if found > known:
            raise RuntimeError(f"database schema {found} is newer than this program ({known})")
        for m in migrations[found:target]:
            m.apply(conn)
        if target > found:
            conn.execute("INSERT INTO meta(k, v) VALUES('schema_version', ?) ON CONFLICT(k) DO UPDATE SET v=excluded.v",
                         (str(target),))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return found


def init_schema(conn: sqlite3.Connection) -> None:
    """Create or upgrade the schema at start-up (before any reader connection opens)."""
    migrate(conn)


def _in_read_txn(fn: Callable[[sqlite3.Connection], T], conn: sqlite3.Connection) -> T:
    conn.execute("BEGIN")
    try:
        return fn(conn)
    finally:
        conn.execute("COMMIT")


@dataclass(frozen=True, slots=True)
class Applied(Generic[T]):
    """What a write function returns: the caller's value and effects to apply once committed
    (index updates, change events), in order. Effects of rolled-back writes are discarded."""

    value: T
    effects: tuple[Any, ...] = ()


WriteFn = Callable[[sqlite3.Connection], Applied[T]]


@dataclass(slots=True)
class _PendingWrite(Generic[T]):
    fn: WriteFn[T]
    done: trio.Event = field(default_factory=trio.Event)
    result: Any = None
    error: MnemonetError | None = None


class Database:
    """The node's SQLite file. `write` calls from many tasks are group-committed by `run`.

    A write function runs on the writer connection inside a SAVEPOINT of a shared transaction:
    if it raises, only its own changes are rolled back and only its caller sees the error.
    `on_commit` (if set) is called on the trio thread with the effects of each committed batch,
    in commit order, before any writer is woken: index updates are visible to the writer's next
    search (read-your-writes) and change events are published in sequence order.
    """

    def __init__(self, path: Path, *, fsync: str = "full", write_batch_max: int = 256, readers: int = 3) -> None:
        self.path = path
        self._writer = connect(path, fsync=fsync)
        init_schema(self._writer)
        # A small pool of reader connections (WAL readers never block each other or the writer),
        # so one slow search does not queue every other client's reads behind it.
        self._readers = [connect(path, fsync=fsync, readonly=True) for _ in range(max(1, readers))]
        self._write_limiter = trio.CapacityLimiter(1)
        self._read_limiter = trio.CapacityLimiter(len(self._readers))
        self._closed = False
        self._queue_send, self._queue_recv = trio.open_memory_channel[_PendingWrite[Any]](math.inf)
        self._batch_max = write_batch_max
        self._running = False
        self.on_commit: Callable[[list[Any]], None] | None = None
        self.batches = 0
        self.writes = 0

    # ---- direct access (start-up and tests only) ----
    def writer_sync(self) -> sqlite3.Connection:
        """The writer connection, for start-up work before `run` starts (rebuilds, migrations)."""
        return self._writer

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read-only function on a pooled reader connection in a worker thread, inside one
        read transaction (a consistent snapshot across all its queries)."""
        async with self._read_limiter:
            if self._closed:
                raise Unavailable("storage is closed")
            conn = self._readers.pop()
            try:
                return await trio.to_thread.run_sync(_in_read_txn, fn, conn)
            finally:
                self._readers.append(conn)

    async def write_each(self, fns: Sequence[WriteFn[Any]]) -> list[Any]:
        """Queue several writes at once and wait for all: each is atomic on its own (its own
        SAVEPOINT), they commit in order, usually in one transaction. Each entry of the answer is that
        write's result or the MnemonetError it failed with; one failing never undoes another."""
        if not self._running:
            raise Unavailable("storage is not running")
        pendings: list[_PendingWrite[Any]] = [_PendingWrite(fn) for fn in fns]
        for p in pendings:
            self._queue_send.send_nowait(p)
        for p in pendings:
            await p.done.wait()
        return [p.error if p.error is not None else p.result.value for p in pendings]

    async def write(self, fn: WriteFn[T]) -> T:
        """Queue a write, wait until its batch has committed, return its result or raise its error."""
        if not self._running:
            raise Unavailable("storage is not running")
        pending: _PendingWrite[T] = _PendingWrite(fn)
        self._queue_send.send_nowait(pending)
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.result.value

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The group-commit loop. Runs until cancelled; pending writers then get `unavailable`."""
        self._running = True
        task_status.started()
        try:
            while True:
                first = await self._queue_recv.receive()
                batch = [first]
                while len(batch) < self._batch_max:
                    try:
                        batch.append(self._queue_recv.receive_nowait())
                    except trio.WouldBlock:
                        break
                try:
                    # Shielded: once a batch is handed to SQLite we wait for its outcome, so an
                    # acknowledged write is never one whose commit we abandoned half way.
                    with trio.CancelScope(shield=True):
                        committed = await trio.to_thread.run_sync(self._commit_batch, batch,
                                                                  limiter=self._write_limiter)
                    self.batches += 1
                    self.writes += len(batch)
                    if committed and self.on_commit is not None:
                        self.on_commit([e for p in batch if p.error is None for e in p.result.effects])
                finally:
                    for p in batch:
                        if p.error is None and p.result is None:
                            p.error = Unavailable("the write's batch did not complete")
                        p.done.set()
        finally:
            self._running = False
            while True:
                try:
                    p = self._queue_recv.receive_nowait()
                except trio.WouldBlock:
                    break
                p.error = Unavailable("node is shutting down")
                p.done.set()

    def _commit_batch(self, batch: list[_PendingWrite[Any]]) -> bool:
        """One transaction for the batch. Any SQLite failure that aborts the transaction (disk
        full, I/O error) fails every write of the batch with `unavailable`: none was acknowledged."""
        conn = self._writer
        try:
            conn.execute("BEGIN IMMEDIATE")
            for p in batch:
                conn.execute("SAVEPOINT op")
                try:
                    p.result = p.fn(conn)
                except MnemonetError as e:
                    p.error = e
                except sqlite3.OperationalError as e:
                    if not conn.in_transaction:
                        raise  # SQLite aborted the whole transaction (disk full, I/O): fail the batch
                    p.error = Unavailable(f"storage error: {e}")
                except Exception as e:  # a bug in one op must not fail its batch neighbours
                    p.error = Internal(f"{type(e).__name__}: {e}")
                if p.error is None:
                    conn.execute("RELEASE op")
                else:
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            for p in batch:
                p.error = Unavailable(f"storage error, nothing written: {e}")
                p.result = None
            return False
        return True

    async def aclose(self) -> None:
        """Wait for running reads, then close every connection (later calls get `unavailable`)."""
        with trio.CancelScope(shield=True):
            self._closed = True
            for _ in range(int(self._read_limiter.total_tokens)):
                await self._read_limiter.acquire_on_behalf_of(object())
            async with self._write_limiter:
                self.close()

    def close(self) -> None:
        for conn in self._readers:
            conn.close()
        self._writer.close()
