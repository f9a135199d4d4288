"""A SWIM membership node with Lifeguard, as a sans-IO state machine: handle(packet, now) / tick(now).

Owns probing, ping-req, suspicion, refutation, dissemination, push-pull, join/leave and healing; it must
not do I/O, read a clock or use module-level randomness: `now` and `rng` come in, effects go out.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence

from crypto.errors import InvalidArgument
from gossip.awareness import Awareness
from gossip.broadcast import BroadcastQueue, retransmit_limit
from gossip.codec import (
    ACK_FIXED_BYTES,
    GOSSIP_FIXED_BYTES,
    PING_FIXED_BYTES,
    PUSHPULL_FIXED_BYTES,
    alive_bytes,
    check_fields,
    frame_overhead_bytes,
    meta_bytes,
    str_bytes,
    update_bytes,
)
from gossip.config import GossipConfig
from gossip.members import Member, MemberTable, dead_state, dead_wins, suspect_wins
from gossip.messages import (
    Ack,
    Alive,
    Dead,
    Effect,
    EventKind,
    Gossip,
    MemberEvent,
    MemberView,
    Message,
    Meta,
    Nack,
    NodeState,
    Packet,
    Ping,
    PingReq,
    PushPull,
    Rng,
    Send,
    State,
    Suspect,
    Update,
)
from gossip.suspicion import SuspicionTimer, suspicion_min_s

_SUSPICION, _RELAY = 0, 1
_LIVE = (State.ALIVE, State.SUSPECT)
STAT_NAMES = (
    "msgs_received", "msgs_sent", "dropped_wrong_network", "dropped_from_self", "dropped_wrong_target",
    "dropped_ping_req", "dropped_oversize", "probes", "acks", "nacks", "probe_failures", "ping_reqs_sent",
    "ping_reqs_helped", "suspicions_raised", "refutations", "deaths_declared", "updates_sent",
    "updates_received", "gossip_sent", "push_pulls_sent", "push_pulls_received", "push_pull_truncated",
    "reconnect_pings", "reconnects", "seed_retries", "corrections_sent",
)


class _Probe:
    __slots__ = ("seq", "target", "started_at", "deadline", "indirect", "expected_nacks", "nacks")

    def __init__(self, seq: int, target: str, started_at: float, deadline: float) -> None:
        self.seq = seq
        self.target = target
        self.started_at = started_at
        self.deadline = deadline
        self.indirect = False
        self.expected_nacks = 0
        self.nacks = 0


class _Relay:
    """A ping-req we are helping with: whom to forward the target's Ack (or our Nack) to."""

    __slots__ = ("origin_addr", "origin_seq", "nack")

    def __init__(self, origin_addr: str, origin_seq: int, nack: bool) -> None:
        self.origin_addr = origin_addr
        self.origin_seq = origin_seq
        self.nack = nack


