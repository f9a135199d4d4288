"""Search benchmark: our log-structured index against exact numpy, hnswlib and Chroma.

Owns measurement only (latency, recall@10, fold time, pauses during seal/compact, embedder speed);
it must not tune the index: it runs the defaults of VectorIndexConfig unless told otherwise.
Run: ``python bench/search.py [--sizes 10000,100000] [--no-compare]`` -> bench/results/search.json
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.datasets import clustered, stdlib_passages, text_split  # noqa: E402
from bench.tables import print_table  # noqa: E402
from node.embedder import HashingEmbedder  # noqa: E402
from node.vector_index import VectorIndex, VectorIndexConfig  # noqa: E402

K = 10
QUERIES = 200


def _percentiles(latencies_s: list[float]) -> dict[str, float]:
    arr = np.asarray(latencies_s) * 1e3
    return {"p50_ms": round(float(np.percentile(arr, 50)), 3), "p99_ms": round(float(np.percentile(arr, 99)), 3),
            "qps": round(float(len(arr) / (arr.sum() / 1e3)), 1)}


def _recall(truth: list[set[int]], found: list[list[int]]) -> float:
    return round(sum(len(t & set(f)) for t, f in zip(truth, found, strict=True)) / (K * len(truth)), 4)


def _blas_threads(n: int | None) -> Any:
    """Context limiting OpenBLAS/MKL threads (threadpoolctl if installed, else a no-op)."""
    if n is None or importlib.util.find_spec("threadpoolctl") is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(n)


def _exact(base: np.ndarray, queries: np.ndarray) -> tuple[dict[str, Any], list[set[int]]]:
    stats, found = _timed_searches(_exact_search(base), queries)
    return stats, [set(top) for top in found]


def _timed_searches(search: Callable[[np.ndarray], list[int]], queries: np.ndarray) -> tuple[dict[str, Any], list[list[int]]]:
    latencies, found = [], []
    for q in queries:
        t0 = time.perf_counter()
        found.append(search(q))
        latencies.append(time.perf_counter() - t0)
    return _percentiles(latencies), found


def _exact_search(base: np.ndarray) -> Callable[[np.ndarray], list[int]]:
    def search(q: np.ndarray) -> list[int]:
        scores = base @ q
        top = np.argpartition(-scores, K)[:K]
        return top[np.argsort(-scores[top])].tolist()

    return search


def _alternating(search: Callable[[np.ndarray], list[int]], baseline: Callable[[np.ndarray], list[int]],
                 queries: np.ndarray, block: int) -> tuple[dict[str, Any], list[list[int]], dict[str, Any]]:
    """Time ``baseline`` on ``block`` queries, then ``search`` on the same ones, block after block:
    on these shared machines speed drifts by tens of percent over seconds (exact numpy at 100k
    measured 13.5-17.6 ms p50 within one session), so timing one whole run after the other skews
    their ratio; alternating exposes both to the same drift. With ``block`` 1 every search
    follows the baseline's 150 MB scan, which evicts the index from the caches: the cold case."""
    ours, theirs, found = [], [], []
    for lo in range(0, len(queries), block):
        part = queries[lo : lo + block]
        for q in part:
            t0 = time.perf_counter()
            baseline(q)
            theirs.append(time.perf_counter() - t0)
        for q in part:
            t0 = time.perf_counter()
            found.append(search(q))
            ours.append(time.perf_counter() - t0)
    return _percentiles(ours), found, _percentiles(theirs)


def _ingest(index: VectorIndex, base: np.ndarray) -> dict[str, Any]:
    """Bulk-load most rows as one segment (the rebuild path), then add the last ~8 buffers the
    way a node does (seal when full, compact when due), so the index ends with several segments."""
    cfg = index.config
    n = base.shape[0]
    bulk = max(0, n - 8 * cfg.buffer_max)
    groups = np.zeros(n, dtype=np.int64)
    t0 = time.perf_counter()
    index.add_many(np.arange(bulk), base[:bulk], groups[:bulk])
    index.seal()
    bulk_s = time.perf_counter() - t0
    seal_ms, compact_ms = [], []
    for lo in range(bulk, n, cfg.buffer_max):
        hi = min(n, lo + cfg.buffer_max)
        index.add_many(np.arange(lo, hi), base[lo:hi], groups[lo:hi])
        if index.needs_seal():
            t1 = time.perf_counter()
            index.seal()
            seal_ms.append((time.perf_counter() - t1) * 1e3)
        if index.needs_compact():
            t1 = time.perf_counter()
            index.compact()
            compact_ms.append((time.perf_counter() - t1) * 1e3)
    return {"bulk_build_s": round(bulk_s, 2), "bulk_rows": bulk,
            "seal_ms_mean": round(float(np.mean(seal_ms)), 1) if seal_ms else None,
            "compact_ms_max": round(max(compact_ms), 1) if compact_ms else None,
            "segments": index.statistics()["segments"], "buffer": index.statistics()["buffer"]}


