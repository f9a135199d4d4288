"""Network admission: the grant a network key signs for each member (ns "network:NAME", action
"member"), and a cached check of such grants against a network's public key.

Owns the token convention and the cache of verified tokens; it must not read a clock (`now_ms` is
passed in) nor decide what happens to a record that is not admitted (records.py does).
"""

from __future__ import annotations

from crypto.errors import BadFrame, BadSignature, Expired, Forbidden, InvalidArgument, MnemonetError
from crypto.grants import Grant, make_grant, parse_grant
from crypto.identity import PUBLIC_KEY_BYTES, Identity, PublicKeyCache

ADMISSION_ACTION = "member"
CACHE_TOKENS_MAX = 8192
"""Verified tokens remembered (one per member; forged ones too, so each costs one verify). Above it the
oldest entry goes; a network larger than this pays a verify per record that is news."""


def admission_ns(network: str) -> str:
    """The grant namespace of a network's admissions."""
    return f"network:{network}"


def make_admission(network_key: Identity, node_id: str, network: str, *, exp_ms: int, now_ms: int) -> str:
    """An admission token for `node_id` in `network`, valid until exp_ms (wall-clock ms since the epoch)."""
    return make_grant(network_key, grantee=node_id, ns=admission_ns(network), actions=(ADMISSION_ACTION,),
                      exp_ms=exp_ms, now_ms=now_ms)


class AdmissionCheck:
    """Decides whether a token admits a node id to one network (signed by the network key, this network's
    namespace, the "member" action, not expired). A token is verified once, then cached with its
    grantee and expiry, so a check of a known token is a dict lookup and a comparison.
    """

    __slots__ = ("network_public_key", "network", "_ns", "_tokens", "_tokens_max", "_keys", "verified", "refused")

    def __init__(self, network_public_key: bytes, network: str, tokens_max: int = CACHE_TOKENS_MAX) -> None:
        if not isinstance(network_public_key, bytes) or len(network_public_key) != PUBLIC_KEY_BYTES:
            raise InvalidArgument(f"a network public key is {PUBLIC_KEY_BYTES} raw bytes")
        self.network_public_key = network_public_key
        self.network = network
        self._ns = admission_ns(network)
        # token -> (grantee, exp_ms); ("", 0) for a token that does not admit anyone here.
        self._tokens: dict[str, tuple[str, int]] = {}
        self._tokens_max = tokens_max
        self._keys = PublicKeyCache(4)
        self.verified = 0  # tokens checked with a signature verification (cache misses)
        self.refused = 0  # admits() answers of False

    def verify(self, token: str, node_id: str, now_ms: int) -> Grant:
        """The grant if `token` admits `node_id` now; otherwise raises BadFrame (malformed), BadSignature,
        Forbidden (another key, network, grantee or action) or Expired. Uncached: for a node's own token
        at start-up and for tools."""
        grant = self._parse(token)
        if grant.grantee != node_id:
            raise Forbidden(f"the admission token is for node {grant.grantee!r}, not {node_id!r}")
        if now_ms >= grant.exp_ms:
            raise Expired(f"the admission token expired at {grant.exp_ms} ms")
        return grant

    def admits(self, node_id: str, token: str, now_ms: int) -> bool:
        """True if `token` admits `node_id` at `now_ms`. Never raises."""
        hit = self._tokens.get(token)
        if hit is None:
            hit = self._remember(token)
        if hit[0] == node_id and now_ms < hit[1]:
            return True
        self.refused += 1
        return False

    def statistics(self) -> dict[str, int]:
        return {"tokens_cached": len(self._tokens), "tokens_verified": self.verified, "refused": self.refused}

    def _remember(self, token: str) -> tuple[str, int]:
        self.verified += 1
        try:
            grant = self._parse(token)
            hit = (grant.grantee, grant.exp_ms)
        except MnemonetError:
            hit = ("", 0)
        if len(self._tokens) >= self._tokens_max:
            del self._tokens[next(iter(self._tokens))]
        self._tokens[token] = hit
        return hit

    def _parse(self, token: str) -> Grant:
        if not token:
            raise Forbidden("no admission token: this network requires one (mnemonet admit)")
        try:
            grant = parse_grant(token, self._keys)
        except (BadFrame, BadSignature) as e:
            raise type(e)(f"admission token: {e.message}") from None
        if grant.issuer_public_key != self.network_public_key:
            raise Forbidden("the admission token is not signed by this network's key")
        if grant.ns != self._ns or ADMISSION_ACTION not in grant.actions:
            raise Forbidden(f"the admission token does not grant {ADMISSION_ACTION!r} in {self._ns!r}")
        return grant