class SwimNode:
    """One member's view of the group, and the protocol that keeps it true.

    Incarnation contract: `incarnation` must exceed every incarnation this node id used before, or a
    restarted node starts behind its own old `dead` record. The shell either persists the last value
    (SwimNode.incarnation after each call) and passes it + 1, or passes a boot epoch such as
    whole seconds since 2020 when no state survives. The core still refutes any record about itself
    that is newer than its own (it jumps past it), so a too-low start costs one round trip, not a
    stuck member.
    """

    def __init__(
        self, node_id: str, addr: str, meta: Meta, config: GossipConfig, rng: Rng, now: float,
        incarnation: int = 0, network: str = "default",
    ) -> None:
        self.id = node_id
        self.addr = addr
        self.network = network
        self.config = config
        self._rng = rng
        self._check_meta(meta)
        self._frame_budget = config.packet_bytes_max - frame_overhead_bytes(network, addr)
        # The largest record that can travel: one in a Ping, beside the target's id (at most 128 chars).
        self._record_bytes_max = self._frame_budget - PING_FIXED_BYTES - 131
        if self._record_bytes_max < config.meta_bytes_max:
            raise InvalidArgument("GossipConfig.packet_bytes_max is too small for one Alive record")
        me_bytes = alive_bytes(node_id, addr, meta_bytes(meta))
        self._me = Member(node_id, addr, incarnation, State.ALIVE, meta, now, me_bytes)
        self._table = MemberTable(self._me, rng)
        self._queue = BroadcastQueue(config.retransmit_mult, config.broadcast_queue_max)
        self._awareness = Awareness(config.awareness_max_multiplier if config.lifeguard else 1)
        self._suspicions: dict[str, SuspicionTimer] = {}
        self._relays: dict[int, _Relay] = {}
        self._reconnects: dict[int, str] = {}  # ping seq -> addr of a dead member we checked on
        self._timers: list[tuple[float, int, int, str | int]] = []  # heap: (deadline, tiebreak, kind, key)
        self._timer_count = 0
        self._probe: _Probe | None = None
        # A random start, so a restarted node does not reuse the sequence numbers of its last boot
        # (a replayed Ack from then could otherwise complete one of its probes).
        self._seq = int(rng.random() * 2**40)
        self._seeds: tuple[str, ...] = ()
        self._last_seed_try = -math.inf
        self._leaving = False
        self._out: list[Effect] = []
        self._stats = dict.fromkeys(STAT_NAMES, 0)
        # Random phases, so nodes started together do not probe and gossip in lockstep.
        self._next_probe = now + rng.random() * config.probe_interval_s
        self._next_gossip = now + rng.random() * config.gossip_interval_s
        self._next_push_pull = now + rng.random() * self._push_pull_interval()
        self._next_reconnect = now + rng.random() * config.reconnect_interval_s
        self._enqueue(self._alive_record())

    # --- public API ---------------------------------------------------------------------------------

    @property
    def incarnation(self) -> int:
        return self._me.incarnation

    def join(self, seeds: Sequence[str], now: float) -> list[Effect]:
        """Push-pull with every seed address; unanswered seeds are retried (see `_reconnect`)."""
        self._seeds = tuple(dict.fromkeys(s for s in seeds if s != self.addr))
        states = self._states()
        for addr in self._seeds:
            self._send(addr, PushPull(states, join=True))
            self._stats["push_pulls_sent"] += 1
        self._last_seed_try = now
        return self._flush()

    def leave(self, now: float) -> list[Effect]:
        """Announce a graceful leave (Dead about ourselves) to a few members now; stop probing.

        Keep calling tick for a few gossip intervals if you can, so the leave spreads further. A left
        node cannot rejoin: make a new SwimNode with a higher incarnation.
        """
        if not self._leaving:
            self._leaving = True
            self._probe = None
            self._table.set_state(self._me, State.LEFT, now)
            self._enqueue(Dead(self.id, self._me.incarnation, self.id))
            self._gossip(now)
        return self._flush()

    def update_meta(self, meta: Meta, now: float) -> list[Effect]:
        """New metadata under a new incarnation, so it overrides the old record everywhere."""
        self._check_meta(meta)
        if not self._leaving:
            self._me.meta = meta
            self._me.record_bytes = alive_bytes(self.id, self.addr, meta_bytes(meta))
            self._me.incarnation += 1
            self._enqueue(self._alive_record())
        return self._flush()

    def handle(self, packet: Packet, now: float) -> list[Effect]:
        """Process one arrived packet; returns what to send and what changed."""
        st = self._stats
        st["msgs_received"] += 1
        if packet.network != self.network:
            st["dropped_wrong_network"] += 1
            return []
        if packet.src_id == self.id:
            st["dropped_from_self"] += 1
            return []
        msg = packet.msg
        if isinstance(msg, Ping):
            self._on_ping(packet.src_addr, msg, now)
        elif isinstance(msg, Ack):
            self._on_ack(packet.src_addr, msg, now)
        elif isinstance(msg, Gossip):
            self._apply(msg.updates, packet.src_addr, now)
        elif isinstance(msg, PingReq):
            self._on_ping_req(packet.src_addr, msg, now)
        elif isinstance(msg, Nack):
            p = self._probe
            if p is not None and p.seq == msg.seq:
                p.nacks += 1
                st["nacks"] += 1
        elif isinstance(msg, PushPull):
            self._on_push_pull(packet.src_addr, msg, now)
        return self._flush()

    def tick(self, now: float) -> list[Effect]:
        """Fire every deadline that has passed; calling it early or often is harmless."""
        cfg = self.config
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, kind, key = heapq.heappop(timers)
            if kind == _SUSPICION:
                self._suspicion_expired(str(key), now)
            else:
                self._relay_expired(int(key))
        p = self._probe
        if p is not None and now >= p.deadline:
            self._advance_probe(p, now)
        if now >= self._next_probe and not self._leaving:
            if self._probe is not None:  # the last probe's indirect phase runs late (after a pause)
                self._next_probe = self._probe.deadline
            else:
                self._next_probe = now + self._awareness.scale(cfg.probe_interval_s)
                self._start_probe(now)
        if now >= self._next_gossip:
            self._next_gossip = now + cfg.gossip_interval_s
            if self._queue:
                self._gossip(now)
        if now >= self._next_push_pull:
            self._next_push_pull = now + self._push_pull_interval()
            self._push_pull_random()
        if now >= self._next_reconnect:
            self._next_reconnect = now + cfg.reconnect_interval_s
            self._reconnect(now)
        return self._flush()

    def next_deadline(self) -> float:
        """The absolute time by which tick must next be called."""
        d = min(self._next_push_pull, self._next_reconnect)
        if not self._leaving:
            d = min(d, self._next_probe)
        if self._probe is not None:
            d = min(d, self._probe.deadline)
        if self._queue:
            d = min(d, self._next_gossip)
        if self._timers:
            d = min(d, self._timers[0][0])
        return d

    def members(self) -> list[MemberView]:
        """Every known member, self included, dead and left ones until forgotten."""
        return [m.view() for m in self._table]

    def alive_ids(self) -> list[str]:
        """Ids of alive and suspect members, self included unless left (memberlist's Members())."""
        return [m.id for m in self._table if m.state in _LIVE]

    def statistics(self) -> dict[str, int]:
        out = dict(self._stats)
        out.update(
            incarnation=self._me.incarnation, awareness=self._awareness.score, members=len(self._table),
            members_live=self._table.live_count(), suspects=len(self._suspicions), queued=len(self._queue),
            queue_dropped=self._queue.dropped, relays_pending=len(self._relays),
        )
        return out

    # --- message handlers -----------------------------------------------------------------------------

    def _on_ping(self, src_addr: str, ping: Ping, now: float) -> None:
        if ping.updates:
            self._apply(ping.updates, src_addr, now)  # first, so a refutation rides on this very Ack
        if ping.target != self.id:
            self._stats["dropped_wrong_target"] += 1
            return
        self._send(src_addr, Ack(ping.seq, self._piggyback(self._frame_budget - ACK_FIXED_BYTES)))

    def _on_ack(self, src_addr: str, ack: Ack, now: float) -> None:
        if ack.updates:
            self._apply(ack.updates, src_addr, now)
        seq = ack.seq
        p = self._probe
        if p is not None and p.seq == seq:
            self._probe = None
            self._stats["acks"] += 1
            self._awareness.apply_delta(-1)
            return
        relay = self._relays.pop(seq, None)
        if relay is not None:
            self._send(relay.origin_addr, Ack(relay.origin_seq))
            return
        addr = self._reconnects.pop(seq, None)
        if addr is not None:  # a member we hold dead answered: sync, so both sides refute and merge
            self._stats["reconnects"] += 1
            self._stats["push_pulls_sent"] += 1
            self._send(addr, PushPull(self._states(), join=True))

    def _on_ping_req(self, src_addr: str, req: PingReq, now: float) -> None:
        if req.target == self.id:
            return
        if len(self._relays) >= self.config.indirect_pending_max:
            self._stats["dropped_ping_req"] += 1
            return
        seq = self._next_seq()
        self._relays[seq] = _Relay(src_addr, req.seq, req.nack)
        # Nack at 80% of a probe timeout: the asker waits at least a full one after asking, so the nack
        # still arrives in time over a link with a round trip under 20% of the timeout.
        self._push_timer(now + self._awareness.scale(0.8 * self.config.probe_timeout_s), _RELAY, seq)
        budget = self._frame_budget - PING_FIXED_BYTES - str_bytes(req.target)
        self._send(req.target_addr, Ping(seq, req.target, self._piggyback(budget)))
        self._stats["ping_reqs_helped"] += 1

    def _on_push_pull(self, src_addr: str, pp: PushPull, now: float) -> None:
        self._stats["push_pulls_received"] += 1
        if not pp.reply:
            self._send(src_addr, PushPull(self._states(), join=pp.join, reply=True))
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
                self._on_alive(Alive(s.node, s.incarnation, s.addr, s.meta), now, spread or m is not None)
            elif s.state is State.LEFT:
                self._on_dead(Dead(s.node, s.incarnation, s.node), now)
            else:
                # A remote "dead" becomes our suspicion, not an instant death (as memberlist): the member
                # gets its suspicion timeout to refute. We do not learn a stranger only as dead.
                if m is None:
                    if s.state is State.DEAD:
                        continue
                    self._on_alive(Alive(s.node, s.incarnation, s.addr, s.meta), now, spread)
                self._on_suspect(Suspect(s.node, s.incarnation, self.id), now)

    # --- update records: the precedence rules live in members.py --------------------------------------

    def _apply(self, updates: tuple[Update, ...], src_addr: str, now: float) -> None:
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
                self._on_alive(u, now)
                continue
            m = get(u.node)
            if m is not None and u.incarnation < m.incarnation and m.state is State.ALIVE:
                # The sender still spreads a suspicion that was refuted: it missed the refutation,
                # which has likely run out of retransmits by now. Answer it directly (below).
                if stale is None:
                    stale = []
                stale.append(m)
            elif isinstance(u, Suspect):
                self._on_suspect(u, now)
            else:
                self._on_dead(u, now)
        if stale is not None:
            self._correct(stale, src_addr)

    def _correct(self, members: list[Member], addr: str) -> None:
        room = self._frame_budget - GOSSIP_FIXED_BYTES
        records: list[Update] = []
        for m in dict.fromkeys(members):
            room -= m.record_bytes
            if room < 0:
                break
            records.append(Alive(m.id, m.incarnation, m.addr, m.meta))
        self._stats["corrections_sent"] += 1
        self._send(addr, Gossip(tuple(records)))

    def _on_alive(self, a: Alive, now: float, news: bool = True) -> None:
        if a.node == self.id:
            me = self._me
            if self._leaving or a.incarnation < me.incarnation or (
                    a.incarnation == me.incarnation and a.addr == me.addr and a.meta == me.meta):
                return
            self._refute(a.incarnation)  # a record of us we did not write: an earlier boot's
            return
        table = self._table
        m = table.get(a.node)
        if m is not None and a.incarnation <= m.incarnation:
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
                self._suspicions.pop(m.id, None)
                table.set_state(m, State.ALIVE, now)
                self._event(EventKind.ALIVE if old is State.SUSPECT else EventKind.JOINED, m)
            elif changed:
                self._event(EventKind.UPDATED, m)
        if news:
            self._queue.push(a, m.record_bytes)
        else:
            limit = retransmit_limit(self.config.retransmit_mult, self._n())
            self._queue.push(a, m.record_bytes, sent=max(0, limit - self.config.retransmit_mult))

    def _on_suspect(self, s: Suspect, now: float) -> None:
        if s.node == self.id:
            if not self._leaving and s.incarnation >= self._me.incarnation:
                self._refute(s.incarnation)
            return
        m = self._table.get(s.node)
        if m is None or s.incarnation < m.incarnation:
            return
        if m.state is State.SUSPECT:
            m.incarnation = s.incarnation
            timer = self._suspicions.get(m.id)
            if timer is not None and timer.confirm(s.by):
                self._push_timer(timer.deadline, _SUSPICION, m.id)
                self._enqueue(s)  # pass the new confirmation on, so other timers shrink too
            return
        if not suspect_wins(m, s):
            return
        m.incarnation = s.incarnation
        self._table.set_state(m, State.SUSPECT, now)
        self._start_suspicion(m, s.by, now)
        self._enqueue(s)
        self._event(EventKind.SUSPECT, m)

    def _on_dead(self, d: Dead, now: float) -> None:
        if d.node == self.id:
            if not self._leaving and d.incarnation >= self._me.incarnation:
                self._refute(d.incarnation)
            return
        m = self._table.get(d.node)
        if m is None or not dead_wins(m, d):
            return
        self._suspicions.pop(m.id, None)
        m.incarnation = d.incarnation
        state = dead_state(d)
        self._table.set_state(m, state, now)
        self._enqueue(d)
        self._event(EventKind.LEFT if state is State.LEFT else EventKind.DEAD, m)

    def _refute(self, incarnation: int) -> None:
        me = self._me
        me.incarnation = max(me.incarnation, incarnation) + 1
        self._enqueue(self._alive_record())
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
        self._suspicions[m.id] = timer
        self._push_timer(timer.deadline, _SUSPICION, m.id)

    # --- timers ----------------------------------------------------------------------------------------

    def _suspicion_expired(self, node: str, now: float) -> None:
        timer = self._suspicions.get(node)
        if timer is None or timer.deadline > now:
            return  # refuted, or a stale heap entry of a timer that has a later one
        del self._suspicions[node]
        m = self._table.get(node)
        if m is not None and m.state is State.SUSPECT:
            self._stats["deaths_declared"] += 1
            self._on_dead(Dead(node, m.incarnation, self.id), now)

    def _relay_expired(self, seq: int) -> None:
        relay = self._relays.pop(seq, None)
        if relay is not None and relay.nack:
            self._send(relay.origin_addr, Nack(relay.origin_seq))

    def _start_probe(self, now: float) -> None:
        m = self._table.next_probe_target()
        if m is None:
            return
        cfg = self.config
        seq = self._next_seq()
        self._probe = _Probe(seq, m.id, now, now + self._awareness.scale(cfg.probe_timeout_s))
        budget = self._frame_budget - PING_FIXED_BYTES - str_bytes(m.id)
        if cfg.lifeguard and m.state is State.SUSPECT:
            # Buddy system: tell the suspect directly, so it can refute without waiting for gossip.
            buddy = Suspect(m.id, m.incarnation, self.id)
            ups, _ = self._queue.take(budget - update_bytes(buddy), self._n(), skip_node=m.id)
            self._stats["updates_sent"] += len(ups) + 1
            updates: tuple[Update, ...] = (buddy, *ups)
        else:
            updates = self._piggyback(budget)
        self._send(m.addr, Ping(seq, m.id, updates))
        self._stats["probes"] += 1

    def _advance_probe(self, p: _Probe, now: float) -> None:
        m = self._table.get(p.target)
        if m is None or m.state not in _LIVE:
            self._probe = None
            return
        cfg = self.config
        scale = self._awareness.scale
        if not p.indirect:
            p.indirect = True
            helpers = self._table.random_live(cfg.indirect_checks, exclude=m.id, alive_only=True)
            for h in helpers:
                self._send(h.addr, PingReq(p.seq, m.id, m.addr, nack=cfg.lifeguard))
            self._stats["ping_reqs_sent"] += len(helpers)
            p.expected_nacks = len(helpers) if cfg.lifeguard else 0
            # Measured from when this phase really starts: after a pause, helpers still get their time.
            p.deadline = max(p.started_at + scale(cfg.probe_interval_s), now + scale(cfg.probe_timeout_s))
            return
        self._probe = None
        self._stats["probe_failures"] += 1
        if cfg.lifeguard:
            # Nacks that did not come back mean our own links or CPU are the problem (Lifeguard 4.1).
            self._awareness.apply_delta(p.expected_nacks - p.nacks if p.expected_nacks else 1)
        if m.state is State.ALIVE:
            self._stats["suspicions_raised"] += 1
        self._on_suspect(Suspect(m.id, m.incarnation, self.id), now)

    def _gossip(self, now: float) -> None:
        cfg = self.config
        budget = self._frame_budget - GOSSIP_FIXED_BYTES
        for m in self._table.gossip_targets(cfg.gossip_nodes, now, cfg.gossip_to_the_dead_s):
            updates = self._piggyback(budget)
            if not updates:
                break
            self._send(m.addr, Gossip(updates))
            self._stats["gossip_sent"] += 1

    def _push_pull_random(self) -> None:
        for m in self._table.random_live(1, alive_only=True):
            self._stats["push_pulls_sent"] += 1
            self._send(m.addr, PushPull(self._states()))

    def _reconnect(self, now: float) -> None:
        """Heal partitions: check on one dead member, and retry seeds while none of them is live."""
        table = self._table
        horizon = now - self.config.dead_forget_s
        for node in table.gone_ids():
            m = table.get(node)
            if m is not None and m.state_changed_at < horizon:
                table.remove(node)
        self._reconnects.clear()  # the last round's checks that got no ack
        if self._leaving:
            return
        dead = table.dead_ids()
        if dead:
            m = table.get(dead[int(self._rng.random() * len(dead))])
            if m is not None:
                seq = self._next_seq()
                self._reconnects[seq] = m.addr
                self._send(m.addr, Ping(seq, m.id, ()))
                self._stats["reconnect_pings"] += 1
        if self._seeds:
            alone = table.live_count() == 0
            if alone or now - self._last_seed_try >= self._push_pull_interval():
                live_addrs = {m.addr for m in table if m.state in _LIVE}
                if alone or not live_addrs.intersection(self._seeds):
                    self._last_seed_try = now
                    addr = self._seeds[int(self._rng.random() * len(self._seeds))]
                    self._stats["seed_retries"] += 1
                    self._stats["push_pulls_sent"] += 1
                    self._send(addr, PushPull(self._states(), join=True))

    # --- helpers -----------------------------------------------------------------------------------------

    def _n(self) -> int:
        return self._table.live_count() + 1

    def _push_pull_interval(self) -> float:
        # Grow the interval with log2(n) above the threshold (memberlist pushPullScale): sync load per
        # node stays flat as the state to exchange grows.
        cfg = self.config
        n = self._n()
        if n <= cfg.push_pull_scale_threshold:
            return cfg.push_pull_interval_s
        mult = math.ceil(math.log2(n) - math.log2(cfg.push_pull_scale_threshold)) + 1
        return cfg.push_pull_interval_s * mult

    def _states(self) -> tuple[NodeState, ...]:
        """Our whole table (self first) as far as it fits in one push-pull frame."""
        budget = self.config.push_pull_bytes_max - frame_overhead_bytes(self.network, self.addr) - PUSHPULL_FIXED_BYTES
        out: list[NodeState] = []
        used = 0
        for m in self._table:
            used += m.record_bytes
            if used > budget:
                self._stats["push_pull_truncated"] += 1
                break
            out.append(NodeState(m.id, m.addr, m.incarnation, m.state, m.meta))
        return tuple(out)

    def _alive_record(self) -> Alive:
        me = self._me
        return Alive(me.id, me.incarnation, me.addr, me.meta)

    def _enqueue(self, u: Update) -> None:
        size = update_bytes(u)
        if size > self._record_bytes_max:
            self._stats["dropped_oversize"] += 1
            return
        self._queue.push(u, size)

    def _piggyback(self, budget: int) -> tuple[Update, ...]:
        if not self._queue:
            return ()
        updates, _ = self._queue.take(budget, self._n())
        self._stats["updates_sent"] += len(updates)
        return tuple(updates)

    def _check_meta(self, meta: Meta) -> None:
        check_fields(self.id, self.addr, self.network, meta)
        if meta_bytes(meta) > self.config.meta_bytes_max:
            raise InvalidArgument(f"member metadata exceeds {self.config.meta_bytes_max} bytes")

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _push_timer(self, deadline: float, kind: int, key: str | int) -> None:
        self._timer_count += 1
        heapq.heappush(self._timers, (deadline, self._timer_count, kind, key))

    def _send(self, addr: str, msg: Message) -> None:
        self._out.append(Send(addr, msg))
        self._stats["msgs_sent"] += 1

    def _event(self, kind: EventKind, m: Member) -> None:
        self._out.append(MemberEvent(kind, m.view()))

    def _flush(self) -> list[Effect]:
        out, self._out = self._out, []
        return out
