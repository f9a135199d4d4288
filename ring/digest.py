"""Anti-entropy digests: a per-partition multiset hash kept up to date in O(1) per write, and a
fixed-fanout hash tree over a set of partitions that two replicas compare top-down.

Owns item hashing, digest arithmetic, tree shape and the diff; it must not read storage, send
anything or choose which partitions to compare (the caller passes the ones both replicas own).

Why additive: a partition's digest is the sum mod 2**64 of its items' hashes, so a write is one
addition (and one subtraction for the version it supersedes), order never matters, and no per-
partition tree of items is kept. The price: 64 bits, and sums of chosen items can be made to collide
with effort (Wagner's generalised birthday), so a writer who crafts items could hide a divergence
from anti-entropy (not from read repair). The item count rides along, so a missing or extra item is
always seen.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from crypto.errors import InvalidArgument
from ring.canonical import _is_int, canonical_encoding
from ring.crdt import _normalise

HASH_MASK = (1 << 64) - 1
PARTITION_ID_MAX = (1 << 63) - 1
FANOUT_DEFAULT = 16
FANOUT_MAX = 256
# One tree covers at most this many partitions (Q = 2**17 today): bounds a wire tree to ~10 MiB.
TREE_PARTITIONS_MAX = 1 << 20

_PERSON_ITEM = b"mnemonet-item"
_PERSON_LEAF = b"mnemonet-leaf"
_GOLDEN = 0x9E3779B97F4A7C15
_PERSON_NODE = b"mnemonet-tnode"
_PERSON_ROOT = b"mnemonet-troot"


def item_hash(key: object, version: object) -> int:
    """64-bit hash of one stored version: blake2b over the canonical encoding of ``[key, version]``.

    ``version`` must identify the stored state completely, e.g. ``[hlc, writer, deleted]`` for a
    register and ``[hlc, deleted]`` for a memory, so a tombstone hashes apart from the record it ends.
    Tuples hash as lists (the wire turns one into the other); the result is the same in every process.
    """
    encoded = canonical_encoding([_normalise(key), _normalise(version)])
    # surrogatepass: a Python str may hold lone surrogates; the encoding stays injective with them.
    data = encoded.encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, person=_PERSON_ITEM).digest(), "big")


class RangeDigest:
    """Multiset hash of one partition's items: (sum of item hashes, item count), both mod 2**64.

    ``add`` on every stored version, ``remove`` when a version is superseded or collected. The pair
    is a group element, so updates commute and ``remove`` undoes ``add`` exactly, in any order.
    """

    __slots__ = ("_sum", "_count")

    def __init__(self, sum_: int = 0, count: int = 0) -> None:
        self._sum = _check_u64(sum_, "sum")
        self._count = _check_u64(count, "count")

    def add(self, item: int) -> None:
        self._sum = (self._sum + _check_u64(item, "item hash")) & HASH_MASK
        self._count = (self._count + 1) & HASH_MASK

    def remove(self, item: int) -> None:
        self._sum = (self._sum - _check_u64(item, "item hash")) & HASH_MASK
        self._count = (self._count - 1) & HASH_MASK

    @property
    def sum(self) -> int:
        return self._sum

    @property
    def count(self) -> int:
        return self._count

    def copy(self) -> RangeDigest:
        twin = RangeDigest.__new__(RangeDigest)  # both fields are already checked
        twin._sum, twin._count = self._sum, self._count
        return twin

    def to_wire(self) -> list[int]:
        return [self._sum, self._count]

    @classmethod
    def from_wire(cls, obj: object) -> RangeDigest:
        if not isinstance(obj, list | tuple) or len(obj) != 2:
            raise InvalidArgument("range digest must be [sum, count]")
        return cls(obj[0], obj[1])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RangeDigest):
            return NotImplemented
        return self._sum == other._sum and self._count == other._count

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"RangeDigest(sum={self._sum:#018x}, count={self._count})"


@dataclass(frozen=True, slots=True)
class DiffResult:
    """Partitions whose digests differ (ascending), and how many tree nodes were compared to find them."""

    partitions: list[int]
    nodes_compared: int


class DigestTree:
    """A ``fanout``-ary hash tree over a sorted set of partitions; immutable.

    ``levels[0]`` is the root, ``levels[-1]`` the leaves (one per partition, in ascending id order).
    A leaf binds its partition id to the digest (an empty partition's leaf is a cheap bijection of
    its id, not a hash: most of a node's partitions are empty); the root binds the fanout and the partition count,
    so two trees over different partition sets have different roots. Node ``i`` of level ``d`` has
    children ``i*fanout .. i*fanout+fanout-1`` of level ``d+1``; the root's children are all of
    level 1 (at most ``fanout``). For a diff over the wire, peers exchange ``hashes(level, indices)``
    top-down and descend into ``children`` of what ``differing`` returns, as ``diff`` does locally.
    """

    __slots__ = ("_ids", "_fanout", "_levels")

    def __init__(self, ids: tuple[int, ...], fanout: int, leaves: list[int]) -> None:
        # Private: use `tree()` or `DigestTree.from_wire()`, which validate.
        self._ids, self._fanout = ids, fanout
        levels = [leaves]
        while len(levels[-1]) > fanout:
            below = levels[-1]
            levels.append([_node_hash(below[i:i + fanout]) for i in range(0, len(below), fanout)])
        levels.append([_root_hash(fanout, len(ids), levels[-1])])
        levels.reverse()
        self._levels = levels

    @property
    def ids(self) -> tuple[int, ...]:
        return self._ids

    @property
    def fanout(self) -> int:
        return self._fanout

    @property
    def depth(self) -> int:
        """Number of levels, root and leaves included."""
        return len(self._levels)

    @property
    def root(self) -> int:
        return self._levels[0][0]

    def level_size(self, level: int) -> int:
        return len(self._levels[self._check_level(level)])

    def hashes(self, level: int, indices: Sequence[int]) -> list[int]:
        """The hashes of nodes ``indices`` of ``level`` (what a peer sends in one step of a remote diff)."""
        row = self._levels[self._check_level(level)]
        try:
            return [row[_check_index(i)] for i in indices]
        except IndexError:
            raise InvalidArgument("tree node index out of range", level=level) from None

    def differing(self, level: int, indices: Sequence[int], remote: Sequence[int]) -> list[int]:
        """Those of ``indices`` whose local hash differs from the peer's hash at the same position."""
        if len(indices) != len(remote):
            raise InvalidArgument("one remote hash per index", indices=len(indices), remote=len(remote))
        local = self.hashes(level, indices)
        return [i for i, mine, theirs in zip(indices, local, remote, strict=True) if mine != theirs]

    def children(self, level: int, indices: Sequence[int]) -> list[int]:
        """Indices in ``level + 1`` of the children of nodes ``indices`` of ``level``."""
        below = len(self._levels[self._check_level(level + 1)])
        f = self._fanout
        return [c for i in indices for c in range(i * f, min(i * f + f, below))]

    def partitions_at(self, leaf_indices: Sequence[int]) -> list[int]:
        """Partition ids of leaf positions."""
        return [self._ids[i] for i in leaf_indices]

    def to_wire(self) -> dict[str, Any]:
        """Plain ints for msgpack/JSON; internal nodes are recomputed by the receiver, never trusted."""
        return {"fanout": self._fanout, "ids": list(self._ids), "leaves": list(self._levels[-1])}

    @classmethod
    def from_wire(cls, obj: object) -> DigestTree:
        if not isinstance(obj, Mapping) or not {"fanout", "ids", "leaves"} <= obj.keys():
            raise InvalidArgument("digest tree must be a mapping with fanout, ids and leaves")
        ids, leaves = obj["ids"], obj["leaves"]
        if not isinstance(ids, list | tuple) or not isinstance(leaves, list | tuple) or len(ids) != len(leaves):
            raise InvalidArgument("digest tree needs equally long lists of ids and leaves")
        sorted_ids = _check_ids(ids)
        if list(sorted_ids) != list(ids):
            raise InvalidArgument("digest tree ids must be ascending")
        return cls(sorted_ids, _check_fanout(obj["fanout"]), [_check_u64(h, "leaf hash") for h in leaves])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DigestTree):
            return NotImplemented
        return self._fanout == other._fanout and self._ids == other._ids and self._levels == other._levels

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"DigestTree(partitions={len(self._ids)}, fanout={self._fanout}, depth={self.depth}, root={self.root:#018x})"

    def _check_level(self, level: int) -> int:
        if not _is_int(level) or not 0 <= level < len(self._levels):
            raise InvalidArgument("tree level out of range", level=repr(level), depth=len(self._levels))
        return level


