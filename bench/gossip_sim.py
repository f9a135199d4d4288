"""Gossip at scale in the simulator (gossip/sim.py via testnet/sim.py): N = 10..1000 SwimNodes on a virtual
clock -> a table and bench/results/gossip_sim.json.

Per N, one main run: cold start through one seed, then a 60 s window in which a member joins (at +5 s)
and one crashes (at +20 s); message and byte rates are taken over that window. Then one run per loss
level (0, 5, 10 %) for false positives. The headline is the main run at N=1000: its wall time
(target: under 60 s for 1000 nodes x 60 simulated seconds on 2 cores).

Run: python bench/gossip_sim.py [--sizes 10,30,100,300,1000] [--seed 1] [--loss-s 60] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import math
import pstats
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gossip.config import GossipConfig  # noqa: E402
from gossip.messages import EventKind  # noqa: E402
from gossip.suspicion import suspicion_min_s  # noqa: E402
from testnet.sim import ByteCounter, new_sim, start_cluster  # noqa: E402

WINDOW_S = 60.0
JOIN_AT_S = 5.0
CRASH_AT_S = 20.0
SWIM_FIRST_DETECTION_PERIODS = math.e / (math.e - 1)  # SWIM paper, section 3.1: expected 1.58 periods


def main_run(seed: int, n: int) -> dict[str, Any]:
    """Cold start, then the 60 s window with one join and one crash."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    sim = new_sim(seed)
    converge_s = start_cluster(sim, n, timeout_s=300.0)
    wall_start, cpu_start = time.perf_counter() - wall0, time.process_time() - cpu0
    sim.message_bytes = ByteCounter(sim.network).size
    t0, before = sim.now, dict(sim.stats)
    window: dict[str, int] = {}
    sim.at(t0 + WINDOW_S, lambda: window.update(sim.stats))

    sim.run_until(t0 + JOIN_AT_S)
    newcomer = sim.add_node(seeds=["n0"])
    join_s = sim.run_until_true(lambda: sim.known_by(newcomer) == n, 60.0, check_every_s=0.01)

    sim.run_until(t0 + CRASH_AT_S)
    victim = f"n{random.Random(seed).randrange(1, n)}"
    crashed_at = sim.now
    sim.crash(victim)
    all_dead_s = sim.run_until_true(lambda: sim.dead_known_by(victim) == n, 120.0, check_every_s=0.05)
    sim.run_until(max(sim.now, t0 + WINDOW_S))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0

    seen = sim.dead_seen.get(victim, {})
    suspect_at = sim.first_seen.get((victim, EventKind.SUSPECT))
    members = n + 0.5  # n+1 members after the join, n after the crash: near enough over the window
    sent = window["sent"] - before["sent"]
    return {
        "n": n, "seed": seed, "converge_s": converge_s, "join_known_by_all_s": join_s,
        "first_suspect_s": None if suspect_at is None else suspect_at - crashed_at,
        "first_dead_s": min(seen.values()) - crashed_at if seen else None,
        "dead_at_all_s": all_dead_s,
        "msgs_per_member_s": sent / WINDOW_S / members,
        "bytes_per_member_s": (window["bytes_sent"] - before["bytes_sent"]) / WINDOW_S / members,
        "false_deaths": len(sim.false_deaths), "converged_at_end": sim.converged(),
        "wall_s": wall, "wall_cold_start_s": wall_start, "cpu_s": cpu, "cpu_cold_start_s": cpu_start,
        "sim_msgs_total": sim.stats["sent"], "sim_msgs_per_wall_s": sim.stats["sent"] / wall,
        "sim_seconds": sim.now,
    }


