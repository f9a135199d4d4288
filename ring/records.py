"""The unit of replication: a `Record` of one kind under one key, its ring position, its digest
version, and the merge (a semilattice join) that reconciles two replicas' copies.

Pure: no I/O, no clock. Everything that moves data between replicas (coordinator writes, read
repair, hinted handoff, anti-entropy, rebalancing) moves Records and merges them with `merge`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from crypto.errors import InvalidArgument
from ring.canonical import canonical_encoding
from ring.crdt import ORSet, PNCounter
from ring.digest import item_hash
from ring.merge import Versioned, lww_merge, memory_merge
from ring.partition import memory_key, partition_of, signal_key, state_key


class Kind(enum.Enum):
    """What a record holds, and so how it merges. Values are the wire names."""

    MEMORY = "memory"  # immutable memory record (dict with id, ns, hlc, deleted, ...): union + tombstones
    LINK = "link"  # a link from a memory: LWW register (Versioned) keyed by the full link, placed with its source
    REGISTER = "register"  # a signal register: LWW by (hlc, writer)
    COUNTER = "counter"  # a signal counter: PN-counter join within a delete epoch (see _crdt_join)
    SET = "set"  # a signal set: add-wins OR-set join
    STATE = "state"  # an agent's published state: LWW by (hlc, writer)


_KEY_ARITY = {Kind.MEMORY: 2, Kind.LINK: 5, Kind.REGISTER: 2, Kind.COUNTER: 2, Kind.SET: 2, Kind.STATE: 1}


@dataclass(frozen=True, slots=True)
class Record:
    """One replicated item. `key` is (ns, id) for memories, (ns, key) for signals, (agent,) for
    states, (ns, from_id, to_ns, to_id, relation) for links. `body` is kind-specific and wire-ready:
    the memory dict; a Versioned for registers, states and links; {"hlc", "epoch", "deleted", "state"}
    for counters and sets, where `state` is the CRDT's wire form, `hlc` the newest change (the version
    reads return) and `epoch` the hlc of the last delete (0: never deleted).
    """

    kind: Kind
    key: tuple[str, ...]
    body: Any

    def __post_init__(self) -> None:
        if len(self.key) != _KEY_ARITY[self.kind] or not all(isinstance(k, str) for k in self.key):
            raise InvalidArgument(f"a {self.kind.value} key is {_KEY_ARITY[self.kind]} strings", key=repr(self.key))

    @property
    def ring_hash(self) -> int:
        """Position on the ring. Links live with their source memory, so `related` reads one replica set."""
        k = self.key
        if self.kind in (Kind.MEMORY, Kind.LINK):
            return memory_key(k[0], k[1])
        if self.kind is Kind.STATE:
            return state_key(k[0])
        return signal_key(k[0], k[1])

    def partition(self, bits: int) -> int:
        return partition_of(self.ring_hash, bits)

    @property
    def version(self) -> object:
        """What identifies this copy completely for anti-entropy digests: equal versions, equal
        copies; a merge that changes a copy changes its version."""
        b = self.body
        if self.kind is Kind.MEMORY:
            return [bool(b.get("deleted", False)), int(b["hlc"]), canonical_encoding(dict(b))]
        if isinstance(b, Versioned):
            return [b.hlc, b.writer, b.deleted, canonical_encoding(b.value), b.expires_ms]
        return [int(b["hlc"]), int(b.get("epoch", 0)), bool(b.get("deleted", False)), canonical_encoding(b["state"])]

    def digest_hash(self) -> int:
        return item_hash([self.kind.value, *self.key], self.version)

    @property
    def hlc(self) -> int:
        b = self.body
        return int(b.hlc) if isinstance(b, Versioned) else int(b["hlc"])

    def to_wire(self) -> list[Any]:
        b = self.body
        return [self.kind.value, list(self.key), b.to_wire() if isinstance(b, Versioned) else dict(b)]

    @classmethod
    def from_wire(cls, obj: object) -> Record:
        if not isinstance(obj, list | tuple) or len(obj) != 3 or not isinstance(obj[1], list | tuple):
            raise InvalidArgument("a record is [kind, key, body]")
        try:
            kind = Kind(obj[0])
        except ValueError:
            raise InvalidArgument("unknown record kind", kind=repr(obj[0])[:32]) from None
        body: Any = obj[2]
        if kind in (Kind.REGISTER, Kind.STATE, Kind.LINK):
            body = Versioned.from_wire(body)
        elif not isinstance(body, Mapping) or "hlc" not in body:
            raise InvalidArgument(f"a {kind.value} body is a map with an hlc")
        return cls(kind, tuple(obj[1]), body)


def _crdt_join(kind: Kind, a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Counters and sets: `{"hlc", "epoch", "deleted", "state"}`. A delete starts a new epoch (its
    hlc) with an empty state. The join orders by epoch first — the newer epoch wins whole, so a
    delete discards updates it did not see (delete wins over concurrent updates, documented) — and
    within one epoch joins component-wise: CRDT join of the states, `deleted` only if both say so
    (a write after the delete revives the key), max of hlc. A lexicographic product of semilattices,
    hence itself one: commutative, associative, idempotent."""
    ea, eb = int(a.get("epoch", 0)), int(b.get("epoch", 0))
    if ea != eb:
        return dict(a if ea > eb else b)
    cls: type[PNCounter] | type[ORSet] = PNCounter if kind is Kind.COUNTER else ORSet
    state = cls.from_wire(a["state"]).merge(cls.from_wire(b["state"]))  # type: ignore[arg-type]
    return {"hlc": max(int(a["hlc"]), int(b["hlc"])), "epoch": ea,
            "deleted": bool(a.get("deleted", False)) and bool(b.get("deleted", False)), "state": state.to_wire()}


def merge(a: Record | None, b: Record | None) -> Record | None:
    """Join two copies of one item (same kind and key); None is the identity. Commutative,
    associative and idempotent for every kind, so replicas converge whatever the delivery order."""
    if a is None:
        return b
    if b is None:
        return a
    if a.kind is not b.kind or a.key != b.key:
        raise InvalidArgument("cannot merge records of different items",
                              a=f"{a.kind.value}:{a.key!r}"[:128], b=f"{b.kind.value}:{b.key!r}"[:128])
    if a.kind is Kind.MEMORY:
        m = memory_merge(a.body, b.body)
        return a if m is a.body else b
    if isinstance(a.body, Versioned) and isinstance(b.body, Versioned):
        v = lww_merge(a.body, b.body)
        return a if v is a.body else b
    return Record(a.kind, a.key, _crdt_join(a.kind, a.body, b.body))
