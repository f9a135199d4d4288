"""Cluster benchmark (issue 4) -> a table per section and bench/results/cluster.json (sections merged).

Owns measurement only; it must not tune ring/ or node/. Section "ring": ring/partition.py (Q = 2**17
partitions placed by weighted rendezvous hashing) against uhashring (a plain consistent-hash ring, 160
vnodes per node), in the same process: balance, movement on a join/leave, capacity proportionality,
lookup rates, and how many double failures cost some key its quorum (RF 3, W = R = 2).
Sections quorum, join, repair, search: real nodes in one process (bench/cluster_nodes.py).
Run: python bench/cluster.py [--sections ring,quorum,join,repair,search] [--nodes 30] [--keys 200000] [--seed 1]
     quick node run: --sections quorum,join,repair,search --memories 20000 --missed 2000 --ops 500
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

# One BLAS thread per calling thread, as `mnemonet node` runs (node/cli.py): with the library default
# (2 here), 4 concurrent searches on one node ran at 105/s against 214/s. Set before numpy loads.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import cluster_nodes  # noqa: E402
from bench.tables import print_table  # noqa: E402
from ring.partition import Placement, StorageNode, diff, memory_key  # noqa: E402

NS = "bench"
RF = 3
MD5_SPACE = 1 << 128  # uhashring's default hash: int(md5(key).hexdigest(), 16)
SWEEP_VNODES = (1, 4, 16, 64, 160)  # uhashring vnodes per node, for the availability trade-off
SWEEP_BITS = (5, 7, 9, 11, 13, 17)  # our partition_bits, ditto


# ---------------------------------------------------------------- replica sets as node-code arrays

def node_name(i: int) -> str:
    return f"node-{i:02d}"


def ours_sets(pl: Placement, code: dict[str, int], hashes: np.ndarray | None = None) -> np.ndarray:
    """[keys or partitions, RF] global node codes, most preferred first: by keys if `hashes` is
    given (the array path: a shift and an index), else exactly one row per partition."""
    codes = np.array([code[n] for n in pl.nodes], dtype=np.int64)
    if hashes is None:
        return codes[pl.table]
    return codes[pl.table[hashes >> np.uint64(64 - pl.partition_bits)]]


def uh_ring(names: Sequence[str], vnodes: int, weights: Sequence[int] | None = None) -> Any:
    from uhashring import HashRing

    w = weights or [1] * len(names)
    return HashRing({n: {"weight": wi} for n, wi in zip(names, w, strict=True)}, vnodes=vnodes)


def uh_sets(ring: Any, keys: Sequence[str], code: dict[str, int]) -> np.ndarray:
    """The library's own answer per key: range(key, size=RF, unique=True) walks the ring clockwise
    from the key and yields the first RF distinct nodes (the first is get_node(key))."""
    out = np.empty((len(keys), RF), dtype=np.int64)
    for i, k in enumerate(keys):
        out[i] = [code[c["nodename"]] for c in ring.range(k, size=RF, unique=True)]
    return out


def uh_arcs(ring: Any, code: dict[str, int]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Exact ring model from get_points(): arc i = [pos[i-1], pos[i]) of the md5 space belongs to
    point i (bisect_right, wrapping); its replica set = RF distinct nodes walking on from i.
    Returns (arc fractions, [arcs, RF] codes, sorted point positions)."""
    pts = ring.get_points()
    pos = [p for p, _ in pts]
    owner = [code[n] for _, n in pts]
    m = len(pos)
    frac = np.array([1.0 if m == 1 else ((pos[i] - pos[i - 1]) % MD5_SPACE) / MD5_SPACE for i in range(m)])
    sets = np.empty((m, RF), dtype=np.int64)
    for i in range(m):
        seen: list[int] = []
        j = i
        while len(seen) < RF:
            if owner[j] not in seen:
                seen.append(owner[j])
            j = (j + 1) % m
        sets[i] = seen
    return frac, sets, pos


# ---------------------------------------------------------------- metrics over (sets, weights)

