"""FaultyTransport over the in-memory hub on a virtual clock (MockClock, autojump): loss, latency,
one-way and two-way partitions, pause, runtime changes and bounds. Time is asserted, never slept on."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from node.faults import FaultyTransport, Latency, LinkFaults
from node.gossip_transport import MemoryHub


async def network(nursery: trio.Nursery, addrs: str, rules: LinkFaults, seed: int = 1,
                  **kw: int) -> dict[str, FaultyTransport]:
    hub = MemoryHub()
    rng = random.Random(seed)
    out = {}
    for a in addrs:
        t = FaultyTransport(hub.transport(a), rng, rules, **kw)
        await nursery.start(t.run)
        out[a] = t
    return out


async def drain(t: FaultyTransport) -> list[bytes]:
    """Everything that has arrived by now (after letting due deliveries run)."""
    await trio.testing.wait_all_tasks_blocked()
    got = []
    while True:
        with trio.move_on_after(1e-9) as scope:  # virtual time: the clock jumps
            got.append(await t.receive())
        if scope.cancelled_caught:
            return got


async def test_no_faults_passes_at_once(nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    n = await network(nursery, "ab", LinkFaults())
    t0 = trio.current_time()
    await n["a"].send("b", b"x")
    assert await n["b"].receive() == b"x"
    assert trio.current_time() == t0
    assert n["a"].statistics()["passed"] == 1
    assert n["a"].statistics()["inner_sent"] == 1


async def test_drop_rate_is_seeded_and_counted(nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    n = await network(nursery, "ab", LinkFaults(drop_rate=0.3), seed=7)
    for i in range(1000):
        await n["a"].send("b", b"%d" % i)
    got = await drain(n["b"])
    s = n["a"].statistics()
    assert s["dropped_random"] + s["passed"] == 1000 == s["dropped_random"] + len(got)
    assert 230 < s["dropped_random"] < 370
    rng = random.Random(7)  # the same seed drops the same frames
    assert got == [b"%d" % i for i in range(1000) if not rng.random() < 0.3]


async def test_fixed_latency_delays_exactly(nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    n = await network(nursery, "ab", LinkFaults(latency=Latency(base_s=0.25)))
    t0 = trio.current_time()
    await n["a"].send("b", b"x")
    assert await n["b"].receive() == b"x"
    assert trio.current_time() - t0 == pytest.approx(0.25)
    assert n["a"].statistics()["delayed"] == 1


async def test_jitter_reorders_but_delivers_everything(nursery: trio.Nursery,
                                                       autojump_clock: trio.testing.MockClock) -> None:
    n = await network(nursery, "ab", LinkFaults(latency=Latency(0.01, 0.05, "exponential")))
    for i in range(200):
        await n["a"].send("b", b"%d" % i)
    await trio.sleep(10)  # virtual: far beyond any sampled delay
    got = await drain(n["b"])
    assert sorted(got) == sorted(b"%d" % i for i in range(200))
    assert got != [b"%d" % i for i in range(200)]
    assert n["a"].statistics()["in_flight"] == 0


def test_latency_samples_have_the_configured_mean() -> None:
    rng = random.Random(3)
    for dist in ("uniform", "exponential"):
        lat = Latency(0.1, 0.02, dist)
        samples = [lat.sample(rng) for _ in range(20000)]
        assert min(samples) >= 0.1
        assert sum(samples) / len(samples) == pytest.approx(0.12, rel=0.02)


async def test_two_way_partition_and_heal(nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    rules = LinkFaults()
    n = await network(nursery, "abc", rules)
    rules.set_group("left", ["a"])
    rules.set_group("right", ["b"])
    rules.partition("left", "right")
    for src, dst in ("ab", "ba", "ac", "ca", "bc"):
        await n[src].send(dst, src.encode())
    assert await drain(n["a"]) == [b"c"]
    assert await drain(n["b"]) == []
    assert sorted(await drain(n["c"])) == [b"a", b"b"]
    assert n["a"].statistics()["dropped_partition"] == 1
    rules.heal()
    await n["a"].send("b", b"a")
    await n["b"].send("a", b"b")
    assert (await drain(n["a"]), await drain(n["b"])) == ([b"b"], [b"a"])


async def test_one_way_partition(nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    rules = LinkFaults()
    n = await network(nursery, "ab", rules)
    rules.set_group("g1", ["a"])
    rules.set_group("g2", ["b"])
    rules.block("g1", "g2")
    await n["a"].send("b", b"lost")
    await n["b"].send("a", b"arrives")
    assert (await drain(n["a"]), await drain(n["b"])) == ([b"arrives"], [])
    rules.heal("g2", "g1")
    await n["a"].send("b", b"now")
    assert await drain(n["b"]) == [b"now"]


def test_link_rules_groups() -> None:
    rules = LinkFaults()
    with pytest.raises(KeyError):
        rules.block("nope", "nope")
    rules.set_group("x", ["a", "b"])
    rules.set_group("y", ["c"])
    rules.partition("x", "y")
    assert rules.blocked("a", "c") and rules.blocked("c", "b")
    assert not rules.blocked("a", "b") and not rules.blocked("a", "zzz")
    rules.set_group("x", ["a"])  # redefining a group moves b out of the partition
    assert rules.blocked("a", "c") and not rules.blocked("b", "c")
    rules.heal("x", "y")
    assert not rules.partitioned


async def test_pause_holds_both_directions_then_delivers_late(nursery: trio.Nursery,
                                                              autojump_clock: trio.testing.MockClock) -> None:
    n = await network(nursery, "ab", LinkFaults(), held_max=3)
    got_by_a: list[tuple[float, bytes]] = []

    async def a_reader() -> None:
        while True:
            frame = await n["a"].receive()
            got_by_a.append((trio.current_time(), frame))

    nursery.start_soon(a_reader)
    await trio.testing.wait_all_tasks_blocked()  # the reader is waiting inside the inner transport
    n["a"].pause()
    t0 = trio.current_time()
    for i in range(5):
        await n["a"].send("b", b"out%d" % i)
    await n["b"].send("a", b"in")
    await trio.sleep(5)
    assert await drain(n["b"]) == [] and got_by_a == []
    await n["a"].resume()
    assert await drain(n["b"]) == [b"out2", b"out3", b"out4"]  # held_max=3 kept the newest
    await trio.testing.wait_all_tasks_blocked()
    assert got_by_a == [(pytest.approx(t0 + 5), b"in")]
    s = n["a"].statistics()
    assert (s["held"], s["dropped_held_full"], s["released"], s["held_inbound"]) == (5, 2, 3, 1)


async def test_faults_change_at_runtime(nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    rules = LinkFaults()
    n = await network(nursery, "ab", rules)
    await n["a"].send("b", b"1")
    rules.drop_rate = 1.0
    await n["a"].send("b", b"2")
    rules.drop_rate = 0.0
    rules.latency = Latency(base_s=1.0)
    await n["a"].send("b", b"3")
    assert await drain(n["b"]) == [b"1"]
    await trio.sleep(1.0)
    assert await drain(n["b"]) == [b"3"]


async def test_in_flight_bound(nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    n = await network(nursery, "ab", LinkFaults(latency=Latency(base_s=1.0)), in_flight_max=10)
    for _ in range(15):
        await n["a"].send("b", b"x")
    await trio.sleep(2)
    assert len(await drain(n["b"])) == 10
    assert n["a"].statistics()["dropped_in_flight_full"] == 5


async def test_send_with_latency_requires_run() -> None:
    t = FaultyTransport(MemoryHub().transport("a"), random.Random(0), LinkFaults(latency=Latency(0.1)))
    with pytest.raises(RuntimeError):
        await t.send("b", b"x")


async def test_cancelled_receive_while_paused_loses_nothing(nursery: trio.Nursery,
                                                            autojump_clock: trio.testing.MockClock) -> None:
    n = await network(nursery, "ab", LinkFaults())
    with trio.move_on_after(1):
        n["a"].pause()
        nursery.start_soon(n["b"].send, "a", b"kept")
        await n["a"].receive()  # takes the frame, holds it, then is cancelled
    await n["a"].resume()
    assert await n["a"].receive() == b"kept"
