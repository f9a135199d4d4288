"""SwimNode: small groups wired directly over an in-memory list of packets (h11's ConnectionPair idea).

No sockets, no sleeps: virtual time advances from one deadline or delivery to the next.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.errors import InvalidArgument
from crypto.identity import Identity
from gossip.codec import decode_frame, encode_frame
from gossip.config import GossipConfig
from gossip.messages import (
    Ack,
    Alive,
    Dead,
    Effect,
    EventKind,
    Gossip,
    MemberEvent,
    Meta,
    Nack,
    Packet,
    Ping,
    PingReq,
    PushPull,
    Send,
    State,
    Suspect,
)
from gossip.swim import STAT_NAMES, SwimNode

META = Meta(roles=("storage",), capability=1.0)


@dataclass
class Net:
    """n SwimNodes and the packets in flight between them; `blocked` links and `silent` nodes drop."""

    config: GossipConfig = field(default_factory=GossipConfig.sim)
    seed: int = 1
    latency_s: float = 0.001
    now: float = 0.0
    nodes: dict[str, SwimNode] = field(default_factory=dict)
    silent: set[str] = field(default_factory=set)
    blocked: set[tuple[str, str]] = field(default_factory=set)
    events: list[tuple[float, str, MemberEvent]] = field(default_factory=list)
    sent: list[tuple[str, Send]] = field(default_factory=list)
    wire: list[tuple[float, int, str, Packet]] = field(default_factory=list)
    count: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def add(self, name: str, *, config: GossipConfig | None = None, incarnation: int = 0,
            network: str = "default") -> SwimNode:
        node = SwimNode(name, f"sim:{name}", META, config or self.config, random.Random(self.rng.random()),
                        self.now, incarnation=incarnation, network=network)
        self.nodes[node.addr] = node
        return node

    def apply(self, src: SwimNode, effects: list[Effect]) -> None:
        for e in effects:
            if isinstance(e, MemberEvent):
                self.events.append((self.now, src.id, e))
                continue
            self.sent.append((src.id, e))
            if src.addr in self.silent or e.to_addr in self.silent or (src.addr, e.to_addr) in self.blocked:
                continue
            self.count += 1
            pkt = Packet(src.id, src.addr, src.network, e.msg)
            heapq.heappush(self.wire, (self.now + self.latency_s, self.count, e.to_addr, pkt))

    def run(self, duration_s: float) -> None:
        end = self.now + duration_s
        while True:
            t_wire = self.wire[0][0] if self.wire else float("inf")
            due = min(self.nodes.values(), key=lambda n: n.next_deadline())
            t = min(t_wire, due.next_deadline())
            if t > end:
                self.now = end
                return
            self.now = max(self.now, t)
            if t_wire <= due.next_deadline():
                _, _, to, pkt = heapq.heappop(self.wire)
                node = self.nodes.get(to)
                if node is not None and to not in self.silent:
                    self.apply(node, node.handle(pkt, self.now))
            else:
                self.apply(due, due.tick(self.now))

    def join_all(self, seed: SwimNode) -> None:
        for n in self.nodes.values():
            if n is not seed:
                self.apply(n, n.join([seed.addr], self.now))

    def states(self, node: SwimNode) -> dict[str, State]:
        return {m.id: m.state for m in node.members()}

    def first_event(self, kind: EventKind, about: str) -> float | None:
        return next((t for t, _, e in self.events if e.kind is kind and e.member.id == about), None)


def group(n: int, **kw: object) -> tuple[Net, list[SwimNode]]:
    net = Net(**kw)  # type: ignore[arg-type]
    nodes = [net.add(chr(ord("a") + i)) for i in range(n)]
    net.join_all(nodes[0])
    return net, nodes


def test_join_through_one_seed_gives_everyone_full_membership() -> None:
    net, nodes = group(5)
    net.run(3.0)
    for n in nodes:
        assert net.states(n) == {m.id: State.ALIVE for m in nodes}
    assert all(n.statistics()["acks"] > 0 for n in nodes)  # probes are answered
    joined = {(who, e.member.id) for _, who, e in net.events if e.kind is EventKind.JOINED}
    assert joined == {(a.id, b.id) for a in nodes for b in nodes if a is not b}


def test_a_silent_member_is_suspected_then_declared_dead_by_everyone() -> None:
    net, (a, b, c) = group(3)
    net.run(3.0)
    net.silent.add(c.addr)
    t0 = net.now
    net.run(60.0)
    for n in (a, b):
        assert net.states(n)[c.id] is State.DEAD
    suspected = net.first_event(EventKind.SUSPECT, c.id)
    dead = net.first_event(EventKind.DEAD, c.id)
    assert suspected is not None and dead is not None
    assert suspected - t0 < 4 * net.config.probe_interval_s
    # n = 3 is too small to expect confirmations (k = 0): the full Lifeguard max, 6 x 4 x 1 s.
    assert dead - suspected == pytest.approx(24.0, abs=0.1)
    assert sum(n.statistics()["deaths_declared"] for n in (a, b)) >= 1


def test_a_suspected_member_refutes_with_a_higher_incarnation() -> None:
    net, (a, b, c) = group(3)
    net.run(3.0)
    inc = b.incarnation
    net.apply(a, a.handle(Packet(c.id, c.addr, "default", Gossip((Suspect(b.id, inc, c.id),))), net.now))
    assert net.states(a)[b.id] is State.SUSPECT
    net.run(5.0)
    assert b.incarnation == inc + 1 and b.statistics()["refutations"] == 1
    for n in (a, b, c):
        assert net.states(n)[b.id] is State.ALIVE
        assert next(m for m in n.members() if m.id == b.id).incarnation == inc + 1
    assert net.first_event(EventKind.DEAD, b.id) is None


def test_a_node_spreading_a_refuted_suspicion_is_answered_with_the_refutation() -> None:
    """A member that missed a refutation would otherwise declare a live member dead."""
    node = SwimNode("a", "sim:a", META, GossipConfig.sim(), random.Random(1), 0.0)
    node.handle(Packet("c", "sim:c", "default", Gossip((Alive("b", 4, "sim:b", META),))), 0.0)
    stale = Packet("c", "sim:c", "default", Gossip((Suspect("b", 3, "c"), Suspect("a", 0, "c"))))
    out = node.handle(stale, 0.0)
    assert out == [Send("sim:c", Gossip((Alive("b", 4, "sim:b", META),)))]
    assert node.incarnation == 1  # refuted the suspicion of itself: that news goes out by gossip...
    out = node.handle(stale, 0.0)
    assert out == [Send("sim:c", Gossip((Alive("b", 4, "sim:b", META), Alive("a", 1, "sim:a", META))))]
    assert node.incarnation == 1 and node.statistics()["corrections_sent"] == 2  # ...and is not raised again


def test_buddy_system_tells_a_suspect_it_is_suspected_in_the_probe() -> None:
    node = SwimNode("a", "sim:a", META, GossipConfig.sim(), random.Random(1), 0.0)
    node.handle(Packet("c", "sim:c", "default", Gossip((Alive("b", 3, "sim:b", META),))), 0.0)
    node.handle(Packet("c", "sim:c", "default", Gossip((Suspect("b", 3, "c"),))), 0.0)
    pings = [e.msg for t in range(1, 30) for e in node.tick(t * 0.1)
             if isinstance(e, Send) and isinstance(e.msg, Ping)]
    assert pings and pings[0].target == "b"
    assert pings[0].updates[0] == Suspect("b", 3, "a")
    assert sum(isinstance(u, Suspect) and u.node == "b" for u in pings[0].updates) == 1


def test_indirect_probe_keeps_a_member_with_one_broken_link_alive() -> None:
    net, (a, b, c) = group(3)
    net.run(3.0)
    net.blocked |= {(a.addr, c.addr), (c.addr, a.addr)}
    net.run(30.0)
    assert a.statistics()["ping_reqs_sent"] > 0 and b.statistics()["ping_reqs_helped"] > 0
    assert net.first_event(EventKind.SUSPECT, c.id) is None
    assert net.first_event(EventKind.SUSPECT, a.id) is None


def test_nacks_from_helpers_spare_the_prober_a_health_penalty() -> None:
    """Lifeguard: helpers that nack show our own links work, so a dead target is not our fault."""
    net, (a, b, c, d) = group(4)
    net.run(3.0)
    net.silent.add(d.addr)
    net.run(4.0)
    assert a.statistics()["nacks"] > 0
    assert max(n.statistics()["awareness"] for n in (a, b, c)) <= 1


def test_without_lifeguard_there_are_no_nacks_and_suspicion_lasts_the_fixed_minimum() -> None:
    net, (a, b, c) = group(3, config=GossipConfig.sim().replace(lifeguard=False))
    net.run(3.0)
    net.silent.add(c.addr)
    net.run(30.0)
    assert all(n.statistics()["nacks"] == 0 for n in (a, b))
    suspected, dead = net.first_event(EventKind.SUSPECT, c.id), net.first_event(EventKind.DEAD, c.id)
    assert suspected is not None and dead is not None
    assert dead - suspected == pytest.approx(4.0, abs=0.1)  # suspicion_mult * 1 probe interval


def test_an_overloaded_node_slows_its_own_probing() -> None:
    net, (a, b, c) = group(3)
    net.run(3.0)
    net.silent |= {b.addr, c.addr}  # from a's side it looks like everyone else vanished
    net.run(6.0)
    assert a.statistics()["awareness"] >= 2
    assert a.next_deadline() - net.now <= (a.statistics()["awareness"] + 1) * net.config.probe_interval_s


def test_graceful_leave_is_left_not_dead() -> None:
    net, (a, b, c) = group(3)
    net.run(3.0)
    net.apply(c, c.leave(net.now))
    net.run(1.0)
    net.silent.add(c.addr)
    net.run(40.0)
    for n in (a, b):
        assert net.states(n)[c.id] is State.LEFT
    assert net.first_event(EventKind.DEAD, c.id) is None and net.first_event(EventKind.SUSPECT, c.id) is None


def test_metadata_update_reaches_everyone_as_updated() -> None:
    net, (a, b, c) = group(3)
    net.run(3.0)
    new = Meta(roles=("storage", "gpu"), capability=9.0, storage_bytes=10**12, endpoint="ws://c", version="2")
    net.apply(c, c.update_meta(new, net.now))
    net.run(2.0)
    for n in (a, b):
        assert next(m for m in n.members() if m.id == c.id).meta == new
    assert {who for _, who, e in net.events if e.kind is EventKind.UPDATED and e.member.id == c.id} == {a.id, b.id}


def test_address_change_is_an_update_of_the_same_member() -> None:
    net, (a, b) = group(2)
    net.run(2.0)
    moved = Alive(b.id, b.incarnation + 1, "sim:elsewhere", META)
    a.handle(Packet(b.id, b.addr, "default", Gossip((moved,))), net.now)
    assert [m.addr for m in a.members() if m.id == b.id] == ["sim:elsewhere"]
    assert len(a.members()) == 2


def test_a_restarted_node_with_a_stale_incarnation_overtakes_its_old_dead_record() -> None:
    net, (a, b, c) = group(3)
    net.run(3.0)
    net.silent.add(c.addr)
    net.run(40.0)
    assert net.states(a)[c.id] is State.DEAD
    old_inc = next(m.incarnation for m in a.members() if m.id == c.id)
    del net.nodes[c.addr]
    net.silent.discard(c.addr)
    c2 = net.add("c", incarnation=0)  # the shell forgot its incarnation: the core must still recover
    net.apply(c2, c2.join([a.addr], net.now))
    net.run(5.0)
    for n in (a, b):
        assert net.states(n)[c2.id] is State.ALIVE
    assert c2.incarnation > old_inc


def test_two_halves_of_a_partition_merge_again() -> None:
    net, nodes = group(4)
    a, b, c, d = nodes
    net.run(3.0)
    left, right = {a.addr, b.addr}, {c.addr, d.addr}
    net.blocked |= {(x, y) for x in left for y in right} | {(y, x) for x in left for y in right}
    net.run(60.0)
    assert net.states(a)[c.id] is State.DEAD and net.states(c)[a.id] is State.DEAD
    net.blocked.clear()
    net.run(2 * net.config.reconnect_interval_s + 10.0)
    for n in nodes:
        assert set(n.alive_ids()) == {m.id for m in nodes}, (n.id, net.states(n))
    assert sum(n.statistics()["reconnects"] for n in nodes) > 0


def test_an_unreachable_seed_is_retried_until_it_answers() -> None:
    net = Net()
    a, b = net.add("a"), net.add("b")
    net.silent.add(a.addr)
    net.apply(b, b.join([a.addr], net.now))
    net.run(15.0)
    assert b.alive_ids() == [b.id]
    net.silent.clear()
    net.run(2 * net.config.reconnect_interval_s)
    assert sorted(b.alive_ids()) == sorted(a.alive_ids()) == ["a", "b"]
    assert b.statistics()["seed_retries"] >= 1


def test_packets_from_another_network_are_dropped_and_counted() -> None:
    net, (a, b) = group(2)
    stranger = Packet("x", "sim:x", "other", Gossip((Alive("x", 5, "sim:x", META),)))
    assert a.handle(stranger, 0.0) == []
    assert a.statistics()["dropped_wrong_network"] == 1
    assert "x" not in {m.id for m in a.members()}


def test_two_networks_on_one_address_space_never_merge() -> None:
    net = Net()
    a, b = net.add("a", network="red"), net.add("b", network="blue")
    net.apply(b, b.join([a.addr], net.now))
    net.run(30.0)
    assert a.alive_ids() == ["a"] and b.alive_ids() == ["b"]
    assert a.statistics()["dropped_wrong_network"] > 0


def test_a_ping_for_another_id_is_not_acked() -> None:
    net, (a, b) = group(2)
    out = a.handle(Packet(b.id, b.addr, "default", Ping(7, "someone-else")), 0.0)
    assert out == [] and a.statistics()["dropped_wrong_target"] == 1


def test_ping_req_helper_forwards_the_ack_or_nacks_on_timeout() -> None:
    cfg = GossipConfig.sim()
    h = SwimNode("h", "sim:h", META, cfg, random.Random(1), 0.0)
    [send] = h.handle(Packet("o", "sim:o", "default", PingReq(41, "t", "sim:t", nack=True)), 0.0)
    assert isinstance(send, Send) and isinstance(send.msg, Ping) and send.to_addr == "sim:t" and send.msg.target == "t"
    forwarded = h.handle(Packet("t", "sim:t", "default", Ack(send.msg.seq)), 0.01)
    assert forwarded == [Send("sim:o", Ack(41))]
    h.handle(Packet("o", "sim:o", "default", PingReq(42, "t", "sim:t", nack=True)), 1.0)
    assert h.next_deadline() <= 1.0 + 0.8 * cfg.probe_timeout_s  # nacks arrive before the asker gives up
    out = h.tick(1.0 + 0.8 * cfg.probe_timeout_s)
    assert Send("sim:o", Nack(42)) in out


def test_tick_before_any_deadline_sends_nothing() -> None:
    node = SwimNode("a", "sim:a", META, GossipConfig.sim(), random.Random(1), 100.0)
    node.handle(Packet("b", "sim:b", "default", Gossip((Alive("b", 0, "sim:b", META),))), 100.0)
    d = node.next_deadline()
    assert d >= 100.0
    assert [e for e in node.tick(min(d, 100.0) - 1e-9) if isinstance(e, Send)] == []


def test_statistics_has_every_counter() -> None:
    node = SwimNode("a", "sim:a", META, GossipConfig.sim(), random.Random(1), 0.0)
    assert set(STAT_NAMES) <= set(node.statistics())


@pytest.mark.parametrize("node_id, addr, meta", [
    ("a", "sim:a", Meta(roles=tuple("r" * 60 for _ in range(8)))),  # over meta_bytes_max
    ("a", "sim:a", Meta(endpoint="x" * 300)),  # a field peers would refuse to decode
    ("a" * 200, "sim:a", META),
    ("a", "sim:" + "a" * 300, META),
])
def test_records_peers_could_not_decode_are_refused_up_front(node_id: str, addr: str, meta: Meta) -> None:
    with pytest.raises(InvalidArgument):
        SwimNode(node_id, addr, meta, GossipConfig.sim(), random.Random(1), 0.0)
    node = SwimNode("a", "sim:a", META, GossipConfig.sim(), random.Random(1), 0.0)
    if node_id == "a" and addr == "sim:a":
        with pytest.raises(InvalidArgument):
            node.update_meta(meta, 1.0)
        assert node.incarnation == 0


# --- properties -----------------------------------------------------------------------------------

records_about = st.one_of(
    st.builds(lambda i: Alive("x", i, "sim:x", META), st.integers(0, 6)),
    st.builds(lambda i, by: Suspect("x", i, by), st.integers(0, 6), st.sampled_from(["a", "b", "x"])),
    st.builds(lambda i, by: Dead("x", i, by), st.integers(0, 6), st.sampled_from(["a", "b", "x"])),
)
RANK = {State.ALIVE: 0, State.SUSPECT: 1, State.DEAD: 2, State.LEFT: 2}


def x_state(node: SwimNode) -> tuple[int, State] | None:
    return next(((m.incarnation, m.state) for m in node.members() if m.id == "x"), None)


@settings(max_examples=300)
@given(st.lists(st.tuples(records_about, st.booleans()), max_size=30))
def test_precedence_of_records_about_another_member(script: list[tuple[object, bool]]) -> None:
    """An older incarnation never overrides a newer one; dead is undone only by a newer Alive.

    Between records, time may pass (the node probes x, which never answers, and suspicions expire):
    time alone may only move x towards dead at the same incarnation.
    """
    node = SwimNode("me", "sim:me", META, GossipConfig.sim(), random.Random(1), 0.0)
    now = 0.0
    for r, wait in script:
        before = x_state(node)
        node.handle(Packet("a", "sim:a", "default", Gossip((r,))), now)  # type: ignore[arg-type]
        after = x_state(node)
        if before is not None:
            assert after is not None
            assert after[0] >= before[0], "incarnation went backwards"
            if r.incarnation < before[0]:  # type: ignore[attr-defined]
                assert after == before, f"older {r} overrode {before}"
            if before[1] in (State.DEAD, State.LEFT) and after[1] not in (State.DEAD, State.LEFT):
                assert isinstance(r, Alive) and r.incarnation > before[0]
            if after[0] == before[0] and not isinstance(r, Alive):
                assert RANK[after[1]] >= RANK[before[1]]
        if wait:
            now += 7.0
            node.tick(now)
            later = x_state(node)
            if after is not None:
                assert later is not None
                assert later[0] == after[0] and RANK[later[1]] >= RANK[after[1]]


@settings(max_examples=200)
@given(st.lists(st.one_of(
    st.builds(lambda i: Suspect("me", i, "a"), st.integers(0, 9)),
    st.builds(lambda i: Dead("me", i, "a"), st.integers(0, 9)),
    st.builds(lambda i: Alive("me", i, "sim:old", META), st.integers(0, 9)),
), max_size=20))
def test_a_member_never_suspects_itself_it_refutes(records: list[object]) -> None:
    node = SwimNode("me", "sim:me", META, GossipConfig.sim(), random.Random(1), 0.0)
    for r in records:
        out = node.handle(Packet("a", "sim:a", "default", Gossip((r,))), 0.0)  # type: ignore[arg-type]
        me = next(m for m in node.members() if m.id == "me")
        assert me.state is State.ALIVE and me.addr == "sim:me"
        assert me.incarnation > r.incarnation  # type: ignore[attr-defined]  # refuted, or old news
        assert not any(isinstance(e, MemberEvent) for e in out)
    assert node.statistics()["suspicions_raised"] == 0


KEY = Identity.generate()


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 400), st.integers(0, 250), st.integers(0, 2**32))
def test_every_frame_a_node_sends_stays_under_the_size_limit(members: int, meta_chars: int, seed: int) -> None:
    """Whatever the table size and metadata, signed gossip frames fit packet_bytes_max."""
    cfg = GossipConfig.sim().replace(packet_bytes_max=1024, push_pull_bytes_max=16 * 1024)
    rng = random.Random(seed)
    node = SwimNode(KEY.agent_id, "ws://127.0.0.1:7001", META, cfg, rng, 0.0, network="net")
    metas = [Meta(roles=("r" * rng.randrange(10),), endpoint="e" * rng.randrange(meta_chars + 1),
                  admission="t" * rng.choice((0, 0, rng.randrange(500)))) for _ in range(4)]
    records = tuple(Alive(f"{i:032x}", rng.randrange(1000), f"ws://10.0.{i // 250}.{i % 250}:7001",
                          metas[i % 4]) for i in range(members))
    out: list[Effect] = []
    for i in range(0, len(records), 5):
        out += node.handle(Packet("src", "ws://x", "net", Gossip(records[i:i + 5])), 0.0)
    for t in range(1, 40):
        out += node.tick(t * 0.1)
        if t % 7 == 0:
            out += node.handle(Packet("src", "ws://x", "net", Ping(t, KEY.agent_id)), t * 0.1)
    out += node.handle(Packet("src", "ws://x", "net", PushPull(())), 4.0)
    sends = [e for e in out if isinstance(e, Send)]
    assert sends
    for s in sends:
        frame = encode_frame(KEY, "net", node.addr, s.msg)
        limit = cfg.push_pull_bytes_max if isinstance(s.msg, PushPull) else cfg.packet_bytes_max
        assert len(frame) <= limit, (type(s.msg).__name__, len(frame))
        assert decode_frame(frame, network="net", frame_bytes_max=limit).msg == s.msg
