"""Calibration of the vector index's ANN budget: the cheapest measured (fetch, probe) at a recall target.

Owns the sample queries and their exact answers, the recall measurements and the walk over
budgets that picks one; it must not take the index's locks or write its arrays (it reads a
snapshot and calls back to the index for candidates).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from node.vector_ivf import IvfSegment
from node.vector_probe import ivf_hits
from node.vector_segment import SegmentLike

K = 10  # calibration measures recall@10, the benchmark's metric
# Shares of each IVF segment's rows probed, cheapest first (about x1.3 apart).
PROBES = (0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.065, 0.08, 0.1, 0.12, 0.14, 0.16, 0.18, 0.2,
          0.22, 0.25, 0.28, 0.32, 0.36, 0.4, 0.45, 0.5)
# Fetch multipliers (candidates re-ranked exactly, and annoy's search_k), cheapest first.
BUDGETS = tuple(1.5**i for i in range(-4, 11))  # 0.2 .. 57.7
# Measured recall (annoy segments, no surface) must clear the target by this much: recall@10
# of 200 sample queries has a standard error of ~0.002-0.007.
RECALL_MARGIN = 0.01
_GAIN_MIN = 0.05
_MARGIN_MIN = 0.005  # the least a surface's lower bound sits below its mean
_BATCH = 32  # sample queries answered per matrix product
_TIMED = 8  # exact scans timed (their median: other work only ever adds time)
# An ANN budget must cost under this share of an exact scan to be chosen over exact search:
# beyond it the lost recall buys too little time.
COST_SHARE_MAX = 0.5

# Bounded probing's margins (node/vector_index.py): after a first round, lists whose optimistic
# score is at least the k-th best exact score plus the margin are scanned. Least work first.
MARGINS = (0.0, -0.02, -0.04, -0.06, -0.08, -0.09, -0.1, -0.11, -0.12, -0.13, -0.14, -0.15, -0.17, -0.19,
           -0.22, -0.25, -0.3)
Measure = Callable[[float, float], tuple[float, float]]  # (budget, probe) -> (seconds/query, recall@10)
# (query, budget, probe) -> candidate slots, the buffer's included, as the index's search makes them
Candidates = Callable[[np.ndarray, float, float], np.ndarray]
# (query, budget, margin) -> (candidate slots, their exact scores), as bounded probing finds them
Bounded = Callable[[np.ndarray, float, float], tuple[np.ndarray, np.ndarray]]
_RECHECKS = 3  # margins tried on all sample queries after bounded probing's walk on half of them
_TIMING_QUERIES = 24  # queries timed per point when the recall comes from the surface
_NARROW_PROBE = 0.1  # the recall surface is first computed for probes up to this share


@dataclass(frozen=True, slots=True)
class Sample:
    """Stored rows used as queries (``slots``), each with the slots of its exact top ``K``
    (itself excluded), and the measured seconds of one exact search."""

    slots: np.ndarray
    truth: list[np.ndarray]
    exact_s: float


def sample_queries(vectors: np.ndarray, alive: np.ndarray, pool_upto: int, count: int, seed: int) -> Sample:
    """Exact answers for ``count`` seeded live rows below ``pool_upto`` over all rows of ``vectors``
    (``alive`` masks them), computed in batches (a matrix product per 32 queries is ~10x cheaper
    than 32 scans); a few single scans are timed to give the exact search's cost."""
    rng = np.random.default_rng(seed)
    pool = np.flatnonzero(alive[:pool_upto])
    slots = rng.choice(pool, min(count, pool.size), replace=False)
    truth: list[np.ndarray] = []
    for lo in range(0, slots.size, _BATCH):
        part = slots[lo : lo + _BATCH]
        scores = vectors[part] @ vectors.T  # (queries, rows): each query's scores contiguous
        scores[:, ~alive] = -np.inf
        scores[np.arange(part.size), part] = -np.inf
        truth.extend(np.argpartition(-scores, K, axis=1)[:, :K])
        time.sleep(0)  # a calibration must not starve the event loop either
    seconds = []
    for slot in slots[:_TIMED].tolist():
        started = time.perf_counter()
        np.argpartition(-(vectors @ vectors[slot]), K)
        seconds.append(time.perf_counter() - started)
        time.sleep(0)
    return Sample(slots, truth, float(np.median(seconds)) if seconds else 0.0)


