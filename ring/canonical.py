"""Canonical encoding of JSON-like values: one string per meaning, for deterministic tie-breaks.

Independent of dict order, set order and the Python hash seed; keeps apart values Python calls
equal (0/False/0.0, list/tuple, bytes/str). Pure: no I/O.
"""

from __future__ import annotations

from crypto.errors import InvalidArgument

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
