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


def grid(steepness: float) -> tuple[np.ndarray, np.ndarray]:
    """A recall surface rising with probe and budget, and a U-shaped cost along its boundary."""
    p = np.asarray(PROBES)[:, None]
    b = np.asarray(BUDGETS)[None, :]
    recall = 1.0 - np.exp(-steepness * p * np.sqrt(b))
    cost = 1.0 * p + 0.01 * b  # scan share + re-rank
    return recall, cost


@settings(max_examples=60, deadline=None)
@given(steepness=st.floats(1.0, 200.0), target=st.floats(0.5, 0.98), exact=st.floats(0.01, 2.0))
def test_choose_picks_the_cheapest_sufficient_point(steepness: float, target: float, exact: float) -> None:
    recall, cost = grid(steepness)
    measured: list[tuple[float, float]] = []

    def measure(budget: float, probe: float) -> tuple[float, float]:
        i, j = PROBES.index(probe), BUDGETS.index(budget)
        measured.append((budget, probe))
        return float(cost[i, j]), float(recall[i, j])

    goal = target + RECALL_MARGIN
    feasible = (recall >= goal) & (cost < COST_SHARE_MAX * exact)
    # Read off a surface (whose lower bound is the recall less the margin), or found by measuring.
    for surface in (Surface(recall, recall - RECALL_MARGIN), None):
        measured.clear()
        best, _ = choose(measure, exact, target, PROBES, surface)
        if not feasible.any():
            assert best is None
            continue
        assert best is not None and best[3] >= goal and best[0] < COST_SHARE_MAX * exact
        # The walk stops once costs rise by half or stop falling for three budgets: it finds
        # the optimum up to that (the probe grid is fine enough that costs fall steadily).
        assert best[0] <= cost[feasible].min() * 1.5 + 1e-12
        assert len(measured) <= len(BUDGETS) * (1 + int(np.ceil(np.log2(len(PROBES))) + 1))


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
    recall, cost = grid(50.0)
    best, last = choose(lambda b, p: (10.0, float(recall[PROBES.index(p), BUDGETS.index(b)])), 1.0, 0.9, PROBES,
                        Surface(recall, recall - RECALL_MARGIN))
    assert best is None and last > 0