def load(sets: np.ndarray, weights: np.ndarray, present: Sequence[int], capacity: Sequence[float],
         replicas: int) -> dict[str, float]:
    """Share of keys (or key space) per node, over the first `replicas` columns: max/mean, min/mean,
    and max/min of share / capacity share."""
    cols = sets[:, :replicas]
    mass = np.bincount(cols.ravel(), weights=np.repeat(weights, replicas), minlength=max(present) + 1)[list(present)]
    share = mass / mass.sum()
    cap = np.asarray(capacity, dtype=np.float64)
    ratio = share / (cap / cap.sum())
    return {"max_over_mean": round(float(share.max() / share.mean()), 4),
            "min_over_mean": round(float(share.min() / share.mean()), 4),
            "max_load_over_capacity_share": round(float(ratio.max()), 4),
            "min_load_over_capacity_share": round(float(ratio.min()), 4)}


def moved(old: np.ndarray, new: np.ndarray, weights: np.ndarray, node: int, joined: bool) -> dict[str, float]:
    """Share of keys whose primary moved and whose replica set changed; `needless` = changes that
    do not involve the joining (leaving) node, which a minimal-movement scheme never makes."""
    prim = old[:, 0] != new[:, 0]
    sets = (np.sort(old, axis=1) != np.sort(new, axis=1)).any(axis=1)
    involved = (new if joined else old) == node
    needless = (prim & ~involved[:, 0]) | (sets & ~involved.any(axis=1))
    total = weights.sum()
    return {"primary": round(float(weights[prim].sum() / total), 5),
            "replica_set": round(float(weights[sets].sum() / total), 5),
            "needless": round(float(weights[needless].sum() / total), 6)}


def pair_loss(sets: np.ndarray, weights: np.ndarray, present: Sequence[int]) -> dict[str, float]:
    """Over every pair of failed nodes: does some key lose its W=2 quorum (both failed nodes among
    its 3 replicas), and what share of keys does. The mean share is 3 / C(n, 2) for any placement
    with 3 distinct replicas per key; what placement changes is how the loss is spread."""
    s = np.sort(sets[:, :RF], axis=1)
    size = max(present) + 1
    pairs = np.concatenate([s[:, 0] * size + s[:, 1], s[:, 0] * size + s[:, 2], s[:, 1] * size + s[:, 2]])
    mass = np.bincount(pairs, weights=np.tile(weights, 3), minlength=size * size) / weights.sum()
    p = sorted(present)
    lost = mass[[a * size + b for i, a in enumerate(p) for b in p[i + 1:]]]
    return {"pairs": int(lost.size), "pairs_losing_some": round(float((lost > 0).mean()), 4),
            "mean_share_lost": round(float(lost.mean()), 6), "max_share_lost": round(float(lost.max()), 6),
            "expected_mean": round(3 / lost.size, 6)}


