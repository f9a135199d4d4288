"""IVF segments: probing everything is brute force, segments probed together, the recall surface."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.datasets import clustered
from node.vector_ivf import IvfSegment
from node.vector_probe import IvfProbe, _best, _leading, ivf_candidates, ivf_hits
from node.vector_segment import SegmentSpec

DIM = 32


def ivf_spec(projection_dim: int = 8, seed: int = 3) -> SegmentSpec:
    return SegmentSpec(n_trees=1, projection_dim=0, seed=seed, ivf_rows_min=1, ivf_projection_dim=projection_dim)


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def segments_over(data: np.ndarray, alive: np.ndarray, cuts: list[int], projection_dim: int) -> list[IvfSegment]:
    """IVF segments over the slot ranges between ``cuts`` (as the index tiles its sealed slots)."""
    edges = [0, *cuts, data.shape[0]]
    return [IvfSegment.build(data[a:b], alive[a:b], a, ivf_spec(projection_dim)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 400), seed=st.integers(0, 2**16), dead=st.floats(0.0, 0.9), start=st.integers(0, 50),
       projection_dim=st.sampled_from([0, 4, 8]))
def test_ivf_probing_every_list_is_brute_force(n: int, seed: int, dead: float, start: int,
                                                projection_dim: int) -> None:
    rng = np.random.default_rng(seed)
    data = clustered(n, DIM, seed, clusters=max(1, n // 50), rank=4)
    alive = rng.random(n) >= dead
    segment = IvfSegment.build(data, alive, start, ivf_spec(projection_dim))
    assert segment.items == int(alive.sum()) and segment.stop == start + n
    for q in unit(rng, 3):
        slots = segment.candidates(q, n, 0, probe=1.0)
        assert sorted(slots.tolist()) == (np.flatnonzero(alive) + start).tolist()
        # A narrower probe returns a subset of live slots, at most `count` of them.
        some = segment.candidates(q, 7, 0, probe=0.1)
        assert some.size <= 7 and set(some.tolist()) <= set(slots.tolist())


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 500), seed=st.integers(0, 2**16), dead=st.floats(0.0, 0.5),
       cut=st.floats(0.05, 0.95), projection_dim=st.sampled_from([0, 4, 8]))
def test_segments_probed_together_cover_every_live_row(n: int, seed: int, dead: float, cut: float,
                                                       projection_dim: int) -> None:
    """Probing all lists of several segments at once returns each live slot once; approximate
    scores are exact up to the residual outside the projection (exact without one)."""
    rng = np.random.default_rng(seed)
    data = clustered(n, DIM, seed, clusters=max(1, n // 50), rank=4)
    alive = rng.random(n) >= dead
    segments = segments_over(data, alive, [max(1, min(n - 1, round(cut * n)))], projection_dim)
    for q in unit(rng, 2):
        slots = ivf_candidates(segments, q, n, 1.0)
        assert sorted(slots.tolist()) == np.flatnonzero(alive).tolist()
        if projection_dim == 0 and alive.sum() > 5:
            # Full-width residuals: scores are exact but for the int8 rounding of each coordinate
            # (at most half a step; no row is clipped when every row is in the scale's sample).
            slack = max(float(np.abs(q) @ seg._scale) for seg in segments if seg.items) / 2 + 1e-5
            top = ivf_candidates(segments, q, 5, 1.0)
            scores = data @ q
            scores[~alive] = -np.inf
            assert top.size == 5 and scores[top].min() >= np.sort(scores)[-5] - 2 * slack


@settings(max_examples=30, deadline=None)
@given(n=st.integers(20, 600), seed=st.integers(0, 2**16), cut=st.floats(0.1, 0.9))
def test_recall_surface_counts_what_the_candidates_return(n: int, seed: int, cut: float) -> None:
    """ivf_hits (one scan per query) equals running ivf_candidates at every (probe, count)."""
    rng = np.random.default_rng(seed)
    data = clustered(n, DIM, seed, clusters=max(2, n // 40), rank=4)
    alive = rng.random(n) >= 0.1
    segments = segments_over(data, alive, [round(cut * n)], 4)
    probes, counts = (0.02, 0.1, 0.3, 1.0), (1, 5, 20, n)
    for q in unit(rng, 2):
        scores = data @ q
        scores[~alive] = -np.inf
        truth = np.argsort(-scores)[: min(10, int(alive.sum()))]
        surface = ivf_hits(segments, q, truth, probes, counts)
        for i, probe in enumerate(probes):
            for j, count in enumerate(counts):
                got = ivf_candidates(segments, q, count, probe)
                assert surface[i, j] == np.isin(truth, got).sum(), (probe, count)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 500), seed=st.integers(0, 2**16), cut=st.floats(0.05, 0.95), first=st.floats(0.0, 1.0),
       bound=st.floats(-1.5, 1.5))
def test_probe_rounds_scan_each_list_once(n: int, seed: int, cut: float, first: float, bound: float) -> None:
    """A leading round, then the lists above a bound, then the rest: every live slot exactly once;
    the second round holds exactly the unscanned lists whose rank reaches the bound."""
    rng = np.random.default_rng(seed)
    data = clustered(n, DIM, seed, clusters=max(1, n // 50), rank=4)
    alive = rng.random(n) >= 0.2
    segments = segments_over(data, alive, [max(1, min(n - 1, round(cut * n)))], 4)
    probing = IvfProbe(segments, unit(rng, 1)[0])
    lead = probing.leading(first)
    rounds = [probing.take(lead, n)]
    above = probing.above(bound)
    assert not np.isin(above, lead).any()
    assert set(above.tolist()) == set(np.flatnonzero(probing.rank >= bound).tolist()) - set(lead.tolist())
    rounds.append(probing.take(above, n))
    assert probing.leading(first).size == 0 and probing.above(bound).size == 0
    rounds.append(probing.take(probing.leading(1.0), n))
    slots = np.concatenate(rounds)
    assert sorted(slots.tolist()) == np.flatnonzero(alive).tolist()


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), lists=st.integers(1, 300), probe=st.floats(0.0, 0.99))
def test_probed_lists_are_the_shortest_prefix_by_rank_covering_the_share(seed: int, lists: int, probe: float) -> None:
    rng = np.random.default_rng(seed)
    rank = rng.standard_normal(lists)
    sizes = rng.integers(0, 50, lists) * (rng.random(lists) < 0.9)  # some lists empty, one maybe huge
    sizes[rng.integers(lists)] += rng.integers(0, 2000)
    chosen = _leading(rank, sizes, probe)
    order = np.argsort(-rank, kind="stable")
    covered = np.cumsum(sizes[order])
    expected = int(np.searchsorted(covered, max(1.0, probe * sizes.sum()))) + 1
    assert chosen.tolist() == sorted(order[:expected].tolist())


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), total=st.integers(0, 20_000), count=st.integers(1, 600))
def test_best_keeps_exactly_the_top_count(seed: int, total: int, count: int) -> None:
    scores = np.random.default_rng(seed).standard_normal(total).astype(np.float32)
    picked = _best(scores, count)
    assert picked.size == min(count, total) and np.unique(picked).size == picked.size
    if 0 < picked.size < total:
        assert scores[picked].min() >= np.sort(scores)[total - picked.size]


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 300), seed=st.integers(0, 2**16), projection_dim=st.sampled_from([0, 4, 8]))
def test_residual_codes_round_each_coordinate_by_at_most_half_a_step(n: int, seed: int, projection_dim: int) -> None:
    """Approximate scores from the int8 codes differ from the float32 residual scores they stand
    for by at most half a quantisation step per axis; the codes a load recomputes are the build's."""
    rng = np.random.default_rng(seed)
    data = clustered(n, DIM, seed, clusters=max(1, n // 50), rank=4)
    alive = np.ones(n, dtype=bool)
    segment = IvfSegment.build(data, alive, 0, ivf_spec(projection_dim))
    q = unit(rng, 1)[0]
    near, point, _ = segment._rank(q)
    lists = np.arange(segment.lists)
    approx, to_slots = segment._scan(near, point, lists)
    slots = to_slots(np.arange(approx.size))
    row_list = np.repeat(lists, np.diff(segment._bounds))
    residual = data[slots] - segment._means[row_list]
    projected = residual if segment._basis is None else residual @ segment._basis
    exact = near[row_list] + projected @ point
    assert segment._codes.dtype == np.int8 and np.abs(segment._codes).max() <= 127
    assert np.all(np.abs(approx - exact) <= np.abs(point) @ segment._scale / 2 + 1e-4)
    with tempfile.TemporaryDirectory() as tmp:
        saved = IvfSegment.build(data, alive, 0, ivf_spec(projection_dim), Path(tmp))
        loaded = IvfSegment.load(Path(tmp), saved.describe(), data)
    np.testing.assert_array_equal(loaded._codes, segment._codes)
    np.testing.assert_array_equal(loaded._scan(near, point, lists)[0], approx)


def test_ivf_build_is_seeded() -> None:
    data = clustered(3000, DIM, 5)
    alive = np.ones(3000, dtype=bool)
    a, b = (IvfSegment.build(data, alive, 0, ivf_spec()) for _ in range(2))
    q = data[17]
    assert a.lists == b.lists == round(4 * np.sqrt(3000))
    np.testing.assert_array_equal(a.candidates(q, 50, 0, 0.1), b.candidates(q, 50, 0, 0.1))


def test_small_probe_finds_neighbours_on_clustered_data() -> None:
    data = clustered(6200, 64, 3)
    base, queries = data[:6000], data[6000:]
    segments = [IvfSegment.build(base[a:b], np.ones(b - a, dtype=bool), a, ivf_spec(16)) for a, b in
                ((0, 4000), (4000, 6000))]
    found = 0
    for q in queries:
        slots = ivf_candidates(segments, q, 100, 0.05)
        truth = np.argsort(-(base @ q))[:10]
        found += int(np.isin(truth, slots).sum())
    assert found / (10 * len(queries)) >= 0.95
