"""Which members hold data, from the gossiped membership view: the storage set behind the ring's
placement and the liveness the coordinator routes by.

Owns the rule (storage role; alive and suspect members are in; dead ones stay in for a grace period,
covered meanwhile by hints and stand-ins; members that left are out at once); it must not move data
or talk to peers. Pure: members and `now` are passed in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gossip.messages import MemberView, State

STORAGE_ROLE = "storage"


@dataclass(frozen=True, slots=True)
class StorageSet:
    """`members`: the nodes placement spreads partitions over (sorted); `alive`: those believed up now."""

    members: tuple[str, ...]
    alive: frozenset[str]
    expires_at: float = float("inf")
    """When the earliest dead member's grace ends (the set changes then with no membership event)."""


def storage_set(me: str, members: Iterable[MemberView], now: float, dead_grace_s: float,
                remembered: Iterable[str] = (), remembered_since: float = 0.0) -> StorageSet:
    """The storage set as `me` sees it at `now`. A dead member keeps its partitions for `dead_grace_s`
    after it was declared dead (a restart or a short partition moves no data; hinted handoff and
    anti-entropy cover the gap); past it the ring drops it and its partitions are re-replicated.
    `remembered`: the storage set this node's data was last placed by (persisted), known since
    `remembered_since`; a remembered member gossip has not reported yet counts as placed (not alive)
    for `dead_grace_s`, so a restarted node that has heard from only part of the cluster does not
    take the unheard members' partitions (and pull them) meanwhile."""
    placed: set[str] = set()
    alive: set[str] = set()
    expires_at = float("inf")
    members = list(members)
    if now - remembered_since < dead_grace_s:
        known = {m.id for m in members}
        unheard = [r for r in remembered if r not in known]
        placed.update(unheard)
        if unheard:
            expires_at = remembered_since + dead_grace_s
    for m in members:
        if STORAGE_ROLE not in m.meta.roles and m.id != me:
            continue
        if m.state in (State.ALIVE, State.SUSPECT) or m.id == me:
            placed.add(m.id)
            alive.add(m.id)
        elif m.state is State.DEAD and now - m.state_changed_at < dead_grace_s:
            placed.add(m.id)
            expires_at = min(expires_at, m.state_changed_at + dead_grace_s)
    return StorageSet(tuple(sorted(placed)), frozenset(alive), expires_at)
