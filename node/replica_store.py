"""The node's replica store for cluster mode: ring.records.Record rows in SQLite (replica_items), the
per-partition digests the replication engines compare, memories materialised for local search, hints.

Writes are WriteFns for Database.write (merge by ring.records.merge only; digest changes ride as
DigestDelta effects into `on_commit`); reads are synchronous, for the pure engines on the trio thread.
It must not decide placement, talk to peers or read a clock.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgpack

from crypto.errors import InvalidArgument
from node.database import Applied, Database, WriteFn, connect
from node.effects import DigestDelta, IndexAdd, IndexRemove
from node.memory_records import check_memory_record, is_tombstone, vector_of
from node.memory_store import bump_vector_epoch, content_hash, namespace_code
from ring.digest import RangeDigest
from ring.messages import Hint, HintDropped, HintStored, ItemRef, ItemSummary
from ring.partition import PARTITION_BITS
from ring.records import Kind, Record, merge

COLLECT_BATCH_MAX = 10_000  # tombstones collected per write: bounds one transaction (call again for more)
_U64 = 1 << 64
_I64_MAX = (1 << 63) - 1
_UNPACK_LIMITS = {"max_bin_len": 64 * 1024 * 1024, "max_str_len": 64 * 1024 * 1024}


def to_i64(h: int) -> int:
    """A u64 digest hash as SQLite's signed 64-bit integer."""
    return h - _U64 if h > _I64_MAX else h


def to_u64(v: int) -> int:
    return v + _U64 if v < 0 else v


def key_text(key: Sequence[str]) -> str:
    """The `key` column: canonical text of the key tuple (ASCII: lone surrogates are escaped)."""
    return json.dumps(list(key), ensure_ascii=True, separators=(",", ":"))


def pack_record(r: Record) -> bytes:
    try:
        return bytes(msgpack.packb(r.to_wire(), use_bin_type=True))
    except (TypeError, ValueError, OverflowError) as e:  # UnicodeEncodeError is a ValueError
        raise InvalidArgument(f"record cannot be stored: {type(e).__name__}", kind=r.kind.value) from None


def unpack_record(blob: bytes) -> Record:
    try:
        obj = msgpack.unpackb(bytes(blob), raw=False, strict_map_key=False, **_UNPACK_LIMITS)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise InvalidArgument(f"undecodable stored record: {type(e).__name__}") from None
    return Record.from_wire(obj)


def normalised(r: Record) -> tuple[Record, bytes]:
    """`r` as it will read back (tuples become lists, ...) and its stored bytes, so a stored row's
    dhash is always the digest hash of what `get` returns."""
    blob = pack_record(r)
    return unpack_record(blob), blob


