"""The node sections of bench/cluster.py (issue 4): real nodes in one process on 127.0.0.1 (see
bench/cluster_harness.py) -> quorum, join, repair and search results, each against a baseline of the same run.

Owns what each section measures and how it prints; it must not tune node/ or ring/ (only documented
config knobs, reported in `params`). Every latency is through MemoryClient over websockets.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import trio

from bench.cluster_harness import (
    BenchNode,
    cluster_config,
    corpus,
    drive,
    load_cluster,
    load_single,
    new_memories,
    open_clients,
    placed,
    rebalanced,
    seal_indexes,
    start_node,
    start_ring,
    start_single,
    until,
)
from bench.datasets import text_split
from bench.tables import print_table
from crypto.identity import Identity
from node.client import MemoryClient
from node.embedder import HashingEmbedder
from node.memory_records import memory_record
from ring.partition import memory_key

LOAD_NOTE = ("Data loaded by applying records straight into each owner's ReplicaStore (per the placement; "
             "same merge, digests and vector index as a replica's lane), not by client round trips.")


def add_args(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("node sections (quorum, join, repair, search)")
    g.add_argument("--ring-nodes", type=int, default=5, help="nodes in the ring (the join adds one more)")
    g.add_argument("--memories", type=int, default=100_000, help="memories held by the ring (join, search, repair base)")
    g.add_argument("--missed", type=int, default=10_000, help="writes the repaired replica missed")
    g.add_argument("--repair-base", type=int, default=None, help="memories in place before those (default --memories)")
    g.add_argument("--ops", type=int, default=2000, help="client ops per quorum measurement")
    g.add_argument("--queries", type=int, default=300, help="searches per search measurement")
    g.add_argument("--inflight", type=int, default=16, help="concurrent requests (one connection each)")
    g.add_argument("--ae-interval", type=float, default=3.0, help="anti-entropy interval in the repair section, s")


def _run(fn: Callable[[argparse.Namespace, Path], Any], args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mnemonet-bench-") as d:
        out: dict[str, Any] = trio.run(fn, args, Path(d))
        return out


def _nodes(tmp: Path, n: int, prefix: str = "n") -> list[BenchNode]:
    return [BenchNode(f"{prefix}{i}", Identity.generate(), tmp / f"{prefix}{i}") for i in range(n)]


def _records(ns: str, n: int, seed: int, prefix: str = "m", start: int = 0) -> tuple[list[str], list[Any]]:
    contents, vecs = corpus(n, seed, start)
    ids = [f"{prefix}{start + i}" for i in range(n)]
    return ids, new_memories(ns, ns, ids, contents, vecs, int(time.time() * 1000))


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else 0.0


# ---------------------------------------------------------------- 1. quorum writes and reads

async def _quorum(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    ring_n = args.ring_nodes
    agent = Identity.generate()
    ns, n, k = agent.agent_id, args.ops, args.inflight
    contents, _ = corpus(4 * n, args.seed, 10_000_000)  # unique contents (the single node refuses duplicates)

    async def measure(nodes: Sequence[BenchNode], tag: str) -> dict[str, Any]:
        async with open_clients(nodes, agent, k) as clients:

            async def store(c: MemoryClient, i: int, base: int) -> None:
                await c.store(ns, contents[base + i], id=f"{tag}{base + i}")

            async def get(c: MemoryClient, i: int, base: int) -> None:
                assert (await c.get(ns, f"{tag}{base + i}")).id == f"{tag}{base + i}"
            return {"write_seq": await drive(clients, lambda c, i: store(c, i, 0), n, 1),
                    "write_conc": await drive(clients, lambda c, i: store(c, i, n), n, k),
                    "read_seq": await drive(clients, lambda c, i: get(c, i, 0), n, 1),
                    "read_conc": await drive(clients, lambda c, i: get(c, i, n), n, k)}

    async with trio.open_nursery() as nursery:
        single = _nodes(tmp, 1, "single")
        with trio.CancelScope() as scope:
            await start_single(nursery, single[0])
            base = await measure(single, "s")
            scope.cancel()
        nodes = _nodes(tmp, ring_n)
        await start_ring(nursery, nodes, cluster_config(bootstrap_s=60.0))
        ring = await measure(nodes, "c")
        nursery.cancel_scope.cancel()
    ratios = {f"{m}_ops_ratio": _ratio(ring[m]["ops_per_s"], base[m]["ops_per_s"]) for m in ring}
    ratios |= {f"{m}_p50_ratio": _ratio(ring[m]["p50_ms"], base[m]["p50_ms"]) for m in ring}
    return {"params": {"nodes": ring_n, "ops": n, "inflight": k, "consistency": "quorum (node default: N=3, W=2, R=2)"},
            "single": base, "cluster": ring, "ratios": ratios}


def print_quorum(res: dict[str, Any]) -> None:
    p, s, c = res["params"], res["single"], res["cluster"]
    rows = [[m.replace("_", " "), f"{c[m]['ops_per_s']:,.0f}", f"{s[m]['ops_per_s']:,.0f}",
             f"{res['ratios'][m + '_ops_ratio']:.2f}x", f"{c[m]['p50_ms']:.2f} / {c[m]['p99_ms']:.2f}",
             f"{s[m]['p50_ms']:.2f} / {s[m]['p99_ms']:.2f}"] for m in ("write_seq", "write_conc", "read_seq", "read_conc")]
    print_table(f"quorum: {p['nodes']}-node ring (quorum) vs one node (local), {p['ops']} ops each",
                ["op", "ring ops/s", "single ops/s", "ring/single", "ring p50/p99 ms", "single p50/p99 ms"], rows,
                f"MemoryClient over websockets, all nodes and clients in one process (2 shared cores); seq = 1 in "
                f"flight, conc = {p['inflight']} in flight on {p['inflight']} connections (ring: round-robin over the "
                f"nodes). Store includes embedding (hash) on the coordinator.")


# ---------------------------------------------------------------- 2. a 6th node joins

async def _join(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    ring_n = args.ring_nodes
    agent = Identity.generate()
    ns = agent.agent_id
    ids, mems = _records(ns, args.memories, args.seed)
    records = [memory_record(m) for m in mems]
    async with trio.open_nursery() as nursery:
        nodes = _nodes(tmp, ring_n + 1)
        await start_ring(nursery, nodes[:ring_n], cluster_config(bootstrap_s=30.0))
        t_load = time.perf_counter()
        copies = await load_cluster(nodes[:ring_n], records)
        load_s = time.perf_counter() - t_load
        newcomer = nodes[ring_n]
        t0 = time.perf_counter()
        await start_node(nursery, newcomer, [nodes[0].url], cluster_config())
        await until(lambda: placed(nodes, ring_n + 1), 120, f"ring of {ring_n + 1}")
        t_placed = time.perf_counter()
        await until(lambda: rebalanced(nodes), 600 + args.memories / 50, "rebalanced", poll_s=0.1)
        t1 = time.perf_counter()
        assert newcomer.cluster is not None and newcomer.cluster.replication.placement is not None
        repl = newcomer.cluster.replication
        pl = repl.placement
        assert pl is not None
        share = sum(1 for r in records if repl.me in pl.owners(memory_key(*r.key)))
        held, body_bytes = await _held(newcomer)
        if held != share:  # the last pages may still be in its lane when the rebalancers report settled
            await until(lambda: newcomer.cluster is not None and newcomer.cluster.store.statistics()
                        .get("items", -1) == share, 30, "newcomer holds its share")
            held, body_bytes = await _held(newcomer)
        rb, links = repl.rb.statistics(), repl.links.stats
        dropped = sum(x.cluster.replication.rb.statistics().partitions_dropped for x in nodes[:ring_n] if x.cluster)
        nursery.cancel_scope.cancel()
    took = t1 - t0
    return {"params": {"nodes_before": ring_n, "memories": args.memories, "rf": 3, "nudge_s": 1.0,
                       "transfers_in_flight": 64, "partitions_per_pull": 512},
            "load_s": round(load_s, 2), "copies_loaded": copies, "join_s": round(took, 2),
            "placed_s": round(t_placed - t0, 2), "newcomer_share_records": share, "newcomer_held_records": held,
            "records_received": rb.records_received, "pages_received": rb.pages_received,
            "partitions_gained": rb.partitions_gained, "partitions_pulled": rb.partitions_pulled,
            "partitions_dropped_by_old_owners": dropped, "link_bytes_received": links["bytes_received"],
            "record_bytes_held": body_bytes,
            "mb_per_s_link": round(links["bytes_received"] / took / 1e6, 3),
            "mb_per_s_records": round(body_bytes / took / 1e6, 3),
            "records_per_s": round(rb.records_received / took, 1)}


async def _held(node: BenchNode) -> tuple[int, int]:
    assert node.service is not None

    def q(conn: Any) -> tuple[int, int]:
        n, b = conn.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM replica_items").fetchone()
        return int(n), int(b)
    return await node.service.db.read(q)


def print_join(res: dict[str, Any]) -> None:
    p = res["params"]
    rows = [["time from start to all rebalancers settled, s", f"{res['join_s']:.2f}"],
            ["  of which until every node sees all members, s", f"{res['placed_s']:.2f}"],
            ["records received (newcomer's share)", f"{res['records_received']:,} ({res['newcomer_share_records']:,})"],
            ["MB/s, record bytes held / time", f"{res['mb_per_s_records']:.3f}"],
            ["MB/s, replica-link bytes received / time", f"{res['mb_per_s_link']:.3f}"],
            ["records/s", f"{res['records_per_s']:,.0f}"],
            ["partitions gained / pulled / dropped by old owners",
             f"{res['partitions_gained']:,} / {res['partitions_pulled']:,} / {res['partitions_dropped_by_old_owners']:,}"]]
    print_table(f"join: node {p['nodes_before'] + 1} takes its share of {p['memories']:,} memories from a ring of {p['nodes_before']}",
                ["measure", "value"], rows,
                f"{LOAD_NOTE} Loading took {res['load_s']} s (not in the join time). Rebalancer nudge {p['nudge_s']} s "
                f"(default 30 s). Held bytes = stored msgpack record bodies; link bytes include frames and signatures.")


# ---------------------------------------------------------------- 3. anti-entropy repairs a replica

async def _repair(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    ring_n = args.ring_nodes
    agent = Identity.generate()
    ns = agent.agent_id
    base_n = args.memories if args.repair_base is None else args.repair_base
    _, base = _records(ns, base_n, args.seed)
    async with trio.open_nursery() as nursery:
        nodes = _nodes(tmp, ring_n)
        await start_ring(nursery, nodes, cluster_config(bootstrap_s=30.0, ae_interval_s=args.ae_interval))
        await load_cluster(nodes, [memory_record(m) for m in base])
        victim = nodes[-1]
        vc = victim.cluster
        assert vc is not None and vc.replication.placement is not None
        pl, vid = vc.replication.placement, vc.replication.me
        # The missed writes: keys the victim owns, written to its two co-owners only.
        _, cand = _records(ns, 2 * args.missed + 200, args.seed + 1, "x", 20_000_000)
        missed = [r for r in (memory_record(m) for m in cand) if vid in pl.owners(memory_key(*r.key))][:args.missed]
        assert len(missed) == args.missed, "not enough candidate keys owned by the victim"
        bits = vc.store.partition_bits
        by_id = {x.identity.agent_id: x for x in nodes}
        parts = {r.partition(bits): [by_id[o] for o in pl.owners(memory_key(*r.key)) if o != vid] for r in missed}
        ae0 = vc.replication.ae.statistics()
        t0 = time.perf_counter()
        await load_cluster(nodes, missed, skip=lambda nid, r: nid == vid)
        t_written = time.perf_counter()
        early = vc.replication.ae.statistics().records_received - ae0.records_received

        def in_sync() -> bool:
            return all(vc.store.digest(p) == o.cluster.store.digest(p)
                       for p, others in parts.items() for o in others if o.cluster is not None)
        await until(in_sync, 600 + args.missed / 20, "digests match", poll_s=0.1)
        t1 = time.perf_counter()
        ae1 = vc.replication.ae.statistics()
        sent = sum(x.cluster.replication.ae.statistics().records_sent for x in nodes[:-1] if x.cluster)
        nursery.cancel_scope.cancel()
    return {"params": {"nodes": ring_n, "base_memories": base_n, "missed": args.missed,
                       "ae_interval_s": args.ae_interval, "ae_jitter_fraction": 0.25},
            "partitions_affected": len(parts), "write_around_s": round(t_written - t0, 2),
            "repair_s": round(t1 - t_written, 2), "repair_s_from_first_write": round(t1 - t0, 2),
            "repaired_before_writes_done": early,
            "victim_records_received": ae1.records_received - ae0.records_received,
            "victim_sessions_started": ae1.sessions_started - ae0.sessions_started,
            "victim_sessions_answered": ae1.sessions_answered - ae0.sessions_answered,
            "peers_records_sent": sent,
            "records_per_s": round(args.missed / max(t1 - t_written, 1e-9), 1)}


def print_repair(res: dict[str, Any]) -> None:
    p = res["params"]
    rows = [["time from the last missed write to digests matching, s", f"{res['repair_s']:.2f}"],
            ["time from the first missed write, s", f"{res['repair_s_from_first_write']:.2f}"],
            ["partitions that differed", f"{res['partitions_affected']:,}"],
            ["records the victim received by anti-entropy", f"{res['victim_records_received']:,}"],
            ["  of them before the writes were done", f"{res['repaired_before_writes_done']:,}"],
            ["missed records / repair time, per s", f"{res['records_per_s']:,.0f}"]]
    print_table(f"repair: anti-entropy brings back {p['missed']:,} missed writes ({p['base_memories']:,} in place, "
                f"{p['nodes']} nodes)", ["measure", "value"], rows,
                f"{LOAD_NOTE} The missed writes went to the victim's co-owners only. Anti-entropy every "
                f"{p['ae_interval_s']} s +-25% (default 30 s): the time includes waiting for the next round.")


# ---------------------------------------------------------------- 4. scatter-gather search

async def _search(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Held-out stdlib passages as queries over `--memories` stored passages (bench/datasets.py, as
    bench/search.py): a made-up-word corpus is near-uniform, where every ANN index falls back to exact
    scans. Quality is recall@10 against exact numpy over the same vectors, on both sides."""
    ring_n = args.ring_nodes
    agent = Identity.generate()
    ns = agent.agent_id
    base, queries = text_split(args.memories, args.queries)
    embedder = HashingEmbedder()
    vecs = embedder.embed(base)
    ids = [f"t{i}" for i in range(len(base))]
    mems = new_memories(ns, ns, ids, base, vecs, int(time.time() * 1000))
    scores = embedder.embed(queries) @ vecs.T
    truth = [{ids[j] for j in np.argpartition(-row, 10)[:10]} for row in scores]
    del scores

    async def measure(nodes: Sequence[BenchNode]) -> dict[str, Any]:
        found: list[float] = []
        partial = [0]

        async def one(c: MemoryClient, i: int) -> None:
            page = await c.search(queries[i % len(queries)], limit=10)
            found.append(len(truth[i % len(queries)] & {h.id for h in page.items}) / 10)
            partial[0] += page.partial
        async with open_clients(nodes, agent, args.inflight) as clients:
            seq = await drive(clients, one, len(queries), 1)
            conc = await drive(clients, one, len(queries), args.inflight)
        index = [{k: st.get(k) for k in ("items", "segments", "budget", "probe", "calibration")}
                 for x in nodes if x.service is not None for st in x.service.spaces.statistics().values()]
        return {"seq": seq, "conc": conc, "recall_at_10": round(float(np.mean(found)), 4), "partial": partial[0],
                "index": index}  # per node: "budget" "exact" means its calibration chose exact scans

    async with trio.open_nursery() as nursery:
        single = _nodes(tmp, 1, "single")
        with trio.CancelScope() as scope:
            await start_single(nursery, single[0])
            t = time.perf_counter()
            await load_single(single[0], mems)
            await seal_indexes(single)
            single_load_s = time.perf_counter() - t
            base_res = await measure(single)
            scope.cancel()
        nodes = _nodes(tmp, ring_n)
        await start_ring(nursery, nodes, cluster_config(bootstrap_s=30.0))
        t = time.perf_counter()
        await load_cluster(nodes, [memory_record(m) for m in mems])
        await seal_indexes(nodes)
        ring_load_s = time.perf_counter() - t
        ring = await measure(nodes)
        scatter = [x.cluster.scatter.stats for x in nodes if x.cluster is not None]
        nursery.cancel_scope.cancel()
    return {"params": {"nodes": ring_n, "memories": args.memories, "queries": len(queries), "limit": 10,
                       "inflight": args.inflight, "corpus": "stdlib passages, held-out queries", "blas_threads": 1},
            "single": base_res, "cluster": ring,
            "load_s": {"single": round(single_load_s, 2), "ring": round(ring_load_s, 2)},
            "hits_checked_by_quorum_read": sum(x["hits_checked"] for x in scatter),
            "ratios": {"seq_p50": _ratio(ring["seq"]["p50_ms"], base_res["seq"]["p50_ms"]),
                       "seq_p99": _ratio(ring["seq"]["p99_ms"], base_res["seq"]["p99_ms"]),
                       "conc_ops": _ratio(ring["conc"]["ops_per_s"], base_res["conc"]["ops_per_s"])}}


