"""The one config dataclass of the ring package: replication factor, quorums, timeouts, retention and the
bounds of every replication engine (coordinator, hinted handoff, anti-entropy, rebalancing).

Owns numbers with their units and the reasons for their defaults; it must not hold state or import I/O.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from crypto.errors import InvalidArgument

_DAY_S = 86_400.0


@dataclass(frozen=True, slots=True)
class ReplicationConfig:
    """Replication knobs of the cluster and service modes (the master mode is n=w=r=1)."""

    # Copies of every key (Dynamo, Cassandra and Riak default to 3): survives one node loss with a
    # majority quorum still available, and two losses without data loss.
    n_replicas: int = 3
    # Acks a write waits for, and answers a read waits for. 2 + 2 > 3: every read quorum meets every
    # write quorum of the same replica set, so an acknowledged write is seen by every later quorum read.
    w_replicas: int = 2
    r_replicas: int = 2
    # Count a stand-in's ack (a node holding a hint for a down owner) toward W. Dynamo and Riak do;
    # Cassandra does not. On, writes stay available with two of three owners down, but an
    # acknowledged write may be missing from quorum reads until the hint or anti-entropy delivers it.
    sloppy_quorum: bool = True
    # How long a coordinator waits for W acks or R answers before it answers `unavailable` (Cassandra's
    # write_request_timeout: 2 s). Far above a LAN round trip plus a group-committed fsync, below the
    # point where a client would rather retry elsewhere.
    request_timeout_s: float = 2.0
    # Children per node of the anti-entropy hash tree. 16 keeps a tree over ~13k owned partitions at
    # 4 internal levels, so one differing partition costs ~50 hashes to locate instead of 13k.
    digest_fanout: int = 16
    # Every replica of a key is compared with every other one this often (Riak AAE: 15 s tick); a
    # matching root costs one hash, so the interval bounds repair lag, not traffic.
    anti_entropy_interval_s: float = 30.0
    # Tombstones are kept this long, then collected. A replica that was away longer than this could
    # bring a deleted memory back (it still holds the live record, and nobody holds the tombstone any
    # more), so it must be wiped and re-streamed instead of rejoining. 7 days covers a long weekend plus
    # a slow repair and keeps tombstone storage bounded (Cassandra's gc_grace_seconds is 10 days).
    tombstone_grace_s: float = 7 * _DAY_S
    # A stand-in drops a hint it could not deliver within this time; anti-entropy repairs the rest
    # (Cassandra's max_hint_window: 3 h). Must stay below tombstone_grace_s, or a late hint could
    # re-deliver a write whose tombstone was already collected.
    hint_ttl_s: float = 3 * 3600.0
    # Most hints a stand-in keeps for one owner; over it the oldest hint is dropped (and counted:
    # newer writes are likelier to be read soon), and anti-entropy repairs the rest. ~1 KiB per hint: ~100 MiB per down owner at most.
    hints_per_owner_max: int = 100_000
    # A hint delivery not acked within this is sent again (the owner may have died again).
    hint_retry_s: float = 2.0
    # Deliveries awaiting an ack per owner: back-pressure on a returning owner.
    hints_in_flight_per_owner_max: int = 32

    # ---- coordinator (ring/coordinator.py) ----
    # In-flight client requests per coordinator; beyond it a request is answered `unavailable`.
    pending_requests_max: int = 10_000
    # Silent replicas get a stand-in or a resend after request_timeout_s * this: a quarter of the
    # request timeout leaves room for a stand-in (or two resends) before the request's deadline.
    replica_timeout_fraction: float = 0.25
    # Stand-ins tried for one down owner before its slot is given up.
    stand_ins_per_slot_max: int = 2

    # ---- anti-entropy sessions (ring/antientropy.py; interval and fanout above) ----
    # Sessions this node initiates at once: repair bandwidth, not correctness.
    ae_sessions_max: int = 2
    # Sessions answered at once: each holds a tree (~1 MB at 13k partitions).
    ae_responder_sessions_max: int = 4
    # ~9 KiB of hashes per answer.
    ae_tree_hashes_per_message_max: int = 1024
    # ~100 KiB with 64-byte keys.
    ae_summaries_per_message_max: int = 1024
    # One summary query covers many small partitions (avg ~8 items).
    ae_partitions_per_query_max: int = 256
    # Records per fetch or push; the byte bound below usually cuts first.
    ae_records_per_message_max: int = 128
    # Records are cut here (at least one goes, so a big one still moves).
    ae_message_bytes_max: int = 256 * 1024
    # Per session: pipelines round trips without flooding the peer.
    ae_requests_in_flight_max: int = 4
    # A LAN round trip plus a slow SQLite read, with margin.
    ae_request_timeout_s: float = 2.0
    # Then the session times out; the peer is retried at the next round.
    ae_request_attempts_max: int = 3
    # The responder forgets a session idle this long (> timeout * attempts).
    ae_session_idle_s: float = 30.0
    # Rounds at interval * [1 - j, 1 + j): nodes do not march in step.
    ae_interval_jitter_fraction: float = 0.25

    # ---- rebalancing after a placement change (ring/rebalance.py) ----
    # Pulls asked for at once: the back-pressure on the shell's writes.
    rebalance_transfers_in_flight_max: int = 8
    # Partitions one RbPullMany asks for: most gained partitions are small or empty, and one round
    # trip each would make a join take minutes (~98k partitions of 2**17 move when a 4th node joins).
    rebalance_partitions_per_pull_max: int = 512
    # Records per page; the byte bound below usually cuts first.
    rebalance_records_per_page_max: int = 256
    # A page is cut here (at least one record, so a big one still moves).
    rebalance_page_bytes_max: int = 512 * 1024
    # A page read and applied on a busy node, with margin.
    rebalance_request_timeout_s: float = 5.0
    # Then that source is given up and the next old owner is tried.
    rebalance_request_attempts_max: int = 3
    # Wait after every old owner of a partition failed once.
    rebalance_retry_backoff_s: float = 10.0
    # A loser re-asks unconfirmed new owners this often.
    rebalance_nudge_interval_s: float = 30.0
    # Partitions named in one RbSweepMe.
    rebalance_partitions_per_nudge_max: int = 1024

    def __post_init__(self) -> None:
        for name in ("n_replicas", "w_replicas", "r_replicas", "digest_fanout", "hints_per_owner_max",
                     "hints_in_flight_per_owner_max", "pending_requests_max", "stand_ins_per_slot_max",
                     "ae_sessions_max", "ae_responder_sessions_max", "ae_tree_hashes_per_message_max",
                     "ae_summaries_per_message_max", "ae_partitions_per_query_max", "ae_records_per_message_max",
                     "ae_message_bytes_max", "ae_requests_in_flight_max", "ae_request_attempts_max",
                     "rebalance_transfers_in_flight_max", "rebalance_records_per_page_max",
                     "rebalance_page_bytes_max", "rebalance_request_attempts_max",
                     "rebalance_partitions_per_nudge_max", "rebalance_partitions_per_pull_max"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidArgument(f"ReplicationConfig.{name} must be a positive int", **{name: repr(value)})
        for name in ("request_timeout_s", "anti_entropy_interval_s", "tombstone_grace_s", "hint_ttl_s",
                     "hint_retry_s", "ae_request_timeout_s", "ae_session_idle_s", "rebalance_request_timeout_s",
                     "rebalance_retry_backoff_s", "rebalance_nudge_interval_s"):
            if not getattr(self, name) > 0:
                raise InvalidArgument(f"ReplicationConfig.{name} must be positive")
        if not 0 < self.replica_timeout_fraction <= 1:
            raise InvalidArgument("ReplicationConfig.replica_timeout_fraction must be in (0, 1]")
        if not 0 <= self.ae_interval_jitter_fraction < 1:
            raise InvalidArgument("ReplicationConfig.ae_interval_jitter_fraction must be in [0, 1)")
        if self.ae_session_idle_s <= self.ae_request_timeout_s * self.ae_request_attempts_max:
            raise InvalidArgument("ReplicationConfig.ae_session_idle_s must exceed ae_request_timeout_s * "
                                  "ae_request_attempts_max (a responder must not forget a session still retried)")
        if self.w_replicas > self.n_replicas or self.r_replicas > self.n_replicas:
            raise InvalidArgument("ReplicationConfig: w_replicas and r_replicas must not exceed n_replicas")
        if self.digest_fanout < 2:
            raise InvalidArgument("ReplicationConfig.digest_fanout must be >= 2 (a tree, not a list)")
        if self.hint_ttl_s >= self.tombstone_grace_s:
            raise InvalidArgument("ReplicationConfig.hint_ttl_s must be below tombstone_grace_s")

    @property
    def quorums_overlap(self) -> bool:
        """Every read quorum meets every write quorum of the same owners (W + R > N); with
        `sloppy_quorum` a write may still land on stand-ins outside the owners."""
        return self.w_replicas + self.r_replicas > self.n_replicas

    @property
    def replica_timeout_s(self) -> float:
        """How long a coordinator waits for one replica before a stand-in or a resend."""
        return self.request_timeout_s * self.replica_timeout_fraction

    def replace(self, **changes: object) -> ReplicationConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