class ReplicaStore:
    """`ring.replicaview.ReplicaData` over the node's Database. The owner must pass every committed
    batch's effects to `on_commit` (chain it from Database.on_commit), or the digests go stale."""

    def __init__(self, db: Database, *, partition_bits: int = PARTITION_BITS, fsync: str = "normal") -> None:
        self.db = db
        self._bits = partition_bits
        self._conn = connect(db.path, fsync=fsync, readonly=True)
        self._digests: dict[int, RangeDigest] = {}
        self._rebuild_digests()

    def _rebuild_digests(self) -> None:
        sums: dict[int, list[int]] = {}
        for part, dhash in self._conn.execute("SELECT part, dhash FROM replica_items"):
            acc = sums.setdefault(part, [0, 0])
            acc[0] = (acc[0] + to_u64(dhash)) % _U64
            acc[1] += 1
        self._digests = {p: RangeDigest(s, c) for p, (s, c) in sums.items()}

    def close(self) -> None:
        self._conn.close()

    # ---- ReplicaData (synchronous reads) ----
    @property
    def partition_bits(self) -> int:
        return self._bits

    def digest(self, partition: int) -> RangeDigest:
        d = self._digests.get(partition)
        return RangeDigest() if d is None else d.copy()

    def digests(self, partitions: Sequence[int]) -> Mapping[int, RangeDigest]:
        have = self._digests
        return {p: d.copy() for p in partitions if (d := have.get(p)) is not None and d.count}

    def holds_data(self) -> bool:
        """Whether any partition holds an item (per the digests)."""
        return any(d.count for d in self._digests.values())

    def partitions(self) -> list[int]:
        """Partitions holding at least one item (per the digests), ascending."""
        return sorted(p for p, d in self._digests.items() if d.count)

    def _refs(self, partition: int, after: ItemRef | None, limit: int, col: str) -> list[tuple[ItemRef, Any]]:
        rows = self._conn.execute(f"SELECT kind, key, {col} FROM replica_items WHERE part=?", (partition,)).fetchall()
        refs = sorted(((kind, tuple(json.loads(key))), extra) for kind, key, extra in rows)
        if after is not None:
            after = (after[0], tuple(after[1]))
            refs = [x for x in refs if x[0] > after]
        return refs[:max(0, limit)]

    def summaries(self, partition: int, after: ItemRef | None, limit: int) -> list[ItemSummary]:
        return [(kind, key, to_u64(dhash)) for (kind, key), dhash in self._refs(partition, after, limit, "dhash")]

    def records_after(self, partition: int, after: ItemRef | None, limit: int) -> list[Record]:
        return [unpack_record(body) for _, body in self._refs(partition, after, limit, "body")]

    def records(self, items: Sequence[ItemRef]) -> list[Record]:
        out: list[Record] = []
        for kind, key in items:
            row = self._conn.execute("SELECT body FROM replica_items WHERE kind=? AND key=?",
                                     (kind, key_text(key))).fetchone()
            if row is not None:
                out.append(unpack_record(row[0]))
        return out

    def get(self, kind: Kind, key: Sequence[str]) -> Record | None:
        row = self._conn.execute("SELECT body FROM replica_items WHERE kind=? AND key=?",
                                 (kind.value, key_text(key))).fetchone()
        return None if row is None else unpack_record(row[0])

    # ---- writes ----
    def apply_fn(self, records: Sequence[Record], now_ms: int) -> WriteFn[list[Record]]:
        """Merge `records` into the store. Checks and normalises them first (InvalidArgument here,
        before anything is queued, if one is malformed). The write returns the merged copy of every
        change, in input order (an item changed twice appears twice); unchanged items are skipped."""
        prepared = []
        for r in records:
            if r.kind is Kind.MEMORY:
                check_memory_record(r)
            prepared.append(normalised(r))
        bits = self._bits

        def fn(conn: sqlite3.Connection) -> Applied[list[Record]]:
            changed: list[Record] = []
            effects: list[Any] = []
            for rec, blob in prepared:
                kt = key_text(rec.key)
                row = conn.execute("SELECT dhash, body FROM replica_items WHERE kind=? AND key=?",
                                   (rec.kind.value, kt)).fetchone()
                old = None if row is None else unpack_record(row[1])
                new = merge(old, rec)
                assert new is not None
                if new is old:
                    continue
                if new is not rec:  # a CRDT join built a new body: store exactly what reads return
                    new, blob = normalised(new)
                if old is not None and new.version == old.version:
                    continue
                h, part = new.digest_hash(), rec.partition(bits)
                conn.execute(
                    "INSERT INTO replica_items(kind, key, part, dhash, hlc, tomb, body) VALUES(?,?,?,?,?,?,?)"
                    " ON CONFLICT(kind, key) DO UPDATE SET part=excluded.part, dhash=excluded.dhash,"
                    " hlc=excluded.hlc, tomb=excluded.tomb, body=excluded.body",
                    (rec.kind.value, kt, part, to_i64(h), new.hlc, int(is_tombstone(new)), blob))
                effects.append(DigestDelta(part, None if row is None else to_u64(row[0]), h))
                changed.append(new)
                if new.kind is Kind.MEMORY:
                    effects += _materialise(conn, new, now_ms)
            if any(isinstance(e, IndexAdd | IndexRemove) for e in effects):
                bump_vector_epoch(conn)
            return Applied(changed, tuple(effects))

        return fn

    async def apply(self, records: Sequence[Record], now_ms: int) -> list[Record]:
        return await self.db.write(self.apply_fn(records, now_ms))

    def on_commit(self, effects: Iterable[Any]) -> None:
        """Apply committed DigestDelta effects to the in-memory digests; other effects are ignored."""
        for e in effects:
            if not isinstance(e, DigestDelta):
                continue
            d = self._digests.setdefault(e.partition, RangeDigest())
            if e.removed is not None:
                d.remove(e.removed)
            if e.added is not None:
                d.add(e.added)
            if d.count == 0 and d.sum == 0:
                del self._digests[e.partition]

    def drop_fn(self, partitions: Iterable[int]) -> WriteFn[int]:
        """Forget whole partitions (rebalancing moved them away): their items and replica memories rows."""
        parts = sorted(set(partitions))

        def fn(conn: sqlite3.Connection) -> Applied[int]:
            effects: list[Any] = []
            n = 0
            for p in parts:
                rows = conn.execute("SELECT kind, key, dhash FROM replica_items WHERE part=?", (p,)).fetchall()
                for kind, key, dhash in rows:
                    effects.append(DigestDelta(p, to_u64(dhash), None))
                    if kind == Kind.MEMORY.value:
                        effects += _unmaterialise(conn, *json.loads(key))
                conn.execute("DELETE FROM replica_items WHERE part=?", (p,))
                n += len(rows)
            if any(isinstance(e, IndexRemove) for e in effects):
                bump_vector_epoch(conn)
            return Applied(n, tuple(effects))

        return fn

    async def drop(self, partitions: Iterable[int]) -> int:
        return await self.db.write(self.drop_fn(partitions))

    def collect_fn(self, older_than_hlc: int, limit: int = COLLECT_BATCH_MAX) -> WriteFn[int]:
        """Tombstone GC: delete up to `limit` tombstones last changed before `older_than_hlc` (the
        grace period has passed; every replica has seen them), with their materialised rows."""

        def fn(conn: sqlite3.Connection) -> Applied[int]:
            rows = conn.execute("SELECT kind, key, part, dhash FROM replica_items WHERE tomb=1 AND hlc<? LIMIT ?",
                                (older_than_hlc, limit)).fetchall()
            effects: list[Any] = []
            for kind, key, part, dhash in rows:
                conn.execute("DELETE FROM replica_items WHERE kind=? AND key=?", (kind, key))
                effects.append(DigestDelta(part, to_u64(dhash), None))
                if kind == Kind.MEMORY.value:
                    effects += _unmaterialise(conn, *json.loads(key))
            if any(isinstance(e, IndexRemove) for e in effects):
                bump_vector_epoch(conn)
            return Applied(len(rows), tuple(effects))

        return fn

    async def collect(self, older_than_hlc: int, limit: int = COLLECT_BATCH_MAX) -> int:
        return await self.db.write(self.collect_fn(older_than_hlc, limit))

    # ---- hints ----
    def persist_hints_fn(self, effects: Iterable[Any]) -> WriteFn[int]:
        """Mirror HintQueue effects (HintStored: insert or replace; HintDropped: delete; others are
        ignored) in one write; returns how many were applied."""
        todo = [(e.hint, None) if isinstance(e, HintStored) else (None, e.hint_id)
                for e in effects if isinstance(e, HintStored | HintDropped)]
        rows = [(h, pack_record(h.record)) if h is not None else (None, hid) for h, hid in todo]

        def fn(conn: sqlite3.Connection) -> Applied[int]:
            for h, x in rows:
                if h is None:
                    conn.execute("DELETE FROM hints WHERE hint_id=?", (x,))
                    continue
                conn.execute("INSERT OR REPLACE INTO hints(hint_id, owner, record, created) VALUES(?,?,?,?)",
                             (h.hint_id, h.owner, x, float(h.created)))
                # Ids are never reused, even once every hint is gone: remember the highest one issued.
                conn.execute("INSERT INTO meta(k, v) VALUES('hint_next_id', ?) ON CONFLICT(k) DO UPDATE"
                             " SET v = MAX(CAST(v AS INTEGER), CAST(excluded.v AS INTEGER))", (str(h.hint_id + 1),))
            return Applied(len(rows))

        return fn

    async def persist_hints(self, effects: Iterable[Any]) -> int:
        return await self.db.write(self.persist_hints_fn(effects))

    async def put_hint(self, h: Hint) -> None:
        await self.persist_hints([HintStored(h)])

    async def drop_hint(self, hint_id: int) -> None:
        await self.persist_hints([HintDropped(hint_id, "", "dropped")])

    def load_hints(self) -> tuple[list[Hint], int]:
        """Persisted hints and the next hint id, for HintQueue.restore(hints, next_id)."""
        hints = [Hint(hid, owner, unpack_record(blob), created) for hid, owner, blob, created
                 in self._conn.execute("SELECT hint_id, owner, record, created FROM hints ORDER BY hint_id")]
        row = self._conn.execute("SELECT v FROM meta WHERE k='hint_next_id'").fetchone()
        next_id = max([1, int(row[0]) if row else 1, *(h.hint_id + 1 for h in hints)])
        return hints, next_id

    # ---- this node's own counter and set updates (ClusterOps.signal_update) ----
    def own_update(self, kind: Kind, key: Sequence[str]) -> Record | None:
        """The last counter or set record this node wrote as coordinator of `key`, if any."""
        row = self._conn.execute("SELECT body FROM own_updates WHERE kind=? AND key=?",
                                 (kind.value, key_text(key))).fetchone()
        return None if row is None else unpack_record(row[0])

    async def remember_own_update(self, r: Record) -> None:
        """Durably record `r` as this node's last update of its key (before it is sent anywhere)."""
        blob = pack_record(r)

        def fn(conn: sqlite3.Connection) -> Applied[None]:
            conn.execute("INSERT INTO own_updates(kind, key, body) VALUES(?, ?, ?) "
                         "ON CONFLICT(kind, key) DO UPDATE SET body=excluded.body", (r.kind.value, key_text(r.key), blob))
            return Applied(None)
        await self.db.write(fn)

    def statistics(self) -> dict[str, int]:
        items, tombs = self._conn.execute("SELECT COUNT(*), COALESCE(SUM(tomb), 0) FROM replica_items").fetchone()
        hints = self._conn.execute("SELECT COUNT(*) FROM hints").fetchone()[0]
        return {"items": int(items), "tombstones": int(tombs), "partitions": len(self.partitions()),
                "hints": int(hints)}


