"""An in-memory replica store: the reference implementation of what a node keeps per replica
(records by item, per-partition digests maintained on every change), used by the replication
simulator and as the model the SQLite store is tested against.

Pure: no I/O. Not a cache or an index; it must not decide placement or talk to peers.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator

from ring.digest import RangeDigest
from ring.partition import PARTITION_BITS
from ring.records import Kind, Record, merge

ItemId = tuple[Kind, tuple[str, ...]]


class MemoryReplicaStore:
    """Records merged by `apply`; a RangeDigest per partition kept equal to the multiset of the
    stored copies' digest hashes (updated in O(1) per change)."""

    def __init__(self, partition_bits: int = PARTITION_BITS) -> None:
        self.partition_bits = partition_bits
        self._items: dict[ItemId, Record] = {}
        self._by_partition: defaultdict[int, set[ItemId]] = defaultdict(set)
        self._digests: defaultdict[int, RangeDigest] = defaultdict(RangeDigest)

    def get(self, kind: Kind, key: tuple[str, ...]) -> Record | None:
        return self._items.get((kind, key))

    def apply(self, record: Record) -> tuple[Record, bool]:
        """Merge `record` into the local copy; returns (the local copy now, whether it changed)."""
        item = (record.kind, record.key)
        old = self._items.get(item)
        new = merge(old, record)
        assert new is not None
        if old is not None and new.version == old.version:
            return old, False
        part = record.partition(self.partition_bits)
        digest = self._digests[part]
        if old is not None:
            digest.remove(old.digest_hash())
        digest.add(new.digest_hash())
        self._items[item] = new
        self._by_partition[part].add(item)
        return new, True

    def records(self, partition: int) -> Iterator[Record]:
        for item in sorted(self._by_partition.get(partition, ()), key=lambda i: (i[0].value, i[1])):
            yield self._items[item]

    def digest(self, partition: int) -> RangeDigest:
        return self._digests[partition].copy() if partition in self._digests else RangeDigest()

    def partitions(self) -> list[int]:
        return sorted(p for p, items in self._by_partition.items() if items)

    def drop(self, partitions: Iterable[int]) -> int:
        """Forget whole partitions (after rebalancing moved them away and the new owners confirmed)."""
        n = 0
        for p in partitions:
            for item in self._by_partition.pop(p, set()):
                del self._items[item]
                n += 1
            self._digests.pop(p, None)
        return n

    def collect(self, partition: int, older_than_hlc: int) -> int:
        """Drop tombstones (deleted memories and registers/links/states) last changed before
        `older_than_hlc`: the tombstone grace period has passed, every replica has seen them."""
        n = 0
        for item in list(self._by_partition.get(partition, ())):
            r = self._items[item]
            if _is_tombstone(r) and r.hlc < older_than_hlc:
                self._digests[partition].remove(r.digest_hash())
                del self._items[item]
                self._by_partition[partition].discard(item)
                n += 1
        return n

    def __len__(self) -> int:
        return len(self._items)


def _is_tombstone(r: Record) -> bool:
    b = r.body
    if r.kind is Kind.MEMORY:
        return bool(b.get("deleted", False))
    deleted = getattr(b, "deleted", None)
    if deleted is not None:
        return bool(deleted)
    return bool(b.get("deleted", False))
