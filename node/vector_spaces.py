"""One vector index per embedding space (embedder id), opened from disk or rebuilt from SQLite.

Vectors of different embedders are never compared because they never share an index. Owns the
index directories and sealing in worker threads; search filtering is node/search.py's job.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import trio

from node.effects import IndexAdd
from node.memory_store import vector_epoch
from node.vector_index import VectorIndex, VectorIndexConfig

log = logging.getLogger("mnemonet.index")
REBUILD_BATCH = 4096


def space_dirname(space: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", space)[:64]
    return f"{safe}-{hashlib.sha256(space.encode()).hexdigest()[:8]}"


class VectorSpaces:
    def __init__(self, root: Path, dim: int, config: VectorIndexConfig | None = None) -> None:
        self.root = root
        self.dim = dim
        self.config = config or VectorIndexConfig()
        self.indexes: dict[str, VectorIndex] = {}
        # rowid -> expires_ms of every indexed live record with a TTL (rowids are unique across
        # spaces: AUTOINCREMENT), so unfiltered searches can skip SQL to rule out expired hits.
        self.expiring: dict[int, int] = {}
        self._seal_lock = trio.Lock()  # one seal/compact pass at a time; a forced one waits its turn

    def open_all(self, conn: sqlite3.Connection) -> None:
        """Open every space that has live vectors; rebuild from SQLite where files are missing/stale."""
        spaces = [r[0] for r in conn.execute(
            "SELECT DISTINCT embedder FROM memories WHERE embedder IS NOT NULL AND deleted=0")]
        for space in spaces:
            self.indexes[space] = self._open(space, conn)
        self.expiring = dict(conn.execute(
            "SELECT rowid, expires_ms FROM memories WHERE expires_ms IS NOT NULL AND deleted=0 AND vector IS NOT NULL"))

    def _rows(self, conn: sqlite3.Connection, space: str) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        cur = conn.execute(
            "SELECT m.rowid, m.vector, n.code FROM memories m JOIN namespaces n ON n.ns = m.ns"
            " WHERE m.embedder=? AND m.deleted=0 AND m.vector IS NOT NULL ORDER BY m.rowid", (space,))
        while True:
            rows = cur.fetchmany(REBUILD_BATCH)
            if not rows:
                return
            keys = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), self.dim)
            groups = np.fromiter((r[2] for r in rows), dtype=np.int64, count=len(rows))
            yield keys, vecs, groups

    @staticmethod
    def watermark(conn: sqlite3.Connection, space: str) -> int:
        """A fingerprint of the space's rows in SQLite: any insert, delete or expiry changes it.
        A saved index is reused only if its fingerprint matches, else it is rebuilt from SQLite
        (so an index saved before a kill -9 is never trusted)."""
        row = conn.execute(
            "SELECT COUNT(*), COALESCE(MAX(rowid), 0), COALESCE(SUM(deleted), 0) FROM memories WHERE embedder=?",
            (space,)).fetchone()
        # vector_epoch counts every committed change to any vector, so any write after a save
        # (even one that leaves counts and max rowid equal) invalidates the saved files.
        state = (space, vector_epoch(conn), *(int(x) for x in row))
        digest = hashlib.sha256(repr(state).encode()).digest()
        return int.from_bytes(digest[:7], "big")

    def _open(self, space: str, conn: sqlite3.Connection) -> VectorIndex:
        directory = self.root / space_dirname(space)
        directory.mkdir(parents=True, exist_ok=True)
        return VectorIndex.open(self.dim, directory, self.config, rebuild=lambda: self._rows(conn, space),
                                watermark=self.watermark(conn, space))

    def get(self, space: str) -> VectorIndex | None:
        return self.indexes.get(space)

    def _index(self, space: str) -> VectorIndex:
        idx = self.indexes.get(space)
        if idx is None:
            # A space first seen since start-up had no live rows then: whatever files are on disk
            # for it are stale by definition, so start from nothing.
            directory = self.root / space_dirname(space)
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True, exist_ok=True)
            idx = self.indexes[space] = VectorIndex(self.dim, directory, self.config)
        return idx

    def add_batch(self, adds: list[IndexAdd]) -> None:
        """Insert committed vectors, one add_many per space (per-call overhead dominates single adds)."""
        by_space: dict[str, list[IndexAdd]] = {}
        for a in adds:
            by_space.setdefault(a.space, []).append(a)
            if a.expires_ms is not None:
                self.expiring[a.rowid] = a.expires_ms
        for space, items in by_space.items():
            self._index(space).add_many(np.fromiter((a.rowid for a in items), dtype=np.int64, count=len(items)),
                                        np.stack([a.vector for a in items]),
                                        np.fromiter((a.group for a in items), dtype=np.int64, count=len(items)))

    def remove(self, space: str, rowid: int) -> None:
        self.expiring.pop(rowid, None)
        idx = self.indexes.get(space)
        if idx is not None:
            idx.remove(rowid)

    async def seal_if_needed(self, *, force: bool = False) -> None:
        """Seal buffers into annoy segments in a worker thread (searches keep running meanwhile), then
        merge or recalibrate where due. `force` seals any non-empty buffer and, if a pass is already
        running (the seal loop), waits for it and then makes its own: on return, every vector added
        before the call is in a sealed segment."""
        if not force and self._seal_lock.locked():
            return  # the periodic check: the running pass will do
        async with self._seal_lock:
            for idx in list(self.indexes.values()):
                if idx.needs_seal() or (force and idx.statistics().get("buffer", 0)):
                    await trio.to_thread.run_sync(idx.seal)
                if idx.needs_compact():
                    await trio.to_thread.run_sync(idx.compact)

    def save_all(self, conn: sqlite3.Connection) -> None:
        """Persist every index with its SQLite fingerprint (at shutdown, when no write is running)."""
        for space, idx in self.indexes.items():
            idx.save(self.watermark(conn, space))

    def statistics(self) -> dict[str, Any]:
        return {space: idx.statistics() for space, idx in self.indexes.items()}
