"""Gossip wire codec: messages <-> signed msgpack frames, and deterministic upper bounds of their size.

Owns the frame layout, its signature domain and limits; it must not decide what a message means.
Frame = msgpack [version, sender public key, signature, body]; body = msgpack [network, src_addr, msg];
the signature covers GOSSIP_DOMAIN + body, so the network id and the sender's address are signed too.
"""

from __future__ import annotations

from typing import Any

import msgpack

from crypto.errors import BadFrame, BadSignature, Forbidden, InvalidArgument, TooLarge
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
from crypto.signed_frame import integer as _uint
from crypto.signed_frame import number as _float
from crypto.signed_frame import open_frame, seal, unpack
from crypto.signed_frame import string as _str
from gossip.messages import (
    Ack,
    Alive,
    Dead,
    Gossip,
    Message,
    Meta,
    Nack,
    NodeState,
    Packet,
    Ping,
    PingReq,
    PushPull,
    State,
    Suspect,
    Update,
)

GOSSIP_DOMAIN = b"mnemonet-gossip-v1\x00"
VERSION = 1
# Field bounds: an agent id is 32 hex chars; addresses are URLs. Both bound what one record can pin.
ID_CHARS_MAX = 128
ADDR_CHARS_MAX = 256
NETWORK_CHARS_MAX = 64
ROLES_MAX = 16
ROLE_CHARS_MAX = 64
# An admission token from `mnemonet admit` is ~400 characters; the bound leaves room for long network
# names while one record stays well inside a 4 KiB frame.
ADMISSION_CHARS_MAX = 1024

_T_ALIVE, _T_SUSPECT, _T_DEAD = 0, 1, 2
_T_PING, _T_ACK, _T_NACK, _T_PINGREQ, _T_GOSSIP, _T_PUSHPULL = 0, 1, 2, 3, 4, 5


def check_fields(node_id: str, addr: str, network: str, meta: Meta) -> None:
    """InvalidArgument if peers could not decode our records (they drop a frame with any bad field)."""
    try:
        _str(node_id, ID_CHARS_MAX)
        _str(addr, ADDR_CHARS_MAX)
        _str(network, NETWORK_CHARS_MAX)
        _meta(_meta_obj(meta))
    except BadFrame as e:
        raise InvalidArgument(f"gossip identity or metadata out of wire bounds: {e.message}") from None


# --- size bounds (never below the real encoded size; checked by tests/test_gossip_codec.py) ---------

def str_bytes(s: str) -> int:
    n = len(s) if s.isascii() else len(s.encode("utf-8"))
    return n + (1 if n < 32 else 2 if n < 256 else 3 if n < 65536 else 5)


def _array_header_bytes(n: int) -> int:
    return 1 if n < 16 else 3 if n < 65536 else 5


def meta_bytes(m: Meta) -> int:
    # array header, capability, storage_bytes, load (9 bytes each at most), then the strings.
    n = 28 + _array_header_bytes(len(m.roles)) + str_bytes(m.endpoint) + str_bytes(m.version)
    for r in m.roles:
        n += str_bytes(r)
    if m.admission:
        n += str_bytes(m.admission)
    return n


def admission_bytes(m: Meta) -> int:
    """The share of meta_bytes(m) that is the admission token (GossipConfig.meta_bytes_max excludes it)."""
    return str_bytes(m.admission) if m.admission else 0


def alive_bytes(node: str, addr: str, meta_size: int) -> int:
    """An Alive record, and equally a NodeState (same fields plus a one-byte tag or state)."""
    return 11 + str_bytes(node) + str_bytes(addr) + meta_size  # 1 header + 1 tag + 9 incarnation


def update_bytes(u: Update) -> int:
    if isinstance(u, Alive):
        return alive_bytes(u.node, u.addr, meta_bytes(u.meta))
    return 11 + str_bytes(u.node) + str_bytes(u.by)


def node_state_bytes(s: NodeState) -> int:
    return alive_bytes(s.node, s.addr, meta_bytes(s.meta))


