"""Update records applied to the member table: Alive / Suspect / Dead and push-pull states, refutation
of records about ourselves, and Lifeguard suspicion timers up to a declaration of death.

Owns what a record does to a member (the precedence rules are members.py's) and the events that
follow; it must not choose what to send (dissemination.py queues, probe.py probes), read a clock or do I/O.
"""

from __future__ import annotations

from collections.abc import Callable

from gossip.awareness import Awareness
from gossip.codec import alive_bytes, meta_bytes
from gossip.config import GossipConfig
from gossip.dissemination import Disseminator
from gossip.members import Member, MemberTable, dead_state, dead_wins, suspect_wins
from gossip.messages import (
    Ack,
    Alive,
    Dead,
    EventKind,
    Gossip,
    Message,
    Meta,
    Packet,
    Ping,
    PushPull,
    State,
    Suspect,
    Update,
)
from gossip.suspicion import SuspicionTimer, suspicion_min_s

Admit = Callable[[str, Meta], bool]
"""admit(node_id, meta): may this member be in the group (network admission)? Built by the shell."""


class MemberRecords:
    """Applies every update about a member, ours included. `event(kind, member)` reports a change;
    news goes to the broadcast queue; `suspicion_timer(deadline, member)` asks SwimNode to call
    `suspicion_expired` at `deadline`; `stats` is the node's counter dict. With `admit`, records of
    members it refuses are dropped, and so are packets from senders that are not admitted members
    (see `sender_admitted`).
    """

    __slots__ = ("id", "config", "_me", "_table", "_diss", "_awareness", "_event", "_stats", "_suspicion_timer",
                 "_record_bytes_max", "_admit", "_queue", "suspicions")

    def __init__(
        self, me: Member, config: GossipConfig, table: MemberTable, diss: Disseminator, awareness: Awareness,
        event: Callable[[EventKind, Member], None], stats: dict[str, int],
        suspicion_timer: Callable[[float, str], None], record_bytes_max: int, admit: Admit | None = None,
    ) -> None:
        self.id = me.id
        self.config = config
        self._me = me
        self._table = table
        self._diss = diss
        self._queue = diss.queue
        self._awareness = awareness
        self._event = event
        self._stats = stats
        self._suspicion_timer = suspicion_timer
        self._record_bytes_max = record_bytes_max
        self._admit = admit
        self.suspicions: dict[str, SuspicionTimer] = {}

    def merge(self, pp: PushPull, now: float) -> None:
        """Apply a push-pull's full state (Disseminator.answer replies to it)."""
        # The answer to our join: members new to us are mostly old news to the group, so they get the
        # smallest retransmit budget (retransmit_mult, not mult * log10 n): a cold start of n nodes costs
        # ~n^2 * retransmits record sends, and this cuts the joiners' share of it by log10 n. Not zero:
        # members that joined at the same time as us are still news.
        spread = not (pp.join and pp.reply)
        get = self._table.lookup
        for s in pp.states:
            m = self._me if s.node == self.id else get(s.node)
            if m is not None and (s.incarnation < m.incarnation or (
                    s.incarnation == m.incarnation and s.state is State.ALIVE)):
                continue  # stale or already known: the common case, decided without building records
            if s.state is State.ALIVE:
                self.on_alive(Alive(s.node, s.incarnation, s.addr, s.meta), now, spread or m is not None)
            elif s.state is State.LEFT:
                self.on_dead(Dead(s.node, s.incarnation, s.node), now)
            else:
                # A remote "dead" becomes our suspicion, not an instant death (as memberlist): the member
                # gets its suspicion timeout to refute. We do not learn a stranger only as dead.
                if m is None:
                    if s.state is State.DEAD:
                        continue
                    self.on_alive(Alive(s.node, s.incarnation, s.addr, s.meta), now, spread)
                self.on_suspect(Suspect(s.node, s.incarnation, self.id), now)

    def apply(self, updates: tuple[Update, ...], src_addr: str, now: float) -> None:
        self._stats["updates_received"] += len(updates)
        get = self._table.lookup
        me = self._me
        stale: list[Member] | None = None
        for u in updates:
            if isinstance(u, Alive):
                # Most records are old news: decide those here, without a call (the hot path).
                m = get(u.node)
                if m is not None and m is not me and u.incarnation <= m.incarnation:
                    continue
                self.on_alive(u, now)
                continue
            m = get(u.node)
            if m is not None and u.incarnation < m.incarnation and m.state is State.ALIVE:
                # The sender still spreads a suspicion that was refuted: it missed the refutation,
                # which has likely run out of retransmits by now. Answer it directly (below).
                if stale is None:
                    stale = []
                stale.append(m)
            elif isinstance(u, Suspect):
                self.on_suspect(u, now)
            else:
                self.on_dead(u, now)
        if stale is not None:
            self._diss.correct(stale, src_addr)

    def on_alive(self, a: Alive, now: float, news: bool = True) -> None:
        if a.node == self.id:
            me = self._me
            if self._me.state is State.LEFT or a.incarnation < me.incarnation or (
                    a.incarnation == me.incarnation and a.addr == me.addr and a.meta == me.meta):
                return
            self._refute(a.incarnation)  # a record of us we did not write: an earlier boot's
            return
        table = self._table
        m = table.get(a.node)
        if m is not None and a.incarnation <= m.incarnation:
            return
        if self._admit is not None and not self._admit(a.node, a.meta):
            # Also how an expired token ends a membership: the member's next record (a refutation,
            # a metadata update) is refused, so its suspicion runs out (docs/gossip.md, admission).
            self._stats["dropped_not_admitted"] += 1
            return
        if m is None:
            size = alive_bytes(a.node, a.addr, meta_bytes(a.meta))
            if size > self._record_bytes_max:
                self._stats["dropped_oversize"] += 1
                return
            m = Member(a.node, a.addr, a.incarnation, State.ALIVE, a.meta, now, size)
            table.add(m)
            self._event(EventKind.JOINED, m)
        else:
            changed = a.addr != m.addr or (a.meta is not m.meta and a.meta != m.meta)
            if changed:
                size = alive_bytes(a.node, a.addr, meta_bytes(a.meta))
                if size > self._record_bytes_max:
                    self._stats["dropped_oversize"] += 1
                    return
                m.record_bytes = size
            old = m.state
            m.incarnation, m.addr, m.meta = a.incarnation, a.addr, a.meta
            if old is not State.ALIVE:
                self.suspicions.pop(m.id, None)
                table.set_state(m, State.ALIVE, now)
                self._event(EventKind.ALIVE if old is State.SUSPECT else EventKind.JOINED, m)
            elif changed:
                self._event(EventKind.UPDATED, m)
        if news:
            self._queue.push(a, m.record_bytes)  # the common case, without a call through dissemination
        else:
            self._diss.enqueue_alive(a, m.record_bytes, news)

    def on_suspect(self, s: Suspect, now: float) -> None:
        if s.node == self.id:
            if self._me.state is not State.LEFT and s.incarnation >= self._me.incarnation:
                self._refute(s.incarnation)
            return
        m = self._table.get(s.node)
        if m is None or s.incarnation < m.incarnation:
            return
        if m.state is State.SUSPECT:
            m.incarnation = s.incarnation
            timer = self.suspicions.get(m.id)
            if timer is not None and timer.confirm(s.by):
                self._suspicion_timer(timer.deadline, m.id)
                self._diss.enqueue(s)  # pass the new confirmation on, so other timers shrink too
            return
        if not suspect_wins(m, s):
            return
        m.incarnation = s.incarnation
        self._table.set_state(m, State.SUSPECT, now)
        self._start_suspicion(m, s.by, now)
        self._diss.enqueue(s)
        self._event(EventKind.SUSPECT, m)

    def on_dead(self, d: Dead, now: float) -> None:
        if d.node == self.id:
            if self._me.state is not State.LEFT and d.incarnation >= self._me.incarnation:
                self._refute(d.incarnation)
            return
        m = self._table.get(d.node)
        if m is None or not dead_wins(m, d):
            return
        self.suspicions.pop(m.id, None)
        m.incarnation = d.incarnation
        state = dead_state(d)
        self._table.set_state(m, state, now)
        self._diss.enqueue(d)
        self._event(EventKind.LEFT if state is State.LEFT else EventKind.DEAD, m)

    def _refute(self, incarnation: int) -> None:
        me = self._me
        me.incarnation = max(me.incarnation, incarnation) + 1
        self._diss.enqueue(Alive(me.id, me.incarnation, me.addr, me.meta))
        self._stats["refutations"] += 1
        # Being suspected is evidence that we, not the others, are slow (Lifeguard).
        self._awareness.apply_delta(1)

    def _start_suspicion(self, m: Member, by: str, now: float) -> None:
        cfg = self.config
        n = self._table.live_count() + 1
        min_s = suspicion_min_s(cfg.suspicion_mult, n, cfg.probe_interval_s)
        if cfg.lifeguard:
            # Expect suspicion_mult - 2 confirmations (memberlist): none when too few others could give them.
            k = cfg.suspicion_mult - 2 if n - 2 >= cfg.suspicion_mult - 2 else 0
            timer = SuspicionTimer(by, k, min_s, cfg.suspicion_max_timeout_mult * min_s, now)
        else:
            timer = SuspicionTimer(by, 0, min_s, min_s, now)
        self.suspicions[m.id] = timer
        self._suspicion_timer(timer.deadline, m.id)

    def suspicion_expired(self, node: str, now: float) -> None:
        timer = self.suspicions.get(node)
        if timer is None or timer.deadline > now:
            return  # refuted, or a stale heap entry of a timer that has a later one
        del self.suspicions[node]
        m = self._table.get(node)
        if m is not None and m.state is State.SUSPECT:
            self._stats["deaths_declared"] += 1
            self.on_dead(Dead(node, m.incarnation, self.id), now)

    def sender_admitted(self, packet: Packet) -> bool:
        """With admission on: the sender is a member whose record in our table is admitted now, or the
        packet carries the sender's own admissible Alive record (a join push-pull, a renewed token)."""
        admit = self._admit
        if admit is None:
            return True
        src = packet.src_id
        m = self._table.lookup(src)
        if m is not None and admit(src, m.meta):
            return True
        meta = _own_meta(packet.msg, src)
        return meta is not None and admit(src, meta)


def _own_meta(msg: Message, src: str) -> Meta | None:
    """The metadata of the sender's own Alive record in `msg`, if it carries one."""
    if isinstance(msg, PushPull):
        for s in msg.states:
            if s.node == src and s.state is State.ALIVE:
                return s.meta
        return None
    if isinstance(msg, (Ping, Ack, Gossip)):
        for u in msg.updates:
            if u.node == src and isinstance(u, Alive):
                return u.meta
    return None
