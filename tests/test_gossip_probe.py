"""Prober (gossip/probe.py) on its own: the probe's direct and indirect phases, Lifeguard health deltas,
relayed ping-reqs with their forwarded Ack or Nack, and reconnect pings to members held dead."""

from __future__ import annotations

import random

from gossip.awareness import Awareness
from gossip.config import GossipConfig
from gossip.dissemination import Disseminator
from gossip.members import Member, MemberTable
from gossip.messages import Ack, Message, Meta, Nack, Ping, PingReq, PushPull, State, Suspect
from gossip.probe import Prober
from gossip.swim import STAT_NAMES

CFG = GossipConfig.sim()


class Rig:
    """One Prober over a table of `others` (ids b, c, ...), collecting what it sends and its relay timers."""

    def __init__(self, others: int = 4, lifeguard: bool = True) -> None:
        cfg = CFG.replace(lifeguard=lifeguard)
        rng = random.Random(1)
        self.table = MemberTable(Member("a", "sim:a", 1, State.ALIVE, Meta(), 0.0, 40), rng)
        for i in range(others):
            name = chr(ord("b") + i)
            self.table.add(Member(name, f"sim:{name}", 1, State.ALIVE, Meta(), 0.0, 40))
        self.sent: list[tuple[str, Message]] = []
        self.timers: list[tuple[float, int]] = []
        self.awareness = Awareness(cfg.awareness_max_multiplier if lifeguard else 1)
        self.stats: dict[str, int] = dict.fromkeys(STAT_NAMES, 0)
        diss = Disseminator(cfg, self.table, rng, self.send, self.stats, "default", "sim:a", 3900, 3700)
        self.prober = Prober("a", cfg, self.table, self.awareness, diss, rng, self.send, self.stats,
                             lambda d, seq: self.timers.append((d, seq)), 3900, seq=100)

    def send(self, addr: str, msg: Message) -> None:
        self.sent.append((addr, msg))

    def take(self) -> list[tuple[str, Message]]:
        out, self.sent = self.sent, []
        return out


def test_a_probe_goes_indirect_then_fails_and_names_the_member_to_suspect() -> None:
    rig = Rig()
    p = rig.prober
    p.start(0.0)
    [(addr, ping)] = rig.take()
    assert isinstance(ping, Ping) and addr == f"sim:{ping.target}" and p.probe is not None
    target, seq = ping.target, ping.seq
    assert p.advance(p.probe, CFG.probe_timeout_s) is None  # direct phase over: ask helpers
    reqs = rig.take()
    assert len(reqs) == CFG.indirect_checks
    assert all(isinstance(m, PingReq) and m.target == target and m.seq == seq and m.nack for _, m in reqs)
    assert target not in {a.removeprefix("sim:") for a, _ in reqs}
    p.on_nack(seq)  # one helper could reach us: only the two missing nacks count against our health
    failed = p.advance(p.probe, CFG.probe_interval_s)
    assert failed is not None and failed.id == target and p.probe is None
    assert rig.awareness.score == CFG.indirect_checks - 1
    assert rig.stats["probe_failures"] == 1 and rig.stats["suspicions_raised"] == 1


def test_an_ack_completes_the_probe_and_improves_health() -> None:
    rig = Rig()
    rig.awareness.apply_delta(3)
    rig.prober.start(0.0)
    [(_, ping)] = rig.take()
    assert isinstance(ping, Ping)
    rig.prober.on_ack(ping.seq + 7)  # not ours: ignored
    assert rig.prober.probe is not None
    rig.prober.on_ack(ping.seq)
    assert rig.prober.probe is None and rig.awareness.score == 2 and rig.stats["acks"] == 1


def test_the_buddy_system_puts_the_suspicion_first_in_the_ping() -> None:
    rig = Rig(others=1)
    b = rig.table.get("b")
    assert b is not None
    rig.table.set_state(b, State.SUSPECT, 0.0)
    rig.prober.start(0.0)
    [(_, ping)] = rig.take()
    assert isinstance(ping, Ping) and ping.updates[0] == Suspect("b", 1, "a")


def test_a_relayed_ping_req_forwards_the_ack_or_nacks_when_asked() -> None:
    rig = Rig()
    p = rig.prober
    p.on_ping_req("sim:o", PingReq(41, "t", "sim:t", nack=True), 1.0)
    [(addr, ping)] = rig.take()
    assert addr == "sim:t" and isinstance(ping, Ping) and ping.target == "t"
    assert rig.timers == [(1.0 + 0.8 * CFG.probe_timeout_s, ping.seq)] and p.relays_pending == 1
    p.on_ack(ping.seq)
    assert rig.take() == [("sim:o", Ack(41))] and p.relays_pending == 0
    p.relay_expired(ping.seq)  # already answered: nothing more
    p.on_ping_req("sim:o", PingReq(42, "t", "sim:t", nack=True), 2.0)
    p.on_ping_req("sim:o", PingReq(43, "t", "sim:t", nack=False), 2.0)
    pings = [m for _, m in rig.take()]
    for m in pings:
        assert isinstance(m, Ping)
        p.relay_expired(m.seq)
    assert rig.take() == [("sim:o", Nack(42))]  # classic SWIM askers get no nack


def test_a_ping_for_someone_else_is_not_acked() -> None:
    rig = Rig()
    rig.prober.on_ping("sim:x", Ping(5, "not-a"))
    rig.prober.on_ping("sim:x", Ping(6, "a"))
    assert [(a, type(m).__name__, getattr(m, "seq", None)) for a, m in rig.take()] == [("sim:x", "Ack", 6)]
    assert rig.stats["dropped_wrong_target"] == 1


def test_a_dead_member_that_answers_a_reconnect_ping_gets_a_join_sync() -> None:
    rig = Rig(others=2)
    c = rig.table.get("c")
    assert c is not None
    rig.table.set_state(c, State.DEAD, 0.0)
    rig.prober.reconnect_round(ping=True)
    [(addr, ping)] = rig.take()
    assert addr == "sim:c" and isinstance(ping, Ping) and ping.updates == ()
    rig.prober.on_ack(ping.seq)
    [(addr, pp)] = rig.take()
    assert addr == "sim:c" and isinstance(pp, PushPull) and pp.join and not pp.reply
    # An Ack that comes after the next round began is ignored: that round forgot the check.
    rig.prober.reconnect_round(ping=True)
    [(_, again)] = rig.take()
    assert isinstance(again, Ping)
    rig.prober.reconnect_round(ping=False)
    rig.prober.on_ack(again.seq)
    assert rig.take() == [] and rig.stats["reconnects"] == 1