def tree(partition_ids: Sequence[int], digests: Mapping[int, RangeDigest],
         fanout: int = FANOUT_DEFAULT) -> DigestTree:
    """The hash tree over ``partition_ids`` (any order, no repeats); a partition absent from
    ``digests`` is empty, and digests of other partitions are ignored."""
    ids = _check_ids(partition_ids)
    f = _check_fanout(fanout)
    return DigestTree(ids, f, [_leaf_hash(p, d) if (d := digests.get(p)) is not None and (d.count or d.sum)
                               else _empty_leaf(p) for p in ids])


def diff(a: DigestTree, b: DigestTree) -> DiffResult:
    """Partitions whose digests differ between two trees over the same partitions, found top-down:
    only children of differing nodes are compared, so identical trees cost one comparison and k
    differences at most ``1 + k * fanout * (depth - 1)``."""
    if a.fanout != b.fanout or a.ids != b.ids:
        raise InvalidArgument("trees cover different partitions or fanouts; compare the shared ones")
    frontier, compared = [0], 0
    for level in range(a.depth):
        if level:
            frontier = a.children(level - 1, frontier)
        compared += len(frontier)
        frontier = a.differing(level, frontier, b.hashes(level, frontier))
        if not frontier:
            break
    return DiffResult(a.partitions_at(frontier) if frontier else [], compared)


