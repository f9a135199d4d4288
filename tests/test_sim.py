"""The simulation engine (gossip/sim.py) itself: exact replay from a seed, and each fault doing what it
says (loss, latency, partitions, crashes and restarts, pauses, slow receivers, leaves)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from gossip.config import GossipConfig
from gossip.messages import EventKind, Send
from gossip.sim import Latency, SimNode, Simulation
from testnet.sim import new_sim, reproducible, start_cluster

ROOT = Path(__file__).resolve().parent.parent


def eventful_run(seed: int) -> Simulation:
    """A little of every fault, so replay covers every code path of the engine."""
    sim = new_sim(seed, trace=True, drop_rate=0.02, latency=Latency(0.001, 0.002, "exponential"))
    assert start_cluster(sim, 12) is not None
    sim.set_group("a", ["n1", "n2", "n3"])
    sim.set_group("b", ["n4", "n5"])
    sim.at(sim.now + 1, lambda: sim.faults.partition("a", "b"))
    sim.at(sim.now + 2, lambda: sim.crash("n6"))
    sim.at(sim.now + 3, lambda: sim.pause("n7"))
    sim.at(sim.now + 6, lambda: sim.resume("n7"))
    sim.at(sim.now + 7, lambda: sim.slow("n8", 0.8))
    sim.at(sim.now + 12, lambda: sim.faults.heal())
    sim.at(sim.now + 14, lambda: sim.restart("n6", seeds=["n0"]))
    sim.at(sim.now + 15, lambda: sim.leave("n9"))
    sim.run_for(40)
    return sim


def test_same_seed_replays_exactly() -> None:
    with reproducible("engine-replay", 5):
        a, b = eventful_run(5), eventful_run(5)
        assert a.trace_digest() == b.trace_digest()
        assert a.statistics() == b.statistics()
        assert a.sent_by_type == b.sent_by_type
        assert eventful_run(6).trace_digest() != a.trace_digest()


def test_replay_does_not_depend_on_the_hash_seed() -> None:
    """Set iteration order changes with PYTHONHASHSEED: a run must not depend on it, or a seed
    printed by one process would not replay in another."""
    code = "from tests.test_sim import eventful_run; print(eventful_run(5).trace_digest())"
    digests = set()
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed, PYTHONPATH=str(ROOT))
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                             check=True, timeout=120)
        digests.add(out.stdout.strip())
    assert digests == {eventful_run(5).trace_digest()}


def test_reproducible_prints_the_replay_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(AssertionError), reproducible("crash", 42, n=100):
        raise AssertionError("boom")
    assert "reproduce with seed=42: python -m testnet.sim crash --seed 42 --n 100" in capsys.readouterr().err


def test_latency_delays_every_packet() -> None:
    sim = Simulation(1, random.Random, latency=Latency(base_s=0.25))
    sim.add_node()
    sim.add_node(seeds=["n0"])  # push-pull there and the reply back: two one-way delays
    sim.run_for(5)
    assert sim.first_seen[("n1", EventKind.JOINED)] == pytest.approx(0.25)
    assert sim.first_seen[("n0", EventKind.JOINED)] == pytest.approx(0.5)


def test_total_loss_delivers_nothing() -> None:
    sim = Simulation(1, random.Random, drop_rate=1.0)
    sim.add_node()
    sim.add_node(seeds=["n0"])
    sim.run_for(30)
    assert sim.stats["delivered"] == 0 and sim.stats["dropped_random"] == sim.stats["sent"] > 0
    assert sim.view("n0") == {"n0"} and sim.view("n1") == {"n1"}


def test_one_way_partition_blocks_one_direction() -> None:
    sim = Simulation(1, random.Random)
    assert start_cluster(sim, 2) is not None
    sim.set_group("x", ["n0"])
    sim.set_group("y", ["n1"])
    sim.faults.block("x", "y")
    got = {i: sim.nodes[i].swim.statistics()["msgs_received"] for i in ("n0", "n1")}  # type: ignore[union-attr]
    sim.run_for(20)
    after = {i: sim.nodes[i].swim.statistics()["msgs_received"] for i in ("n0", "n1")}  # type: ignore[union-attr]
    assert after["n1"] == got["n1"] and after["n0"] > got["n0"]
    assert sim.stats["dropped_partition"] > 0


def test_crash_then_restart_at_a_higher_incarnation() -> None:
    sim = new_sim(3)
    assert start_cluster(sim, 10) is not None
    sim.crash("n4")
    assert sim.run_until_true(lambda: sim.dead_known_by("n4") == 9, 60) is not None
    assert sim.stats["dropped_unreachable"] > 0
    assert sim.false_deaths == set()  # dead news about a crashed node is true news
    sim.restart("n4", seeds=["n0"])
    swim = sim.nodes["n4"].swim
    assert swim is not None and swim.incarnation >= 1
    assert sim.run_until_true(sim.converged, 60) is not None
    assert all("n4" in sim.view(i) for i in sim.running_ids())
    with pytest.raises(RuntimeError):
        sim.restart("n4")


def test_paused_node_processes_nothing_then_everything() -> None:
    sim = new_sim(2)
    assert start_cluster(sim, 5) is not None
    swim = sim.nodes["n2"].swim
    assert swim is not None
    sim.pause("n2")
    received = swim.statistics()["msgs_received"]
    sim.run_for(3)
    assert swim.statistics()["msgs_received"] == received
    backlog = len(sim.nodes["n2"].inbox)
    assert backlog > 0
    sim.resume("n2")
    assert swim.statistics()["msgs_received"] == received + backlog
    assert sim.nodes["n2"].inbox == []


def test_paused_inbox_is_bounded() -> None:
    sim = Simulation(2, random.Random, inbox_max=3)
    assert start_cluster(sim, 6) is not None
    sim.pause("n1")
    sim.run_for(10)
    assert len(sim.nodes["n1"].inbox) == 3 and sim.stats["dropped_inbox_full"] > 0


def test_slow_receiver_handles_packets_late() -> None:
    sim = Simulation(1, random.Random, latency=Latency(base_s=0.01))
    sim.add_node()
    sim.slow("n0", 2.0)
    sim.add_node(seeds=["n0"])
    sim.run_for(5)
    assert sim.first_seen[("n1", EventKind.JOINED)] == pytest.approx(2.01)
    assert sim.first_seen[("n0", EventKind.JOINED)] == pytest.approx(2.02)


def test_leave_is_not_a_false_death() -> None:
    sim = new_sim(4)
    assert start_cluster(sim, 8) is not None
    sim.leave("n3")
    assert sim.run_until_true(lambda: sim.dead_known_by("n3") == 7, 30) is not None
    sim.run_for(5)
    assert not sim.nodes["n3"].running
    assert sim.false_deaths == set() and sim.converged()


def test_views_from_events_match_the_nodes_own_lists() -> None:
    sim = eventful_run(9)
    for i in sim.running_ids():
        swim = sim.nodes[i].swim
        assert swim is not None
        assert sim.view(i) == set(swim.alive_ids())


def test_run_until_true_gives_up_at_the_timeout() -> None:
    sim = Simulation(1, random.Random, GossipConfig.sim(), drop_rate=1.0)
    sim.add_node()
    sim.add_node(seeds=["n0"])
    assert sim.run_until_true(sim.converged, timeout_s=2.0) is None
    assert sim.now == pytest.approx(2.0)


def test_byte_counts_match_the_codec_bounds() -> None:
    from gossip.codec import frame_overhead_bytes, message_bytes

    sim = new_sim(8, count_bytes=True)
    expected = 0
    send = sim._send

    def counting_send(node: SimNode, e: Send) -> None:
        nonlocal expected
        expected += message_bytes(e.msg) + frame_overhead_bytes(sim.network, node.addr)
        send(node, e)

    sim._send = counting_send  # type: ignore[method-assign]
    assert start_cluster(sim, 15) is not None
    sim.crash("n3")
    sim.run_for(20)
    assert sim.stats["bytes_sent"] == expected > 0
