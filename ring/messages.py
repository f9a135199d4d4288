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


# --- anti-entropy and rebalancing -----------------------------------------------------------------
#
# Items are named by `ItemRef` (kind value, key) and ordered as Python orders those tuples (code
# point order of the strings): every replica's store must list items in that order, because pages
# and cursors are ranges of it. A summary adds the digest hash of the stored copy (Record.digest_hash).
# Anti-entropy (ring/antientropy.py): the initiator sends every request, the responder only answers;
# all answers are reads except AePush, a merge, so a repeated request is harmless.
# Rebalancing (ring/rebalance.py): a new owner pulls pages from old owners, whole partitions many at a
# time (RbPullMany/RbPages) and the rest of a big one page by page (RbPull/RbPage); a losing owner
# drops a partition only after every new owner's RbConfirm matches its current digest.

ItemRef = tuple[str, tuple[str, ...]]
ItemSummary = tuple[str, tuple[str, ...], int]
DigestWire = tuple[int, int]
"""A RangeDigest as (sum, count)."""


@dataclass(frozen=True, slots=True)
class AeOpen:
    """Compare the partitions both sides own: `partitions_fp` fingerprints the initiator's sorted set
    (the responder must compute the same set), `root` is the initiator's tree root over it."""

    session: int
    partitions_fp: int
    partitions: int
    fanout: int
    root: int


@dataclass(frozen=True, slots=True)
class AeOpened:
    """The responder's level-1 tree hashes; empty when the roots match (in sync: it keeps no state)."""

    session: int
    hashes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class AeReject:
    """The session ends: `code` is "busy", "partitions" (the sets differ: placements disagree),
    "session" (unknown or expired) or "invalid" (a request out of bounds)."""

    session: int
    code: str


@dataclass(frozen=True, slots=True)
class AeTreeQuery:
    """Send your hashes of the children (at `level`) of nodes `parents` of level `level - 1`."""

    session: int
    req: int
    level: int
    parents: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class AeTreeHashes:
    session: int
    req: int
    hashes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class AeSummaryQuery:
    """Summaries of each (partition, after-cursor) in order, as many as fit in one answer."""

    session: int
    req: int
    cursors: tuple[tuple[int, ItemRef | None], ...]


@dataclass(frozen=True, slots=True)
class SummaryPage:
    """Items of `partition` after the query's cursor; `complete`: nothing follows the last one.
    Partitions of the query that did not fit are left out of the answer (ask again)."""

    partition: int
    items: tuple[ItemSummary, ...]
    complete: bool


@dataclass(frozen=True, slots=True)
class AeSummaries:
    session: int
    req: int
    pages: tuple[SummaryPage, ...]


@dataclass(frozen=True, slots=True)
class AeFetch:
    session: int
    req: int
    items: tuple[ItemRef, ...]


@dataclass(frozen=True, slots=True)
class AeRecords:
    """The responder's copies of fetched items; `missing`: it holds none. Items in neither did not
    fit in the message (ask again)."""

    session: int
    req: int
    records: tuple[Record, ...]
    missing: tuple[ItemRef, ...]


@dataclass(frozen=True, slots=True)
class AePush:
    """Merge these copies (the initiator's, of items the responder lacks or holds differently)."""

    session: int
    req: int
    records: tuple[Record, ...]


@dataclass(frozen=True, slots=True)
class AeAck:
    session: int
    req: int


@dataclass(frozen=True, slots=True)
class AeClose:
    """The initiator is done; the responder frees the session (it also expires on its own)."""

    session: int


@dataclass(frozen=True, slots=True)
class RbPull:
    """Send one page of your records of `partition` after item `after` (None: from the start)."""

    transfer: int
    partition: int
    after: ItemRef | None


@dataclass(frozen=True, slots=True)
class RbPage:
    """Records after `after` in item order; `next` is the cursor to continue from (None: that was
    the last page); `digest` is the sender's digest of the partition when it built this page."""

    transfer: int
    partition: int
    after: ItemRef | None
    records: tuple[Record, ...]
    next: ItemRef | None
    digest: DigestWire


@dataclass(frozen=True, slots=True)
class RbPullMany:
    """Send your records of each of `partitions` from the start, in this order, as RbPages: as many as
    fit in one reply (a partition's records all come from one moment, so a page without `next` is
    a whole partition as of its `digest`)."""

    transfer: int
    partitions: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class RbPages:
    """The answer to RbPullMany: a first page (`after` None) for a prefix of its partitions. Only the
    last may have `next` (continue it with RbPull); partitions after the last page were not served."""

    transfer: int
    pages: tuple[RbPage, ...]


@dataclass(frozen=True, slots=True)
class RbConfirm:
    """A new owner holds (merged) everything the receiver held when its digest of `partition` was `digest`."""

    partition: int
    digest: DigestWire


@dataclass(frozen=True, slots=True)
class RbConfirmed:
    """The answer to RbConfirm. `retry`: the receiver's digest moved on; sweep it again now."""

    partition: int
    ok: bool
    retry: bool = False


@dataclass(frozen=True, slots=True)
class RbSweepMe:
    """From a losing owner to a new owner: pull these partitions from me (again) and confirm."""

    partitions: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ApplyRecords:
    """Effect: merge `records` (received from `src`) into the local store."""

    src: str
    records: tuple[Record, ...]


@dataclass(frozen=True, slots=True)
class DropPartitions:
    """Effect: forget these partitions now, before applying any other write (every new owner has
    confirmed them); from then on this node rejects writes to them as a non-owner."""

    partitions: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class SessionEnded:
    """Effect (a report; the shell may ignore it): an anti-entropy session this node started ended.
    `outcome`: "in_sync", "repaired", "timeout" or an AeReject code."""

    peer: str
    session: int
    outcome: str
    partitions_differing: int
    records_received: int
    records_sent: int


AntiEntropyMessage = (AeOpen | AeOpened | AeReject | AeTreeQuery | AeTreeHashes | AeSummaryQuery | AeSummaries
                      | AeFetch | AeRecords | AePush | AeAck | AeClose)
RebalanceMessage = RbPull | RbPage | RbPullMany | RbPages | RbConfirm | RbConfirmed | RbSweepMe
AntiEntropyEffect = Send | ApplyRecords | SessionEnded
RebalanceEffect = Send | ApplyRecords | DropPartitions