def choose(measure: Measure, exact_s: float, target: float, probes: Sequence[float]
           ) -> tuple[tuple[float, float, float, float] | None, float]:
    """The cheapest measured (seconds, budget, probe, recall) whose recall reaches ``target`` +
    RECALL_MARGIN at under COST_SHARE_MAX of ``exact_s`` (None: search exactly), and the last
    recall measured (used when segments are not all IVF, so recall must be measured).

    Recall grows with both budget and probe, so the smallest sufficient probe can only shrink as
    the budget grows: for each budget a binary search below the previous budget's finds it. Cost
    is U-shaped along that boundary (wide probes at small budgets, then big re-ranks), so the walk
    stops once a boundary point costs half again the best, three in a row gain nothing on it, or
    the probe is the least. A bigger budget must be _GAIN_MIN cheaper to replace the best:
    timings are noisy, and smaller re-ranks are the safer choice when costs tie.
    """
    goal = target + RECALL_MARGIN
    best: tuple[float, float, float, float] | None = None
    recall = 0.0
    hi = len(probes) - 1  # smallest probe index known to reach the goal (at a smaller budget) or the last
    known = False
    stale = 0  # boundary points in a row since the best that were no real gain on it
    for budget in BUDGETS:
        found: tuple[float, float] | None = None  # (seconds, recall) at probe index hi
        if not known:
            seconds, recall = measure(budget, probes[hi])
            if recall < goal:
                continue  # even the widest probe misses: only a bigger budget can help
            found = (seconds, recall)
        lo = 0
        while lo < hi:  # invariant: probes[hi] reaches the goal at this budget
            mid = (lo + hi) // 2
            seconds, recall = measure(budget, probes[mid])
            if recall >= goal:
                hi, found = mid, (seconds, recall)
            else:
                lo = mid + 1
        if found is None:  # hi was inherited and nothing below it hit: time it at this budget
            found = measure(budget, probes[hi])
        known = True
        seconds, recall = found
        if seconds < exact_s * COST_SHARE_MAX and (best is None or seconds < best[0] * (1 - _GAIN_MIN)):
            best, stale = (seconds, budget, probes[hi], recall), 0
        elif best is not None:
            stale += 1
        if hi == 0 or stale >= 3 or (best is not None and seconds > 1.5 * best[0]):
            break
    return best, recall


def choose_on_surface(time_at: Callable[[float, float], float], exact_s: float, target: float,
                      probes: Sequence[float], counts: Sequence[int], surface: Surface
                      ) -> tuple[tuple[float, float, float, float] | None, float]:
    """Like ``choose`` when every grid point's recall is known: the boundary points are, for each
    budget, the least probe whose recall bound reaches ``target``, and of budgets sharing a probe
    only the smallest (a bigger re-rank at the same scan only costs more). Each is timed, and the
    times are fitted to ``a * probe + b * count + c`` (the scan grows with the probe, the re-rank
    with the count): with four or more points the fit evens out timing noise, which otherwise
    picked probes 0.28-0.4 on text from one run to the next. The least fitted cost wins if its
    measured time is under COST_SHARE_MAX of ``exact_s``."""
    points: list[tuple[float, float, int, float]] = []  # budget, probe, count, recall
    least = len(probes)
    for fi, budget in enumerate(BUDGETS):
        hits = np.flatnonzero(surface.lower[:, fi] >= target)
        if hits.size and int(hits[0]) < least:
            least = int(hits[0])
            points.append((budget, probes[least], counts[fi], float(surface.mean[least, fi])))
        if least == 0:
            break
    if not points:
        return None, float(surface.mean[-1, -1])
    times = np.asarray([time_at(budget, probe) for budget, probe, _, _ in points])
    fitted = times
    if len(points) >= 4:
        design = np.asarray([[probe, count, 1.0] for _, probe, count, _ in points])
        coef = np.linalg.lstsq(design, times, rcond=None)[0]
        if coef[0] >= 0 and coef[1] >= 0:
            fitted = design @ coef
    i = int(np.argmin(fitted))
    budget, probe, _, recall = points[i]
    if times[i] >= exact_s * COST_SHARE_MAX:
        return None, recall
    return (float(times[i]), budget, probe, recall), recall