def frame_overhead_bytes(network: str, src_addr: str) -> int:
    """Bytes of a frame around its message: version, key, signature, bin header, network, address."""
    return 1 + 1 + (2 + PUBLIC_KEY_BYTES) + (2 + SIGNATURE_BYTES) + 5 + 1 + str_bytes(network) + str_bytes(src_addr)


# A message's own fields besides its update list: array header, tag, seq and the list header.
PING_FIXED_BYTES = 1 + 1 + 9 + 5   # + str_bytes(target)
ACK_FIXED_BYTES = 1 + 1 + 9 + 5
GOSSIP_FIXED_BYTES = 1 + 1 + 5
PUSHPULL_FIXED_BYTES = 1 + 1 + 5 + 2


def message_bytes(msg: Message) -> int:
    """An upper bound of the encoded message (without the frame): what a shell can count as bytes."""
    if isinstance(msg, Ping):
        return PING_FIXED_BYTES + str_bytes(msg.target) + sum(update_bytes(u) for u in msg.updates)
    if isinstance(msg, Ack):
        return ACK_FIXED_BYTES + sum(update_bytes(u) for u in msg.updates)
    if isinstance(msg, Nack):
        return 1 + 1 + 9
    if isinstance(msg, PingReq):
        return 1 + 1 + 9 + str_bytes(msg.target) + str_bytes(msg.target_addr) + 1
    if isinstance(msg, Gossip):
        return GOSSIP_FIXED_BYTES + sum(update_bytes(u) for u in msg.updates)
    return PUSHPULL_FIXED_BYTES + sum(node_state_bytes(s) for s in msg.states)


# --- encoding -------------------------------------------------------------------------------------

def _meta_obj(m: Meta) -> list[Any]:
    # The admission token is a 7th field only when present: a network without admission sends exactly
    # the 6-field metadata of before.
    obj = [list(m.roles), float(m.capability), m.storage_bytes, float(m.load), m.endpoint, m.version]
    if m.admission:
        obj.append(m.admission)
    return obj


def _update_obj(u: Update) -> list[Any]:
    if isinstance(u, Alive):
        return [_T_ALIVE, u.node, u.incarnation, u.addr, _meta_obj(u.meta)]
    return [_T_SUSPECT if isinstance(u, Suspect) else _T_DEAD, u.node, u.incarnation, u.by]


def message_obj(msg: Message) -> list[Any]:
    if isinstance(msg, Ping):
        return [_T_PING, msg.seq, msg.target, [_update_obj(u) for u in msg.updates]]
    if isinstance(msg, Ack):
        return [_T_ACK, msg.seq, [_update_obj(u) for u in msg.updates]]
    if isinstance(msg, Nack):
        return [_T_NACK, msg.seq]
    if isinstance(msg, PingReq):
        return [_T_PINGREQ, msg.seq, msg.target, msg.target_addr, msg.nack]
    if isinstance(msg, Gossip):
        return [_T_GOSSIP, [_update_obj(u) for u in msg.updates]]
    if isinstance(msg, PushPull):
        states = [[s.node, s.addr, s.incarnation, int(s.state), _meta_obj(s.meta)] for s in msg.states]
        return [_T_PUSHPULL, states, msg.join, msg.reply]
    raise TypeError(f"not a gossip message: {type(msg).__name__}")


def encode_body(network: str, src_addr: str, msg: Message) -> bytes:
    return msgpack.packb([network, src_addr, message_obj(msg)], use_bin_type=True)


def encode_frame(identity: Identity, network: str, src_addr: str, msg: Message) -> bytes:
    """The signed frame a shell sends for a `Send` effect."""
    return seal(identity, GOSSIP_DOMAIN, VERSION, encode_body(network, src_addr, msg))


# --- decoding -------------------------------------------------------------------------------------

