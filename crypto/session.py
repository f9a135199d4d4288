"""Authenticated sessions: one signed handshake per connection, then a cheap MAC per request.

Why: an Ed25519 verify costs ~110-150 us (~6.5-9k/s per core) and caps a node's request rate; an
HMAC-SHA256 costs ~2 us. Security argument (see docs/protocol.md "Sessions"):
- The agent opens a session with an ordinary signed request (`session.open`, replay-protected by
  ts/nonce) that carries a fresh X25519 public key; its Ed25519 signature binds that key to the agent.
- The node answers with its own fresh X25519 key, signed by the node's identity, so a client that
  knows the node's key detects a man in the middle. Both derive the session key with HKDF-SHA256 over
  the X25519 shared secret and the whole transcript (both ephemeral keys and both identity keys):
  an eavesdropper learns nothing, and a recorded handshake cannot be replayed into a usable session.
- Each later request carries HMAC-SHA256(key, domain || payload) and a per-session counter; the node
  rejects a bad MAC (`bad_signature`) and any counter it has seen or that is older than its window
  (`replay`). Sessions live only as long as their websocket connection.
What it does not give: a per-request signature a third party can check later. Such provenance needs
the client to sign the record itself; session-authenticated requests are attributable only by the node.

Pure: no clock, no sockets; randomness comes from the OS CSPRNG inside `cryptography`'s key generation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

import msgpack
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from crypto.config import EnvelopeConfig
from crypto.envelope import Request, _decode_binary, _decode_text, _rid, check_common_fields
from crypto.errors import BadFrame, BadSignature, InvalidArgument, MnemonetError, Replay
from crypto.identity import Identity, agent_id_of, verify_signature

SESSION_DOMAIN = b"mnemonet-session-v1\x00"
MAC_DOMAIN = b"mnemonet-mac-v1\x00"
MAC_BYTES = 32
X25519_BYTES = 32
COUNTER_WINDOW = 1024  # out-of-order counters accepted behind the highest seen (like IPsec's window)
_SESSION_FIELDS = frozenset(("v", "rid", "action", "ns", "data", "ctr", "grants"))
_SESSION_REQUIRED = ("v", "rid", "action", "ns", "data", "ctr")


def _transcript(client_eph: bytes, node_eph: bytes, agent_pk: bytes, node_pk: bytes) -> bytes:
    return SESSION_DOMAIN + client_eph + node_eph + agent_pk + node_pk


def _derive(shared: bytes, transcript: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=transcript).derive(shared)


def _x25519_public(raw: bytes) -> X25519PublicKey:
    if len(raw) != X25519_BYTES:
        raise InvalidArgument(f"an X25519 public key is {X25519_BYTES} bytes")
    return X25519PublicKey.from_public_bytes(raw)


def mac(key: bytes, payload_bytes: bytes) -> bytes:
    return hmac.new(key, MAC_DOMAIN + payload_bytes, hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class NodeHello:
    """What the node returns from `session.open`."""

    node_ephemeral: bytes
    node_public_key: bytes
    node_signature: bytes  # Ed25519 by the node over the transcript


def accept_session(node: Identity, agent_public_key: bytes, client_ephemeral: bytes) -> tuple[bytes, NodeHello]:
    """Node side of the handshake: the session key and the hello to send back."""
    eph = X25519PrivateKey.generate()
    node_eph = eph.public_key().public_bytes_raw()
    shared = eph.exchange(_x25519_public(client_ephemeral))
    transcript = _transcript(client_ephemeral, node_eph, agent_public_key, node.public_key)
    return _derive(shared, transcript), NodeHello(node_eph, node.public_key, node.sign(transcript))


class ClientHandshake:
    """Client side: make the ephemeral key, send `public`, then `finish` with the node's hello."""

    def __init__(self, agent: Identity) -> None:
        self._agent = agent
        self._eph = X25519PrivateKey.generate()
        self.public = self._eph.public_key().public_bytes_raw()

    def finish(self, hello: NodeHello, expected_node_key: bytes | None = None) -> bytes:
        if expected_node_key is not None and hello.node_public_key != expected_node_key:
            raise BadSignature("the node's identity is not the one expected")
        transcript = _transcript(self.public, hello.node_ephemeral, self._agent.public_key, hello.node_public_key)
        if not verify_signature(hello.node_public_key, hello.node_signature, transcript):
            raise BadSignature("the node's session signature does not verify")
        return _derive(self._eph.exchange(_x25519_public(hello.node_ephemeral)), transcript)


