"""VectorIndex: exactness of the buffer, recall after sealing, tombstones, filters, persistence,
concurrency of search with seal/compact, and a stateful property against a brute-force model."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from bench.datasets import clustered
from crypto.errors import DimensionMismatch, InvalidArgument
from node import vector_search
from node.vector_calibration import MARGINS, PROBES
from node.vector_index import SearchResult, VectorIndex, VectorIndexConfig
from node.vector_ivf import IvfSegment

DIM = 32
# recall_target=0: no calibration, so these tests exercise the ANN path even on tiny data.
SMALL = VectorIndexConfig(buffer_max=64, n_trees=8, projection_dim=16, exact_subset_max=0, fetch=40,
                          search_k_min=400, recall_target=0.0)
CALIBRATED = replace(SMALL, recall_target=0.95)
# Every segment is IVF (k-means lists, PCA-8 copy, exact re-rank).
IVF = replace(SMALL, ivf_rows_min=1, ivf_projection_dim=8, ivf_probe=0.2)



def ann_recall_at_10(index: VectorIndex, base: np.ndarray, queries: np.ndarray) -> float:
    """Recall@10 of ANN (non-exhaustive) searches against brute force over `base`."""
    found = 0
    for q in queries:
        truth = set(np.argsort(-(base @ q))[:10].tolist())
        result = index.search(q, 10)
        assert not result.exhaustive
        found += len(truth & {k for k, _ in result.hits})
    return found / (10 * len(queries))

def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute(vectors: dict[int, np.ndarray], groups: dict[int, int], q: np.ndarray, k: int,
          allowed: set[int] | None = None) -> list[tuple[int, float]]:
    q = q / np.linalg.norm(q)
    scored = [(key, float(vec @ q)) for key, vec in vectors.items() if allowed is None or groups[key] in allowed]
    return sorted(scored, key=lambda kv: (-kv[1], kv[0]))[:k]


def filled(n: int, cfg: VectorIndexConfig = SMALL, seed: int = 0, directory: Path | None = None,
           groups: int = 1) -> tuple[VectorIndex, np.ndarray]:
    data = clustered(n, DIM, seed, clusters=max(4, n // 100), rank=4)
    index = VectorIndex(DIM, directory, cfg)
    index.add_many(np.arange(n), data, np.arange(n) % groups)
    return index, data


def test_buffer_only_search_is_exact() -> None:
    rng = np.random.default_rng(1)
    vecs = unit(rng, 500)
    index = VectorIndex(DIM, None, VectorIndexConfig(buffer_max=10_000))
    index.add_many(range(500), vecs, [0] * 500)
    model = {i: vecs[i] for i in range(500)}
    for q in unit(rng, 20):
        result = index.search(q, 10)
        assert result.exhaustive
        expected = brute(model, dict.fromkeys(model, 0), q, 10)
        assert [k for k, _ in result.hits] == [k for k, _ in expected]
        np.testing.assert_allclose([s for _, s in result.hits], [s for _, s in expected], rtol=1e-5)


def test_recall_after_sealing_clustered_data() -> None:
    cfg = VectorIndexConfig(buffer_max=1024, exact_subset_max=0, recall_target=0.0)
    data = clustered(5200, 64, 3)
    base, queries = data[:5000], data[5000:]
    index = VectorIndex(64, None, cfg)
    for lo in range(0, 5000, 1000):
        index.add_many(np.arange(lo, lo + 1000), base[lo : lo + 1000], np.zeros(1000, dtype=np.int64))
        if index.needs_seal():
            index.seal()
        while index.needs_compact():
            index.compact()
    index.seal()
    assert index.statistics()["buffer"] == 0 and index.statistics()["segments"]
    assert ann_recall_at_10(index, base, queries) >= 0.95


def test_calibration_prefers_exact_search_when_it_is_cheaper() -> None:
    # 5k x 32: an exact scan costs microseconds, far less than any annoy query.
    cfg = VectorIndexConfig(buffer_max=1024, exact_subset_max=100, n_trees=4, projection_dim=8)
    index, data = filled(5000, cfg)
    index.seal()
    while index.needs_compact():
        index.compact()
    stats = index.statistics()
    calibration = stats["calibration"]
    assert stats["budget"] == "exact" and isinstance(calibration, dict) and calibration["live"] == 5000
    assert index.search(data[0], 5).exhaustive
    assert not index.needs_compact()  # calibrated for this size: no recalibration until it grows 25%


def test_removed_keys_never_come_back_and_replaced_keys_use_the_new_vector() -> None:
    index, data = filled(600)
    index.seal()
    for key in range(0, 600, 2):
        index.remove(key)
    index.remove(10_000)  # absent: no error
    assert len(index) == 300 and 2 not in index and 3 in index
    index.add(3, -data[3], 0)
    for q in data[:50]:
        hits = index.search(q, 20).hits
        assert all(key % 2 == 1 for key, _ in hits)
    top = index.search(-data[3], 1).hits[0]
    assert top[0] == 3 and top[1] == pytest.approx(1.0, abs=1e-5)


def test_group_and_accept_filters() -> None:
    index, data = filled(900, groups=3)
    index.seal()
    for q in data[:30]:
        result = index.search(q, 15, groups={1}, accept=lambda keys: keys % 2 == 0)
        assert len(result.hits) == 15
        assert all(key % 3 == 1 and key % 2 == 0 for key, _ in result.hits)
    assert index.search(data[0], 5, groups={7}).hits == []
    # A filter that leaves fewer than k rows: the search widens until it has seen every row.
    result = index.search(data[0], 10, accept=lambda keys: keys < 4)
    assert sorted(k for k, _ in result.hits) == [0, 1, 2, 3] and result.exhaustive


def test_exact_subset_path_for_small_groups() -> None:
    cfg = VectorIndexConfig(buffer_max=64, n_trees=4, projection_dim=8, exact_subset_max=100)
    index, data = filled(800, cfg, groups=10)
    index.seal()
    model = {i: data[i] for i in range(800) if i % 10 == 4}
    result = index.search(data[4], 10, groups=[4])
    assert result.exhaustive
    assert [k for k, _ in result.hits] == [k for k, _ in brute(model, {}, data[4], 10)]


def test_dimension_and_value_errors() -> None:
    index = VectorIndex(DIM, None, SMALL)
    with pytest.raises(DimensionMismatch):
        index.add(1, np.ones(DIM + 1), 0)
    with pytest.raises(DimensionMismatch):
        index.search(np.ones(DIM - 1), 3)
    with pytest.raises(InvalidArgument):
        index.add(1, np.zeros(DIM), 0)
    with pytest.raises(InvalidArgument):
        index.search(np.zeros(DIM), 3)
    with pytest.raises(InvalidArgument):
        index.add_many([1, 2], np.ones((1, DIM)), [0, 0])
    assert index.search(np.ones(DIM), 3) == SearchResult([], True)


def test_persistence_round_trip(tmp_path: Path) -> None:
    index, data = filled(700, CALIBRATED, directory=tmp_path, groups=2)
    index.seal()
    index.add_many(range(700, 720), data[:20], [0] * 20)  # stays in the buffer
    for key in range(0, 100, 3):
        index.remove(key)
    index.save(watermark=42)
    again = VectorIndex(DIM, tmp_path, CALIBRATED)
    assert again.load_error is None and again.watermark == 42 and len(again) == len(index)
    assert again.statistics()["calibration"] == index.statistics()["calibration"] != {}
    for q in data[100:130]:
        assert again.search(q, 10, groups={1}) == index.search(q, 10, groups={1})
    # A second save replaces the files and deletes the ones nobody references any more.
    index.compact()
    index.save(watermark=43)
    assert VectorIndex(DIM, tmp_path, CALIBRATED).watermark == 43
    names = {p.name for p in tmp_path.iterdir()}
    assert len([n for n in names if n.startswith("vectors-")]) == 1


@pytest.mark.parametrize("damage", ["manifest", "ann", "npy"])
def test_damaged_files_lead_to_a_rebuild(tmp_path: Path, damage: str) -> None:
    index, data = filled(400, directory=tmp_path)
    index.seal()
    index.save(watermark=5)
    manifest = tmp_path / "manifest.json"
    if damage == "manifest":
        manifest.write_text("{not json")
    else:
        meta = json.loads(manifest.read_text())
        name = (meta["segments"][0]["name"] + ".ann") if damage == "ann" else meta["arrays"]["vectors"][0]
        raw = bytearray((tmp_path / name).read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        (tmp_path / name).write_bytes(bytes(raw))
    broken = VectorIndex(DIM, tmp_path, SMALL)
    assert broken.load_error is not None and len(broken) == 0
    calls = []

    def rebuild():  # the node would read these from SQLite
        calls.append(1)
        yield np.arange(400), data, np.zeros(400, dtype=np.int64)

    rebuilt = VectorIndex.open(DIM, tmp_path, SMALL, rebuild, watermark=5)
    assert calls and len(rebuilt) == 400 and rebuilt.statistics()["buffer"] == 0
    assert rebuilt.search(data[7], 1).hits[0][0] == 7


def test_open_rebuilds_when_the_watermark_is_stale(tmp_path: Path) -> None:
    index, data = filled(200, directory=tmp_path)
    index.save(watermark=1)
    reopened = VectorIndex.open(DIM, tmp_path, SMALL, lambda: iter(()), watermark=1)
    assert len(reopened) == 200  # up to date: loaded, no rebuild
    stale = VectorIndex.open(DIM, tmp_path, SMALL, lambda: iter([(np.arange(3), data[:3], np.zeros(3))]),
                             watermark=2)
    assert len(stale) == 3


def test_vacuum_drops_tombstones_and_keeps_results() -> None:
    index, data = filled(1200)
    index.seal()
    while index.needs_compact():
        index.compact()
    for key in range(0, 1200, 3):
        index.remove(key)
    for key in range(1, 1200, 3):
        index.remove(key)
    assert index.needs_compact()
    index.compact()
    stats = index.statistics()
    assert stats["tombstones"] == 0 and stats["items"] == 400 and stats["vacuums"] == 1
    for q in data[2:60:3]:
        hits = index.search(q, 5).hits
        assert hits[0][1] == pytest.approx(1.0, abs=1e-5)
        assert all(k % 3 == 2 for k, _ in hits)


@pytest.mark.parametrize("ivf_rows_min", [0, 4096])  # annoy segments, IVF segments
def test_searches_during_seal_and_compact_see_every_item(ivf_rows_min: int) -> None:
    cfg = VectorIndexConfig(buffer_max=64, n_trees=10, projection_dim=16, exact_subset_max=0, recall_target=0.0,
                            ivf_rows_min=ivf_rows_min)
    index, data = filled(12_000, cfg)
    errors: list[BaseException] = []

    def build() -> None:
        try:
            index.seal()
            while index.needs_compact():
                index.compact()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    worker = threading.Thread(target=build)
    worker.start()
    extra = clustered(200, DIM, 9)
    i = during = 0
    while worker.is_alive() or i < 200:
        during += worker.is_alive()
        key = (i * 7919) % 12_000
        top = index.search(data[key], 3).hits[0]  # a stored vector finds itself in buffer or segment
        assert top[0] == key and top[1] == pytest.approx(1.0, abs=1e-5)
        if i < 200:
            index.add(100_000 + i, extra[i], 0)
        i += 1
    worker.join()
    assert not errors and len(index) == 12_200 and during > 0
    for j in range(0, 200, 7):
        assert index.search(extra[j], 1).hits[0][0] == 100_000 + j


MODEL_CONFIG = VectorIndexConfig(buffer_max=8, n_trees=3, projection_dim=4, exact_subset_max=6, fetch=4,
                                 search_k_min=20, segments_max=3, accept_batch=4, recall_target=0.0)


class IndexMatchesModel(RuleBasedStateMachine):
    """Random add/remove/seal/compact/search against a dict of vectors."""

    config = MODEL_CONFIG

    def __init__(self) -> None:
        super().__init__()
        self.index = VectorIndex(8, None, self.config)
        self.vectors: dict[int, np.ndarray] = {}
        self.groups: dict[int, int] = {}
        self.sealed_once = False

    @rule(key=st.integers(0, 120), group=st.integers(0, 2), seed=st.integers(0, 2**16))
    def add(self, key: int, group: int, seed: int) -> None:
        vec = unit(np.random.default_rng(seed), 1, 8)[0]
        self.index.add(key, vec, group)
        self.vectors[key], self.groups[key] = vec, group

    @rule(seed=st.integers(0, 2**16), count=st.integers(1, 40))
    def add_batch(self, seed: int, count: int) -> None:
        rng = np.random.default_rng(seed)
        keys = rng.integers(0, 121, count)
        groups = rng.integers(0, 3, count)
        vecs = unit(rng, count, 8)
        self.index.add_many(keys, vecs, groups)
        for key, vec, group in zip(keys.tolist(), vecs, groups.tolist(), strict=True):
            self.vectors[key], self.groups[key] = vec, group  # the last duplicate in a batch wins

    @rule(key=st.integers(0, 120))
    def remove(self, key: int) -> None:
        self.index.remove(key)
        self.vectors.pop(key, None)
        self.groups.pop(key, None)

    @rule()
    def seal(self) -> None:
        self.index.seal()
        self.sealed_once = True

    @precondition(lambda self: self.sealed_once)
    @rule()
    def compact(self) -> None:
        self.index.compact()

    @rule(seed=st.integers(0, 2**16), k=st.integers(1, 12),
          allowed=st.one_of(st.none(), st.sets(st.integers(0, 2), max_size=3)), odd_only=st.booleans())
    def search(self, seed: int, k: int, allowed: set[int] | None, odd_only: bool) -> None:
        q = unit(np.random.default_rng(seed), 1, 8)[0]
        accept = (lambda keys: keys % 2 == 1) if odd_only else None
        result = self.index.search(q, k, groups=allowed, accept=accept)
        eligible = {key: v for key, v in self.vectors.items() if not odd_only or key % 2 == 1}
        expected = brute(eligible, self.groups, q, k, allowed)
        keys = [key for key, _ in result.hits]
        assert len(set(keys)) == len(keys)
        assert len(keys) == len(expected)  # retries until k found or every row was seen
        for key, score in result.hits:
            assert key in self.vectors, "a removed key was returned"
            assert allowed is None or self.groups[key] in allowed
            assert not odd_only or key % 2 == 1
            assert score == pytest.approx(float(self.vectors[key] @ q), abs=1e-5)
        scores = [s for _, s in result.hits]
        assert scores == sorted(scores, reverse=True)
        if result.exhaustive:
            np.testing.assert_allclose(scores, [s for _, s in expected], atol=1e-5)
        if self.index.statistics()["segments"] == []:
            assert result.exhaustive

    @invariant()
    def sizes_agree(self) -> None:
        assert len(self.index) == len(self.vectors)
        assert all(key in self.index for key in self.vectors)


IndexMatchesModel.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestIndexMatchesModel = IndexMatchesModel.TestCase


class IvfIndexMatchesModel(IndexMatchesModel):
    """The same model with every segment built as IVF (2 x sqrt(rows) lists, PCA-4 copy)."""

    config = replace(MODEL_CONFIG, ivf_rows_min=1, ivf_projection_dim=4, ivf_probe=0.3)


IvfIndexMatchesModel.TestCase.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
TestIvfIndexMatchesModel = IvfIndexMatchesModel.TestCase


class BoundedIvfIndexMatchesModel(IvfIndexMatchesModel):
    """The IVF model with bounded probing switched on (as calibration does when it is cheaper):
    filters, retries and exact scores hold as with a fixed probe."""

    def __init__(self) -> None:
        super().__init__()
        self.index._bounded = (1.0, -0.05)


BoundedIvfIndexMatchesModel.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestBoundedIvfIndexMatchesModel = BoundedIvfIndexMatchesModel.TestCase


def test_bounded_probing_finds_the_exact_top_k_when_the_bound_admits_every_list() -> None:
    """With a margin below any score gap and a fetch as large as the index, the second round
    scans every list the first did not and re-ranks every row: the exact answer, with filters."""
    cfg = replace(IVF, ivf_projection_dim=0, ivf_first_probe=0.05)
    index, data = filled(1500, cfg, groups=3)
    index.seal()
    index._bounded = (1e4, -10.0)
    model = {i: data[i] / np.linalg.norm(data[i]) for i in range(1500)}
    groups = {i: i % 3 for i in range(1500)}
    for q in unit(np.random.default_rng(5), 10):
        for allowed in (None, {1}):
            result = index.search(q, 10, groups=allowed)
            assert not result.exhaustive
            assert [key for key, _ in result.hits] == [key for key, _ in brute(model, groups, q, 10, allowed)]


def test_bounded_probing_stops_after_the_first_round_when_the_bound_admits_nothing() -> None:
    index, data = filled(1500, replace(IVF, ivf_first_probe=0.05))
    index.seal()
    index._bounded = (2.0, 10.0)  # nothing scores 10 above the k-th best: one round only
    scanned: list[int] = []
    original = IvfSegment._scan

    def counting(self: IvfSegment, near: np.ndarray, point: np.ndarray, lists: np.ndarray) -> tuple:
        scanned.append(int(np.diff(self._bounds)[lists].sum()))
        return original(self, near, point, lists)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(IvfSegment, "_scan", counting)
        result = index.search(data[3], 10)
    assert len(result.hits) == 10 and result.hits[0][0] == 3
    assert len(scanned) == 1 and scanned[0] < 0.2 * 1500


def test_searches_with_an_accept_filter_use_the_fixed_probe() -> None:
    """``accept`` can reject the rows the bound would be set from: such searches keep the
    calibrated fixed probe (with its over-fetch and retries)."""
    index, data = filled(1500, IVF)
    index.seal()
    index._bounded = (1.0, -0.05)

    def refuse(*args: object, **kwargs: object) -> tuple[np.ndarray, np.ndarray]:
        raise AssertionError("bounded probing used")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vector_search, "bounded_candidates", refuse)
        hits = index.search(data[0], 5, accept=lambda keys: keys % 2 == 0).hits
        assert len(hits) == 5 and all(key % 2 == 0 for key, _ in hits)
        with pytest.raises(AssertionError, match="bounded probing used"):
            index.search(data[0], 5)


def test_ivf_recall_on_clustered_data() -> None:
    cfg = VectorIndexConfig(buffer_max=1024, exact_subset_max=0, recall_target=0.0, ivf_rows_min=2000,
                            ivf_projection_dim=32, ivf_probe=0.1)
    data = clustered(4200, 64, 3)
    base, queries = data[:4000], data[4000:]
    index = VectorIndex(64, None, cfg)
    index.add_many(np.arange(4000), base, np.zeros(4000, dtype=np.int64))
    index.seal()
    assert index.statistics()["segments"] == [4000]
    assert isinstance(index._segments[0], IvfSegment)
    assert ann_recall_at_10(index, base, queries) >= 0.95


def test_ivf_calibration_picks_a_probe_and_budget() -> None:
    cfg = VectorIndexConfig(buffer_max=1024, exact_subset_max=0, ivf_rows_min=2000, ivf_projection_dim=32)
    index, data = filled(6000, cfg)
    index.seal()
    calibration = index.statistics()["calibration"]
    assert isinstance(calibration, dict) and calibration["live"] == 6000
    if calibration["budget"]:  # ANN was cheaper than exact here: it met the target
        assert calibration["recall"] >= 0.95 and 0 < calibration["probe"] <= max(PROBES)
    if "margin" in calibration:  # bounded probing was cheaper still: it met the target on every sample query
        assert calibration["bounded_recall"] >= 0.96 and calibration["margin"] in MARGINS
        assert index.statistics()["bounded"] == [calibration["bounded_budget"], calibration["margin"]]
    if not calibration["budget"] and "margin" not in calibration:
        assert index.search(data[0], 5).exhaustive


def test_ivf_persistence_round_trip(tmp_path: Path) -> None:
    index, data = filled(900, IVF, directory=tmp_path, groups=2)
    index.seal()
    for key in range(0, 200, 3):
        index.remove(key)
    # As a calibration that chose bounded probing leaves it: the choice is saved and reloaded.
    index._calibration = {"live": 833.0, "recall": 0.97, "budget": 1.0, "probe": 0.2, "bounded_budget": 1.5,
                          "margin": -0.06}
    index._bounded = (1.5, -0.06)
    index.save(watermark=7)
    meta = json.loads((tmp_path / "manifest.json").read_text())
    assert [s["kind"] for s in meta["segments"]] == ["ivf"]
    again = VectorIndex(DIM, tmp_path, IVF)
    assert again.load_error is None and again.watermark == 7 and len(again) == len(index)
    assert again.statistics()["bounded"] == [1.5, -0.06]
    for q in data[200:240]:
        assert again.search(q, 10, groups={1}) == index.search(q, 10, groups={1})
        assert again.search(q, 10) == index.search(q, 10)
    # A damaged IVF file is detected: the index starts empty and must be rebuilt.
    name = meta["segments"][0]["name"] + ".npz"
    raw = bytearray((tmp_path / name).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (tmp_path / name).write_bytes(bytes(raw))
    broken = VectorIndex(DIM, tmp_path, IVF)
    assert broken.load_error is not None and len(broken) == 0
