"""Signed msgpack frames, the layout gossip and replica links share: msgpack [version, sender public key,
signature over domain + body, body]; plus the strict decoding their bodies use (BadFrame on any type,
shape or range error). Owns the outer layout and the field checks; it must not know what a body means.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack

from crypto.errors import BadFrame
from crypto.identity import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, Identity

U63_MAX = 2**63 - 1
_FIELD_BYTES_MAX = 64 * 1024 * 1024  # msgpack's own per-field bounds; frames are bounded tighter by callers
_UNPACK_LIMITS = {"max_bin_len": _FIELD_BYTES_MAX, "max_str_len": _FIELD_BYTES_MAX}


def seal(identity: Identity, domain: bytes, version: int, body: bytes) -> bytes:
    """The frame carrying `body`, signed by `identity` over `domain + body` (a domain per protocol, so a
    frame of one can never verify as the other)."""
    return msgpack.packb([version, identity.public_key, identity.sign(domain + body), body], use_bin_type=True)


def open_frame(frame: bytes, *, version: int, what: str) -> tuple[bytes, bytes, bytes]:
    """(public key, signature, body) of a frame of `version`; the signature is not checked here."""
    outer = unpack(frame, what)
    if not (type(outer) is list and len(outer) == 4):
        raise BadFrame(f"a {what} frame is [version, public key, signature, body]")
    v, pk, sig, body = outer
    if type(v) is not int or v != version:
        raise BadFrame(f"unsupported {what} frame version {v!r}"[:120])
    if not (type(pk) is bytes and len(pk) == PUBLIC_KEY_BYTES and type(sig) is bytes
            and len(sig) == SIGNATURE_BYTES and type(body) is bytes):
        raise BadFrame("malformed key, signature or body")
    return pk, sig, body


def unpack(data: bytes, what: str) -> Any:
    """Strict msgpack: string map keys only, no extension types; anything else is a bad frame."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=_no_ext, **_UNPACK_LIMITS)
    except Exception as e:  # msgpack raises several types on hostile input; all are a bad frame
        raise BadFrame(f"undecodable {what} frame: {type(e).__name__}") from None


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError("msgpack extension types are not part of the protocol")


def string(x: Any, chars_max: int) -> str:
    if type(x) is not str or len(x) > chars_max:
        raise BadFrame(f"expected a string of at most {chars_max} characters")
    return x


def integer(x: Any, hi: int = U63_MAX, lo: int = 0) -> int:
    if type(x) is not int or not lo <= x <= hi:
        raise BadFrame(f"expected an integer in [{lo}, {hi}]")
    return x


def number(x: Any) -> float:
    if type(x) not in (float, int) or not math.isfinite(x):
        raise BadFrame("expected a finite number")
    return float(x)


def boolean(x: Any) -> bool:
    if type(x) is not bool:
        raise BadFrame("expected a boolean")
    return x


def array(x: Any, n: int | None = None) -> list[Any]:
    if type(x) is not list or (n is not None and len(x) != n):
        raise BadFrame("malformed field: expected an array" + ("" if n is None else f" of {n}"))
    return x