@dataclass(frozen=True, slots=True)
class Surface:
    """Sampled recall@K at every (probe index, budget index), and a lower confidence bound on it:
    the mean less two standard errors of the per-query recalls (at least _MARGIN_MIN). Queries
    differ a lot (a few with no near neighbours miss most of theirs), so the error is measured,
    not assumed: ~0.002 on clustered data, ~0.007 on text at the chosen point."""

    mean: np.ndarray
    lower: np.ndarray


def _surface(ivf: Sequence[IvfSegment], vectors: np.ndarray, sample: Sample, sealed_upto: int,
             probes: Sequence[float], counts: Sequence[int]) -> Surface:
    """Recall of ivf_candidates at every (probe, count) on ``sample``, the exact buffer's rows included."""
    total = np.zeros((len(probes), len(counts)))
    squares = np.zeros_like(total)
    for slot, truth in zip(sample.slots.tolist(), sample.truth, strict=True):
        recall = (ivf_hits(ivf, vectors[slot], truth, probes, counts) + np.count_nonzero(truth >= sealed_upto)) / K
        total += recall
        squares += recall * recall
        time.sleep(0)
    size = sample.slots.size
    mean = total / size
    error = np.sqrt(np.maximum(squares / size - mean * mean, 0.0) / max(1, size - 1))
    return Surface(mean, mean - np.maximum(2 * error, _MARGIN_MIN))


def _timed_recall(chosen: Sequence[tuple[int, np.ndarray]], scored: Callable[[int], tuple[np.ndarray, np.ndarray]]
                  ) -> tuple[float, float]:
    """(seconds per query, recall@K) answering each sample query (a stored row's slot, with its
    true top K) from ``scored(slot)``: candidate slots and their exact scores, the slot itself
    excluded here."""
    started = time.perf_counter()
    found = 0
    for slot, truth in chosen:
        slots, scores = scored(slot)
        keep = slots != slot
        slots, scores = slots[keep], scores[keep]
        top = slots[np.argpartition(-scores, K)[:K]] if slots.size > K else slots
        found += int(np.count_nonzero(np.isin(top, truth)))
        time.sleep(0)  # a calibration must not starve the event loop
    return (time.perf_counter() - started) / len(chosen), found / (K * len(chosen))


@dataclass(frozen=True, slots=True)
class Choice:
    """What calibration chose. ``budget`` None: fixed probing costs too much, search exactly.
    ``bounded`` (budget, margin): bounded probing is cheaper still, for searches it applies to."""

    budget: float | None
    probe: float
    bounded: tuple[float, float] | None
    summary: dict[str, float]


