"""The replication vocabulary: messages between replicas, and the effects the pure cores
(coordinator, hint queue, anti-entropy, rebalancing) ask their shell to carry out.

Owns plain immutable data only; it must not encode bytes (a codec comes with the node wiring),
touch storage or hold state. Records travel as `ring.records.Record` objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ring.records import Kind, Record

# --- coordinator and handoff ----------------------------------------------------------------------
#
# What a replica's shell does with each message (the cores never touch storage):
#   PutRecord(hint_for=None or our id) -> merge into the local store, persist, reply PutAck(req, True, "ok")
#   PutRecord(hint_for=owner)          -> HintQueue.add(owner, record, now), persist, reply PutAck(req, True, "ok")
#   GetRecord                          -> reply GetReply(req, store.get(kind, key))
#   PutAck with is_handoff_req(req)    -> HintQueue.on_ack(src, msg, now)
#   other PutAck, GetReply             -> Coordinator.handle(src, msg, now)
# A replica that cannot store replies ok=False with an error code (e.g. "unavailable").
# A message to our own id is delivered locally, through the same path.

HANDOFF_REQ_LIMIT = 1 << 62
"""Request ids below this are hint ids (the hint queue's deliveries); coordinator requests use
[HANDOFF_REQ_LIMIT, 2**63) from a random start per boot, so an ack that outlives a restart cannot
be mistaken for one of the new requests."""


def is_handoff_req(req: int) -> bool:
    """Whether a PutAck answers a hint delivery (route it to the HintQueue, not the Coordinator)."""
    return 0 < req < HANDOFF_REQ_LIMIT


@dataclass(frozen=True, slots=True)
class PutRecord:
    """Store `record` (a semilattice join, so a repeat is harmless). `hint_for`: the receiver is a
    stand-in and keeps the record as a hint for that owner instead of in its own store."""

    req: int
    record: Record
    hint_for: str | None = None


@dataclass(frozen=True, slots=True)
class PutAck:
    """The answer to PutRecord `req`: `ok` once the record (or the hint) is durable; else `code` says why."""

    req: int
    ok: bool
    code: str = "ok"


@dataclass(frozen=True, slots=True)
class GetRecord:
    """Read the receiver's copy of one item."""

    req: int
    kind: Kind
    key: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class GetReply:
    """The receiver's copy (None: it holds nothing for the item). `ok=False`: it could not read."""

    req: int
    record: Record | None
    ok: bool = True
    code: str = "ok"


@dataclass(frozen=True, slots=True)
class Hint:
    """A write a stand-in holds for a down `owner`. Exactly the row the shell persists (SQLite:
    hint_id INTEGER PRIMARY KEY, owner, record wire form, created); ids are never reused."""

    hint_id: int
    owner: str
    record: Record
    created: float


@dataclass(frozen=True, slots=True)
class Send:
    """Effect: deliver `msg` to node `to` (possibly ourselves: then apply it locally)."""

    to: str
    msg: Any


@dataclass(frozen=True, slots=True)
class Done:
    """Effect: answer the client request `client_req`. `ok=False` carries the error `code`
    ("unavailable") and `details` (acked/answered, required, replicas, failed, timed_out); an
    ok read carries the merged `record` (None: no replica has the item)."""

    client_req: int
    ok: bool
    record: Record | None = None
    code: str = "ok"
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HintStored:
    """Effect: persist this hint (insert, or replace by hint_id) before acking the PutRecord that made it."""

    hint: Hint


@dataclass(frozen=True, slots=True)
class HintDropped:
    """Effect: delete the persisted hint. `reason`: "delivered", "expired", "overflow" or "merged"
    (superseded by a new hint with the merged record)."""

    hint_id: int
    owner: str
    reason: str


CoordinatorMessage = PutRecord | PutAck | GetRecord | GetReply
CoordinatorEffect = Send | Done
HandoffEffect = Send | HintStored | HintDropped