def best_rate(fn: Callable[[], object], ops: int, repeats: int = 3) -> float:
    """Ops per second of the best of `repeats` runs (the machine is shared: the best is the least disturbed)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return round(ops / best, 0)


def median_s(fn: Callable[[], object], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(float(np.median(times)), 5)


# ---------------------------------------------------------------- the ring section

def ring_section(args: argparse.Namespace) -> dict[str, Any]:
    n, vnodes = args.nodes, args.vnodes
    rng = random.Random(args.seed)
    names = [node_name(i) for i in range(n + 1)]  # names[n] is the joiner
    code = {nm: i for i, nm in enumerate(names)}
    base = names[:n]
    leaver = base[rng.randrange(n)]
    after_leave = [nm for nm in base if nm != leaver]
    ids = [f"{rng.getrandbits(64):016x}" for _ in range(args.keys)]
    uh_keys = [f"{NS}/{i}" for i in ids]
    hashes = np.array([memory_key(NS, i) for i in ids], dtype=np.uint64)
    per_key = np.full(len(ids), 1.0 / len(ids))
    ones = [1.0] * n
    out: dict[str, Any] = {"params": {"nodes": n, "keys": args.keys, "seed": args.seed, "rf": RF,
                                      "uhashring_vnodes": vnodes, "leaver": leaver, "joiner": names[n]}}

    def place(members: Sequence[str], caps: Sequence[float] | None = None, bits: int = 17) -> Placement:
        return Placement([StorageNode(m, c) for m, c in zip(members, caps or [1.0] * len(members), strict=True)],
                         n_replicas=RF, partition_bits=bits)

    # ---- build everything once
    pl, pl_join, pl_leave = place(base), place(names), place(after_leave)
    q = pl.partitions
    per_part = np.full(q, 1.0 / q)
    o_keys, o_exact = ours_sets(pl, code, hashes), ours_sets(pl, code)
    r, r_join, r_leave = uh_ring(base, vnodes), uh_ring(names, vnodes), uh_ring(after_leave, vnodes)
    u_keys = uh_sets(r, uh_keys, code)
    arc_w, arc_sets, arc_pos = uh_arcs(r, code)
    check = uh_keys[: min(2000, len(uh_keys))]  # the arc model must agree with the library
    assert all((arc_sets[bisect_right(arc_pos, r.hashi(k)) % len(arc_pos)] == u_keys[i]).all()
               for i, k in enumerate(check)), "uhashring arc model disagrees with range()"
    assert all(r.get_node(k) == names[u_keys[i, 0]] for i, k in enumerate(check))
    present = [code[m] for m in base]

    # ---- 1. balance
    def loads(sets: np.ndarray, weights: np.ndarray, caps: Sequence[float]) -> dict[str, Any]:
        return {"primary": load(sets, weights, present, caps, 1), "rf3": load(sets, weights, present, caps, RF)}

    out["balance"] = {"ours_keys": loads(o_keys, per_key, ones), "ours_partitions": loads(o_exact, per_part, ones),
                      "uhashring_keys": loads(u_keys, per_key, ones), "uhashring_arcs": loads(arc_sets, arc_w, ones)}

    # ---- 2. movement
    j, lv = code[names[n]], code[leaver]
    o_join, o_leave = ours_sets(pl_join, code, hashes), ours_sets(pl_leave, code, hashes)
    u_join, u_leave = uh_sets(r_join, uh_keys, code), uh_sets(r_leave, uh_keys, code)
    out["movement"] = {
        "ideal_join": {"primary": round(1 / (n + 1), 5), "replica_set": round(RF / (n + 1), 5)},
        "ideal_leave": {"primary": round(1 / n, 5), "replica_set": round(RF / n, 5)},
        "ours_join_keys": moved(o_keys, o_join, per_key, j, True),
        "ours_join_partitions": {**moved(o_exact, ours_sets(pl_join, code), per_part, j, True),
                                 "diff_movements_share": round(len(diff(pl, pl_join)) / q, 5)},
        "uhashring_join_keys": moved(u_keys, u_join, per_key, j, True),
        "ours_leave_keys": moved(o_keys, o_leave, per_key, lv, False),
        "ours_leave_partitions": {**moved(o_exact, ours_sets(pl_leave, code), per_part, lv, False),
                                  "diff_movements_share": round(len(diff(pl, pl_leave)) / q, 5)},
        "uhashring_leave_keys": moved(u_keys, u_leave, per_key, lv, False),
        "leaver_share_before": {
            "ours_primary": round(float((o_exact[:, 0] == lv).mean()), 5),
            "ours_rf3": round(float((o_exact == lv).any(axis=1).mean()), 5),
            "uhashring_primary": round(float(arc_w[arc_sets[:, 0] == lv].sum()), 5),
            "uhashring_rf3": round(float(arc_w[(arc_sets == lv).any(axis=1)].sum()), 5)},
    }

    # ---- 3. unequal capacities: the first third of the nodes at weight 2
    caps = [2.0 if i < n // 3 else 1.0 for i in range(n)]
    pl_w = place(base, caps)
    r_w = uh_ring(base, vnodes, [int(c) for c in caps])
    ow_keys, ow_exact = ours_sets(pl_w, code, hashes), ours_sets(pl_w, code)
    uw_keys = uh_sets(r_w, uh_keys, code)
    uw_arc_w, uw_arc_sets, _ = uh_arcs(r_w, code)
    out["capacity"] = {
        "capacities": f"{n // 3} nodes at 2, {n - n // 3} at 1",
        "ours_keys": loads(ow_keys, per_key, caps), "ours_partitions": loads(ow_exact, per_part, caps),
        "uhashring_keys": loads(uw_keys, per_key, caps), "uhashring_arcs": loads(uw_arc_sets, uw_arc_w, caps),
    }

    # ---- 4. lookups per second (same keys for both; per-key calls include everything they do)
    lk = min(args.lookups, len(ids))
    ks, ids_l, hs = uh_keys[:lk], ids[:lk], [int(h) for h in hashes[:lk]]
    arr = hashes[:lk]
    shift = np.uint64(64 - pl.partition_bits)
    table, pnames = pl.table, pl.nodes
    s = 64 - pl.partition_bits

    def loop(f: Callable[[Any], object], items: Iterable[Any]) -> Callable[[], None]:
        def run() -> None:
            for x in items:
                f(x)
        return run

    out["lookups_per_s"] = {
        "ours_owners_from_hash": best_rate(loop(pl.owners, hs), lk),
        "ours_owners0_from_hash": best_rate(loop(lambda h: pl.owners(h)[0], hs), lk),
        "ours_table_primary_from_hash": best_rate(loop(lambda h: pnames[table[h >> s, 0]], hs), lk),
        "ours_owners_from_key": best_rate(loop(lambda i: pl.owners(memory_key(NS, i)), ids_l), lk),
        "ours_owners0_from_key": best_rate(loop(lambda i: pl.owners(memory_key(NS, i))[0], ids_l), lk),
        "ours_memory_key_only": best_rate(loop(lambda i: memory_key(NS, i), ids_l), lk),
        "ours_batch_sets_from_hashes": best_rate(lambda: table[arr >> shift], lk, repeats=5),
        "ours_batch_primary_from_hashes": best_rate(lambda: table[arr >> shift, 0], lk, repeats=5),
        "uhashring_get_node_from_key": best_rate(loop(r.get_node, ks), lk),
        "uhashring_range3_from_key": best_rate(
            loop(lambda k: [c["nodename"] for c in r.range(k, size=RF, unique=True)], ks), lk),
        "targets": {"primary": 500_000, "replica_set": 300_000},
        "lookups": lk,
    }

    # ---- 5. double failures and quorum (RF 3, W = R = 2), with a sweep over the range count
    sweep_ours = {}
    for bits in SWEEP_BITS:
        p_b = pl if bits == pl.partition_bits else place(base, bits=bits)
        e = ours_sets(p_b, code)
        sweep_ours[str(1 << bits)] = {**pair_loss(e, np.full(len(e), 1.0 / len(e)), present),
                                      "rf3_max_over_mean": load(e, np.ones(len(e)), present, ones, RF)["max_over_mean"]}
    sweep_uh = {}
    for v in sorted({*SWEEP_VNODES, vnodes}):
        w_v, sets_v, _ = (arc_w, arc_sets, None) if v == vnodes else uh_arcs(uh_ring(base, v), code)
        sweep_uh[str(v)] = {**pair_loss(sets_v, w_v, present), "rf3_max_over_mean": load(sets_v, w_v, present, ones, RF)["max_over_mean"]}
    out["quorum_loss"] = {
        "ours_keys": pair_loss(o_keys, per_key, present), "ours_partitions": sweep_ours[str(q)],
        "uhashring_keys": pair_loss(u_keys, per_key, present), "uhashring_arcs": sweep_uh[str(vnodes)],
        "sweep_ours_by_partitions": sweep_ours, "sweep_uhashring_by_vnodes": sweep_uh,
    }

    # ---- construction
    out["construction_s"] = {
        "ours_placement": median_s(lambda: place(base)),
        "ours_placement_weighted": median_s(lambda: place(base, caps)),
        "uhashring_ring": median_s(lambda: uh_ring(base, vnodes)),
    }
    return out


# ---------------------------------------------------------------- printing



def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def print_ring(res: dict[str, Any]) -> None:
    p = res["params"]
    b, m, c, lk, ql = res["balance"], res["movement"], res["capacity"], res["lookups_per_s"], res["quorum_loss"]
    rows: list[list[str]] = []

    def row(metric: str, ours: float, uh: float, ideal: str, fmt: str = "{:.4f}", exact: float | None = None,
            uh_exact: float | None = None) -> None:
        o = fmt.format(ours) + ("" if exact is None else f" ({fmt.format(exact)})")
        u = fmt.format(uh) + ("" if uh_exact is None else f" ({fmt.format(uh_exact)})")
        rows.append([metric, o, u, ideal, _ratio(ours, uh)])

    for rep in ("primary", "rf3"):
        row(f"load max/mean, {rep}", b["ours_keys"][rep]["max_over_mean"], b["uhashring_keys"][rep]["max_over_mean"], "1",
            exact=b["ours_partitions"][rep]["max_over_mean"], uh_exact=b["uhashring_arcs"][rep]["max_over_mean"])
    for ev, ideal in (("join", m["ideal_join"]), ("leave", m["ideal_leave"])):
        for what in ("primary", "replica_set"):
            row(f"keys moved on {ev}, {what}", m[f"ours_{ev}_keys"][what], m[f"uhashring_{ev}_keys"][what],
                f"{ideal[what]:.4f}", exact=m[f"ours_{ev}_partitions"][what])
    for rep in ("primary", "rf3"):
        row(f"capacity 2:1, max load/capacity share, {rep}", c["ours_keys"][rep]["max_load_over_capacity_share"],
            c["uhashring_keys"][rep]["max_load_over_capacity_share"], "1",
            exact=c["ours_partitions"][rep]["max_load_over_capacity_share"],
            uh_exact=c["uhashring_arcs"][rep]["max_load_over_capacity_share"])
    row("lookups/s primary, per key from key string", lk["ours_owners0_from_key"], lk["uhashring_get_node_from_key"],
        f">={lk['targets']['primary']:,}", "{:,.0f}")
    row("lookups/s replica set, per key from key string", lk["ours_owners_from_key"], lk["uhashring_range3_from_key"],
        f">={lk['targets']['replica_set']:,}", "{:,.0f}")
    row("lookups/s primary, per key from key hash", lk["ours_owners0_from_hash"], lk["uhashring_get_node_from_key"],
        f">={lk['targets']['primary']:,}", "{:,.0f}")
    row("lookups/s replica set, per key from key hash", lk["ours_owners_from_hash"], lk["uhashring_range3_from_key"],
        f">={lk['targets']['replica_set']:,}", "{:,.0f}")
    row("lookups/s primary, per key, bare table index from hash", lk["ours_table_primary_from_hash"],
        lk["uhashring_get_node_from_key"], f">={lk['targets']['primary']:,}", "{:,.0f}")
    row("lookups/s primary, batch numpy (indices)", lk["ours_batch_primary_from_hashes"],
        lk["uhashring_get_node_from_key"], "-", "{:,.0f}")
    row("lookups/s replica sets, batch numpy (indices)", lk["ours_batch_sets_from_hashes"],
        lk["uhashring_range3_from_key"], "-", "{:,.0f}")
    row("double failures: share of pairs losing some key", ql["ours_keys"]["pairs_losing_some"],
        ql["uhashring_keys"]["pairs_losing_some"], "-", exact=ql["ours_partitions"]["pairs_losing_some"],
        uh_exact=ql["uhashring_arcs"]["pairs_losing_some"])
    row("double failures: mean share of keys lost", ql["ours_keys"]["mean_share_lost"],
        ql["uhashring_keys"]["mean_share_lost"], f"{ql['ours_keys']['expected_mean']:.4f}", "{:.5f}",
        exact=ql["ours_partitions"]["mean_share_lost"])
    row("double failures: max share of keys lost", ql["ours_keys"]["max_share_lost"],
        ql["uhashring_keys"]["max_share_lost"], "-", "{:.5f}", exact=ql["ours_partitions"]["max_share_lost"],
        uh_exact=ql["uhashring_arcs"]["max_share_lost"])
    cs = res["construction_s"]
    row(f"construction s ({p['nodes']} nodes; ours weighted in ())", cs["ours_placement"], cs["uhashring_ring"], "-", "{:.4f}",
        exact=cs["ours_placement_weighted"])
    footer = (f"by {p['keys']:,} random keys; in () exact: ours by all partitions, uhashring by its ring arcs "
              f"(get_points). uhashring replica set = range(key, size=3, unique=True). "
              f"Leaver {p['leaver']}: its share before was ours {m['leaver_share_before']['ours_primary']:.4f} primary / "
              f"{m['leaver_share_before']['ours_rf3']:.4f} RF3, uhashring {m['leaver_share_before']['uhashring_primary']:.4f} / "
              f"{m['leaver_share_before']['uhashring_rf3']:.4f}. Needless moves (not involving the joiner/leaver): ours "
              f"{m['ours_join_keys']['needless']}/{m['ours_leave_keys']['needless']}, uhashring "
              f"{m['uhashring_join_keys']['needless']}/{m['uhashring_leave_keys']['needless']}. Per-key 'from key hash' "
              f"for uhashring is the same call (it hashes internally). Batch = Placement.table[hashes >> shift], node "
              f"indices without names, hashing not included.")
    print_table(f"ring: ours (Q=2**17 rendezvous) vs uhashring ({p['uhashring_vnodes']} vnodes), {p['nodes']} nodes, RF 3",
                ["measure", "ours", "uhashring", "ideal/target", "ours/uh"], rows, footer)
    sweep = [[f"ours Q={k}", f"{v['pairs_losing_some']:.3f}", f"{v['max_share_lost']:.5f}", f"{v['rf3_max_over_mean']:.3f}"]
             for k, v in ql["sweep_ours_by_partitions"].items()]
    sweep += [[f"uhashring vnodes={k}", f"{v['pairs_losing_some']:.3f}", f"{v['max_share_lost']:.5f}",
               f"{v['rf3_max_over_mean']:.3f}"] for k, v in ql["sweep_uhashring_by_vnodes"].items()]
    print_table("double failures vs number of ranges (exact; mean share lost is 3/C(n,2) for all)",
                ["placement", "pairs losing some key", "max share lost", "RF3 load max/mean"], sweep)


# ---------------------------------------------------------------- main

SECTIONS: dict[str, tuple[Callable[[argparse.Namespace], dict[str, Any]], Callable[[dict[str, Any]], None]]] = {
    "ring": (ring_section, print_ring),
    **cluster_nodes.sections(),
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--nodes", type=int, default=30)
    ap.add_argument("--keys", type=int, default=200_000)
    ap.add_argument("--lookups", type=int, default=200_000, help="keys per lookup-rate run")
    ap.add_argument("--vnodes", type=int, default=160, help="uhashring vnodes per node")
    ap.add_argument("--seed", type=int, default=1)
    cluster_nodes.add_args(ap)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "cluster.json"))
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    chosen = [s for s in args.sections.split(",") if s]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        raise SystemExit(f"unknown sections {unknown}; available: {list(SECTIONS)}")
    path = Path(args.out)
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    results["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    for name in chosen:
        run, show = SECTIONS[name]
        t0 = time.perf_counter()
        res = run(args)
        res["wall_s"] = round(time.perf_counter() - t0, 1)
        show(res)
        results[name] = res
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