def _pause_during(index: VectorIndex, work: Callable[[], None], queries: np.ndarray,
                  extra: np.ndarray, key0: int) -> dict[str, Any]:
    """Run ``work`` in a thread; meanwhile search and add on this thread (the event loop's role)."""
    worker = threading.Thread(target=work)
    search_s: list[float] = []
    add_s: list[float] = []
    i = 0
    t_start = time.perf_counter()
    worker.start()
    while worker.is_alive():
        q = queries[i % len(queries)]
        t0 = time.perf_counter()
        index.search(q, K)
        t1 = time.perf_counter()
        index.add(key0 + i, extra[i % len(extra)], 0)
        t2 = time.perf_counter()
        search_s.append(t1 - t0)
        add_s.append(t2 - t1)
        i += 1
    worker.join()
    return {"work_s": round(time.perf_counter() - t_start, 2), "searches": len(search_s),
            "search_max_ms": round(max(search_s, default=0.0) * 1e3, 2),
            "search_p99_ms": round(float(np.percentile(search_s, 99)) * 1e3, 2) if search_s else None,
            "add_max_ms": round(max(add_s, default=0.0) * 1e3, 2)}


def _ours(base: np.ndarray, queries: np.ndarray, truth: list[set[int]], cfg: VectorIndexConfig,
          pauses: bool = True) -> dict[str, Any]:
    """Our index's figures; "exact_alongside" is exact numpy timed alternately with it in blocks
    of 20 queries (a node serving searches back to back), "cold" the same with blocks of one."""
    index = VectorIndex(base.shape[1], None, cfg)
    out: dict[str, Any] = {"ingest": _ingest(index, base)}

    def search(q: np.ndarray) -> list[int]:
        return [k for k, _ in index.search(q, K).hits]

    stats, found, exact = _alternating(search, _exact_search(base), queries, 20)
    out.update(stats, recall=_recall(truth, found), budget=index.statistics()["budget"],
               calibration=index.statistics()["calibration"], exact_alongside=exact)
    cold, _, exact_cold = _alternating(search, _exact_search(base), queries, 1)
    out["cold"] = {"p50_ms": cold["p50_ms"], "exact_p50_ms": exact_cold["p50_ms"],
                   "speedup_p50": round(exact_cold["p50_ms"] / cold["p50_ms"], 1)}
    if not pauses:
        return out
    # Filtered search: half the rows in another group, so ANN candidates are over-fetched.
    rng = np.random.default_rng(7)
    extra = base[rng.choice(base.shape[0], 4 * cfg.buffer_max)] + 0.01
    n = base.shape[0]
    # A full buffer, sealed in a thread (seal + calibration if due) while this thread searches and adds.
    index.add_many(np.arange(30 * n, 30 * n + cfg.buffer_max), extra[: cfg.buffer_max],
                   np.zeros(cfg.buffer_max, dtype=np.int64))
    out["pause_seal"] = _pause_during(index, index.seal, queries, extra[: cfg.buffer_max], 10 * n)
    # The heaviest rebuild: drop 30% of rows, then compact rewrites everything as one segment.
    for key in range(0, n, 3):
        index.remove(key)

    def compact_all() -> None:
        while index.needs_compact():
            index.compact()

    out["pause_vacuum"] = _pause_during(index, compact_all, queries, extra, 20 * n)
    out["after_vacuum"] = {"segments": index.statistics()["segments"], "tombstones": index.statistics()["tombstones"]}
    return out


