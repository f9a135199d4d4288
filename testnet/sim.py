"""Seeded gossip simulation scenarios over gossip/sim.py: the driver that owns `random.Random`, the
scenarios tests and benchmarks share, and `reproduce with seed=N`. Runs no processes, opens no sockets.

    python -m testnet.sim crash --seed 3 --n 100
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gossip.codec import (  # noqa: E402
    ACK_FIXED_BYTES,
    GOSSIP_FIXED_BYTES,
    PING_FIXED_BYTES,
    PUSHPULL_FIXED_BYTES,
    alive_bytes,
    frame_overhead_bytes,
    message_bytes,
    meta_bytes,
    str_bytes,
    update_bytes,
)
from gossip.config import GossipConfig  # noqa: E402
from gossip.messages import Ack, Alive, EventKind, Gossip, Message, Meta, Ping, PushPull, Suspect, Update  # noqa: E402
from gossip.sim import LAN_LATENCY, Latency, Simulation  # noqa: E402

Result = dict[str, Any]


def new_sim(seed: int, *, config: GossipConfig | None = None, lifeguard: bool = True, drop_rate: float = 0.0,
            latency: Latency = LAN_LATENCY, trace: bool = False, count_bytes: bool = False) -> Simulation:
    config = (config or GossipConfig.sim()).replace(lifeguard=lifeguard)
    sim = Simulation(seed, random.Random, config, latency=latency, drop_rate=drop_rate, trace=trace)
    if count_bytes:
        sim.message_bytes = ByteCounter(sim.network).size
    return sim


@contextlib.contextmanager
def reproducible(scenario: str, seed: int, **params: object) -> Iterator[None]:
    """On any failure inside, print the one line that replays this exact run."""
    try:
        yield
    except BaseException:
        args = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in params.items())
        print(f"reproduce with seed={seed}: python -m testnet.sim {scenario} --seed {seed} {args}".rstrip(),
              file=sys.stderr)
        raise


def start_cluster(sim: Simulation, n: int, stagger_s: float = 0.01, timeout_s: float = 120.0) -> float | None:
    """n nodes: n0 alone, then one more every stagger_s joining through n0 (the only seed). Returns the
    time from the last start until every node sees all n, or None on timeout."""
    sim.add_node()
    for i in range(1, n):
        sim.at(sim.now + i * stagger_s, lambda: sim.add_node(seeds=["n0"]))
    sim.run_for((n - 1) * stagger_s)
    return sim.run_until_true(sim.converged, timeout_s, check_every_s=0.05 if n <= 100 else 0.25)


def _rates(sim: Simulation, since: dict[str, int], seconds: float, n: int) -> Result:
    sent = sim.stats["sent"] - since["sent"]
    out: Result = {"msgs_per_member_s": sent / seconds / n}
    if since.get("bytes_sent") is not None and sim.stats["bytes_sent"]:
        out["bytes_per_member_s"] = (sim.stats["bytes_sent"] - since["bytes_sent"]) / seconds / n
    return out


def scenario_join(seed: int, n: int, **kw: Any) -> Result:
    """Cold start through one seed, then one more member: how long until everyone knows it."""
    sim = new_sim(seed, **kw)
    converge_s = start_cluster(sim, n)
    newcomer = sim.add_node(seeds=["n0"])
    known_s = sim.run_until_true(lambda: sim.known_by(newcomer) == n, 60.0, check_every_s=0.01)
    before, t0 = dict(sim.stats), sim.now
    sim.run_for(30.0)
    return {"n": n, "seed": seed, "converge_s": converge_s, "join_known_by_all_s": known_s,
            "converged": sim.converged(), **_rates(sim, before, sim.now - t0, n + 1),
            "false_deaths": len(sim.false_deaths)}


def scenario_crash(seed: int, n: int, **kw: Any) -> Result:
    """Crash one member of a converged cluster: first suspicion, first and last declaration of death."""
    sim = new_sim(seed, **kw)
    start_cluster(sim, n)
    sim.run_for(5.0)
    victim = f"n{random.Random(seed).randrange(1, n)}"
    t0 = sim.now
    sim.crash(victim)
    others = n - 1
    all_s = sim.run_until_true(lambda: sim.dead_known_by(victim) == others, 120.0, check_every_s=0.05)
    seen = sim.dead_seen.get(victim, {})
    first_suspect = sim.first_seen.get((victim, EventKind.SUSPECT))
    return {"n": n, "seed": seed, "victim": victim, "dead_at_all_s": all_s,
            "first_suspect_s": None if first_suspect is None else first_suspect - t0,
            "first_dead_s": min(seen.values()) - t0 if seen else None,
            "false_deaths": len(sim.false_deaths)}


def scenario_loss(seed: int, n: int, drop_rate: float, duration_s: float, **kw: Any) -> Result:
    """Converge without loss, then run with drop_rate message loss: nobody running may be declared dead."""
    sim = new_sim(seed, **kw)
    converge_s = start_cluster(sim, n)
    sim.faults.drop_rate = drop_rate
    before, t0 = dict(sim.stats), sim.now
    sim.run_for(duration_s)
    return {"n": n, "seed": seed, "drop_rate": drop_rate, "duration_s": duration_s, "converge_s": converge_s,
            "false_deaths": len(sim.false_deaths), "false_suspicions": len(sim.false_suspicions),
            "converged": sim.converged(), **_rates(sim, before, sim.now - t0, n)}


def scenario_partition(seed: int, n: int, split_s: float = 60.0, one_way: bool = False, **kw: Any) -> Result:
    """Split a converged cluster in two halves for split_s, heal, and time until membership is whole."""
    sim = new_sim(seed, **kw)
    start_cluster(sim, n)
    half = n // 2
    sim.set_group("a", [f"n{i}" for i in range(half)])
    sim.set_group("b", [f"n{i}" for i in range(half, n)])
    if one_way:
        sim.faults.block("a", "b")
    else:
        sim.faults.partition("a", "b")
    sim.run_for(split_s)
    split_seen = not sim.converged()
    sim.faults.heal()
    heal_s = sim.run_until_true(sim.converged, 300.0, check_every_s=0.1)
    return {"n": n, "seed": seed, "one_way": one_way, "split_seen": split_seen, "heal_converge_s": heal_s}


def scenario_pause(seed: int, n: int, pause_s: float = 5.0, lifeguard: bool = True, **kw: Any) -> Result:
    """Pause one member (SIGSTOP) for pause_s: it should be suspected, then refute when it wakes."""
    sim = new_sim(seed, lifeguard=lifeguard, **kw)
    start_cluster(sim, n)
    sim.run_for(5.0)
    victim = f"n{random.Random(seed).randrange(1, n)}"
    swim = sim.nodes[victim].swim
    assert swim is not None
    # Stop it while its own probe is in flight (a probe waits ~1 ms of a 1 s period, so a pause at a
    # random instant almost never does): on waking, the unanswered probe tempts it to accuse a healthy
    # peer — the case Lifeguard's local health awareness exists for.
    sim.run_until_true(lambda: swim.probing is not None, 5.0, check_every_s=0.0005)
    sim.pause(victim)
    sim.run_for(pause_s)
    sim.resume(victim, timers_first=True)
    refuted_s = sim.run_until_true(lambda: sim.suspected_by(victim) == 0 and sim.converged(), 60.0,
                                   check_every_s=0.01)
    sim.run_for(30.0)
    about_victim = [e for e in sim.false_suspicions if e[0] == victim]
    return {"n": n, "seed": seed, "lifeguard": lifeguard, "victim": victim,
            "suspected": bool(about_victim), "killed": victim in sim.dead_seen,
            "refuted_after_resume_s": refuted_s, "converged": sim.converged(),
            "false_suspicions": len(sim.false_suspicions),
            "false_suspicions_of_others": len(sim.false_suspicions) - len(about_victim),
            "false_deaths": len(sim.false_deaths)}


def scenario_slow(seed: int, n: int, lag_s: float = 1.0, duration_s: float = 60.0, lifeguard: bool = True,
                  **kw: Any) -> Result:
    """One member handles every packet lag_s late (its timers keep time), for duration_s: how often do
    healthy members get suspected because of it (Lifeguard, section 2)?"""
    sim = new_sim(seed, lifeguard=lifeguard, **kw)
    start_cluster(sim, n)
    sim.run_for(5.0)
    victim = f"n{random.Random(seed).randrange(1, n)}"
    sim.slow(victim, lag_s)
    sim.run_for(duration_s)
    sim.slow(victim, 0.0)
    sim.run_for(30.0)
    of_victim = sum(1 for e in sim.false_suspicions if e[0] == victim)
    return {"n": n, "seed": seed, "lifeguard": lifeguard, "victim": victim, "lag_s": lag_s,
            "false_suspicions_of_healthy": len(sim.false_suspicions) - of_victim,
            "false_suspicions_of_slow": of_victim, "false_deaths": len(sim.false_deaths),
            "converged": sim.converged()}


class ByteCounter:
    """codec's size bounds, memoised per string and per metadata object: ids, addresses and metadata
    repeat in nearly every message, so a message costs a few dict lookups (tests compare the totals
    with codec.message_bytes). `counter.size` is what Simulation.message_bytes takes."""

    _LIMIT = 1_000_000  # entries per table before it starts over: a bound, not a tuning knob

    def __init__(self, network: str = "default") -> None:
        self.network = network
        self._strs: dict[str, int] = {}
        self._metas: dict[int, tuple[Meta, int]] = {}  # id(meta) -> (meta, size); holding it pins the id
        # A record's bytes besides its strings and metadata, taken from the codec itself.
        self._alive_fixed = alive_bytes("", "", 0) - 2 * str_bytes("")
        self._other_fixed = update_bytes(Suspect("", 0, "")) - 2 * str_bytes("")
        self._frame_fixed = frame_overhead_bytes(network, "") - str_bytes("")

    def size(self, src_addr: str, msg: Message) -> int:
        """A whole frame: the message and its envelope (key, signature, network, sender address)."""
        return self._frame_fixed + self._str(src_addr) + self.message(msg)

    def message(self, msg: Message) -> int:
        if type(msg) is Gossip:
            return GOSSIP_FIXED_BYTES + self._updates(msg.updates)
        if type(msg) is Ping:
            return PING_FIXED_BYTES + self._str(msg.target) + self._updates(msg.updates)
        if type(msg) is Ack:
            return ACK_FIXED_BYTES + self._updates(msg.updates)
        if type(msg) is PushPull:
            fixed, s_, meta = self._alive_fixed, self._str, self._meta
            return PUSHPULL_FIXED_BYTES + sum(fixed + s_(s.node) + s_(s.addr) + meta(s.meta) for s in msg.states)
        return message_bytes(msg)

    def _updates(self, updates: tuple[Update, ...]) -> int:
        s_ = self._str
        total = 0
        for u in updates:
            if type(u) is Alive:
                total += self._alive_fixed + s_(u.node) + s_(u.addr) + self._meta(u.meta)
            else:
                total += self._other_fixed + s_(u.node) + s_(u.by)  # type: ignore[union-attr]
        return total

    def _str(self, s: str) -> int:
        size = self._strs.get(s)
        if size is None:
            if len(self._strs) >= self._LIMIT:
                self._strs.clear()
            size = self._strs[s] = str_bytes(s)
        return size

    def _meta(self, m: Meta) -> int:
        hit = self._metas.get(id(m))
        if hit is None or hit[0] is not m:
            if len(self._metas) >= self._LIMIT:
                self._metas.clear()
            hit = self._metas[id(m)] = (m, meta_bytes(m))
        return hit[1]


SCENARIOS: dict[str, Callable[..., Result]] = {"join": scenario_join, "crash": scenario_crash, "loss": scenario_loss,
             "partition": scenario_partition, "pause": scenario_pause, "slow": scenario_slow}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario", choices=sorted(SCENARIOS))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--drop-rate", type=float, default=0.1, help="loss")
    ap.add_argument("--duration-s", type=float, default=600.0, help="loss, slow")
    ap.add_argument("--lifeguard", type=int, default=1, help="pause, slow: 1 on, 0 off")
    args = ap.parse_args(argv)
    kw: dict[str, Any] = {}
    if args.scenario == "loss":
        kw = {"drop_rate": args.drop_rate, "duration_s": args.duration_s}
    elif args.scenario in ("pause", "slow"):
        kw = {"lifeguard": bool(args.lifeguard)}
        if args.scenario == "slow":
            kw["duration_s"] = args.duration_s
    print(json.dumps(SCENARIOS[args.scenario](args.seed, args.n, **kw), indent=2))


if __name__ == "__main__":
    main()
