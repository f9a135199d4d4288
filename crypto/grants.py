"""Capability grants and revocations: self-contained signed tokens, the same in JSON and msgpack frames.

Owns the token format and the action-matching rule; it must not decide who owns a namespace (node
policy, helped by `issued_by_owner`) nor read a clock (`now_ms` is passed in).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from crypto.errors import BadFrame, BadSignature, InvalidArgument
from crypto.identity import SIGNATURE_BYTES, Identity, PublicKeyCache, agent_id_of, verify_signature

GRANT_PREFIX = "mg1"
REVOKE_PREFIX = "mr1"
GRANT_DOMAIN = b"mnemonet-grant-v1\x00"
REVOKE_DOMAIN = b"mnemonet-revoke-v1\x00"
# Bounds the work and memory one token can cost a node; a grant with a dozen actions is ~400 chars.
TOKEN_CHARS_MAX = 4096
GID_CHARS_MAX = 64

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_PK_HEX = re.compile(r"[0-9a-f]{64}")
_GRANT_FIELDS = frozenset(("gid", "ns", "grantee", "actions", "exp", "iat", "pk"))
_REVOKE_FIELDS = frozenset(("gid", "ns", "iat", "pk"))


@dataclass(frozen=True, slots=True)
class Grant:
    """Lets `grantee` perform `actions` in namespace `ns` until `exp_ms`, as signed by the issuer."""

    gid: str
    ns: str
    grantee: str
    actions: tuple[str, ...]
    exp_ms: int
    iat_ms: int
    issuer_public_key: bytes
    issuer_id: str
    token: str

    def allows(self, agent_id: str, ns: str, action: str, action_class: str, now_ms: int) -> bool:
        """True if this grant covers the call; the node separately checks `issued_by_owner` and revocation.

        An entry of `actions` matches as "*" (everything, admin included), the exact action name
        ("memory.search"), a prefix wildcard ("memory.*" matches "memory.search", not "memory"), or the
        action's class as the node classifies it ("read", "write", "admin").
        """
        if agent_id != self.grantee or ns != self.ns or now_ms >= self.exp_ms:
            return False
        for entry in self.actions:
            if entry in ("*", action, action_class):
                return True
            if entry.endswith(".*") and action.startswith(entry[:-1]):
                return True
        return False

    def issued_by_owner(self, operator_ids: frozenset[str]) -> bool:
        """Namespace X is owned by the agent whose id is X, and by the node operators."""
        return self.issuer_id == self.ns or self.issuer_id in operator_ids


@dataclass(frozen=True, slots=True)
class Revocation:
    """Cancels grant `gid` in namespace `ns`; honoured only if the namespace owner signed it."""

    gid: str
    ns: str
    issuer_public_key: bytes
    issuer_id: str
    iat_ms: int
    token: str

    def issued_by_owner(self, operator_ids: frozenset[str]) -> bool:
        return self.issuer_id == self.ns or self.issuer_id in operator_ids


def make_grant(
    issuer: Identity,
    *,
    grantee: str,
    ns: str,
    actions: Iterable[str],
    exp_ms: int,
    now_ms: int,
    gid: str | None = None,
) -> str:
    """Sign a grant token. Raises InvalidArgument for empty actions, bad types or exp_ms <= now_ms."""
    actions = list(actions) if not isinstance(actions, str) else [actions]
    if not actions or not all(isinstance(a, str) and a for a in actions):
        raise InvalidArgument("a grant needs at least one non-empty action (or '*', 'read', 'memory.*'...)")
    if not (isinstance(grantee, str) and grantee and isinstance(ns, str)):
        raise InvalidArgument("grantee must be an agent id and ns a namespace string")
    if type(exp_ms) is not int or type(now_ms) is not int or exp_ms <= now_ms:
        raise InvalidArgument("exp_ms must be an integer after now_ms")
    gid = gid if gid is not None else os.urandom(16).hex()
    if not isinstance(gid, str) or not 0 < len(gid) <= GID_CHARS_MAX:
        raise InvalidArgument(f"gid must be a string of 1..{GID_CHARS_MAX} characters")
    payload = {"gid": gid, "ns": ns, "grantee": grantee, "actions": actions, "exp": exp_ms, "iat": now_ms}
    return _encode(GRANT_PREFIX, GRANT_DOMAIN, issuer, payload)


def parse_grant(token: str, key_cache: PublicKeyCache | None = None) -> Grant:
    """Decode and verify a grant token: BadFrame if malformed, BadSignature if it does not verify."""
    f, pk = _decode(token, GRANT_PREFIX, GRANT_DOMAIN, _GRANT_FIELDS, key_cache)
    actions = f["actions"]
    if not isinstance(actions, list) or not actions or not all(isinstance(a, str) and a for a in actions):
        raise BadFrame("grant 'actions' must be a non-empty list of strings")
    if not (isinstance(f["grantee"], str) and isinstance(f["ns"], str) and _is_int(f["exp"])):
        raise BadFrame("grant 'grantee' and 'ns' must be strings and 'exp' an integer")
    return Grant(
        gid=f["gid"],
        ns=f["ns"],
        grantee=f["grantee"],
        actions=tuple(actions),
        exp_ms=f["exp"],
        iat_ms=f["iat"],
        issuer_public_key=pk,
        issuer_id=agent_id_of(pk),
        token=token,
    )


def make_revocation(issuer: Identity, *, gid: str, ns: str, now_ms: int) -> str:
    """Sign a token that revokes grant `gid` of namespace `ns`."""
    if not isinstance(gid, str) or not 0 < len(gid) <= GID_CHARS_MAX or not isinstance(ns, str):
        raise InvalidArgument("revocation needs the grant's gid and ns")
    if type(now_ms) is not int:
        raise InvalidArgument("now_ms must be an integer")
    return _encode(REVOKE_PREFIX, REVOKE_DOMAIN, issuer, {"gid": gid, "ns": ns, "iat": now_ms})


def parse_revocation(token: str, key_cache: PublicKeyCache | None = None) -> Revocation:
    """Decode and verify a revocation token: BadFrame if malformed, BadSignature if it does not verify."""
    f, pk = _decode(token, REVOKE_PREFIX, REVOKE_DOMAIN, _REVOKE_FIELDS, key_cache)
    if not isinstance(f["ns"], str):
        raise BadFrame("revocation 'ns' must be a string")
    return Revocation(
        gid=f["gid"], ns=f["ns"], issuer_public_key=pk, issuer_id=agent_id_of(pk), iat_ms=f["iat"], token=token
    )


def _encode(prefix: str, domain: bytes, issuer: Identity, payload: dict[str, Any]) -> str:
    payload["pk"] = issuer.public_key_hex
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    signature = issuer.sign(domain + body)
    token = f"{prefix}.{_b64url(body)}.{_b64url(signature)}"
    if len(token) > TOKEN_CHARS_MAX:
        raise InvalidArgument(f"the token would exceed {TOKEN_CHARS_MAX} characters")
    return token


def _decode(
    token: object, prefix: str, domain: bytes, fields: frozenset[str], key_cache: PublicKeyCache | None
) -> tuple[dict[str, Any], bytes]:
    """Check shape, then signature, then the common fields gid/iat/pk; return (fields, public key)."""
    if not isinstance(token, str) or len(token) > TOKEN_CHARS_MAX:
        raise BadFrame(f"a token is a string of at most {TOKEN_CHARS_MAX} characters")
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != prefix:
        raise BadFrame(f"not a {prefix!r} token: expected '{prefix}.<payload>.<signature>'")
    body, signature = _unb64url(parts[1]), _unb64url(parts[2])
    if len(signature) != SIGNATURE_BYTES:
        raise BadFrame("token signature has the wrong length")
    try:
        f = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except Exception as e:  # UnicodeDecodeError, ValueError, RecursionError: all mean malformed
        raise BadFrame(f"token payload is not valid JSON ({type(e).__name__})") from None
    if not isinstance(f, dict) or f.keys() != fields:
        raise BadFrame(f"token payload must have exactly the fields {sorted(fields)}")
    if not isinstance(f["pk"], str) or not _PK_HEX.fullmatch(f["pk"]):
        raise BadFrame("token 'pk' must be the lowercase hex of the issuer's 32-byte public key")
    pk = bytes.fromhex(f["pk"])
    if not verify_signature(pk, signature, domain + body, key_cache):
        raise BadSignature("token signature does not verify with its issuer key 'pk'")
    if not isinstance(f["gid"], str) or not 0 < len(f["gid"]) <= GID_CHARS_MAX or not _is_int(f["iat"]):
        raise BadFrame("token 'gid' must be a short string and 'iat' an integer")
    return f, pk


def _is_int(v: object) -> bool:
    return type(v) is int


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not allowed in tokens")


def _b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode("ascii")


def _unb64url(s: str) -> bytes:
    if not _B64URL.fullmatch(s) or len(s) % 4 == 1:
        raise BadFrame("token parts must be unpadded base64url")
    try:
        b = base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
    except (binascii.Error, ValueError):
        raise BadFrame("token parts must be unpadded base64url") from None
    # Canonical only, so one grant has one token string (tokens are stored and compared as strings).
    if _b64url(b) != s:
        raise BadFrame("token part is not canonical base64url")
    return b
