"""The member table and the SWIM precedence rules that decide which update about a member wins.

Owns members, their indexes (live list, probe order, dead set) and random choice among them; it must
not send anything, keep timers or read a clock (swim.py drives it, passing `now`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from gossip.messages import Alive, Dead, MemberView, Meta, Rng, State, Suspect

_LIVE = (State.ALIVE, State.SUSPECT)


# --- precedence (SWIM section 4.2, memberlist aliveNode/suspectNode/deadNode) -----------------------
# An incarnation is only ever raised by the member itself, to refute a suspicion, so a record about
# a member at a higher incarnation is always newer. At equal incarnation: dead > suspect > alive.

def alive_wins(m: Member | None, a: Alive) -> bool:
    """An Alive applies to an unknown member, or when it is strictly newer (this is what undoes dead)."""
    return m is None or a.incarnation > m.incarnation


def suspect_wins(m: Member | None, s: Suspect) -> bool:
    """A Suspect turns an alive member suspect at the same or a newer incarnation; never a dead one."""
    return m is not None and m.state is State.ALIVE and s.incarnation >= m.incarnation


def dead_wins(m: Member | None, d: Dead) -> bool:
    """A Dead applies to a live member at the same or a newer incarnation (dead is final until refuted)."""
    return m is not None and m.state in _LIVE and d.incarnation >= m.incarnation


def dead_state(d: Dead) -> State:
    return State.LEFT if d.by == d.node else State.DEAD


class Member:
    """A mutable row of the table. Only SwimNode changes it; others see MemberView snapshots."""

    __slots__ = ("id", "addr", "incarnation", "state", "meta", "state_changed_at", "record_bytes")

    def __init__(
        self, id: str, addr: str, incarnation: int, state: State, meta: Meta, now: float, record_bytes: int = 0,
    ) -> None:
        self.id = id
        self.addr = addr
        self.incarnation = incarnation
        self.state = state
        self.meta = meta
        self.state_changed_at = now
        # Encoded size bound of this member's Alive/NodeState record (codec.alive_bytes), kept so
        # push-pull and the broadcast queue never re-measure metadata.
        self.record_bytes = record_bytes

    def view(self) -> MemberView:
        return MemberView(self.id, self.addr, self.incarnation, self.state, self.meta, self.state_changed_at)


class MemberTable:
    """All known members (self included) plus the indexes a probe or gossip round needs in O(1).

    `_live` holds the other members that are alive or suspect, with positions for O(1) removal; the
    probe order is a shuffled copy of it, rebuilt once per round (SWIM's round-robin probing bounds
    the worst-case detection time, unlike uniform random choice).
    """

    __slots__ = ("self_id", "_rng", "_members", "lookup", "_live", "_live_pos", "_gone", "_recent_dead",
                 "_probe_order", "_probe_idx")

    def __init__(self, me: Member, rng: Rng) -> None:
        self.self_id = me.id
        self._rng = rng
        self._members: dict[str, Member] = {me.id: me}
        # The dict's own get, for hot loops: a method call per record would cost ~0.1 us more.
        self.lookup = self._members.get
        self._live: list[str] = []
        self._live_pos: dict[str, int] = {}
        self._gone: dict[str, None] = {}  # dead and left others, insertion-ordered
        self._recent_dead: deque[tuple[float, str]] = deque()
        self._probe_order: list[str] = []
        self._probe_idx = 0

    def __len__(self) -> int:
        return len(self._members)

    def __iter__(self) -> Iterator[Member]:
        return iter(self._members.values())

    def get(self, node_id: str) -> Member | None:
        return self._members.get(node_id)

    def live_count(self) -> int:
        """Other members that are alive or suspect."""
        return len(self._live)

    def dead_ids(self) -> list[str]:
        """Other members held dead (not left): the ones worth checking on after a partition."""
        return [i for i in self._gone if self._members[i].state is State.DEAD]

    def gone_ids(self) -> list[str]:
        """Other members held dead or left."""
        return list(self._gone)

    def add(self, m: Member) -> None:
        """A new member (never self)."""
        self._members[m.id] = m
        self._index(m)

    def set_state(self, m: Member, state: State, now: float) -> None:
        if m.id == self.self_id:
            m.state = state
            m.state_changed_at = now
            return
        was_live = m.state in _LIVE
        m.state = state
        m.state_changed_at = now
        if was_live and state not in _LIVE:
            self._unlive(m.id)
        elif not was_live:
            self._gone.pop(m.id, None)
        self._index(m, was_live)

    def remove(self, node_id: str) -> None:
        m = self._members.pop(node_id, None)
        if m is not None and node_id in self._live_pos:
            self._unlive(node_id)
        self._gone.pop(node_id, None)

    def _index(self, m: Member, was_live: bool = False) -> None:
        if m.state in _LIVE:
            if not was_live:
                self._live_pos[m.id] = len(self._live)
                self._live.append(m.id)
                # A newcomer joins the current round at a random place, as in memberlist.
                at = self._probe_idx + int(self._rng.random() * (len(self._probe_order) - self._probe_idx + 1))
                self._probe_order.insert(at, m.id)
        else:
            self._gone[m.id] = None
            self._recent_dead.append((m.state_changed_at, m.id))

    def _unlive(self, node_id: str) -> None:
        i = self._live_pos.pop(node_id)
        last = self._live.pop()
        if last != node_id:
            self._live[i] = last
            self._live_pos[last] = i

    def next_probe_target(self) -> Member | None:
        """The next live member in this round's order; a new shuffled round starts when one ends."""
        for _ in range(2):
            order = self._probe_order
            while self._probe_idx < len(order):
                m = self._members.get(order[self._probe_idx])
                self._probe_idx += 1
                if m is not None and m.state in _LIVE:
                    return m
            self._probe_order = list(self._live)
            self._rng.shuffle(self._probe_order)
            self._probe_idx = 0
        return None

    def random_live(self, k: int, exclude: str | None = None, alive_only: bool = False) -> list[Member]:
        """Up to k distinct random live members other than `exclude`, in O(k) for large tables."""
        live, members, rng = self._live, self._members, self._rng
        n = len(live)
        if n <= 3 * k + 2:
            pool = [members[i] for i in live if i != exclude and (not alive_only or members[i].state is State.ALIVE)]
            rng.shuffle(pool)
            return pool[:k]
        out: list[Member] = []
        seen: set[str] = set()
        for _ in range(4 * k + 8):
            node_id = live[int(rng.random() * n)]
            if node_id in seen or node_id == exclude:
                continue
            seen.add(node_id)
            m = members[node_id]
            if alive_only and m.state is not State.ALIVE:
                continue
            out.append(m)
            if len(out) == k:
                break
        return out

    def gossip_targets(self, k: int, now: float, to_the_dead_s: float) -> list[Member]:
        """k random members to gossip to: live ones, and recently dead ones so they can refute."""
        recent = self._recent_dead
        while recent and recent[0][0] < now - to_the_dead_s:
            recent.popleft()
        out = self.random_live(k)
        if recent:
            # Each pick is a recently dead member with probability |recent| / (|live| + |recent|).
            share = len(recent) / (len(recent) + len(self._live))
            for i in range(k):
                if self._rng.random() < share:
                    m = self._members.get(recent[int(self._rng.random() * len(recent))][1])
                    if m is not None and m.state not in _LIVE and m not in out:
                        if i < len(out):
                            out[i] = m
                        else:
                            out.append(m)
        return out
