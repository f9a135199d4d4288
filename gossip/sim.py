"""A simulated network for gossip: link fault rules (shared with node/faults.py) and a pure event-heap
engine running many SwimNodes on a virtual clock. No I/O, no clock, no module-level randomness.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Protocol


class UniformRng(Protocol):
    """The one method fault decisions need; `random.Random` satisfies it."""

    def random(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Latency:
    """One-way delay added to a frame: `base_s` plus a random part of mean `jitter_s`
    (uniform on [0, 2*jitter_s], or exponential: a long tail, so frames reorder)."""

    base_s: float = 0.0
    jitter_s: float = 0.0
    distribution: Literal["uniform", "exponential"] = "uniform"

    def sample(self, rng: UniformRng) -> float:
        if self.jitter_s <= 0.0:
            return self.base_s
        if self.distribution == "exponential":
            return self.base_s - self.jitter_s * math.log(1.0 - rng.random())
        return self.base_s + 2.0 * self.jitter_s * rng.random()


class LinkFaults:
    """Network-wide fault settings, changeable at any time: loss rate, latency, and partitions
    between named groups of addresses (a blocked ordered pair of groups drops src -> dst)."""

    def __init__(self, drop_rate: float = 0.0, latency: Latency | None = None) -> None:
        self.drop_rate = drop_rate
        self.latency = latency or Latency()
        self._groups: dict[str, frozenset[str]] = {}
        self._member_of: dict[str, set[str]] = {}
        self._blocked: set[tuple[str, str]] = set()

    def set_group(self, name: str, addrs: Iterable[str]) -> None:
        """Define (or redefine) a named group of addresses."""
        for addr in self._groups.get(name, ()):
            self._member_of[addr].discard(name)
        self._groups[name] = frozenset(addrs)
        for addr in self._groups[name]:
            self._member_of.setdefault(addr, set()).add(name)

    def block(self, src_group: str, dst_group: str) -> None:
        """One-way partition: frames from src_group to dst_group are dropped; the reverse flows."""
        for g in (src_group, dst_group):
            if g not in self._groups:
                raise KeyError(f"unknown group {g!r}")
        self._blocked.add((src_group, dst_group))

    def partition(self, a: str, b: str) -> None:
        """Two-way partition between groups a and b."""
        self.block(a, b)
        self.block(b, a)

    def heal(self, a: str | None = None, b: str | None = None) -> None:
        """Lift the partition between a and b (both directions), or every partition if no groups given."""
        if a is None or b is None:
            self._blocked.clear()
        else:
            self._blocked -= {(a, b), (b, a)}

    @property
    def partitioned(self) -> bool:
        return bool(self._blocked)

    def blocked(self, src: str, dst: str) -> bool:
        if not self._blocked:
            return False
        src_groups = self._member_of.get(src)
        dst_groups = self._member_of.get(dst)
        if not src_groups or not dst_groups:
            return False
        return any((s, d) in self._blocked for s in src_groups for d in dst_groups)