def _leaf_hash(partition: int, d: RangeDigest) -> int:
    data = partition.to_bytes(8, "big") + d.sum.to_bytes(8, "big") + d.count.to_bytes(8, "big")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, person=_PERSON_LEAF).digest(), "big")


def _empty_leaf(partition: int) -> int:
    return (partition * _GOLDEN + 1) & HASH_MASK  # odd multiplier: one leaf per id


def _node_hash(children: list[int]) -> int:
    data = b"".join(c.to_bytes(8, "big") for c in children)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, person=_PERSON_NODE).digest(), "big")


def _root_hash(fanout: int, partitions: int, top: list[int]) -> int:
    h = hashlib.blake2b(digest_size=8, person=_PERSON_ROOT)
    h.update(fanout.to_bytes(4, "big") + partitions.to_bytes(8, "big"))
    h.update(b"".join(c.to_bytes(8, "big") for c in top))
    return int.from_bytes(h.digest(), "big")


def _check_u64(x: object, name: str) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x <= HASH_MASK:
        raise InvalidArgument(f"{name} must be an int in [0, 2**64)", **{name.replace(" ", "_"): repr(x)})
    return x


def _check_index(i: object) -> int:
    if isinstance(i, bool) or not isinstance(i, int) or i < 0:
        raise InvalidArgument("tree node index must be a non-negative int", index=repr(i))
    return i


def _check_fanout(f: object) -> int:
    if isinstance(f, bool) or not isinstance(f, int) or not 2 <= f <= FANOUT_MAX:
        raise InvalidArgument(f"fanout must be an int in [2, {FANOUT_MAX}]", fanout=repr(f))
    return f


def _check_ids(partition_ids: Sequence[int]) -> tuple[int, ...]:
    if isinstance(partition_ids, str | bytes):
        raise InvalidArgument("partition ids must be a sequence of ints")
    if len(partition_ids) > TREE_PARTITIONS_MAX:
        raise InvalidArgument("too many partitions for one tree", partitions=len(partition_ids),
                              partitions_max=TREE_PARTITIONS_MAX)
    ids: list[int] = []
    for p in partition_ids:
        try:
            pid = operator.index(p)  # numpy ints from ring/partition.py are welcome
        except TypeError:
            raise InvalidArgument("partition id must be an int", partition=repr(p)) from None
        if isinstance(p, bool) or not 0 <= pid <= PARTITION_ID_MAX:
            raise InvalidArgument("partition id out of range", partition=repr(p))
        ids.append(pid)
    out = tuple(sorted(set(ids)))
    if len(out) != len(ids):
        raise InvalidArgument("partition ids must be distinct")
    return out
