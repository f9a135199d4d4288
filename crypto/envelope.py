"""Signed requests: decode a frame into its exact signed bytes and typed fields, verify it, sign one.

Owns the request wire contract (domain, fields, limits); it must not read a clock, check permissions,
or re-encode a payload before verifying it: the signature covers the payload bytes exactly as sent.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgpack

from crypto.config import EnvelopeConfig
from crypto.errors import BadFrame, BadSignature, Expired, InvalidArgument, MnemonetError, TooLarge
from crypto.identity import SIGNATURE_BYTES, Identity, PublicKeyCache, agent_id_of
from crypto.replay import ReplayCache

REQUEST_DOMAIN = b"mnemonet-req-v1\x00"
VERSION = 1
_REQUIRED = ("v", "rid", "action", "ns", "data", "ts", "nonce", "pk")
_KNOWN = frozenset((*_REQUIRED, "aid", "grants"))
_PK_HEX = re.compile(r"[0-9a-f]{64}")
_SIG_B64_CHARS = 88
# Integers must survive msgpack on the way back (rid is echoed; ts may be stored).
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
_DEFAULT_CONFIG = EnvelopeConfig()


@dataclass(frozen=True, slots=True)
class UnverifiedRequest:
    """A well-formed request whose signature has not been checked yet. Trust nothing in it but `rid`."""

    rid: int | str
    payload_bytes: bytes
    signature: bytes
    fields: dict[str, Any]
    binary: bool


@dataclass(frozen=True, slots=True)
class Request:
    """A request whose signature, claimed id, timestamp and nonce have been checked."""

    rid: int | str
    action: str
    ns: str | None
    data: dict[str, Any]
    ts_ms: int
    nonce: str
    public_key: bytes
    agent_id: str
    grants: tuple[str, ...]
    binary: bool
    payload_bytes: bytes
    signature: bytes


def decode_request(frame: object, *, binary: bool, config: EnvelopeConfig = _DEFAULT_CONFIG) -> UnverifiedRequest:
    """Check a decoded frame's shape and types; raise only MnemonetError subclasses, on any input.

    Errors: BadFrame for anything malformed. TooLarge when a field exceeds its limit: a string rid over
    `rid_chars_max` (or an int rid outside 64 bits), a nonce over `nonce_chars_max`, more than
    `grants_max` grants. Once the payload decodes to a map with a valid rid, every later error carries
    `details["rid"]` so the node can address its error reply; an over-long rid is never echoed.
    Unknown payload fields are rejected (BadFrame): a field a client signs should not be silently
    ignored; new fields come with a new `v`. Keys of the frame other than `p` and `s` are ignored.
    """
    if not isinstance(frame, dict):
        raise BadFrame("a request frame is a map {p: payload, s: signature}")
    payload_bytes, fields = _decode_binary(frame.get("p")) if binary else _decode_text(frame.get("p"))
    if not isinstance(fields, dict):
        raise BadFrame("the payload must be a map")
    rid = _rid(fields.get("rid"), config)
    try:
        signature = _signature(frame.get("s"), binary)
        _check_fields(fields, config)
    except MnemonetError as e:
        e.details.setdefault("rid", rid)
        raise
    return UnverifiedRequest(rid, payload_bytes, signature, fields, binary)


def _decode_binary(p: object) -> tuple[bytes, object]:
    if not isinstance(p, bytes):
        raise BadFrame("in a binary frame 'p' is the msgpack-encoded payload, as bytes")
    try:
        return p, msgpack.unpackb(p, raw=False, strict_map_key=True, ext_hook=_reject_ext)
    except Exception as e:  # msgpack raises many types on hostile bytes; only our codes may escape
        raise BadFrame(f"the payload is not valid msgpack ({type(e).__name__})") from None


def _decode_text(p: object) -> tuple[bytes, object]:
    if not isinstance(p, str):
        raise BadFrame("in a text frame 'p' is the payload's JSON text, as a string")
    try:
        payload_bytes = p.encode("utf-8")
    except UnicodeEncodeError:
        raise BadFrame("the payload text is not valid Unicode (lone surrogate)") from None
    try:
        return payload_bytes, json.loads(p, parse_constant=_reject_constant)
    except Exception as e:  # ValueError, RecursionError on deep nesting, int digit limits...
        raise BadFrame(f"the payload is not valid JSON ({type(e).__name__})") from None


def _reject_ext(code: int, data: bytes) -> object:
    raise ValueError(f"msgpack extension type {code} is not allowed in requests")


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not allowed in requests")


def _rid(rid: object, config: EnvelopeConfig) -> int | str:
    if isinstance(rid, str):
        if len(rid) > config.rid_chars_max:
            raise TooLarge(f"rid is longer than {config.rid_chars_max} characters")
        if not _is_utf8(rid):  # it is echoed in the reply, which must stay encodable
            raise BadFrame("rid is not valid Unicode (lone surrogate)")
        return rid
    if type(rid) is int:  # not bool
        if not _INT_MIN <= rid <= _INT_MAX:
            raise TooLarge("an integer rid must fit in 64 bits")
        return rid
    raise BadFrame("the payload needs a rid: an integer or a string")


def _signature(s: object, binary: bool) -> bytes:
    if binary:
        if isinstance(s, bytes) and len(s) == SIGNATURE_BYTES:
            return s
        raise BadFrame(f"in a binary frame 's' is the {SIGNATURE_BYTES}-byte signature, as bytes")
    if isinstance(s, str) and len(s) == _SIG_B64_CHARS:
        try:
            sig = base64.b64decode(s, validate=True)
        except ValueError:
            sig = b""
        # Canonical only: otherwise distinct strings would carry the same signature.
        if len(sig) == SIGNATURE_BYTES and base64.b64encode(sig).decode("ascii") == s:
            return sig
    raise BadFrame(f"in a text frame 's' is the padded standard base64 of the {SIGNATURE_BYTES}-byte signature")


def check_common_fields(f: dict[Any, Any], known: frozenset[str], required: tuple[str, ...],
                        config: EnvelopeConfig) -> None:
    """The payload fields signed and MAC'd requests share: names, v, action, ns, data, grants."""
    unknown = f.keys() - known
    if unknown:
        names = ", ".join(sorted(repr(k)[:40] for k in unknown)[:5])
        raise BadFrame(f"unknown payload fields: {names}")
    missing = [k for k in required if k not in f]
    if missing:
        raise BadFrame(f"missing payload fields: {', '.join(missing)}")
    if type(f["v"]) is not int or f["v"] != VERSION:
        raise BadFrame(f"unsupported request version {_short(f['v'])}; this node speaks v{VERSION}")
    if not isinstance(f["action"], str) or not f["action"] or not _is_utf8(f["action"]):
        raise BadFrame("'action' must be a non-empty valid Unicode string")
    if f["ns"] is not None and not isinstance(f["ns"], str):
        raise BadFrame("'ns' must be a string or null")
    if not isinstance(f["data"], dict):
        raise BadFrame("'data' must be a map")
    if "grants" in f:
        grants = f["grants"]
        if not isinstance(grants, list) or not all(isinstance(g, str) for g in grants):
            raise BadFrame("'grants' must be a list of grant token strings")
        if len(grants) > config.grants_max:
            raise TooLarge(f"more than {config.grants_max} grants in one request")