def _hnswlib(base: np.ndarray, queries: np.ndarray, truth: list[set[int]]) -> dict[str, Any] | None:
    if importlib.util.find_spec("hnswlib") is None:
        return None
    import hnswlib

    # ef_construction=100 (library default 200) keeps the bench within minutes; M=16, ef=50.
    index = hnswlib.Index(space="ip", dim=base.shape[1])
    index.init_index(max_elements=base.shape[0], ef_construction=100, M=16, random_seed=1)
    index.set_num_threads(2)
    t0 = time.perf_counter()
    index.add_items(base, np.arange(base.shape[0]))
    build_s = time.perf_counter() - t0
    index.set_ef(50)
    index.set_num_threads(1)
    stats, found = _timed_searches(lambda q: index.knn_query(q, K)[0][0].tolist(), queries)
    return {**stats, "recall": _recall(truth, found), "build_s": round(build_s, 1)}


def _chroma(base: np.ndarray, queries: np.ndarray, truth: list[set[int]]) -> dict[str, Any] | None:
    if importlib.util.find_spec("chromadb") is None:
        return None
    import chromadb

    with tempfile.TemporaryDirectory() as tmp:
        client = chromadb.PersistentClient(path=tmp, settings=chromadb.Settings(anonymized_telemetry=False))
        col = client.create_collection("bench", metadata={"hnsw:space": "cosine"})
        t0 = time.perf_counter()
        step = 5000
        for lo in range(0, base.shape[0], step):
            hi = min(base.shape[0], lo + step)
            col.add(ids=[str(i) for i in range(lo, hi)], embeddings=base[lo:hi])
        build_s = time.perf_counter() - t0
        stats, found = _timed_searches(
            lambda q: [int(i) for i in col.query(query_embeddings=[q], n_results=K, include=[])["ids"][0]],
            queries)
    return {**stats, "recall": _recall(truth, found), "build_s": round(build_s, 1)}


def _embedder_speed() -> dict[str, Any]:
    passages = [p[:200] for p in stdlib_passages(6000)]
    out: dict[str, Any] = {"chars": 200}
    emb = HashingEmbedder()
    for label in ("cold", "warm"):  # warm: the per-word feature cache is filled
        t0 = time.perf_counter()
        emb.embed(passages)
        out[f"texts_per_s_{label}"] = round(len(passages) / (time.perf_counter() - t0))
    single = HashingEmbedder()
    t0 = time.perf_counter()
    for p in passages[:2000]:
        single.embed([p])
    out["texts_per_s_one_by_one"] = round(2000 / (time.perf_counter() - t0))
    return out


DATASETS = ("clustered", "stdlib_text", "stdlib_text_head")


