"""The one config dataclass of the ring package: replication factor, quorums, timeouts and retention.

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

    def __post_init__(self) -> None:
        for name in ("n_replicas", "w_replicas", "r_replicas", "digest_fanout", "hints_per_owner_max"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidArgument(f"ReplicationConfig.{name} must be a positive int", **{name: repr(value)})
        for name in ("request_timeout_s", "anti_entropy_interval_s", "tombstone_grace_s", "hint_ttl_s"):
            if not getattr(self, name) > 0:
                raise InvalidArgument(f"ReplicationConfig.{name} must be positive")
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

    def replace(self, **changes: object) -> ReplicationConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
