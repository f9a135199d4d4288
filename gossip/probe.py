"""SWIM failure detection: the probe round, ping / ack / ping-req / nack handling, probe timeouts, the
ping-reqs this node relays for others, and reconnect pings to members held dead.

Owns probe and relay state and the Lifeguard health deltas a probe yields; it must not apply update
records or declare anyone suspect itself (SwimNode does, from what `advance` returns), read a clock
or do I/O.
"""

from __future__ import annotations

from collections.abc import Callable

from gossip.awareness import Awareness
from gossip.codec import ACK_FIXED_BYTES, PING_FIXED_BYTES, str_bytes, update_bytes
from gossip.config import GossipConfig
from gossip.dissemination import Disseminator
from gossip.members import Member, MemberTable
from gossip.messages import Ack, Message, Nack, Ping, PingReq, Rng, State, Suspect, Update

_LIVE = (State.ALIVE, State.SUSPECT)


class Probe:
    """The one probe in flight: direct until `deadline`, then (indirect) through helpers until the next."""

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


class Prober:
    """Probes one member per round (SwimNode schedules the rounds) and answers others' probes.

    `send` queues a message; `relay_timer(deadline, seq)` asks SwimNode to call `relay_expired(seq)`
    at `deadline` (one timer heap for the whole node keeps firing order exact); `stats` is the node's
    counter dict.
    """

    __slots__ = ("id", "config", "probe", "_table", "_awareness", "_diss", "_rng", "_send", "_stats",
                 "_relay_timer", "_frame_budget", "_relays", "_reconnects", "_seq")

    def __init__(
        self, node_id: str, config: GossipConfig, table: MemberTable, awareness: Awareness, diss: Disseminator,
        rng: Rng, send: Callable[[str, Message], None], stats: dict[str, int],
        relay_timer: Callable[[float, int], None], frame_budget: int, seq: int,
    ) -> None:
        self.id = node_id
        self.config = config
        self.probe: Probe | None = None
        self._table = table
        self._awareness = awareness
        self._diss = diss
        self._rng = rng
        self._send = send
        self._stats = stats
        self._relay_timer = relay_timer
        self._frame_budget = frame_budget
        self._relays: dict[int, _Relay] = {}
        self._reconnects: dict[int, str] = {}  # ping seq -> addr of a dead member we checked on
        # A random start (SwimNode draws it), so a restarted node does not reuse the sequence numbers
        # of its last boot: a replayed Ack from then could otherwise complete one of its probes.
        self._seq = seq

    @property
    def relays_pending(self) -> int:
        return len(self._relays)

    # --- our probe --------------------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Ping the next member of the round; the buddy system tells a suspect it is suspected."""
        m = self._table.next_probe_target()
        if m is None:
            return
        cfg = self.config
        seq = self._next_seq()
        self.probe = Probe(seq, m.id, now, now + self._awareness.scale(cfg.probe_timeout_s))
        budget = self._frame_budget - PING_FIXED_BYTES - str_bytes(m.id)
        diss = self._diss
        if cfg.lifeguard and m.state is State.SUSPECT:
            # Buddy system: tell the suspect directly, so it can refute without waiting for gossip.
            buddy = Suspect(m.id, m.incarnation, self.id)
            ups, _ = diss.queue.take(budget - update_bytes(buddy), diss.n(), skip_node=m.id)
            self._stats["updates_sent"] += len(ups) + 1
            updates: tuple[Update, ...] = (buddy, *ups)
        else:
            updates = diss.piggyback(budget)
        self._send(m.addr, Ping(seq, m.id, updates))
        self._stats["probes"] += 1

    def advance(self, p: Probe, now: float) -> Member | None:
        """`p` timed out: go indirect, or (after the indirect phase) give up. Returns the member to
        suspect when the probe failed, else None."""
        m = self._table.get(p.target)
        if m is None or m.state not in _LIVE:
            self.probe = None
            return None
        cfg = self.config
        scale = self._awareness.scale
        if not p.indirect:
            p.indirect = True
            helpers = self._table.random_live(cfg.indirect_checks, exclude=m.id, alive_only=True)
            for h in helpers:
                self._send(h.addr, PingReq(p.seq, m.id, m.addr, nack=cfg.lifeguard))
            self._stats["ping_reqs_sent"] += len(helpers)
            p.expected_nacks = len(helpers) if cfg.lifeguard else 0
            # Lifeguard (local health): measured from when this phase really starts, so after a pause
            # of our own the helpers still get their time and we do not accuse a peer for our lateness.
            # Plain SWIM ends the probe at the end of its period, however late we got here.
            p.deadline = p.started_at + scale(cfg.probe_interval_s)
            if cfg.lifeguard:
                p.deadline = max(p.deadline, now + scale(cfg.probe_timeout_s))
            return None
        self.probe = None
        self._stats["probe_failures"] += 1
        if cfg.lifeguard:
            # Nacks that did not come back mean our own links or CPU are the problem (Lifeguard 4.1).
            self._awareness.apply_delta(p.expected_nacks - p.nacks if p.expected_nacks else 1)
        if m.state is State.ALIVE:
            self._stats["suspicions_raised"] += 1
        return m

    # --- messages (SwimNode applied their update records first) -------------------------------------------

    def on_ping(self, src_addr: str, ping: Ping) -> None:
        if ping.target != self.id:
            self._stats["dropped_wrong_target"] += 1
            return
        self._send(src_addr, Ack(ping.seq, self._diss.piggyback(self._frame_budget - ACK_FIXED_BYTES)))

    def on_ack(self, seq: int) -> None:
        p = self.probe
        if p is not None and p.seq == seq:
            self.probe = None
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
            self._diss.push_pull(addr, join=True)

    def on_nack(self, seq: int) -> None:
        p = self.probe
        if p is not None and p.seq == seq:
            p.nacks += 1
            self._stats["nacks"] += 1

    def on_ping_req(self, src_addr: str, req: PingReq, now: float) -> None:
        if req.target == self.id:
            return
        if len(self._relays) >= self.config.indirect_pending_max:
            self._stats["dropped_ping_req"] += 1
            return
        seq = self._next_seq()
        self._relays[seq] = _Relay(src_addr, req.seq, req.nack)
        # Nack at 80% of a probe timeout: the asker waits at least a full one after asking, so the nack
        # still arrives in time over a link with a round trip under 20% of the timeout.
        self._relay_timer(now + self._awareness.scale(0.8 * self.config.probe_timeout_s), seq)
        budget = self._frame_budget - PING_FIXED_BYTES - str_bytes(req.target)
        self._send(req.target_addr, Ping(seq, req.target, self._diss.piggyback(budget)))
        self._stats["ping_reqs_helped"] += 1

    def relay_expired(self, seq: int) -> None:
        relay = self._relays.pop(seq, None)
        if relay is not None and relay.nack:
            self._send(relay.origin_addr, Nack(relay.origin_seq))

    # --- healing ---------------------------------------------------------------------------------------

    def reconnect_round(self, ping: bool) -> None:
        """Forget the last round's checks that got no Ack; if `ping`, check on one random member held
        dead (its Ack, see on_ack, starts a join-style sync, so both sides refute and merge)."""
        self._reconnects.clear()
        dead = self._table.dead_ids() if ping else None
        if dead:
            m = self._table.get(dead[int(self._rng.random() * len(dead))])
            if m is not None:
                seq = self._next_seq()
                self._reconnects[seq] = m.addr
                self._send(m.addr, Ping(seq, m.id, ()))
                self._stats["reconnect_pings"] += 1

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq
