"""Calibration: exact answers of sample queries, and the walk that picks the cheapest sufficient budget."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.vector_calibration import (
    BUDGETS,
    COST_SHARE_MAX,
    PROBES,
    RECALL_MARGIN,
    K,
    Surface,
    _surface,
    choose,
    choose_on_surface,
    sample_queries,
)
from node.vector_ivf import IvfSegment
from node.vector_segment import SegmentSpec


def test_sample_queries_answers_exclude_the_query_and_dead_rows() -> None:
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((500, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    alive = rng.random(500) > 0.2
    sample = sample_queries(vectors, alive, 400, 40, seed=3)
    assert sample.slots.size == 40 and np.all(alive[sample.slots]) and np.all(sample.slots < 400)
    assert sample.exact_s > 0
    for slot, truth in zip(sample.slots.tolist(), sample.truth, strict=True):
        scores = vectors @ vectors[slot]
        scores[~alive] = -np.inf
        scores[slot] = -np.inf
        assert sorted(truth.tolist()) == sorted(np.argsort(-scores)[:K].tolist())


def grid(steepness: float) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """A recall surface rising with probe and budget, a cost linear in probe and count (U-shaped
    along the surface's boundary), and the counts of the budgets."""
    counts = [round(300 * b) for b in BUDGETS]
    p = np.asarray(PROBES)[:, None]
    recall = 1.0 - np.exp(-steepness * p * np.sqrt(np.asarray(BUDGETS)[None, :]))
    cost = 1.0 * p + 3e-5 * np.asarray(counts)[None, :] + 0.01  # scan share + re-rank + fixed
    return recall, cost, counts


@settings(max_examples=60, deadline=None)
@given(steepness=st.floats(1.0, 200.0), target=st.floats(0.5, 0.98), exact=st.floats(0.01, 2.0),
       noise=st.floats(0.0, 0.1), seed=st.integers(0, 2**16))
def test_choose_picks_the_cheapest_sufficient_point(steepness: float, target: float, exact: float,
                                                    noise: float, seed: int) -> None:
    recall, cost, counts = grid(steepness)
    jitter = np.random.default_rng(seed)
    measured: list[tuple[float, float]] = []

    def seconds(budget: float, probe: float) -> float:  # timings off by up to `noise`, either way
        measured.append((budget, probe))
        return float(cost[PROBES.index(probe), BUDGETS.index(budget)] * (1 + noise * jitter.uniform(-1, 1)))

    goal = target + RECALL_MARGIN
    feasible = (recall >= goal) & (cost * (1 + noise) < COST_SHARE_MAX * exact)
    # Found by measuring recall too, or read off a surface whose bound is the recall less the margin.
    for by_surface in (False, True):
        measured.clear()
        if by_surface:
            best, _ = choose_on_surface(seconds, exact, target, PROBES, counts,
                                        Surface(recall, recall - RECALL_MARGIN))
        else:
            best, _ = choose(lambda b, p: (seconds(b, p), float(recall[PROBES.index(p), BUDGETS.index(b)])),
                             exact, target, PROBES)
        if not feasible.any():
            continue  # exact, or an ANN point whose noisy time happened to pass
        assert best is not None and best[3] >= goal and best[0] < COST_SHARE_MAX * exact
        true_cost = cost[PROBES.index(best[2]), BUDGETS.index(best[1])]
        # Within the noise (and the walk's early stop) of the cheapest sufficient point.
        assert true_cost <= cost[recall >= goal].min() * 1.5 * (1 + noise) / (1 - noise) + 1e-12
        assert len(measured) <= len(BUDGETS) * (1 + int(np.ceil(np.log2(len(PROBES))) + 1))


def test_surface_fit_evens_out_timing_noise() -> None:
    """With a cost linear in probe and count, the fitted choice stays within 5% of the true
    cheapest boundary point when every timing is off by up to 15% (raw times could pick one
    costing a third more)."""
    recall, cost, counts = grid(12.0)
    surface = Surface(recall, recall - RECALL_MARGIN)
    truth, _ = choose_on_surface(lambda b, p: float(cost[PROBES.index(p), BUDGETS.index(b)]), 10.0, 0.9,
                                 PROBES, counts, surface)
    assert truth is not None
    for seed in range(20):
        jitter = np.random.default_rng(seed)

        def noisy(b: float, p: float, j: np.random.Generator = jitter) -> float:
            return float(cost[PROBES.index(p), BUDGETS.index(b)] * (1 + 0.15 * j.uniform(-1, 1)))

        best, _ = choose_on_surface(noisy, 10.0, 0.9, PROBES, counts, surface)
        assert best is not None
        assert cost[PROBES.index(best[2]), BUDGETS.index(best[1])] <= 1.05 * truth[0]


def test_surface_bound_is_two_standard_errors_below_the_mean() -> None:
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((3000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    segment = IvfSegment.build(vectors, np.ones(3000, dtype=bool), 0, SegmentSpec(1, 0, 1, 1, 8))
    sample = sample_queries(vectors, np.ones(3000, dtype=bool), 3000, 60, seed=1)
    surface = _surface([segment], vectors, sample, 3000, (0.05, 1.0), (10, 3000))
    assert surface.mean[1, 1] == 1.0 and surface.lower[1, 1] == 1.0 - 0.005  # everything scanned: exact
    per_query = []
    for slot, truth in zip(sample.slots.tolist(), sample.truth, strict=True):
        got = segment.candidates(vectors[slot], 10, 0, 0.05)
        per_query.append(np.isin(truth, got).mean())
    assert surface.mean[0, 0] == pytest.approx(np.mean(per_query))
    bound = np.mean(per_query) - 2 * np.std(per_query, ddof=1) / np.sqrt(len(per_query))
    assert surface.lower[0, 0] == pytest.approx(min(bound, np.mean(per_query) - 0.005))


def test_choose_prefers_exact_when_no_budget_is_cheap_enough() -> None:
    recall, _, counts = grid(50.0)
    best, last = choose(lambda b, p: (10.0, float(recall[PROBES.index(p), BUDGETS.index(b)])), 1.0, 0.9, PROBES)
    assert best is None and last > 0
    best, last = choose_on_surface(lambda b, p: 10.0, 1.0, 0.9, PROBES, counts, Surface(recall, recall - 0.01))
    assert best is None and last > 0