def calibrate(vectors: np.ndarray, alive: np.ndarray, sealed_upto: int, segments: Sequence[SegmentLike],
              candidates: Candidates, fetch: Callable[[float], float], *, queries: int, seed: int,
              target: float, fallback_probe: float, bounded: Bounded | None = None) -> Choice:
    """The cheapest ANN settings reaching ``target`` for an index whose rows are ``vectors``
    (``alive``; rows from ``sealed_upto`` on are its exactly scanned buffer) and whose sealed
    ``segments`` those are. ``fetch(budget)`` is the candidate count for a top-K at ``budget``.

    When every segment is IVF, the recall of every (probe, budget) comes from one scan per sample
    query (``ivf_hits``), and only the boundary points are timed; otherwise each point is measured
    by running the search (annoy segments' recall depends on their search_k). With ``bounded``
    (all segments IVF), bounded probing is measured too, margin by margin (``choose`` over
    MARGINS), and kept if _GAIN_MIN cheaper than the fixed choice (or than exact search)."""
    sample = sample_queries(vectors, alive, sealed_upto, queries, seed)
    ivf = [s for s in segments if isinstance(s, IvfSegment)]
    surface = None
    counts = [max(16, math.ceil(fetch(budget))) for budget in BUDGETS]
    if ivf and len(ivf) == len(segments):
        # Narrow probes first (a scan of 10% of the rows per query): most data needs no more,
        # and then no wider probe can be cheaper than a bigger re-rank at a narrow one.
        narrow = sum(1 for p in PROBES if p <= _NARROW_PROBE)
        surface = _surface(ivf, vectors, sample, sealed_upto, PROBES[:narrow], counts)
        if not (surface.lower >= target).any():
            wide = _surface(ivf, vectors, sample, sealed_upto, PROBES[narrow:], counts)
            surface = Surface(np.vstack((surface.mean, wide.mean)), np.vstack((surface.lower, wide.lower)))

    def run(chosen: list[tuple[int, np.ndarray]], budget: float, probe: float) -> tuple[float, float]:
        def scored(slot: int) -> tuple[np.ndarray, np.ndarray]:
            cands = candidates(vectors[slot], budget, probe)
            cands = cands[alive[cands]]
            return cands, vectors[cands] @ vectors[slot]

        return _timed_recall(chosen, scored)

    asked = list(zip(sample.slots.tolist(), sample.truth, strict=True))
    if surface is not None:  # time alone, on a few queries
        best, recall = choose_on_surface(lambda b, p: run(asked[:_TIMING_QUERIES], b, p)[0], sample.exact_s,
                                         target, PROBES, counts, surface)
    else:
        best, recall = choose(lambda b, p: run(asked, b, p), sample.exact_s, target,
                              PROBES if ivf else (fallback_probe,))
    budget, probe = (round(best[1], 4), best[2]) if best else (None, fallback_probe)
    summary = {"recall": round(best[3] if best else recall, 4), "budget": budget or 0.0, "probe": probe,
               "ann_ms": round(best[0] * 1e3, 3) if best else 0.0, "exact_ms": round(sample.exact_s * 1e3, 3)}
    chosen_bound = None
    if bounded is not None and ivf and len(ivf) == len(segments):
        search = bounded  # (narrowed for the closure)

        def run_bounded(chosen: list[tuple[int, np.ndarray]], budget: float, margin: float) -> tuple[float, float]:
            return _timed_recall(chosen, lambda slot: search(vectors[slot], budget, margin))

        # Each point runs the searches (no one-scan surface): the walk uses half the queries,
        # then the choice is checked on all of them, widening its margin if it falls short.
        rival = best[0] if best else sample.exact_s * COST_SHARE_MAX
        walk = asked[: max(1, len(asked) // 2)]
        found_bound, _ = choose(lambda b, m: run_bounded(walk, b, m), sample.exact_s, target, MARGINS)
        if found_bound is not None:
            _, b, walked, _ = found_bound
            at = MARGINS.index(walked)
            for m in MARGINS[at : at + _RECHECKS]:
                seconds, recall = run_bounded(asked, b, m)
                if recall >= target + RECALL_MARGIN:
                    found_bound = (seconds, b, m, recall)
                    break
            else:
                found_bound = None
        if found_bound is not None and found_bound[0] < rival * (1 - _GAIN_MIN):
            chosen_bound = (round(found_bound[1], 4), found_bound[2])
            summary.update(bounded_budget=chosen_bound[0], margin=chosen_bound[1],
                           bounded_recall=round(found_bound[3], 4), bounded_ms=round(found_bound[0] * 1e3, 3))
    return Choice(budget, probe, chosen_bound, summary)
