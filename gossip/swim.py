"""A SWIM membership node with Lifeguard, as a sans-IO state machine: handle(packet, now) / tick(now).

Owns the public API, message dispatch, the schedule of rounds and timers, and the effects out; probe.py
detects failures, dissemination.py spreads news, records.py applies it. It must not do I/O, read a clock
or use module-level randomness: `now` and `rng` come in, effects go out.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from crypto.errors import InvalidArgument
from gossip.awareness import Awareness
from gossip.codec import (
    PING_FIXED_BYTES,
    admission_bytes,
    alive_bytes,
    check_fields,
    frame_overhead_bytes,
    meta_bytes,
)
from gossip.config import GossipConfig
from gossip.dissemination import Disseminator
from gossip.members import Member, MemberTable
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
    Packet,
    Ping,
    PingReq,
    PushPull,
    Rng,
    Send,
    State,
    Suspect,
)
from gossip.probe import Prober
from gossip.records import Admit, MemberRecords

_SUSPICION, _RELAY = 0, 1
_LIVE = (State.ALIVE, State.SUSPECT)
STAT_NAMES = (
    "msgs_received", "msgs_sent", "dropped_wrong_network", "dropped_from_self", "dropped_wrong_target",
    "dropped_ping_req", "dropped_oversize", "probes", "acks", "nacks", "probe_failures", "ping_reqs_sent",
    "ping_reqs_helped", "suspicions_raised", "refutations", "deaths_declared", "updates_sent",
    "updates_received", "gossip_sent", "push_pulls_sent", "push_pulls_received", "push_pull_truncated",
    "reconnect_pings", "reconnects", "seed_retries", "corrections_sent", "dropped_not_admitted",
    "dropped_sender_not_admitted",
)


class SwimNode:
    """One member's view of the group, and the protocol that keeps it true.

    Incarnation contract: `incarnation` must exceed every incarnation this node id used before, or a
    restarted node starts behind its own old `dead` record. The shell either persists the last value
    (SwimNode.incarnation after each call) and passes it + 1, or passes a boot epoch such as
    whole seconds since 2020 when no state survives. The core still refutes any record about itself
    that is newer than its own (it jumps past it), so a too-low start costs one round trip, not a
    stuck member.

    Admission: with `admit`, Alive records and push-pull states of members it refuses are dropped
    (`dropped_not_admitted`), and so are packets from senders that are not admitted members, unless
    the packet carries the sender's own admissible Alive record (`dropped_sender_not_admitted`).
    `admit` is asked again for every new record and packet, so a token that expires stops counting.
    """

    def __init__(
        self, node_id: str, addr: str, meta: Meta, config: GossipConfig, rng: Rng, now: float,
        incarnation: int = 0, network: str = "default", admit: Admit | None = None,
    ) -> None:
        self.id = node_id
        self.addr = addr
        self.network = network
        self.config = config
        self._admit = admit
        self._frame_budget = config.packet_bytes_max - frame_overhead_bytes(network, addr)
        # The largest record that can travel: one in a Ping, beside the target's id (at most 128 chars).
        self._record_bytes_max = self._frame_budget - PING_FIXED_BYTES - 131
        if self._record_bytes_max < config.meta_bytes_max:
            raise InvalidArgument("GossipConfig.packet_bytes_max is too small for one Alive record")
        self._check_meta(meta)
        me_bytes = alive_bytes(node_id, addr, meta_bytes(meta))
        self._me = Member(node_id, addr, incarnation, State.ALIVE, meta, now, me_bytes)
        self._table = MemberTable(self._me, rng)
        self._awareness = Awareness(config.awareness_max_multiplier if config.lifeguard else 1)
        self._timers: list[tuple[float, int, int, str | int]] = []  # heap: (deadline, tiebreak, kind, key)
        self._timer_count = 0
        self._leaving = False
        self._out: list[Effect] = []
        self._stats = dict.fromkeys(STAT_NAMES, 0)
        self._diss = Disseminator(config, self._table, rng, self._send, self._stats, network, addr,
                                  self._frame_budget, self._record_bytes_max)
        self._queue = self._diss.queue  # read on every next_deadline: one attribute, not two
        self._records = MemberRecords(self._me, config, self._table, self._diss, self._awareness, self._event,
                                      self._stats, self._suspicion_timer, self._record_bytes_max, admit)
        self._prober = Prober(node_id, config, self._table, self._awareness, self._diss, rng, self._send,
                              self._stats, self._relay_timer, self._frame_budget, seq=int(rng.random() * 2**40))
        # Random phases, so nodes started together do not probe and gossip in lockstep.
        self._next_probe = now + rng.random() * config.probe_interval_s
        self._next_gossip = now + rng.random() * config.gossip_interval_s
        self._next_push_pull = now + rng.random() * self._diss.push_pull_interval()
        self._next_reconnect = now + rng.random() * config.reconnect_interval_s
        self._diss.enqueue(self._alive_record())

    # --- public API ---------------------------------------------------------------------------------

    @property
    def incarnation(self) -> int:
        return self._me.incarnation

    @property
    def probing(self) -> str | None:
        """The member our probe in flight is waiting on (None between probes)."""
        p = self._prober.probe
        return None if p is None else p.target

    @property
    def meta(self) -> Meta:
        """This member's own current metadata."""
        return self._me.meta

    def join(self, seeds: Sequence[str], now: float) -> list[Effect]:
        """Push-pull with every seed address; unanswered seeds are retried (see `_reconnect`)."""
        self._diss.join(seeds, now)
        return self._flush()

    def leave(self, now: float) -> list[Effect]:
        """Announce a graceful leave (Dead about ourselves) to a few members now; stop probing.

        Keep calling tick for a few gossip intervals if you can, so the leave spreads further. A left
        node cannot rejoin: make a new SwimNode with a higher incarnation.
        """
        if not self._leaving:
            self._leaving = True
            self._prober.probe = None
            self._table.set_state(self._me, State.LEFT, now)
            self._diss.enqueue(Dead(self.id, self._me.incarnation, self.id))
            self._diss.gossip(now)
        return self._flush()

    def update_meta(self, meta: Meta, now: float) -> list[Effect]:
        """New metadata under a new incarnation, so it overrides the old record everywhere."""
        self._check_meta(meta)
        if not self._leaving:
            self._me.meta = meta
            self._me.record_bytes = alive_bytes(self.id, self.addr, meta_bytes(meta))
            self._me.incarnation += 1
            self._diss.enqueue(self._alive_record())
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
        if self._admit is not None and not self._records.sender_admitted(packet):
            st["dropped_sender_not_admitted"] += 1
            return []
        msg = packet.msg
        if isinstance(msg, Ping):
            if msg.updates:
                self._records.apply(msg.updates, packet.src_addr, now)  # first, so a refutation rides on our Ack
            self._prober.on_ping(packet.src_addr, msg)
        elif isinstance(msg, Ack):
            if msg.updates:
                self._records.apply(msg.updates, packet.src_addr, now)
            self._prober.on_ack(msg.seq)
        elif isinstance(msg, Gossip):
            self._records.apply(msg.updates, packet.src_addr, now)
        elif isinstance(msg, PingReq):
            self._prober.on_ping_req(packet.src_addr, msg, now)
        elif isinstance(msg, Nack):
            self._prober.on_nack(msg.seq)
        elif isinstance(msg, PushPull):
            self._diss.answer(packet.src_addr, msg)
            self._records.merge(msg, now)
        return self._flush()

    def tick(self, now: float) -> list[Effect]:
        """Fire every deadline that has passed; calling it early or often is harmless."""
        cfg = self.config
        prober = self._prober
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, kind, key = heapq.heappop(timers)
            if kind == _SUSPICION:
                self._records.suspicion_expired(str(key), now)
            else:
                prober.relay_expired(int(key))
        p = prober.probe
        if p is not None and now >= p.deadline:
            failed = prober.advance(p, now)
            if failed is not None:
                self._records.on_suspect(Suspect(failed.id, failed.incarnation, self.id), now)
        if now >= self._next_probe and not self._leaving:
            if prober.probe is not None:  # the last probe's indirect phase runs late (after a pause)
                self._next_probe = prober.probe.deadline
            else:
                self._next_probe = now + self._awareness.scale(cfg.probe_interval_s)
                prober.start(now)
        if now >= self._next_gossip:
            self._next_gossip = now + cfg.gossip_interval_s
            if self._queue:
                self._diss.gossip(now)
        if now >= self._next_push_pull:
            self._next_push_pull = now + self._diss.push_pull_interval()
            self._diss.push_pull_random()
        if now >= self._next_reconnect:
            self._next_reconnect = now + cfg.reconnect_interval_s
            self._reconnect(now)
        return self._flush()

    def next_deadline(self) -> float:
        """The absolute time by which tick must next be called."""
        d = min(self._next_push_pull, self._next_reconnect)
        if not self._leaving:
            d = min(d, self._next_probe)
        p = self._prober.probe
        if p is not None:
            d = min(d, p.deadline)
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
            members_live=self._table.live_count(), suspects=len(self._records.suspicions), queued=len(self._queue),
            queue_dropped=self._queue.dropped, relays_pending=self._prober.relays_pending,
        )
        return out

    def _reconnect(self, now: float) -> None:
        """Heal partitions: forget long-gone members, check on one dead member, and retry seeds while
        none of them is live."""
        table = self._table
        horizon = now - self.config.dead_forget_s
        for node in table.gone_ids():
            m = table.get(node)
            if m is not None and m.state_changed_at < horizon:
                table.remove(node)
        self._prober.reconnect_round(ping=not self._leaving)
        if not self._leaving:
            self._diss.retry_seeds(now)

    # --- helpers -----------------------------------------------------------------------------------------

    def _alive_record(self) -> Alive:
        me = self._me
        return Alive(me.id, me.incarnation, me.addr, me.meta)

    def _check_meta(self, meta: Meta) -> None:
        check_fields(self.id, self.addr, self.network, meta)
        size = meta_bytes(meta)
        if size - admission_bytes(meta) > self.config.meta_bytes_max:
            raise InvalidArgument(f"member metadata exceeds {self.config.meta_bytes_max} bytes")
        if alive_bytes(self.id, self.addr, size) > self._record_bytes_max:
            raise InvalidArgument("this member's record (metadata and admission token) exceeds one gossip frame")

    def _push_timer(self, deadline: float, kind: int, key: str | int) -> None:
        self._timer_count += 1
        heapq.heappush(self._timers, (deadline, self._timer_count, kind, key))

    def _relay_timer(self, deadline: float, seq: int) -> None:
        self._push_timer(deadline, _RELAY, seq)

    def _suspicion_timer(self, deadline: float, node: str) -> None:
        self._push_timer(deadline, _SUSPICION, node)

    def _send(self, addr: str, msg: Message) -> None:
        self._out.append(Send(addr, msg))
        self._stats["msgs_sent"] += 1

    def _event(self, kind: EventKind, m: Member) -> None:
        self._out.append(MemberEvent(kind, m.view()))

    def _flush(self) -> list[Effect]:
        out, self._out = self._out, []
        return out
