"""Conflict-free replicated types for signals that must never lose an update: a PN-counter and an
add-wins observed-remove set. Each merge is a semilattice join; pure, inputs never mutated.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any

from crypto.errors import InvalidArgument
from ring.canonical import _is_int, canonical_encoding

COUNT_MAX = (1 << 63) - 1  # one counter entry fits in int64


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

    def writers(self) -> frozenset[str]:
        """Every writer with a non-zero entry: the state's size grows with this, not with the updates."""
        return frozenset(self._p) | frozenset(self._n)

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

    def to_json(self) -> str:
        """Canonical JSON text of the state: equal counters give identical text."""
        return canonical_json(self.to_wire())

    @classmethod
    def from_json(cls, text: str) -> PNCounter:
        return cls.from_wire(_loads(text))

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

    def tombstone_count(self) -> int:
        """How many (element, removed tag) pairs are kept: what the tombstones cost."""
        return sum(len(rm) for rm in self._removed.values())

    def tombstone_tags(self) -> list[str]:
        """One entry per (element, removed tag) pair, sorted: what the tombstones cost to keep."""
        return sorted(t for rm in self._removed.values() for t in rm)

    def forget_tombstones(self, tags: Collection[str]) -> ORSet:
        """Drop these removed tags from every element: garbage collection, *not* a join step.

        Safe once every replica has seen the removes (causal stability). A replica that still holds
        such a tag live brings its element back when merged, since nothing records the remove any more.
        """
        drop = frozenset(tags)
        if not drop:
            return self
        return ORSet._build(dict(self._values), dict(self._live),
                            {k: rm - drop for k, rm in self._removed.items()})

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

    def to_json(self) -> str:
        """Canonical JSON text of the state: equal sets give identical text."""
        return canonical_json(self.to_wire())

    @classmethod
    def from_json(cls, text: str) -> ORSet:
        return cls.from_wire(_loads(text))

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


# ---------------------------------------------------------------- canonical JSON and element order


def canonical_json(obj: object) -> str:
    """Compact JSON with sorted keys, non-ASCII unescaped, no NaN: one text per JSON value.

    Deterministic only for values whose lists are already in a canonical order (``to_wire`` sorts them).
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _loads(text: str) -> object:
    try:
        return json.loads(text)
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"state is not JSON: {e}") from None


def element_order_key(e: object) -> tuple[int, Any, str]:
    """A readable total order for set elements: null, false, true, numbers by value, strings by code
    point, then anything else (lists, maps, NaN) by canonical encoding. Numerically equal numbers
    (1 and 1.0, 0.0 and -0.0) are distinct elements; their canonical encodings order them."""
    if e is None:
        return (0, 0, "")
    if isinstance(e, bool):
        return (1, int(e), "")
    if isinstance(e, int) or (isinstance(e, float) and e == e):
        return (2, e, canonical_encoding(e))
    if isinstance(e, str):
        return (3, e, "")
    return (4, 0, canonical_encoding(_normalise(e)))
