"""Node-level messages that share the peer link with the replication messages of ring/messages.py:
scatter-search requests and their answers, and the refusal of a request the receiver would not serve.

Owns plain immutable data only; it must not encode bytes (node/replica_codec.py does) or run a search.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """Search the receiver's local index: `body` holds the memory.search arguments plus the
    partitions asked (the coordinator picks one healthy replica per range). `req` pairs the answer."""

    req: int
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SearchReply:
    """The answer to SearchQuery `req`: `body` holds the hits when `ok`; else `code` says why
    (an error code of crypto/errors.py, e.g. "unavailable") and `body` may carry details."""

    req: int
    ok: bool
    body: dict[str, Any]
    code: str = "ok"


@dataclass(frozen=True, slots=True)
class PeerError:
    """The receiver refused request `req` (of any message type that carries one): `code` is a stable
    error code of crypto/errors.py, `message` a human-readable reason."""

    req: int
    code: str
    message: str


PeerMessage = SearchQuery | SearchReply | PeerError
