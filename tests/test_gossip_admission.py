"""Network admission: the grant convention and its cached check (gossip/admission.py), and SwimNodes that
require it — a node without a valid grant never enters anyone's table, not even second-hand; admitted
nodes join; an expired grant is refused and its holder falls out of the group until it renews."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from crypto.errors import BadFrame, BadSignature, Expired, Forbidden, InvalidArgument
from crypto.grants import make_grant
from crypto.identity import Identity
from gossip.admission import AdmissionCheck, admission_ns, make_admission
from gossip.config import GossipConfig
from gossip.messages import Alive, Gossip, Meta, NodeState, Packet, PushPull, State
from gossip.swim import SwimNode
from tests.test_gossip_swim import Net

NET = "net"
KEY = Identity.generate()
T0_MS = 1_800_000_000_000
DAY_MS = 86_400_000
META = Meta(roles=("storage",))


def token(node: str, days: float = 1.0, key: Identity = KEY, network: str = NET) -> str:
    exp_ms = T0_MS + int(days * DAY_MS)
    return make_admission(key, node, network, exp_ms=exp_ms, now_ms=min(T0_MS, exp_ms) - DAY_MS)


# --- the check ---------------------------------------------------------------------------------------

def test_a_grant_admits_its_node_in_its_network_until_it_expires() -> None:
    check = AdmissionCheck(KEY.public_key, NET)
    t = token("a")
    assert check.verify(t, "a", T0_MS).ns == admission_ns(NET)
    assert check.admits("a", t, T0_MS) and check.admits("a", t, T0_MS + DAY_MS - 1)
    assert not check.admits("a", t, T0_MS + DAY_MS)
    assert not check.admits("b", t, T0_MS)  # the grant names its node: another id cannot borrow it
    assert check.statistics()["tokens_verified"] == 1  # verified once, then cached


@pytest.mark.parametrize("bad, error", [
    ("", Forbidden),
    ("mg1.garbage", BadFrame),
    (token("a", key=Identity.generate()), Forbidden),  # another network's key
    (token("a", network="other"), Forbidden),
    (token("b"), Forbidden),
    (token("a", days=-0.5), Expired),
    (make_grant(KEY, grantee="a", ns=admission_ns(NET), actions=["read"], exp_ms=T0_MS + DAY_MS, now_ms=T0_MS),
     Forbidden),
])
def test_a_bad_grant_is_refused_with_its_reason(bad: str, error: type[Exception]) -> None:
    check = AdmissionCheck(KEY.public_key, NET)
    with pytest.raises(error):
        check.verify(bad, "a", T0_MS)
    assert not check.admits("a", bad, T0_MS)


def test_a_forged_grant_is_a_bad_signature_and_is_verified_only_once() -> None:
    t = token("a")
    head, body, sig = t.split(".")
    forged = ".".join((head, body, ("A" if sig[0] != "A" else "B") + sig[1:]))
    check = AdmissionCheck(KEY.public_key, NET)
    with pytest.raises(BadSignature):
        check.verify(forged, "a", T0_MS)
    assert not check.admits("a", forged, T0_MS) and not check.admits("a", forged, T0_MS)
    assert check.statistics() == {"tokens_cached": 1, "tokens_verified": 1, "refused": 2}


def test_the_cache_is_bounded() -> None:
    check = AdmissionCheck(KEY.public_key, NET, tokens_max=3)
    tokens = [token(f"n{i}") for i in range(5)]
    for i, t in enumerate(tokens):
        assert check.admits(f"n{i}", t, T0_MS)
    assert check.statistics()["tokens_cached"] == 3
    assert check.admits("n0", tokens[0], T0_MS) and check.statistics()["tokens_verified"] == 6


# --- SwimNodes that require admission ----------------------------------------------------------------

class AdmittedNet(Net):
    """Net whose nodes require admission, judged by a wall clock that runs with the virtual one."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check = AdmissionCheck(KEY.public_key, NET)

    def wall_ms(self) -> int:
        return T0_MS + int(self.now * 1000)

    def admit(self, node: str, meta: Meta) -> bool:
        return self.check.admits(node, meta.admission, self.wall_ms())

    def member(self, name: str, admission: str, *, checks: bool = True) -> SwimNode:
        node = SwimNode(name, f"sim:{name}", replace(META, admission=admission), self.config,
                        random.Random(self.rng.random()), self.now, network=NET,
                        admit=self.admit if checks else None)
        self.nodes[node.addr] = node
        return node


def admitted_group(n: int) -> tuple[AdmittedNet, list[SwimNode]]:
    net = AdmittedNet()
    nodes = [net.member(chr(ord("a") + i), token(chr(ord("a") + i))) for i in range(n)]
    net.join_all(nodes[0])
    return net, nodes


