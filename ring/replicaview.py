"""Owns what the replication engines read from a replica (`ReplicaData`, `LocalView`, `MemoryView`) and
their size/paging helpers (`wire_bytes`, `pack`, refs); must not write a store, keep state or read a clock.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from crypto.errors import InvalidArgument
from ring.digest import RangeDigest
from ring.memstore import MemoryReplicaStore
from ring.messages import ItemRef, ItemSummary
from ring.partition import Placement
from ring.records import Kind, Record


class Rng(Protocol):
    """`random.Random` satisfies it; seed it for replayable runs."""

    def random(self) -> float: ...


class ReplicaData(Protocol):
    """What the replication engines read from the local store (the node: SQLite; the simulator and
    tests: `MemoryView`). Lists are ascending by ItemRef, the order cursors and pages rely on."""

    @property
    def partition_bits(self) -> int: ...

    def digests(self, partitions: Sequence[int]) -> Mapping[int, RangeDigest]:
        """Digests of those of `partitions` that hold anything; an absent one is empty (most of a
        node's partitions are, and a hash tree or a rebalance asks about tens of thousands)."""

    def summaries(self, partition: int, after: ItemRef | None, limit: int) -> list[ItemSummary]: ...

    def records(self, items: Sequence[ItemRef]) -> list[Record]: ...

    def records_after(self, partition: int, after: ItemRef | None, limit: int) -> list[Record]: ...


class LocalView(ReplicaData, Protocol):
    """Adds the placement questions the scheduler asks (per the local membership view)."""

    def co_replicas(self) -> Sequence[str]: ...

    def shared_partitions(self, peer: str) -> Sequence[int]: ...


def wire_bytes(obj: object) -> int:
    """Approximate msgpack size of a message or value: for statistics and message bounds."""
    if obj is None or isinstance(obj, bool):
        return 1
    if isinstance(obj, int):
        return 1 if -32 <= obj < 128 else 3 if -(1 << 15) <= obj < 1 << 16 else 5 if -(1 << 31) <= obj < 1 << 32 else 9
    if isinstance(obj, float):
        return 9
    if isinstance(obj, str):
        n = len(obj.encode("utf-8", "surrogatepass"))
        return n + (1 if n < 32 else 2 if n < 256 else 3 if n < 65536 else 5)
    if isinstance(obj, bytes | bytearray | memoryview):
        return len(obj) + 3
    if isinstance(obj, Record):
        return wire_bytes(obj.to_wire())
    if isinstance(obj, RangeDigest):
        return wire_bytes(obj.to_wire())
    if isinstance(obj, enum.Enum):
        return wire_bytes(obj.value)
    if isinstance(obj, Mapping):
        return (1 if len(obj) < 16 else 3) + sum(wire_bytes(k) + wire_bytes(v) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return (1 if len(obj) < 16 else 3) + sum(wire_bytes(x) for x in obj)
    if dataclasses.is_dataclass(obj):
        fs = dataclasses.fields(obj)
        return 2 + sum(wire_bytes(getattr(obj, f.name)) for f in fs)
    return 9


def as_ref(obj: Any) -> ItemRef:
    """An ItemRef from its wire form (lists from msgpack compare unlike tuples)."""
    if not isinstance(obj, list | tuple) or len(obj) < 2 or not isinstance(obj[0], str) \
            or not isinstance(obj[1], list | tuple):
        raise InvalidArgument("an item is [kind, key]")
    return obj[0], tuple(obj[1])


def ref_of(r: Record) -> ItemRef:
    return r.kind.value, r.key


def pack(records: Sequence[Record], bytes_max: int) -> list[Record]:
    """The longest prefix within `bytes_max` (at least one record, so a large one still moves)."""
    out: list[Record] = []
    size = 0
    for r in records:
        b = wire_bytes(r)
        if out and size + b > bytes_max:
            break
        out.append(r)
        size += b
    return out


def co_replicas(pl: Placement | None, me: str) -> list[str]:
    """Every node that shares at least one partition with `me` under `pl`."""
    if pl is None or me not in pl.nodes:
        return []
    rows = pl.table[pl.partitions_of(me)]
    return sorted({pl.nodes[i] for i in np.unique(rows).tolist()} - {me})


def shared_partitions(pl: Placement | None, me: str, peer: str) -> list[int]:
    """The partitions both `me` and `peer` own under `pl`, ascending."""
    if pl is None or me not in pl.nodes or peer not in pl.nodes:
        return []
    i, j = pl.nodes.index(me), pl.nodes.index(peer)
    return list(np.flatnonzero((pl.table == i).any(axis=1) & (pl.table == j).any(axis=1)).tolist())


class MemoryView:
    """`LocalView` over a MemoryReplicaStore and a Placement: the simulator's and the tests' store."""

    def __init__(self, store: MemoryReplicaStore, me: str, placement: Placement | None = None) -> None:
        self.store, self.me, self.placement = store, me, placement

    @property
    def partition_bits(self) -> int:
        return self.store.partition_bits

    def digests(self, partitions: Sequence[int]) -> Mapping[int, RangeDigest]:
        return {p: self.store.digest(p) for p in partitions}

    def summaries(self, partition: int, after: ItemRef | None, limit: int) -> list[ItemSummary]:
        return [(r.kind.value, r.key, r.digest_hash()) for r in self.records_after(partition, after, limit)]

    def records(self, items: Sequence[ItemRef]) -> list[Record]:
        out = []
        for kind, key in items:
            r = self.store.get(Kind(kind), tuple(key))
            if r is not None:
                out.append(r)
        return out

    def records_after(self, partition: int, after: ItemRef | None, limit: int) -> list[Record]:
        out: list[Record] = []
        for r in self.store.records(partition):
            if after is None or ref_of(r) > after:
                out.append(r)
                if len(out) >= limit:
                    break
        return out

    def co_replicas(self) -> Sequence[str]:
        return co_replicas(self.placement, self.me)

    def shared_partitions(self, peer: str) -> Sequence[int]:
        return shared_partitions(self.placement, self.me, peer)