def _unmaterialise(conn: sqlite3.Connection, ns: str, mid: str) -> list[Any]:
    """Delete the replica memories row of (ns, mid), if any; single-node rows (replica=0) stay."""
    row = conn.execute("SELECT rowid, deleted, embedder FROM memories WHERE ns=? AND id=? AND replica=1",
                       (ns, mid)).fetchone()
    if row is None:
        return []
    conn.execute("DELETE FROM memories WHERE rowid=?", (row[0],))
    return [IndexRemove(row[2], row[0])] if row[2] and not row[1] else []


def _materialise(conn: sqlite3.Connection, r: Record, now_ms: int) -> list[Any]:
    """Make the memories row of (ns, id) show the merged record `r`, so local get/list/search see it:
    a tombstone retires the row (as memory_store.delete does; ids are never reused); a live copy
    replaces the row under a new rowid (a vector index key always means one record). An expired
    copy leaves no row. Links are LINK records of their own, so the links table is not touched."""
    ns, mid = r.key
    b = r.body
    row = conn.execute("SELECT rowid, deleted, embedder FROM memories WHERE ns=? AND id=?", (ns, mid)).fetchone()
    effects: list[Any] = []
    if b.get("deleted", False):
        if row is not None and not row[1]:
            conn.execute("UPDATE memories SET deleted=1, deleted_hlc=?, content='', metadata='{}', vector=NULL,"
                         " replica=1 WHERE rowid=?", (r.hlc, row[0]))
            if row[2]:
                effects.append(IndexRemove(row[2], row[0]))
        return effects
    if row is not None:
        conn.execute("DELETE FROM memories WHERE rowid=?", (row[0],))
        if row[2] and not row[1]:
            effects.append(IndexRemove(row[2], row[0]))
    exp = b.get("expires_ms")
    if exp is not None and exp <= now_ms:
        return effects
    vec = vector_of(b)
    cur = conn.execute(
        "INSERT INTO memories(ns, id, owner, memory_type, content, metadata, content_hash, vector, embedder,"
        " created, expires_ms, author_pk, author_sig, replica) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,1)",
        (ns, mid, b["owner"], b["memory_type"], b["content"], json.dumps(b["metadata"], separators=(",", ":")),
         content_hash(b["content"]), b.get("vector"), b.get("embedder") if vec is not None else None, r.hlc, exp,
         b.get("author_pk"), b.get("author_sig")))
    rowid = int(cur.lastrowid or 0)
    if vec is not None and b.get("embedder"):
        effects.append(IndexAdd(b["embedder"], rowid, vec, namespace_code(conn, ns), exp))
    return effects
