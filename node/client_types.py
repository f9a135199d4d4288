"""Typed results of the client API (what `MemoryClient` methods return).

Plain frozen records built from reply maps; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from crypto.identity import agent_id_of
from crypto.provenance import verify_record


@dataclass(frozen=True, slots=True)
class Memory:
    id: str
    ns: str
    owner: str
    memory_type: str
    content: str
    metadata: dict[str, Any]
    created: int
    score: float | None = None
    context: list[dict[str, Any]] = field(default_factory=list)
    expires_ms: int | None = None
    vector: list[float] | None = None
    provenance: dict[str, str] | None = None  # {"pk", "sig", "scheme"}: see verify_provenance()

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Memory:
        return cls(d["id"], d["ns"], d["owner"], d["memory_type"], d["content"], d.get("metadata") or {},
                   d["created"], d.get("score"), d.get("context") or [], d.get("expires_ms"), d.get("vector"),
                   d.get("provenance"))

    def verify_provenance(self) -> bool:
        """True if the record carries its author's signature and it checks out (trusting no node)."""
        p = self.provenance
        if not p or agent_id_of(bytes.fromhex(p["pk"])) != self.owner:
            return False
        return verify_record(bytes.fromhex(p["pk"]), bytes.fromhex(p["sig"]), self.ns, self.id, self.memory_type,
                             self.content)


@dataclass(frozen=True, slots=True)
class StoreResult:
    id: str
    created: bool
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Memory]
    truncated: bool
    next_cursor: str | None = None
    exhaustive: bool = True
    partial: bool = False
    """Cluster search only: some partitions had no replica answering (their items may be missing);
    `missing_partitions` counts them and `missing_ranges` lists key ranges (docs/protocol.md §6.7)."""
    missing_partitions: int = 0
    missing_ranges: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Signal:
    key: str
    value: Any
    version: int
    writer: str
    expires_ms: int | None = None
    kind: str = "register"  # "register" | "counter" | "set" (docs/protocol.md §6.3)


@dataclass(frozen=True, slots=True)
class Change:
    """One pushed change: a signal set/delete/expire or a state publish."""

    seq: int
    event: dict[str, Any]