def loss_run(seed: int, n: int, drop_rate: float, duration_s: float) -> dict[str, Any]:
    """Cold start, then duration_s at drop_rate loss; nothing observed but MemberEvents (at 0 % loss
    and 60 s this is the plain "N nodes x 60 simulated seconds" timing)."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    sim = new_sim(seed)
    start_cluster(sim, n, timeout_s=300.0)
    sim.faults.drop_rate = drop_rate
    sim.run_for(duration_s)
    return {"false_suspicions": len(sim.false_suspicions), "false_deaths": len(sim.false_deaths),
            "wall_s": time.perf_counter() - wall0, "cpu_s": time.process_time() - cpu0}


def fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10,30,100,300,1000")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--losses", default="0,0.05,0.1")
    ap.add_argument("--loss-s", type=float, default=60.0, help="simulated seconds of each loss run")
    ap.add_argument("--profile", action="store_true", help="profile the main run at the largest size")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "gossip_sim.json"))
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    losses = [float(x) for x in args.losses.split(",") if x]
    cfg = GossipConfig.sim()

    if args.profile:
        prof = cProfile.Profile()
        prof.runcall(main_run, args.seed, sizes[-1])
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return

    rows = []
    for n in sizes:
        row = main_run(args.seed, n)
        for loss in losses:
            row[f"loss_{loss:g}"] = loss_run(args.seed, n, loss, args.loss_s)
        rows.append(row)
        print(f"  N={n}: main run {row['wall_s']:.1f} s wall, {row['cpu_s']:.1f} s CPU", file=sys.stderr, flush=True)

    print(f"\nSWIM/Lifeguard in simulation, seed {args.seed}; LAN latency ~1 ms; probe {cfg.probe_interval_s:g} s,"
          f" gossip {cfg.gossip_interval_s * 1000:g} ms x {cfg.gossip_nodes} (memberlist DefaultLANConfig)")
    head = ("N", "start s", "join->all s", "target", "1st susp s", "SWIM", "1st dead s", "all dead s",
            "susp min..max", "msg/m/s", "B/m/s", *(f"FP {x:.0%}" for x in losses), "wall s", "cpu s")
    print(" | ".join(head))
    for r in rows:
        n = r["n"]
        target = 3 * math.log2(n + 1) * cfg.gossip_interval_s
        smin = suspicion_min_s(cfg.suspicion_mult, n, cfg.probe_interval_s)
        fps = [f"{r[f'loss_{x:g}']['false_suspicions']}/{r[f'loss_{x:g}']['false_deaths']}" for x in losses]
        print(" | ".join((
            str(n), fmt(r["converge_s"]), fmt(r["join_known_by_all_s"]), f"<={target:.1f}",
            fmt(r["first_suspect_s"]), f"{SWIM_FIRST_DETECTION_PERIODS * cfg.probe_interval_s:.2f}",
            fmt(r["first_dead_s"]), fmt(r["dead_at_all_s"]),
            f"{smin:.0f}..{smin * cfg.suspicion_max_timeout_mult:.0f}",
            fmt(r["msgs_per_member_s"], 1), fmt(r["bytes_per_member_s"], 0), *fps, fmt(r["wall_s"], 1), fmt(r["cpu_s"], 1))))
    print("FP = false suspicions / false deaths in a", f"{args.loss_s:g} s run at that loss;",
          "SWIM = expected first detection e/(e-1) probe periods (after it, the suspicion timeout);",
          "dissemination target 3 x log2(N) gossip intervals (SWIM: O(log N) periods).")
    big = rows[-1]
    print(f"\nheadline, N={big['n']}: main run (cold start {fmt(big['converge_s'])} s + {WINDOW_S:g} s with a join, "
          f"a crash and byte counting): {big['wall_s']:.1f} s wall, {big['cpu_s']:.1f} s CPU "
          f"({big['cpu_cold_start_s']:.1f} s CPU of it the cold start); "
          f"{big['sim_msgs_per_wall_s']:.0f} simulated messages per wall second")
    plain = big.get("loss_0")
    if plain is not None and args.loss_s == WINDOW_S:
        print(f"  plain cold start + {WINDOW_S:g} s, no faults: {plain['wall_s']:.1f} s wall, {plain['cpu_s']:.1f} s CPU"
              " (wall exceeds CPU when the machine is shared)")

    out = {"seed": args.seed, "window_s": WINDOW_S, "loss_run_s": args.loss_s,
           "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
           "swim_first_detection_periods": SWIM_FIRST_DETECTION_PERIODS, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