def decode_frame(
    frame: bytes, *, network: str | None, frame_bytes_max: int, cache: PublicKeyCache | None = None,
) -> Packet:
    """Check and decode one frame. Raises TooLarge, BadFrame, Forbidden (another network; checked
    before the signature so foreign traffic costs no verify) or BadSignature. `network=None` accepts any.
    """
    if len(frame) > frame_bytes_max:
        raise TooLarge(f"gossip frame of {len(frame)} bytes exceeds {frame_bytes_max}", limit=frame_bytes_max)
    pk, sig, body = open_frame(frame, version=VERSION, what="gossip")
    inner = unpack(body, "gossip")
    if not (type(inner) is list and len(inner) == 3):
        raise BadFrame("a gossip body is [network, src_addr, message]")
    net = _str(inner[0], NETWORK_CHARS_MAX)
    src_addr = _str(inner[1], ADDR_CHARS_MAX)
    if network is not None and net != network:
        raise Forbidden(f"frame from network {net!r}, not {network!r}")
    if not verify_signature(pk, sig, GOSSIP_DOMAIN + body, cache):
        raise BadSignature("gossip frame signature does not verify")
    return Packet(agent_id_of(pk), src_addr, net, message_from_obj(inner[2]))


def _meta(x: Any) -> Meta:
    x = _list(x)
    if len(x) not in (6, 7):
        raise BadFrame("member metadata has 6 fields, or 7 with an admission token")
    roles = _list(x[0])
    if len(roles) > ROLES_MAX:
        raise BadFrame(f"at most {ROLES_MAX} roles")
    admission = _str(x[6], ADMISSION_CHARS_MAX) if len(x) == 7 else ""
    return Meta(tuple(_str(r, ROLE_CHARS_MAX) for r in roles), _float(x[1]), _uint(x[2]),
                _float(x[3]), _str(x[4], ADDR_CHARS_MAX), _str(x[5], ROLE_CHARS_MAX), admission)


def _update(x: Any) -> Update:
    x = _list(x)
    if not x or type(x[0]) is not int:
        raise BadFrame("malformed update record")
    if len(x) == 5 and x[0] == _T_ALIVE:
        return Alive(_str(x[1], ID_CHARS_MAX), _uint(x[2]), _str(x[3], ADDR_CHARS_MAX), _meta(x[4]))
    if len(x) == 4 and x[0] in (_T_SUSPECT, _T_DEAD):
        cls: type[Suspect] | type[Dead] = Suspect if x[0] == _T_SUSPECT else Dead
        return cls(_str(x[1], ID_CHARS_MAX), _uint(x[2]), _str(x[3], ID_CHARS_MAX))
    raise BadFrame("unknown update record")


def _updates(x: Any) -> tuple[Update, ...]:
    return tuple(_update(u) for u in _list(x))


def _node_state(x: Any) -> NodeState:
    node, addr, inc, state, meta = _list(x, 5)
    if type(state) is not int or not 0 <= state <= 3:
        raise BadFrame("unknown member state")
    return NodeState(_str(node, ID_CHARS_MAX), _str(addr, ADDR_CHARS_MAX), _uint(inc), State(state), _meta(meta))


def message_from_obj(x: Any) -> Message:
    """The message a decoded body carries; BadFrame on any shape or type error."""
    x = _list(x)
    tag = x[0] if x else None
    n = len(x)
    if type(tag) is not int:
        raise BadFrame("malformed gossip message")
    if tag == _T_PING and n == 4:
        return Ping(_uint(x[1]), _str(x[2], ID_CHARS_MAX), _updates(x[3]))
    if tag == _T_ACK and n == 3:
        return Ack(_uint(x[1]), _updates(x[2]))
    if tag == _T_NACK and n == 2:
        return Nack(_uint(x[1]))
    if tag == _T_PINGREQ and n == 5:
        return PingReq(_uint(x[1]), _str(x[2], ID_CHARS_MAX), _str(x[3], ADDR_CHARS_MAX), _bool(x[4]))
    if tag == _T_GOSSIP and n == 2:
        return Gossip(_updates(x[1]))
    if tag == _T_PUSHPULL and n == 4:
        return PushPull(tuple(_node_state(s) for s in _list(x[1])), _bool(x[2]), _bool(x[3]))
    raise BadFrame(f"unknown gossip message (tag {tag}, {n} fields)")
