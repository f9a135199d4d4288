"""Replica wire codec: node-to-node replication and peer messages <-> signed msgpack frames of batches,
with strict decoding (only BadFrame / InvalidArgument on bad input) and size bounds for batching.

Owns the frame layout, its signature domain, the replay window check and the limits; it must not
decide what a message means or touch a socket. Frame = msgpack [version, sender public key,
signature, body]; body = msgpack [network, sent_ms, [message, ...]]; the signature covers
REPLICA_DOMAIN + body (a domain apart from gossip's, so no gossip frame is ever a replica frame).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from crypto.errors import BadFrame, BadSignature, Expired, Forbidden, InvalidArgument, TooLarge
from crypto.identity import (
    PUBLIC_KEY_BYTES,
    SIGNATURE_BYTES,
    Identity,
    PublicKeyCache,
    agent_id_of,
    verify_signature,
)
from crypto.signed_frame import array as _list
from crypto.signed_frame import boolean as _bool
from crypto.signed_frame import integer as _int
from crypto.signed_frame import open_frame, seal, unpack
from crypto.signed_frame import string as _str
from gossip.codec import NETWORK_CHARS_MAX
from node.peer_messages import PeerError, SearchQuery, SearchReply
from ring import messages as rm
from ring.canonical import NESTING_DEPTH_MAX
from ring.crdt import ORSet, PNCounter
from ring.hlc import HLC_MAX
from ring.messages import ItemRef, SummaryPage
from ring.records import _KEY_ARITY, Kind, Record

REPLICA_DOMAIN = b"mnemonet-replica-v1\x00"
VERSION = 1
# Agent ids are 32 hex chars; a key part is a namespace, a memory id, a signal key or a relation
# (node/validate.py caps those at 256 characters); codes are crypto/errors.py codes.
ID_CHARS_MAX = 128
KEY_CHARS_MAX = 1024
CODE_CHARS_MAX = 64
MESSAGE_CHARS_MAX = 1024
# A batch carries up to this many messages; 4096 acks are ~60 KiB, 32 records of 1 KiB far fewer.
MESSAGES_PER_FRAME_MAX = 4096
# Everything around the messages, at its largest: array headers, version, key and signature with
# their bin headers, the body's bin header, a network name of 64 characters of 4 UTF-8 bytes, sent_ms.
FRAME_OVERHEAD_BYTES = 1 + 1 + (2 + PUBLIC_KEY_BYTES) + (2 + SIGNATURE_BYTES) + 5 + 1 + (3 + 4 * NETWORK_CHARS_MAX) \
    + 9 + 5
_U63_MAX = 2**63 - 1
_U64_MAX = 2**64 - 1
_I64_MIN = -(2**63)
_KINDS = {k.value: k for k in Kind}


@dataclass(frozen=True, slots=True)
class ReplicaCodecConfig:
    """Limits of the replica link (pass them to decode_frame; split batches with split_batch)."""

    # Largest frame accepted, checked before any decoding. A client request is at most 1 MiB
    # (NodeConfig.frame_bytes_max), so one record fits with room; rebalance pages (512 KiB) and
    # anti-entropy answers (256 KiB) batch several per frame; and a peer can make us buffer and
    # unpack no more than this at once.
    frame_bytes_max: int = 8 * 1024 * 1024
    # A frame whose sent_ms is further than this from our clock is Expired. Replica messages are
    # idempotent joins, so a replay inside the window is harmless; the window only stops a frame
    # recorded long ago (before a tombstone was collected: grace 7 days) from resurrecting data.
    # 60 s tolerates a badly synced clock; NTP keeps real skew in the milliseconds.
    skew_ms: int = 60_000

    def __post_init__(self) -> None:
        if type(self.frame_bytes_max) is not int or self.frame_bytes_max < 1024:
            raise InvalidArgument("ReplicaCodecConfig.frame_bytes_max must be an int >= 1024")
        if type(self.skew_ms) is not int or self.skew_ms < 0:
            raise InvalidArgument("ReplicaCodecConfig.skew_ms must be a non-negative int")


# --- message objects ------------------------------------------------------------------------------

def _ref(r: ItemRef | None) -> list[Any] | None:
    return None if r is None else [r[0], list(r[1])]


def _page(p: SummaryPage) -> list[Any]:
    return [p.partition, [[k, list(key), h] for k, key, h in p.items], p.complete]


_ENCODERS: dict[type, tuple[int, Callable[[Any], list[Any]]]] = {
    rm.PutRecord: (0, lambda m: [m.req, m.record.to_wire(), m.hint_for]),
    rm.PutAck: (1, lambda m: [m.req, m.ok, m.code]),
    rm.GetRecord: (2, lambda m: [m.req, m.kind.value, list(m.key)]),
    rm.GetReply: (3, lambda m: [m.req, None if m.record is None else m.record.to_wire(), m.ok, m.code]),
    rm.AeOpen: (10, lambda m: [m.session, m.partitions_fp, m.partitions, m.fanout, m.root]),
    rm.AeOpened: (11, lambda m: [m.session, list(m.hashes)]),
    rm.AeReject: (12, lambda m: [m.session, m.code]),
    rm.AeTreeQuery: (13, lambda m: [m.session, m.req, m.level, list(m.parents)]),
    rm.AeTreeHashes: (14, lambda m: [m.session, m.req, list(m.hashes)]),
    rm.AeSummaryQuery: (15, lambda m: [m.session, m.req, [[p, _ref(c)] for p, c in m.cursors]]),
    rm.AeSummaries: (16, lambda m: [m.session, m.req, [_page(p) for p in m.pages]]),
    rm.AeFetch: (17, lambda m: [m.session, m.req, [_ref(r) for r in m.items]]),
    rm.AeRecords: (18, lambda m: [m.session, m.req, [r.to_wire() for r in m.records], [_ref(r) for r in m.missing]]),
    rm.AePush: (19, lambda m: [m.session, m.req, [r.to_wire() for r in m.records]]),
    rm.AeAck: (20, lambda m: [m.session, m.req]),
    rm.AeClose: (21, lambda m: [m.session]),
    rm.RbPull: (30, lambda m: [m.transfer, m.partition, _ref(m.after)]),
    rm.RbPage: (31, lambda m: [m.transfer, *_rb_page(m)]),
    rm.RbPullMany: (35, lambda m: [m.transfer, list(m.partitions)]),
    rm.RbPages: (36, lambda m: [m.transfer, [_rb_page(p) for p in m.pages]]),
    rm.RbConfirm: (32, lambda m: [m.partition, list(m.digest)]),
    rm.RbConfirmed: (33, lambda m: [m.partition, m.ok, m.retry]),
    rm.RbSweepMe: (34, lambda m: [list(m.partitions)]),
    SearchQuery: (40, lambda m: [m.req, m.body]),
    SearchReply: (41, lambda m: [m.req, m.ok, m.body, m.code]),
    PeerError: (42, lambda m: [m.req, m.code, m.message]),
}


def message_to_obj(msg: object) -> list[Any]:
    """The msgpack-ready list [tag, fields...] of a replica or peer message."""
    enc = _ENCODERS.get(type(msg))
    if enc is None:
        raise InvalidArgument(f"not a replica message: {type(msg).__name__}")
    return [enc[0], *enc[1](msg)]


# --- strict decoding helpers (BadFrame on any type or range error) --------------------------------

def _u63(x: Any) -> int:
    return _int(x, _U63_MAX)


def _u64(x: Any) -> int:
    return _int(x, _U64_MAX)


def _ints(x: Any, conv: Callable[[Any], int]) -> tuple[int, ...]:
    return tuple(conv(i) for i in _list(x))


def _kind(x: Any) -> Kind:
    k = _KINDS.get(x) if type(x) is str else None
    if k is None:
        raise BadFrame("unknown record kind")
    return k


def _key(x: Any, kind: Kind) -> tuple[str, ...]:
    x = _list(x)
    if len(x) != _KEY_ARITY[kind]:
        raise BadFrame(f"a {kind.value} key has {_KEY_ARITY[kind]} parts")
    return tuple(_str(p, KEY_CHARS_MAX) for p in x)


def _ref_of(x: Any) -> ItemRef:
    kind, key = _list(x, 2)
    k = _kind(kind)
    return k.value, _key(key, k)


def _opt_ref(x: Any) -> ItemRef | None:
    return None if x is None else _ref_of(x)


def _plain(x: Any, depth: int = 0) -> None:
    """A JSON/msgpack-plain value: no ext types or timestamps, 64-bit ints, finite floats, string
    map keys, nesting within what ring.canonical walks."""
    t = type(x)
    if t is str or t is bool or t is bytes or x is None:
        return
    if t is int:
        _int(x, _U63_MAX, _I64_MIN)
    elif t is float:
        if not math.isfinite(x):
            raise BadFrame("non-finite float")
    elif t is list or t is dict:
        if depth >= NESTING_DEPTH_MAX:
            raise BadFrame(f"value nested deeper than {NESTING_DEPTH_MAX} levels")
        if t is dict:
            if not all(type(k) is str for k in x):
                raise BadFrame("map keys must be strings")
            x = x.values()
        for v in x:
            if type(v) is not str:  # the common leaf, checked without a call
                _plain(v, depth + 1)
    else:
        raise BadFrame(f"unsupported value type {t.__name__}")


def _body(x: Any) -> dict[str, Any]:
    if type(x) is not dict:
        raise BadFrame("expected a map")
    _plain(x)
    return x


def _record(x: Any) -> Record:
    kind_v, key, body = _list(x, 3)
    kind = _kind(kind_v)
    key = _key(key, kind)
    _plain(body)
    r = Record.from_wire([kind_v, key, body])  # builds and checks Versioned bodies
    if kind in (Kind.REGISTER, Kind.STATE, Kind.LINK):
        _str(body["writer"], ID_CHARS_MAX)
    if kind is Kind.MEMORY or kind in (Kind.COUNTER, Kind.SET):
        if type(body) is not dict:
            raise BadFrame(f"a {kind.value} body is a map")
        _int(body.get("hlc"), HLC_MAX)
        if type(body.get("deleted", False)) is not bool:
            raise BadFrame("'deleted' must be a boolean")
    if kind is Kind.MEMORY:
        _str(body.get("id"), KEY_CHARS_MAX)
    elif kind in (Kind.COUNTER, Kind.SET):
        _int(body.get("epoch", 0), HLC_MAX)
        (PNCounter if kind is Kind.COUNTER else ORSet).from_wire(body.get("state"))
    return r


def _opt_record(x: Any) -> Record | None:
    return None if x is None else _record(x)


def _records(x: Any) -> tuple[Record, ...]:
    return tuple(_record(r) for r in _list(x))


def _digest(x: Any) -> tuple[int, int]:
    s, c = _list(x, 2)
    return _u64(s), _u64(c)


def _rb_page(m: rm.RbPage) -> list[Any]:
    """An RbPage without its transfer (RbPages carries one for all its pages)."""
    return [m.partition, _ref(m.after), [r.to_wire() for r in m.records], _ref(m.next), list(m.digest)]


def _rb_page_of(transfer: int, x: Sequence[Any]) -> rm.RbPage:
    return rm.RbPage(transfer, _u63(x[0]), _opt_ref(x[1]), _records(x[2]), _opt_ref(x[3]), _digest(x[4]))


def _summary(x: Any) -> tuple[str, tuple[str, ...], int]:
    kind_v, key, h = _list(x, 3)
    kind = _kind(kind_v)
    return kind.value, _key(key, kind), _u64(h)


def _page_of(x: Any) -> SummaryPage:
    p, items, complete = _list(x, 3)
    return SummaryPage(_u63(p), tuple(_summary(i) for i in _list(items)), _bool(complete))


def _cursor(x: Any) -> tuple[int, ItemRef | None]:
    p, c = _list(x, 2)
    return _u63(p), _opt_ref(c)


def _code(x: Any) -> str:
    return _str(x, CODE_CHARS_MAX)


_Dec = Callable[[list[Any]], object]
_DECODERS: dict[int, tuple[int, _Dec]] = {
    0: (4, lambda x: rm.PutRecord(_u63(x[1]), _record(x[2]), None if x[3] is None else _str(x[3], ID_CHARS_MAX))),
    1: (4, lambda x: rm.PutAck(_u63(x[1]), _bool(x[2]), _code(x[3]))),
    2: (4, lambda x: rm.GetRecord(_u63(x[1]), _kind(x[2]), _key(x[3], _kind(x[2])))),
    3: (5, lambda x: rm.GetReply(_u63(x[1]), _opt_record(x[2]), _bool(x[3]), _code(x[4]))),
    10: (6, lambda x: rm.AeOpen(_u63(x[1]), _u64(x[2]), _u63(x[3]), _u63(x[4]), _u64(x[5]))),
    11: (3, lambda x: rm.AeOpened(_u63(x[1]), _ints(x[2], _u64))),
    12: (3, lambda x: rm.AeReject(_u63(x[1]), _code(x[2]))),
    13: (5, lambda x: rm.AeTreeQuery(_u63(x[1]), _u63(x[2]), _u63(x[3]), _ints(x[4], _u63))),
    14: (4, lambda x: rm.AeTreeHashes(_u63(x[1]), _u63(x[2]), _ints(x[3], _u64))),
    15: (4, lambda x: rm.AeSummaryQuery(_u63(x[1]), _u63(x[2]), tuple(_cursor(c) for c in _list(x[3])))),
    16: (4, lambda x: rm.AeSummaries(_u63(x[1]), _u63(x[2]), tuple(_page_of(p) for p in _list(x[3])))),
    17: (4, lambda x: rm.AeFetch(_u63(x[1]), _u63(x[2]), tuple(_ref_of(r) for r in _list(x[3])))),
    18: (5, lambda x: rm.AeRecords(_u63(x[1]), _u63(x[2]), _records(x[3]), tuple(_ref_of(r) for r in _list(x[4])))),
    19: (4, lambda x: rm.AePush(_u63(x[1]), _u63(x[2]), _records(x[3]))),
    20: (3, lambda x: rm.AeAck(_u63(x[1]), _u63(x[2]))),
    21: (2, lambda x: rm.AeClose(_u63(x[1]))),
    30: (4, lambda x: rm.RbPull(_u63(x[1]), _u63(x[2]), _opt_ref(x[3]))),
    31: (7, lambda x: _rb_page_of(_u63(x[1]), x[2:])),
    35: (3, lambda x: rm.RbPullMany(_u63(x[1]), _ints(x[2], _u63))),
    36: (3, lambda x: rm.RbPages(_u63(x[1]), tuple(_rb_page_of(_u63(x[1]), _list(p, 5)) for p in _list(x[2])))),
    32: (3, lambda x: rm.RbConfirm(_u63(x[1]), _digest(x[2]))),
    33: (4, lambda x: rm.RbConfirmed(_u63(x[1]), _bool(x[2]), _bool(x[3]))),
    34: (2, lambda x: rm.RbSweepMe(_ints(x[1], _u63))),
    40: (3, lambda x: SearchQuery(_u63(x[1]), _body(x[2]))),
    41: (5, lambda x: SearchReply(_u63(x[1]), _bool(x[2]), _body(x[3]), _code(x[4]))),
    42: (4, lambda x: PeerError(_u63(x[1]), _code(x[2]), _str(x[3], MESSAGE_CHARS_MAX))),
}


def message_from_obj(obj: Any) -> object:
    """The message an object of message_to_obj's form stands for; BadFrame or InvalidArgument on any
    shape, type or range error (never another exception)."""
    x = _list(obj)
    dec = _DECODERS.get(x[0]) if x and type(x[0]) is int else None
    if dec is None or len(x) != dec[0]:
        tag = x[0] if x and type(x[0]) is int else None
        raise BadFrame(f"unknown replica message (tag {tag}, {len(x)} fields)")
    return dec[1](x)


# --- frames ---------------------------------------------------------------------------------------

def message_bytes(msg: object) -> int:
    """The encoded size of one message inside a frame (exact: packing in C beats a Python estimate)."""
    return len(_pack(message_to_obj(msg)))


def frame_bytes(msgs: Sequence[object]) -> int:
    """An upper bound of the frame encode_frame builds for `msgs` (any network name, any sent_ms)."""
    return FRAME_OVERHEAD_BYTES + sum(message_bytes(m) for m in msgs)


def split_batch(msgs: Sequence[object], bytes_max: int) -> list[list[object]]:
    """`msgs` in order, cut into batches whose frames stay within `bytes_max` and
    MESSAGES_PER_FRAME_MAX. TooLarge if one message alone does not fit."""
    out: list[list[object]] = []
    cur: list[object] = []
    size = FRAME_OVERHEAD_BYTES
    for m in msgs:
        b = message_bytes(m)
        if FRAME_OVERHEAD_BYTES + b > bytes_max:
            raise TooLarge(f"a {type(m).__name__} of {b} bytes does not fit in a {bytes_max}-byte frame",
                           limit=bytes_max)
        if cur and (size + b > bytes_max or len(cur) >= MESSAGES_PER_FRAME_MAX):
            out.append(cur)
            cur, size = [], FRAME_OVERHEAD_BYTES
        cur.append(m)
        size += b
    if cur:
        out.append(cur)
    return out


def _pack(obj: object) -> bytes:
    try:
        return msgpack.packb(obj, use_bin_type=True)
    except (TypeError, ValueError, OverflowError, UnicodeEncodeError) as e:
        raise InvalidArgument(f"message cannot be encoded: {type(e).__name__}: {e}"[:200]) from None


def encode_frame(identity: Identity, network: str, sent_ms: int, msgs: Sequence[object]) -> bytes:
    """The signed frame carrying `msgs` (in order); InvalidArgument if a peer could not decode it."""
    if type(network) is not str or len(network) > NETWORK_CHARS_MAX:
        raise InvalidArgument(f"network name longer than {NETWORK_CHARS_MAX} characters")
    if type(sent_ms) is not int or not 0 <= sent_ms <= _U63_MAX:
        raise InvalidArgument("sent_ms must be a non-negative 64-bit int")
    if len(msgs) > MESSAGES_PER_FRAME_MAX:
        raise InvalidArgument(f"at most {MESSAGES_PER_FRAME_MAX} messages per frame (use split_batch)")
    return seal(identity, REPLICA_DOMAIN, VERSION, _pack([network, sent_ms, [message_to_obj(m) for m in msgs]]))


def decode_frame(
    data: bytes, *, network: str, now_ms: int, skew_ms: int, keys: PublicKeyCache, bytes_max: int,
) -> tuple[str, list[object]]:
    """Check and decode one frame: (sender agent id, messages in order). Raises, in the order checked:
    TooLarge (before decoding), BadFrame (not msgpack, wrong shape or version), Forbidden (another
    network: foreign traffic costs no verify), BadSignature, Expired (sent_ms outside now_ms +- skew_ms),
    then BadFrame or InvalidArgument for a malformed message."""
    if len(data) > bytes_max:
        raise TooLarge(f"replica frame of {len(data)} bytes exceeds {bytes_max}", limit=bytes_max)
    pk, sig, body = open_frame(data, version=VERSION, what="replica")
    inner = _list(unpack(body, "replica"), 3)
    net = _str(inner[0], NETWORK_CHARS_MAX)
    sent_ms = _u63(inner[1])
    objs = _list(inner[2])
    if net != network:
        raise Forbidden(f"replica frame from network {net!r}, not {network!r}")
    if not verify_signature(pk, sig, REPLICA_DOMAIN + body, keys):
        raise BadSignature("replica frame signature does not verify")
    if abs(sent_ms - now_ms) > skew_ms:
        raise Expired(f"replica frame sent at {sent_ms} ms, now {now_ms} ms, window {skew_ms} ms",
                      sent_ms=sent_ms, now_ms=now_ms)
    if len(objs) > MESSAGES_PER_FRAME_MAX:
        raise BadFrame(f"more than {MESSAGES_PER_FRAME_MAX} messages in one frame")
    return agent_id_of(pk), [message_from_obj(o) for o in objs]
