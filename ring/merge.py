"""Merge rules for replicated data: LWW registers and immutable memory records (the CRDT signal
kinds live in ring/crdt.py and are re-exported here).

Every merge is a semilattice join (commutative, associative, idempotent) so repair is order-free;
pure functions only: no I/O, no clock, no randomness. Inputs are never mutated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from crypto.errors import InvalidArgument
from ring.canonical import NESTING_DEPTH_MAX, _is_int, canonical_encoding
from ring.crdt import COUNT_MAX, ORSet, PNCounter
from ring.hlc import HLC_MAX

__all__ = ["COUNT_MAX", "NESTING_DEPTH_MAX", "ORSet", "PNCounter", "Versioned", "canonical_encoding", "lww_merge",
           "memory_merge", "memory_union"]


@dataclass(frozen=True, slots=True)
class Versioned:
    """A register value with its version. A tombstone is ``deleted=True`` and wins by the same order."""

    value: Any
    hlc: int
    writer: str
    deleted: bool = False
    expires_ms: int | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.hlc) or not 0 <= self.hlc <= HLC_MAX:
            raise InvalidArgument("hlc is not a valid HLC timestamp", hlc=repr(self.hlc))
        if not isinstance(self.writer, str) or not self.writer:
            raise InvalidArgument("writer must be a non-empty string", writer=repr(self.writer))
        if not isinstance(self.deleted, bool):
            raise InvalidArgument("deleted must be a bool", deleted=repr(self.deleted))
        if self.expires_ms is not None and not _is_int(self.expires_ms):
            raise InvalidArgument("expires_ms must be an int or None", expires_ms=repr(self.expires_ms))

    def is_live(self, now_ms: int) -> bool:
        """Not deleted and not expired at ``now_ms`` (expiry filters reads; it does not affect merging)."""
        return not self.deleted and (self.expires_ms is None or self.expires_ms > now_ms)

    def to_wire(self) -> dict[str, Any]:
        return {
            "value": self.value, "hlc": self.hlc, "writer": self.writer,
            "deleted": self.deleted, "expires_ms": self.expires_ms,
        }

    @classmethod
    def from_wire(cls, obj: object) -> Versioned:
        if not isinstance(obj, Mapping) or "hlc" not in obj or "writer" not in obj:
            raise InvalidArgument("versioned value needs hlc and writer")
        return cls(obj.get("value"), obj["hlc"], obj["writer"], obj.get("deleted", False), obj.get("expires_ms"))


def _lww_tiebreak(v: Versioned) -> str:
    # `deleted` leads so that, on a fully equal (hlc, writer), the tombstone wins.
    return ("1" if v.deleted else "0") + canonical_encoding(v.expires_ms) + canonical_encoding(v.value)


def lww_merge(a: Versioned | None, b: Versioned | None) -> Versioned | None:
    """Last writer wins by ``(hlc, writer)``; ``None`` (never written) is the identity.

    Two different contents under one ``(hlc, writer)`` should never happen (a writer's clock never
    repeats a stamp) but can arrive from a buggy or malicious peer; the canonical encoding of the rest
    decides then, so every replica still picks the same winner. Concurrent writes lose one of the two
    values by design: use ``PNCounter`` or ``ORSet`` when that is not acceptable.
    """
    if a is None:
        return b
    if b is None:
        return a
    ka, kb = (a.hlc, a.writer), (b.hlc, b.writer)
    if ka != kb:
        return a if ka > kb else b
    return a if _lww_tiebreak(a) >= _lww_tiebreak(b) else b


# ---------------------------------------------------------------- immutable memory records


def _memory_key(r: Mapping[str, Any]) -> tuple[bool, int]:
    if not isinstance(r, Mapping) or not isinstance(r.get("id"), str):
        raise InvalidArgument("memory record needs a string 'id'")
    hlc: Any = r.get("hlc")
    deleted: Any = r.get("deleted", False)
    if not _is_int(hlc):
        raise InvalidArgument("memory record needs an int 'hlc'", id=r["id"])
    if not isinstance(deleted, bool):
        raise InvalidArgument("memory 'deleted' must be a bool", id=r["id"])
    return (deleted, hlc)


def memory_merge(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """Merge two replicas' copies of one memory (same ``id`` and, if present, ``ns``); returns one input.

    Order, highest wins: a tombstone beats any live record whatever its hlc (ids are never reused, so a
    deleted memory must never come back); then the higher ``hlc``; then, for two different records with
    equal (deleted, hlc) — a bug or a forged record — the greater canonical encoding of the whole record.
    A total order, so the merge is commutative, associative and idempotent. ``None`` is the identity.
    """
    if a is None:
        return b
    if b is None:
        return a
    ka, kb = _memory_key(a), _memory_key(b)
    if a["id"] != b["id"] or a.get("ns") != b.get("ns"):
        raise InvalidArgument("cannot merge two different memories", a=a["id"], b=b["id"])
    if ka != kb:
        return a if ka > kb else b
    return a if canonical_encoding(dict(a)) >= canonical_encoding(dict(b)) else b


def memory_union(a: Mapping[str, Mapping[str, Any]],
                 b: Mapping[str, Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """Union of two replicas' ``id -> record`` maps, merging records present on both with ``memory_merge``."""
    out: dict[str, Mapping[str, Any]] = {}
    for source in (a, b):
        for mid, rec in source.items():
            if not isinstance(rec, Mapping) or rec.get("id") != mid:
                raise InvalidArgument("memory map key differs from the record's id", key=repr(mid))
            merged = memory_merge(out.get(mid), rec)
            assert merged is not None
            out[mid] = merged
    return out
