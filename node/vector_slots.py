"""The vector index's slot table: append-only rows (unit vector, key, group, alive bit) and the key map.

Owns adding, tombstoning, growing and compacting rows; it must not search, build segments or
decide when to compact. Callers hold the index's lock, except for the two-phase copies that take it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from node.vector_segment import SavedIndex

_CAPACITY_MIN = 1024
_COPY_ROWS = 8192  # rows copied between two GIL hand-overs when compacting


@dataclass(frozen=True, slots=True)
class Compacted:
    """The live rows of a table copied into new arrays (``rows`` of them, ``sealed`` of those
    below the old ``sealed_upto``), waiting for ``SlotTable.adopt``."""

    n0: int  # the table's row count when copied
    live: np.ndarray  # old slots of the copied rows
    vectors: np.ndarray
    keys: np.ndarray
    groups: np.ndarray
    sealed: int
    slot_of: dict[int, int]


class SlotTable:
    """Rows ``[0, n)`` of one index. A row never changes once written except its ``alive`` bit;
    re-adding a key appends a new row and clears the old one's bit (a tombstone until compaction).
    Arrays are replaced whole (never resized in place), so a reader holding the old arrays keeps
    a consistent snapshot."""

    __slots__ = ("dim", "vectors", "keys", "groups", "alive", "n", "slot_of", "group_live")

    def __init__(self, dim: int, capacity: int = _CAPACITY_MIN) -> None:
        self.dim = dim
        self.vectors = np.empty((capacity, dim), dtype=np.float32)
        self.keys = np.empty(capacity, dtype=np.int64)
        self.groups = np.empty(capacity, dtype=np.int64)
        self.alive = np.zeros(capacity, dtype=bool)
        self.n = 0
        self.slot_of: dict[int, int] = {}
        self.group_live: dict[int, int] = {}  # live rows per group

    def __len__(self) -> int:
        return len(self.slot_of)

    @property
    def dead(self) -> int:
        return self.n - len(self.slot_of)

    def allowed(self, groups: np.ndarray | None) -> int:
        """Live rows in ``groups`` (all live rows if None)."""
        if groups is None:
            return len(self.slot_of)
        return sum(self.group_live.get(g, 0) for g in set(groups.tolist()))

    def append(self, keys: np.ndarray, vectors: np.ndarray, groups: np.ndarray) -> None:
        """Write new rows for distinct ``keys`` (unit ``vectors``), tombstoning their old rows."""
        if self.n + len(keys) > len(self.keys):
            self.resize(max(2 * len(self.keys), self.n + len(keys)))
        start = self.n
        for key, group in zip(keys.tolist(), groups.tolist(), strict=True):
            self.kill(key)
            self.group_live[group] = self.group_live.get(group, 0) + 1
        stop = start + len(keys)
        self.vectors[start:stop] = vectors
        self.keys[start:stop] = keys
        self.groups[start:stop] = groups
        self.alive[start:stop] = True
        self.slot_of.update(zip(keys.tolist(), range(start, stop), strict=True))
        self.n = stop

    def kill(self, key: int) -> None:
        slot = self.slot_of.pop(key, None)
        if slot is not None:
            self.alive[slot] = False
            group = int(self.groups[slot])
            self.group_live[group] -= 1
            if not self.group_live[group]:
                del self.group_live[group]

    def resize(self, capacity: int) -> None:
        n = self.n
        vectors = np.empty((capacity, self.dim), dtype=np.float32)
        vectors[:n] = self.vectors[:n]
        keys, groups, alive = (np.empty(capacity, np.int64), np.empty(capacity, np.int64),
                               np.zeros(capacity, dtype=bool))
        keys[:n], groups[:n], alive[:n] = self.keys[:n], self.groups[:n], self.alive[:n]
        self.vectors, self.keys, self.groups, self.alive = vectors, keys, groups, alive

    def grow_ahead(self, lock: threading.Lock, headroom: int, spare: int) -> None:
        """From a worker thread: when fewer than ``headroom`` free rows remain, grow the arrays now
        (to twice, or ``spare`` free rows) so that an add on the event loop rarely copies them.
        The big copy runs outside ``lock`` (rows below n are immutable); only the rows and alive
        bits written meanwhile are copied under it."""
        with lock:
            n, capacity = self.n, len(self.keys)
            if n + headroom <= capacity:
                return
            vectors, keys, groups = self.vectors, self.keys, self.groups
        new_capacity = max(2 * capacity, n + spare)
        new_vectors = np.empty((new_capacity, self.dim), dtype=np.float32)
        new_vectors[:n] = vectors[:n]
        new_keys, new_groups = np.empty(new_capacity, np.int64), np.empty(new_capacity, np.int64)
        new_keys[:n], new_groups[:n] = keys[:n], groups[:n]
        with lock:
            if self.vectors is not vectors:  # someone resized meanwhile: keep theirs
                return
            m = self.n
            new_vectors[n:m], new_keys[n:m], new_groups[n:m] = vectors[n:m], keys[n:m], groups[n:m]
            new_alive = np.zeros(new_capacity, dtype=bool)
            new_alive[:m] = self.alive[:m]
            self.vectors, self.keys, self.groups, self.alive = new_vectors, new_keys, new_groups, new_alive

    def compacted(self, lock: threading.Lock, sealed_upto: int, spare: int) -> Compacted:
        """Copy the live rows (outside ``lock``, taken only for the snapshot) into new arrays with
        ``spare`` free rows. ``sealed_upto`` must be read under the same lock hold as the caller's
        decision (the index's build lock keeps it fixed meanwhile)."""
        with lock:
            n0 = self.n
            vectors, keys, groups, alive0 = self.vectors, self.keys, self.groups, self.alive[:n0].copy()
        live = np.flatnonzero(alive0)
        m = int(live.size)
        capacity = max(_CAPACITY_MIN, m + spare)
        new_vectors = np.empty((capacity, self.dim), dtype=np.float32)
        for lo in range(0, m, _COPY_ROWS):  # in chunks, handing the GIL over between them
            np.take(vectors, live[lo : lo + _COPY_ROWS], axis=0, out=new_vectors[lo : min(m, lo + _COPY_ROWS)])
            time.sleep(0)
        new_keys, new_groups = np.empty(capacity, np.int64), np.empty(capacity, np.int64)
        new_keys[:m], new_groups[:m] = keys[live], groups[live]
        slot_of = dict(zip(new_keys[:m].tolist(), range(m), strict=True))
        return Compacted(n0, live, new_vectors, new_keys, new_groups, int(np.searchsorted(live, sealed_upto)), slot_of)

    def adopt(self, c: Compacted) -> bool:
        """Switch to the compacted arrays, carrying over the rows added and the removals made since
        the copy; False (nothing changed) if the rows added since no longer fit."""
        m, tail = c.live.size, self.n - c.n0
        if m + tail > len(c.keys):
            return False
        new_alive = np.zeros(len(c.keys), dtype=bool)
        new_alive[:m] = self.alive[c.live]
        slot_of = c.slot_of
        for i in np.flatnonzero(~new_alive[:m]).tolist():  # removed while we were copying
            key = int(c.keys[i])
            if slot_of.get(key) == i:
                del slot_of[key]
        c.vectors[m : m + tail] = self.vectors[c.n0 : self.n]
        c.keys[m : m + tail], c.groups[m : m + tail] = self.keys[c.n0 : self.n], self.groups[c.n0 : self.n]
        new_alive[m : m + tail] = self.alive[c.n0 : self.n]
        for offset in np.flatnonzero(new_alive[m : m + tail]).tolist():
            slot_of[int(c.keys[m + offset])] = m + offset
        self.vectors, self.keys, self.groups, self.alive = c.vectors, c.keys, c.groups, new_alive
        self.n, self.slot_of = m + tail, slot_of
        return True

    def restore(self, loaded: SavedIndex, spare: int) -> None:
        """Take the rows of a saved index (raises ValueError if two live rows share a key)."""
        n = loaded.keys.shape[0]
        self.resize(max(_CAPACITY_MIN, n + spare))
        self.vectors[:n], self.keys[:n], self.groups[:n] = loaded.vectors, loaded.keys, loaded.groups
        self.alive[:n] = loaded.alive
        self.n = n
        live = np.flatnonzero(loaded.alive)
        self.slot_of = dict(zip(loaded.keys[live].tolist(), live.tolist(), strict=True))
        if len(self.slot_of) != live.size:
            raise ValueError("duplicate live keys")
        values, counts = np.unique(loaded.groups[live], return_counts=True)
        self.group_live = dict(zip(values.tolist(), counts.tolist(), strict=True))

    def arrays(self) -> dict[str, np.ndarray]:
        """The rows as saved: views of the immutable part, a copy of the alive bits."""
        n = self.n
        return {"vectors": self.vectors[:n], "keys": self.keys[:n], "groups": self.groups[:n],
                "alive": self.alive[:n].copy()}