def test_admitted_nodes_join_through_one_seed() -> None:
    net, nodes = admitted_group(4)
    net.run(5.0)
    for n in nodes:
        assert net.states(n) == {m.id: State.ALIVE for m in nodes}
        assert n.statistics()["dropped_not_admitted"] == n.statistics()["dropped_sender_not_admitted"] == 0


@pytest.mark.parametrize("admission", [
    "", "mg1.garbage", token("x", key=Identity.generate()), token("x", network="other"), token("a"),
    token("x", days=-1),
])
def test_a_node_without_a_valid_grant_never_enters_anyones_table(admission: str) -> None:
    net, nodes = admitted_group(3)
    net.run(3.0)
    x = net.member("x", admission)
    net.apply(x, x.join([nodes[1].addr], net.now))
    net.run(40.0)
    for n in nodes:
        assert "x" not in net.states(n)
    assert nodes[1].statistics()["dropped_sender_not_admitted"] >= 1
    assert x.alive_ids() == ["x"]  # nobody answered it


def test_a_second_hand_record_of_a_non_admitted_node_is_dropped() -> None:
    """An admitted member that does not check (or lies) passes on a stranger: the others still refuse it."""
    net, (a, b) = admitted_group(2)
    net.run(3.0)
    stranger = Alive("x", 1, "sim:x", replace(META, admission=token("a")))  # someone else's grant
    a.handle(Packet(b.id, b.addr, NET, Gossip((stranger,))), net.now)
    a.handle(Packet(b.id, b.addr, NET, PushPull((NodeState("y", "sim:y", 1, State.SUSPECT, META),))), net.now)
    assert set(net.states(a)) == {"a", "b"}
    assert a.statistics()["dropped_not_admitted"] == 2
    # Through a member that does not check at all, the stranger reaches it, but goes no further.
    c = net.member("c", token("c"), checks=False)
    c.handle(Packet("x", "sim:x", NET, Gossip((stranger,))), net.now)
    assert "x" in net.states(c)
    net.apply(c, c.join([a.addr], net.now))
    net.run(10.0)
    assert "x" not in net.states(a) and "x" not in net.states(b) and "c" in net.states(a)


def test_an_expired_grant_is_refused_and_its_holder_falls_out_until_it_renews() -> None:
    net, (a, b, c) = admitted_group(3)
    d = net.member("d", token("d", days=60 / 86_400))  # valid for one simulated minute
    net.apply(d, d.join([a.addr], net.now))
    net.run(10.0)
    assert all(net.states(n)["d"] is State.ALIVE for n in (a, b, c))
    net.run(60.0)  # expired: its packets are dropped, it is suspected, its refutation refused
    for n in (a, b, c):
        assert net.states(n)["d"] is State.DEAD
    assert sum(n.statistics()["dropped_sender_not_admitted"] for n in (a, b, c)) >= 1
    held = {next(m.incarnation for m in n.members() if m.id == "d") for n in (a, b, c)}
    assert d.statistics()["refutations"] >= 1 and max(held) < d.incarnation  # its refutations were refused
    late = net.member("e", token("e", days=-0.001))  # expired before it ever joined
    net.apply(late, late.join([a.addr], net.now))
    net.run(5.0)
    assert "e" not in net.states(a)
    # A renewed grant brings d back: its own Alive record now carries an admissible token.
    fresh = make_admission(KEY, "d", NET, exp_ms=net.wall_ms() + DAY_MS, now_ms=net.wall_ms())
    net.apply(d, d.update_meta(replace(d.meta, admission=fresh), net.now))
    net.run(10.0)
    for n in (a, b, c):
        assert net.states(n)["d"] is State.ALIVE


def test_without_admission_records_need_no_grant() -> None:
    node = SwimNode("a", "sim:a", META, GossipConfig.sim(), random.Random(1), 0.0, network=NET)
    node.handle(Packet("x", "sim:x", NET, Gossip((Alive("x", 1, "sim:x", META),))), 0.0)
    assert {m.id for m in node.members()} == {"a", "x"}


def test_the_grant_is_not_metadata_for_meta_bytes_max_but_the_record_must_fit_a_frame() -> None:
    long_token = Meta(endpoint="e" * 200, version="v" * 60, roles=("r" * 60,) * 3, admission="t" * 900)
    SwimNode("a", "sim:a", long_token, GossipConfig.sim(), random.Random(1), 0.0)  # 4 KiB frames: fits
    with pytest.raises(InvalidArgument):
        SwimNode("a", "sim:a", long_token, GossipConfig.sim().replace(packet_bytes_max=1024), random.Random(1), 0.0)
