"""Merge rules for replicated data: LWW registers, PN-counters, add-wins OR-sets, memory records.

Every merge is a semilattice join (commutative, associative, idempotent) so repair is order-free;
pure functions only: no I/O, no clock, no randomness. Inputs are never mutated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from crypto.errors import InvalidArgument
from ring.hlc import HLC_MAX

# Bounds on what we are willing to walk or store: nesting of values, and one counter entry (int64).
NESTING_DEPTH_MAX = 64
COUNT_MAX = (1 << 63) - 1


def canonical_encoding(value: object) -> str:
    """A deterministic, injective text encoding of a JSON/msgpack-like value.

    Equal encodings mean equal values of equal types (a tuple is not a list, ``True`` is not ``1``),
    independent of dict order, set order and the Python hash seed. Used only to break ties and to key
    elements, so the order it induces is arbitrary but the same in every process.
    """
    out: list[str] = []
    _encode(value, out, 0)
    return "".join(out)


def _encode(v: object, out: list[str], depth: int) -> None:
    if depth > NESTING_DEPTH_MAX:
        raise InvalidArgument("value nested too deeply", depth_max=NESTING_DEPTH_MAX)
    # Every item starts with a distinct tag character and is self-delimiting, so the encoding of a
    # sequence of items is unambiguous (prefix-free), hence injective.
    if v is None:
        out.append("N")
    elif v is True:
        out.append("T")
    elif v is False:
        out.append("F")
    elif isinstance(v, int):
        out.append(f"i{int(v)};")
    elif isinstance(v, float):
        out.append(f"d{float(v).hex()};")
    elif isinstance(v, str):
        out.append(f"s{len(v)}:")
        out.append(v)
    elif isinstance(v, bytes | bytearray | memoryview):
        b = bytes(v)
        out.append(f"b{len(b)}:{b.hex()}")
    elif isinstance(v, list | tuple):
        out.append("l" if isinstance(v, list) else "u")
        for item in v:
            _encode(item, out, depth + 1)
        out.append("e")
    elif isinstance(v, dict):
        pairs = sorted((_sub(k, depth), _sub(x, depth)) for k, x in v.items())
        out.append("m")
        out.extend(k + x for k, x in pairs)
        out.append("e")
    elif isinstance(v, set | frozenset):
        out.append("x")
        out.extend(sorted(_sub(item, depth) for item in v))
        out.append("e")
    else:
        raise InvalidArgument(f"cannot encode a {type(v).__name__} value")


def _sub(v: object, depth: int) -> str:
    out: list[str] = []
    _encode(v, out, depth + 1)
    return "".join(out)


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


# ---------------------------------------------------------------- LWW register (signals, states)


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


# ---------------------------------------------------------------- PN-counter


def _counts(m: Mapping[str, int] | None, name: str) -> dict[str, int]:
    if m is None:
        return {}
    if not isinstance(m, Mapping):
        raise InvalidArgument(f"{name} must be a mapping of writer -> count")
    out: dict[str, int] = {}
    for w, n in m.items():
        if not isinstance(w, str) or not w:
            raise InvalidArgument(f"{name}: writer must be a non-empty string", writer=repr(w))
        if not _is_int(n) or not 0 <= n <= COUNT_MAX:
            raise InvalidArgument(f"{name}: count must be an int in [0, 2**63)", writer=w, count=repr(n))
        if n:  # a zero entry means the same as a missing one; dropping it keeps equality semantic
            out[w] = n
    return out


class PNCounter:
    """A counter that never loses an update: per-writer grow-only increment and decrement totals.

    Immutable: ``incr``/``merge`` return new counters. Correct only if each writer id is driven by a
    single replica (its entry is that replica's running total), e.g. the coordinating node's id.
    """

    __slots__ = ("_p", "_n")

    def __init__(self, increments: Mapping[str, int] | None = None,
                 decrements: Mapping[str, int] | None = None) -> None:
        self._p = _counts(increments, "increments")
        self._n = _counts(decrements, "decrements")

    @property
    def value(self) -> int:
        return sum(self._p.values()) - sum(self._n.values())

    @property
    def increments(self) -> dict[str, int]:
        return dict(self._p)

    @property
    def decrements(self) -> dict[str, int]:
        return dict(self._n)

    def incr(self, writer: str, amount: int = 1) -> PNCounter:
        """Add ``amount`` (negative to decrement) on behalf of ``writer``."""
        if not _is_int(amount):
            raise InvalidArgument("amount must be an int", amount=repr(amount))
        if amount == 0:
            return self
        p, n = dict(self._p), dict(self._n)
        side = p if amount > 0 else n
        side[writer] = side.get(writer, 0) + abs(amount)
        return PNCounter(p, n)  # re-validates writer and the int64 bound

    def decr(self, writer: str, amount: int = 1) -> PNCounter:
        return self.incr(writer, -amount)

    def merge(self, other: PNCounter) -> PNCounter:
        # Each writer's totals only grow, so the larger one has seen every update the smaller one has.
        return PNCounter(_max_union(self._p, other._p), _max_union(self._n, other._n))

    def to_wire(self) -> dict[str, dict[str, int]]:
        return {"p": dict(sorted(self._p.items())), "n": dict(sorted(self._n.items()))}

    @classmethod
    def from_wire(cls, obj: object) -> PNCounter:
        if not isinstance(obj, Mapping):
            raise InvalidArgument("counter must be a mapping with 'p' and 'n'")
        return cls(obj.get("p"), obj.get("n"))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PNCounter):
            return NotImplemented
        return self._p == other._p and self._n == other._n

    def __hash__(self) -> int:
        return hash((frozenset(self._p.items()), frozenset(self._n.items())))

    def __repr__(self) -> str:
        return f"PNCounter(value={self.value}, p={self._p!r}, n={self._n!r})"


def _max_union(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    out = dict(a)
    for w, n in b.items():
        if n > out.get(w, 0):
            out[w] = n
    return out


# ---------------------------------------------------------------- add-wins observed-remove set


def _normalise(v: object) -> object:
    # Elements travel as JSON or msgpack, where a tuple comes back as a list; normalising here keeps an
    # element's identity stable across the wire (and copies it, so callers cannot mutate our state).
    if isinstance(v, list | tuple):
        return [_normalise(x) for x in v]
    if isinstance(v, dict):
        return {k: _normalise(x) for k, x in v.items()}
    return v


_NO_TAGS: frozenset[str] = frozenset()


class ORSet:
    """Add-wins observed-remove set. Immutable: every operation returns a new set.

    Each add carries a unique tag (a dot such as ``f"{writer}:{hlc}"``); a remove tombstones exactly the
    tags it has observed, so a concurrent add (a tag the remove never saw) survives the merge.
    Tombstones are kept per element, so a tag reused for two elements removes only the one it was
    removed from. Tombstones grow until a later collection step (causal stability) drops them.
    """

    __slots__ = ("_values", "_live", "_removed")

    def __init__(self) -> None:
        self._values: dict[str, object] = {}  # canonical key -> element
        self._live: dict[str, frozenset[str]] = {}
        self._removed: dict[str, frozenset[str]] = {}

    @classmethod
    def _build(cls, values: dict[str, object], live: dict[str, frozenset[str]],
               removed: dict[str, frozenset[str]]) -> ORSet:
        s = cls()
        for k in values:
            lv, rm = live.get(k, _NO_TAGS) - removed.get(k, _NO_TAGS), removed.get(k, _NO_TAGS)
            if lv or rm:
                s._values[k] = values[k]
                if lv:
                    s._live[k] = lv
                if rm:
                    s._removed[k] = rm
        return s

    def _copy(self) -> ORSet:
        s = ORSet()
        s._values, s._live, s._removed = dict(self._values), dict(self._live), dict(self._removed)
        return s

    def add(self, element: object, tag: str) -> ORSet:
        if not isinstance(tag, str) or not tag:
            raise InvalidArgument("tag must be a non-empty string", tag=repr(tag))
        norm = _normalise(element)
        k = canonical_encoding(norm)
        if tag in self._live.get(k, _NO_TAGS) or tag in self._removed.get(k, _NO_TAGS):
            return self  # a repeated add, or one whose tag was already removed: both are no-ops
        out = self._copy()
        out._values.setdefault(k, norm)
        out._live[k] = self._live.get(k, _NO_TAGS) | {tag}
        return out

    def remove(self, element: object) -> ORSet:
        """Remove the element as observed here (its tags seen so far); a no-op if it is absent."""
        k = canonical_encoding(_normalise(element))
        seen = self._live.get(k)
        if not seen:
            return self
        out = self._copy()
        del out._live[k]
        out._removed[k] = self._removed.get(k, _NO_TAGS) | seen
        return out

    def merge(self, other: ORSet) -> ORSet:
        values = {**other._values, **self._values}  # equal keys hold equal (normalised) elements
        live = {k: self._live.get(k, _NO_TAGS) | other._live.get(k, _NO_TAGS) for k in values}
        removed = {k: self._removed.get(k, _NO_TAGS) | other._removed.get(k, _NO_TAGS) for k in values}
        return ORSet._build(values, live, removed)

    def elements(self) -> list[object]:
        """Present elements, in a deterministic (canonical) order."""
        return [self._values[k] for k in sorted(self._live)]

    def tags(self, element: object) -> frozenset[str]:
        """The live add tags of ``element`` (empty if absent)."""
        return self._live.get(canonical_encoding(_normalise(element)), _NO_TAGS)

    def __contains__(self, element: object) -> bool:
        return bool(self.tags(element))

    def __len__(self) -> int:
        return len(self._live)

    def to_wire(self) -> dict[str, list[list[Any]]]:
        """``{"e": [[element, live_tags, removed_tags], ...]}`` sorted, so equal sets encode equally."""
        return {"e": [
            [self._values[k], sorted(self._live.get(k, _NO_TAGS)), sorted(self._removed.get(k, _NO_TAGS))]
            for k in sorted(self._values)
        ]}

    @classmethod
    def from_wire(cls, obj: object) -> ORSet:
        entries = obj.get("e") if isinstance(obj, Mapping) else None
        if not isinstance(entries, list):
            raise InvalidArgument("set must be a mapping with an 'e' list")
        values: dict[str, object] = {}
        live: dict[str, frozenset[str]] = {}
        removed: dict[str, frozenset[str]] = {}
        for entry in entries:
            if not isinstance(entry, list | tuple) or len(entry) != 3:
                raise InvalidArgument("set entry must be [element, live_tags, removed_tags]")
            norm = _normalise(entry[0])
            k = canonical_encoding(norm)
            values.setdefault(k, norm)
            live[k] = live.get(k, _NO_TAGS) | _tags(entry[1])
            removed[k] = removed.get(k, _NO_TAGS) | _tags(entry[2])
        return cls._build(values, live, removed)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ORSet):
            return NotImplemented
        return self._live == other._live and self._removed == other._removed

    def __hash__(self) -> int:
        return hash((frozenset(self._live.items()), frozenset(self._removed.items())))

    def __repr__(self) -> str:
        return f"ORSet({self.elements()!r}, tombstoned_elements={len(self._removed)})"


def _tags(x: object) -> frozenset[str]:
    if not isinstance(x, list | tuple) or not all(isinstance(t, str) and t for t in x):
        raise InvalidArgument("tags must be a list of non-empty strings")
    return frozenset(x)


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