def _dataset(name: str, n: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(base, queries). Text queries are passages held out of the base: for "stdlib_text" spread
    evenly over the corpus (a representative sample), for "stdlib_text_head" its first passages
    (about two thirds of them doctests of one module, _pydecimal: correlated, so their recall
    swings with how one cluster happens to be partitioned)."""
    if name == "clustered":
        data = clustered(n + QUERIES, dim, seed=1)
        return np.ascontiguousarray(data[:n]), data[n:]
    base, queries = text_split(n, QUERIES, head=name == "stdlib_text_head")
    embedder = HashingEmbedder(dim)
    return np.ascontiguousarray(embedder.embed(base)), embedder.embed(queries)


def run(sizes: tuple[int, ...] = (10_000, 100_000), dim: int = 384, compare: bool = True,
        config: VectorIndexConfig | None = None, blas_threads: int | None = 1,
        datasets: tuple[str, ...] = DATASETS, pauses: bool = True) -> dict[str, Any]:
    """Measure every (data set, size). ``blas_threads`` limits BLAS threads for our index and for
    "exact" (the node runs one BLAS thread per request thread: with more, concurrent BLAS calls
    from a search and a build stall each other for 100+ ms on 2 cores); "exact_blas_default" is
    exact numpy with the library's default threads. "speedup_p50" divides the p50 of exact numpy
    timed alternately with ours ("exact_alongside", one BLAS thread, blocks of 20 queries) by
    ours; "ours.cold" repeats it with every search right after an exact scan; "exact" is the scan
    timed alone. hnswlib and Chroma run with their defaults."""
    cfg = config or VectorIndexConfig()
    results: dict[str, Any] = {"dim": dim, "k": K, "queries": QUERIES, "config": repr(cfg),
                               "blas_threads": blas_threads, "embedder": _embedder_speed(), "runs": []}
    for name in datasets:
        for n in sizes:
            base, queries = _dataset(name, n, dim)
            exact_default, truth = _exact(base, queries)
            row: dict[str, Any] = {"dataset": name, "n": n, "exact_blas_default": exact_default}
            with _blas_threads(blas_threads):
                row["exact"] = _exact(base, queries)[0]
                row["ours"] = _ours(base, queries, truth, cfg, pauses)
                if cfg.recall_target > 0:  # the same index tuned for speed only, for comparison
                    row["ours_uncalibrated"] = _ours(base, queries, truth, replace(cfg, recall_target=0.0),
                                                     pauses=False)
            if compare:
                row["hnswlib"] = _hnswlib(base, queries, truth)
                row["chroma"] = _chroma(base, queries, truth)
            row["speedup_p50"] = round(row["ours"]["exact_alongside"]["p50_ms"] / row["ours"]["p50_ms"], 1)
            row["speedup_p50_vs_blas_default"] = round(exact_default["p50_ms"] / row["ours"]["p50_ms"], 1)
            results["runs"].append(row)
            print(f"  done {name} n={n}", file=sys.stderr, flush=True)
    _print(results)
    return results


def _print(results: dict[str, Any]) -> None:
    header = ["data", "n", "exact p50 ms 1thr/dflt", "ours p50/p99 ms", "recall", "budget/probe", "x 1thr/dflt/cold",
              "uncalibrated p50 rec", "pause seal/vac ms", "hnswlib qps rec", "chroma qps rec"]
    rows = []
    for r in results["runs"]:
        o = r["ours"]

        def other(name: str, r: dict[str, Any] = r) -> str:
            x = r.get(name)
            return f"{x['qps']:.0f} {x['recall']:.3f}" if x else "-"

        u = r.get("ours_uncalibrated")
        rows.append([r["dataset"], str(r["n"]), f"{o['exact_alongside']['p50_ms']:.2f}/{r['exact_blas_default']['p50_ms']:.2f}",
                     f"{o['p50_ms']:.2f}/{o['p99_ms']:.2f}", f"{o['recall']:.3f}",
                     f"{o['budget']}/{o['calibration'].get('probe', '-')}" if o["budget"] != "exact" else "exact",
                     f"{r['speedup_p50']}/{r['speedup_p50_vs_blas_default']}/{o['cold']['speedup_p50']}",
                     f"{u['p50_ms']:.2f} {u['recall']:.3f}" if u else "-",
                     f"{o['pause_seal']['search_max_ms']:.1f}/{o['pause_vacuum']['search_max_ms']:.1f}"
                     if "pause_seal" in o else "-",
                     other("hnswlib"), other("chroma")])
    emb = results["embedder"]
    folds = "; ".join(
        f"{r['dataset']} {r['n']}: seal {r['ours']['ingest']['seal_ms_mean']} ms mean, compact "
        f"{r['ours']['ingest']['compact_ms_max']} ms max, bulk build {r['ours']['ingest']['bulk_build_s']} s"
        for r in results["runs"])
    footer = (f"index fold times (worker thread) - {folds}\n"
              f"embedder hash-v1-{results['dim']}: {emb['texts_per_s_cold']} texts/s cold, "
              f"{emb['texts_per_s_warm']} warm, {emb['texts_per_s_one_by_one']} one by one (200-char passages)")
    print_table(f"search (k=10, {results['queries']} queries, BLAS threads {results['blas_threads']})", header, rows,
                footer, width=200)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--no-compare", action="store_true", help="skip hnswlib and chroma")
    parser.add_argument("--datasets", default=",".join(DATASETS), help=f"a subset of {','.join(DATASETS)}")
    parser.add_argument("--no-pauses", action="store_true", help="skip the seal/vacuum pause measurements")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "search.json"))
    args = parser.parse_args()
    results = run(tuple(int(s) for s in args.sizes.split(",")), args.dim, compare=not args.no_compare,
                  datasets=tuple(args.datasets.split(",")), pauses=not args.no_pauses)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
