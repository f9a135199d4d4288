"""Effects a committed write asks the node to apply: vector index updates and change events.

Plain frozen records; the storage functions create them, Service.apply_effects (and, for
DigestDelta, ReplicaStore.on_commit) consumes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class IndexAdd:
    space: str
    rowid: int
    vector: np.ndarray
    group: int
    expires_ms: int | None = None


@dataclass(frozen=True, slots=True)
class IndexRemove:
    space: str
    rowid: int


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of the change log that signal watches and state subscriptions follow."""

    seq: int
    topic: str  # "signal" or "state"
    ns: str
    key: str
    event: dict[str, Any]


@dataclass(frozen=True, slots=True)
class DigestDelta:
    """A replica item's digest hash changed in `partition` (node/replica_store.py): subtract `removed`
    (the superseded copy's hash; None: the item is new), add `added` (None: the item is gone)."""

    partition: int
    removed: int | None
    added: int | None