def _check_fields(f: dict[Any, Any], config: EnvelopeConfig) -> None:
    check_common_fields(f, _KNOWN, _REQUIRED, config)
    if type(f["ts"]) is not int or not _INT_MIN <= f["ts"] <= _INT_MAX:
        raise BadFrame("'ts' must be an integer: unix time in milliseconds")
    nonce = f["nonce"]
    if not isinstance(nonce, str) or len(nonce) < config.nonce_chars_min or not _is_utf8(nonce):
        raise BadFrame(f"'nonce' must be a valid Unicode string of at least {config.nonce_chars_min} characters")
    if len(nonce) > config.nonce_chars_max:
        raise TooLarge(f"'nonce' is longer than {config.nonce_chars_max} characters")
    if not isinstance(f["pk"], str) or not _PK_HEX.fullmatch(f["pk"]):
        raise BadFrame("'pk' must be the lowercase hex of the 32-byte Ed25519 public key")
    if "aid" in f and not isinstance(f["aid"], str):
        raise BadFrame("'aid' must be a string: the agent id of 'pk'")


def _is_utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class RequestVerifier:
    """Checks, in order: signature -> claimed id -> timestamp window -> nonce (replay).

    Each failure raises its own code (BadSignature, BadSignature, Expired, Replay) with `rid` in the
    details. Takes decode_request's output only. Not thread-safe (its ReplayCache is not).
    """

    __slots__ = ("_config", "_keys", "_replay", "_counts")

    def __init__(
        self,
        config: EnvelopeConfig = _DEFAULT_CONFIG,
        key_cache: PublicKeyCache | None = None,
        replay: ReplayCache | None = None,
    ) -> None:
        self._config = config
        self._keys = key_cache if key_cache is not None else PublicKeyCache(config.key_cache_size)
        self._replay = replay if replay is not None else ReplayCache(config.window_ms, config.replay_capacity)
        self._counts: dict[str, int] = {"verified": 0, "bad_signature": 0, "expired": 0, "replay": 0}

    def verify(self, u: UnverifiedRequest, now_ms: int) -> Request:
        try:
            request = self._verify(u, now_ms)
        except MnemonetError as e:
            self._counts[e.code] = self._counts.get(e.code, 0) + 1
            e.details.setdefault("rid", u.rid)
            raise
        self._counts["verified"] += 1
        return request

    def _verify(self, u: UnverifiedRequest, now_ms: int) -> Request:
        f = u.fields
        public_key = bytes.fromhex(f["pk"])
        if not self._keys.verify(public_key, u.signature, REQUEST_DOMAIN + u.payload_bytes):
            raise BadSignature("the signature does not verify with the payload's public key 'pk'")
        agent_id = agent_id_of(public_key)
        if "aid" in f and f["aid"] != agent_id:
            raise BadSignature("the claimed agent id 'aid' is not the id of the signing key 'pk'")
        skew_ms = f["ts"] - now_ms
        if abs(skew_ms) > self._config.window_ms:
            raise Expired(
                f"request timestamp is {skew_ms:+d} ms from the node's clock; accepted: ±{self._config.window_ms} ms",
                skew_ms=skew_ms,
            )
        self._replay.check_and_add(public_key, f["nonce"], f["ts"], now_ms)
        return Request(
            rid=u.rid,
            action=f["action"],
            ns=f["ns"],
            data=f["data"],
            ts_ms=f["ts"],
            nonce=f["nonce"],
            public_key=public_key,
            agent_id=agent_id,
            grants=tuple(f.get("grants", ())),
            binary=u.binary,
            payload_bytes=u.payload_bytes,
            signature=u.signature,
        )

    def statistics(self) -> dict[str, Any]:
        return {**self._counts, "key_cache": self._keys.statistics(), "replay_cache": self._replay.statistics()}