def print_search(res: dict[str, Any]) -> None:
    p, s, c = res["params"], res["single"], res["cluster"]
    rows = [[f"{m} ({'1' if m == 'seq' else p['inflight']} in flight)", f"{c[m]['p50_ms']:.2f} / {c[m]['p99_ms']:.2f}",
             f"{s[m]['p50_ms']:.2f} / {s[m]['p99_ms']:.2f}", f"{c[m]['ops_per_s']:,.0f}", f"{s[m]['ops_per_s']:,.0f}"]
            for m in ("seq", "conc")]
    rows.append(["recall@10 vs exact numpy / partial answers", f"{c['recall_at_10']:.3f} / {c['partial']}",
                 f"{s['recall_at_10']:.3f} / -", "", ""])
    print_table(f"search: scatter-gather over {p['nodes']} nodes vs one node, {p['memories']:,} memories, "
                f"limit {p['limit']}", ["measure", "ring p50/p99 ms", "single p50/p99 ms", "ring q/s", "single q/s"],
                rows, f"{LOAD_NOTE} Baseline filled through memory_store.store. Indexes sealed after loading on "
                      f"both sides. Corpus: {p['corpus']} (hash embedder). Every node searches all it holds (3 "
                      f"copies of each memory in the ring); hits fewer than R owners returned were read at "
                      f"QUORUM ({res['hits_checked_by_quorum_read']} over both passes). MemoryClient over "
                      f"websockets; one BLAS thread, as `mnemonet node` runs.")


def sections() -> dict[str, tuple[Callable[[argparse.Namespace], dict[str, Any]], Callable[[dict[str, Any]], None]]]:
    return {"quorum": (lambda a: _run(_quorum, a), print_quorum), "join": (lambda a: _run(_join, a), print_join),
            "repair": (lambda a: _run(_repair, a), print_repair), "search": (lambda a: _run(_search, a), print_search)}

