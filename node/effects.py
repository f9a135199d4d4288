"""Effects a committed write asks the node to apply: vector index updates and change events.

Plain frozen records; the storage functions create them, Service.apply_effects consumes them.
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