def mac_request(key: bytes, sid: int, payload: dict[str, Any], *, binary: bool) -> dict[str, Any]:
    """Encode a session payload and MAC it into a frame {p, m, k}."""
    try:
        if binary:
            payload_bytes: bytes = msgpack.packb(payload, use_bin_type=True)
            return {"p": payload_bytes, "m": mac(key, payload_bytes), "k": sid}
        text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        tag = mac(key, text.encode("utf-8"))
    except (TypeError, ValueError, OverflowError) as e:
        raise InvalidArgument(f"the payload cannot be encoded: {e}") from None
    return {"p": text, "m": base64.b64encode(tag).decode("ascii"), "k": sid}


@dataclass(frozen=True, slots=True)
class UnverifiedSessionRequest:
    rid: int | str
    sid: int
    payload_bytes: bytes
    tag: bytes
    fields: dict[str, Any]
    binary: bool


def is_session_frame(frame: object) -> bool:
    return isinstance(frame, dict) and "m" in frame


def decode_session_request(frame: dict[str, Any], *, binary: bool, config: EnvelopeConfig) -> UnverifiedSessionRequest:
    """Shape and types of a MAC'd frame; only MnemonetError escapes (BadFrame, TooLarge)."""
    payload_bytes, fields = _decode_binary(frame.get("p")) if binary else _decode_text(frame.get("p"))
    if not isinstance(fields, dict):
        raise BadFrame("the payload must be a map")
    rid = _rid(fields.get("rid"), config)
    try:
        sid = frame.get("k")
        if type(sid) is not int:
            raise BadFrame("'k' must be the integer session id")
        tag = frame.get("m")
        if not binary and isinstance(tag, str):
            try:
                tag = base64.b64decode(tag, validate=True)
            except ValueError:
                raise BadFrame("'m' must be base64") from None
        if not isinstance(tag, bytes) or len(tag) != MAC_BYTES:
            raise BadFrame(f"'m' must be the {MAC_BYTES}-byte HMAC-SHA256")
        check_common_fields(fields, _SESSION_FIELDS, _SESSION_REQUIRED, config)
        if type(fields["ctr"]) is not int or not 0 < fields["ctr"] < 2**63:
            raise BadFrame("'ctr' must be a positive 63-bit integer")
    except MnemonetError as e:
        e.details.setdefault("rid", rid)
        raise
    return UnverifiedSessionRequest(rid, sid, payload_bytes, tag, fields, binary)


class SessionState:
    """One open session on a node: its key, its agent, and the counters it has accepted."""

    __slots__ = ("sid", "_key", "agent_public_key", "agent_id", "_max", "_seen")

    def __init__(self, sid: int, key: bytes, agent_public_key: bytes) -> None:
        self.sid = sid
        self._key = key
        self.agent_public_key = agent_public_key
        self.agent_id = agent_id_of(agent_public_key)
        self._max = 0
        self._seen = 0  # bit i set: counter (_max - i) was accepted

    def verify(self, u: UnverifiedSessionRequest, now_ms: int) -> Request:
        try:
            if not hmac.compare_digest(mac(self._key, u.payload_bytes), u.tag):
                raise BadSignature("the request MAC does not verify with this session's key")
            self._accept_counter(u.fields["ctr"])
        except MnemonetError as e:
            e.details.setdefault("rid", u.rid)
            raise
        f = u.fields
        return Request(rid=u.rid, action=f["action"], ns=f["ns"], data=f["data"], ts_ms=now_ms,
                       nonce=f"s{self.sid}:{f['ctr']}", public_key=self.agent_public_key, agent_id=self.agent_id,
                       grants=tuple(f.get("grants", ())), binary=u.binary, payload_bytes=u.payload_bytes,
                       signature=b"")

    def _accept_counter(self, ctr: int) -> None:
        if ctr > self._max:
            shift = ctr - self._max
            self._seen = ((self._seen << shift) | 1) & ((1 << COUNTER_WINDOW) - 1) if shift < COUNTER_WINDOW else 1
            self._max = ctr
            return
        age = self._max - ctr
        if age >= COUNTER_WINDOW:
            raise Replay(f"counter {ctr} is older than the session's window", ctr=ctr)
        if self._seen >> age & 1:
            raise Replay(f"counter {ctr} was already used in this session", ctr=ctr)
        self._seen |= 1 << age
