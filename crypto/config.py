"""The one config dataclass of the crypto package: windows and size limits of signed requests.

Owns numbers with their units and the reasons for their defaults; it must not import other packages.
"""

from __future__ import annotations

from dataclasses import dataclass

from crypto.errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class EnvelopeConfig:
    """Limits a node applies when it decodes and verifies a signed request."""

    # Accepted clock skew |ts - now| in both directions. Agents run on ordinary machines with NTP,
    # usually within a second; a minute tolerates a bad clock without letting a captured request be
    # replayed for long. The replay cache must remember nonces for this long, so it sets its size too.
    window_ms: int = 60_000
    # Most (public key, nonce) pairs remembered. At ~230 B each (measured) the default costs ~60 MB and covers
    # ~4.4k requests/s sustained over a full window; beyond that the cache sheds its oldest entries and
    # narrows the accepted window instead of forgetting (see ReplayCache), so it fails closed.
    replay_capacity: int = 262_144
    # Parsed Ed25519 public keys kept in the verifier's LRU, for a bounded working set of active agents.
    # Measured: parsing costs ~1.5 us and a cache hit ~0.5 us against ~105-150 us per verify, so the
    # cache saves under 1%; it is kept because it is cheap and bounded, not because it matters.
    key_cache_size: int = 4096
    # A nonce needs enough entropy to be unique per key inside the window: 8 chars of hex is 32 bits,
    # the least we accept; the default client nonce is 32 hex chars (128 bits). 64 bounds the memory a
    # client can pin in the replay cache per request.
    nonce_chars_min: int = 8
    nonce_chars_max: int = 64
    # Request ids are echoed in replies; 128 chars fits a UUID or a trace id with room to spare while
    # bounding what an error reply copies back. Integer rids must fit in 64 bits (msgpack's range).
    rid_chars_max: int = 128
    # Grant tokens presented with one request: each costs a signature check (~150 us), so bound it.
    grants_max: int = 16

    def __post_init__(self) -> None:
        for name in ("window_ms", "replay_capacity", "key_cache_size", "nonce_chars_min", "rid_chars_max"):
            if getattr(self, name) <= 0:
                raise InvalidArgument(f"EnvelopeConfig.{name} must be positive")
        if self.grants_max < 0:
            raise InvalidArgument("EnvelopeConfig.grants_max must not be negative")
        if self.nonce_chars_max < self.nonce_chars_min:
            raise InvalidArgument("EnvelopeConfig.nonce_chars_max must be >= nonce_chars_min")

    @classmethod
    def sim(cls) -> EnvelopeConfig:
        """Small caches for in-process simulations with many nodes."""
        return cls(replay_capacity=4096, key_cache_size=256)