def sign_payload(identity: Identity, payload: dict[str, Any], *, binary: bool = True) -> dict[str, Any]:
    """Encode `payload` (any map, even an invalid one: tests use this) and sign it into a frame dict."""
    try:
        if binary:
            payload_bytes: bytes = msgpack.packb(payload, use_bin_type=True)
        else:
            text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
            payload_bytes = text.encode("utf-8")
    except (TypeError, ValueError, OverflowError) as e:
        raise InvalidArgument(f"the payload cannot be encoded: {e}") from None
    signature = identity.sign(REQUEST_DOMAIN + payload_bytes)
    if binary:
        return {"p": payload_bytes, "s": signature}
    return {"p": text, "s": base64.b64encode(signature).decode("ascii")}


def sign_request(
    identity: Identity,
    *,
    action: str,
    ns: str | None,
    data: dict[str, Any],
    rid: int | str,
    ts_ms: int,
    nonce: str | None = None,
    grants: Iterable[str] = (),
    binary: bool = True,
) -> dict[str, Any]:
    """Build and sign a v1 request frame: bytes `p`/`s` if `binary`, else JSON text and base64."""
    payload: dict[str, Any] = {
        "v": VERSION,
        "rid": rid,
        "action": action,
        "ns": ns,
        "data": data,
        "ts": ts_ms,
        "nonce": nonce if nonce is not None else os.urandom(16).hex(),
        "pk": identity.public_key_hex,
    }
    grants = list(grants)
    if grants:
        payload["grants"] = grants
    return sign_payload(identity, payload, binary=binary)
