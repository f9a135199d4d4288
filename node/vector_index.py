"""Log-structured vector index for one embedding space: exact buffer + sealed annoy/IVF segments.

Owns the live vectors (by integer key, with a group code), sealing/compaction, calibration runs
and persistence; a query runs on a snapshot in node/vector_search.py. It must not know about SQLite,
namespaces or text (the node maps keys to rows and passes ``accept`` for metadata filters).

Layout: slots are rows of append-only arrays (node/vector_slots.py). Slots ``[0, sealed_upto)``
are covered by adjacent segments (IVF lists, node/vector_ivf.py, or an annoy forest when small),
``[sealed_upto, n)`` is the buffer searched exactly. Removing a key only clears its ``alive`` bit
(a tombstone until a rebuild drops it); re-adding a key appends a new slot. Heavy work (builds,
vacuum copies, calibration) runs outside ``_lock``; searches take ``_lock`` only to copy a few
references, and swaps are reference assignments.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crypto.errors import DimensionMismatch, InvalidArgument
from node.vector_calibration import K, calibrate
from node.vector_ivf import build_segment, load_segment
from node.vector_search import (
    Plan,
    SearchResult,
    View,
    bounded_candidates,
    candidates,
    fetch_count,
    search_view,
)
from node.vector_segment import (
    MANIFEST,
    SavedIndex,
    SegmentLike,
    SegmentSpec,
    load_index,
    remove_unreferenced,
    save_index,
)
from node.vector_select import Accept
from node.vector_slots import SlotTable

log = logging.getLogger(__name__)

RebuildSource = Callable[[], Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]]


@dataclass(frozen=True, slots=True)
class VectorIndexConfig:
    """Tuning of one index; defaults measured on 100k x 384 clustered vectors and stdlib text
    passages (bench/search.py)."""

    buffer_max: int = 4096  # buffered (exactly searched) rows before needs_seal(): ~0.6 ms scan at 384 dims
    n_trees: int = 20  # annoy trees per segment: recall rises with trees, build time linearly
    projection_dim: int = 64  # annoy runs on a per-segment PCA to this many dims (0: full vectors)
    search_k_per_item: float = 0.08  # annoy nodes inspected per query, as a fraction of sealed rows
    search_k_min: int = 1500  # ... but at least this many (small indexes are nearly exhaustive)
    fetch: int = 300  # candidates re-ranked exactly per query at budget 1 (split across segments)
    overfetch: float = 2.0  # extra candidate factor when groups/accept filter part of the results
    fetch_growth: int = 4  # a filtered search that found fewer than k retries with fetch x this
    exact_subset_max: int = 8192  # allowed rows at or below this are searched exactly, no ANN
    accept_batch: int = 256  # keys per accept() call
    segments_max: int = 8  # more segments than this are merged (each costs per-query overhead)
    merge_ratio: float = 0.5  # merge a segment into its older neighbour once it is this fraction of it
    dead_fraction_max: float = 0.25  # segments (and the slot arrays) are rebuilt above this tombstone share
    recall_target: float = 0.95  # after builds, widen the ANN budget until sampled recall@10 reaches this,
    # or search exactly when that budget would cost over half an exact scan (0: never calibrate)
    calibration_queries: int = 200  # stored vectors used as sample queries (their own hit excluded)
    seed: int = 1  # annoy, k-means, PCA sampling and calibration seed: same inputs -> same segments
    ivf_rows_min: int = 4096  # segments built over at least this many live rows are IVF (0: annoy only):
    # k-means lists, rows scored as list mean + projected residual, exact re-rank of the best `fetch` x budget.
    # At 4096 (a full buffer) every sealed segment is IVF: annoy on text needed a 5x larger budget,
    # and one kind of segment lets calibration read recall off one scan per query
    ivf_projection_dim: int = 128  # width of the IVF segments' residual copy (0: full width)
    ivf_lists_per_sqrt: float = 4.0  # k-means lists per sqrt(rows) of an IVF segment: finer lists cover
    # more true neighbours per row scanned, but cost more k-means work and more per-list calls per query
    ivf_probe: float = 0.06  # share of an IVF segment's rows probed until calibration picks one
    ivf_first_probe: float = 0.03  # bounded probing's first round: share of the IVF rows scanned before
    # the bound is set from the k-th best exact score found (see VectorIndex.search)


class VectorIndex:
    """All vectors of one embedding space, searchable by cosine. Thread-safe."""

    def __init__(self, dim: int, directory: Path | None = None, config: VectorIndexConfig | None = None) -> None:
        if dim <= 0:
            raise InvalidArgument("dim must be positive", dim=dim)
        self.dim = dim
        self.directory = directory
        self.config = config or VectorIndexConfig()
        cfg = self.config
        self.spec = SegmentSpec(cfg.n_trees, cfg.projection_dim, cfg.seed, cfg.ivf_rows_min, cfg.ivf_projection_dim,
                                cfg.ivf_lists_per_sqrt)
        self._lock = threading.Lock()  # guards every field below; held only for O(batch) work
        self._build_lock = threading.Lock()  # one seal/compact/vacuum at a time
        self._save_lock = threading.Lock()
        self._table: SlotTable
        self._sealed_upto: int
        self._segments: tuple[SegmentLike, ...]
        # ANN budget multiplier chosen by calibration; None: exact scans beat the ANN at the target.
        self._budget: float | None
        self._probe: float  # share of the IVF segments' rows probed, also chosen by calibration
        self._bounded: tuple[float, float] | None  # (budget, margin) of bounded probing, if calibrated cheaper
        self._calibration: dict[str, float]
        self._clear()
        self.watermark: int | None = None  # what save() stored; None when nothing was loaded
        self.load_error: str | None = None
        self._stats = {"seal_ms_last": 0.0, "compact_ms_last": 0.0, "seals": 0, "merges": 0,
                       "vacuums": 0, "searches": 0, "exact_searches": 0, "retries": 0}
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            try:
                self._restore(load_index(directory, dim, self.spec, load_segment))
            except (OSError, ValueError, KeyError, TypeError, EOFError) as exc:
                self.load_error = f"{type(exc).__name__}: {exc}"
                if (directory / MANIFEST).exists():
                    log.warning("vector index in %s unusable (%s); it must be rebuilt", directory, exc)
                self._clear()

    @classmethod
    def open(
        cls, dim: int, directory: Path | None, config: VectorIndexConfig | None, rebuild: RebuildSource,
        *, watermark: int | None = None,
    ) -> VectorIndex:
        """Load from ``directory``; if nothing usable was saved, or the saved watermark differs from
        ``watermark`` (when given), start empty and add every batch ``rebuild()`` yields
        (keys, vectors, groups), then seal it all as one segment."""
        index = cls(dim, directory, config)
        if index.watermark is not None and (watermark is None or index.watermark == watermark):
            return index
        index._clear()
        for keys, vectors, groups in rebuild():
            index.add_many(keys, vectors, groups)
        index.seal()
        index.watermark = watermark
        return index

    # ---- writes -------------------------------------------------------------------------------

    def add(self, key: int, vector: np.ndarray, group: int) -> None:
        """Insert or replace ``key``; the vector is normalised (a zero vector is InvalidArgument)."""
        self.add_many(np.array([key], dtype=np.int64), np.asarray(vector).reshape(1, -1),
                      np.array([group], dtype=np.int64))

    def add_many(self, keys: np.ndarray | Iterable[int], vectors: np.ndarray, groups: np.ndarray | Iterable[int]) -> None:
        keys_arr = np.asarray(list(keys) if not isinstance(keys, np.ndarray) else keys, dtype=np.int64).ravel()
        groups_arr = np.asarray(list(groups) if not isinstance(groups, np.ndarray) else groups, dtype=np.int64).ravel()
        vecs = np.asarray(vectors, dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape[1] != self.dim:
            raise DimensionMismatch(f"expected vectors of dimension {self.dim}", expected=self.dim,
                                    got=int(vecs.shape[-1]) if vecs.ndim else 0)
        if not (len(keys_arr) == len(groups_arr) == vecs.shape[0]):
            raise InvalidArgument("keys, vectors and groups differ in length")
        norms = np.linalg.norm(vecs, axis=1)
        if not np.all(np.isfinite(norms)) or np.any(norms == 0.0):
            raise InvalidArgument("vectors must be finite and non-zero")
        vecs = vecs / norms[:, None]
        # Within one batch the last occurrence of a key wins.
        _, last = np.unique(keys_arr[::-1], return_index=True)
        keep = np.sort(len(keys_arr) - 1 - last)
        keys_arr, groups_arr, vecs = keys_arr[keep], groups_arr[keep], vecs[keep]
        with self._lock:
            self._table.append(keys_arr, vecs, groups_arr)

    def remove(self, key: int) -> None:
        """Forget ``key`` (no error if absent); it is never returned by a later search."""
        with self._lock:
            self._table.kill(int(key))

    def __contains__(self, key: object) -> bool:
        return key in self._table.slot_of

    def __len__(self) -> int:
        return len(self._table)

    # ---- search -------------------------------------------------------------------------------

    def search(self, query: np.ndarray, k: int, *, groups: Collection[int] | None = None,
               accept: Accept | None = None) -> SearchResult:
        """Top ``k`` live keys by cosine to ``query`` whose group is in ``groups`` (all if None) and
        for which ``accept(keys) -> bool mask`` holds. ``accept`` gets batches of candidate keys
        (``accept_batch`` at most), best first; a retry with a wider fetch may offer a key again.
        Pure CPU work of ~1-15 ms at 100k rows: call it from a worker thread."""
        q = np.asarray(query, dtype=np.float32).ravel()
        if q.shape[0] != self.dim:
            raise DimensionMismatch(f"expected a query of dimension {self.dim}", expected=self.dim, got=q.shape[0])
        norm = float(np.linalg.norm(q))
        if not math.isfinite(norm) or norm == 0.0:
            raise InvalidArgument("query vector must be finite and non-zero")
        q = q / norm
        group_arr = None if groups is None else np.fromiter((int(g) for g in groups), dtype=np.int64)
        view = self._view(group_arr)
        self._stats["searches"] += 1
        plan = Plan(self._budget, self._probe, self._bounded)
        return search_view(view, q, k, group_arr, accept, self.config, plan, self._stats)

    def _view(self, group_arr: np.ndarray | None) -> View:
        with self._lock:
            t = self._table
            return View(t.vectors, t.keys, t.groups, t.alive, t.n, self._sealed_upto, self._segments,
                         t.allowed(group_arr), len(t))

    # ---- sealing, compaction ------------------------------------------------------------------

    def needs_seal(self) -> bool:
        return self._table.n - self._sealed_upto >= self.config.buffer_max

    def seal(self) -> None:
        """Build a segment over the whole buffer (heavy: call from a worker thread), then swap it in."""
        with self._build_lock:
            started = time.perf_counter()
            with self._lock:
                start, stop = self._sealed_upto, self._table.n
                vectors, alive = self._table.vectors, self._table.alive[start:stop].copy()
            if stop == start:
                return
            segment = build_segment(vectors[start:stop], alive, start, self.spec, self.directory)
            with self._lock:
                self._segments = (*self._segments, segment)
                self._sealed_upto = stop
                self._stats["seals"] += 1
                self._stats["seal_ms_last"] = (time.perf_counter() - started) * 1e3
            ahead = self.config.buffer_max
            self._table.grow_ahead(self._lock, 4 * ahead, 8 * ahead)
            if self._merge_plan() is None:  # else compact() calibrates on the merged segments
                self._calibrate()

    def needs_compact(self) -> bool:
        """True when segments should merge, tombstones be dropped, or the ANN budget recalibrated."""
        return self._merge_plan() is not None or self._vacuum_due() or self._calibration_due()

    def _calibration_due(self) -> bool:
        cfg = self.config
        with self._lock:
            live, sealed = len(self._table), self._sealed_upto
        last = self._calibration.get("live", 0.0)
        # A calibration costs ~1-3 s of a core at 30-100k rows; at 1.5x growth (instead of 1.25x)
        # the segments had changed enough to leave text 15% slower than needed.
        return (cfg.recall_target > 0 and live > cfg.exact_subset_max and sealed > 4 * K
                and not (last and 0.8 < live / last < 1.25))

    def compact(self) -> None:
        """Merge segments until the policy is met and drop tombstones (heavy: worker thread)."""
        with self._build_lock:
            started = time.perf_counter()
            if self._vacuum_due():
                self._vacuum()
            while (plan := self._merge_plan()) is not None:
                first, last = plan
                with self._lock:
                    old = self._segments[first : last + 1]
                    start, stop = old[0].start, old[-1].stop
                    vectors, alive = self._table.vectors, self._table.alive[start:stop].copy()
                merged = build_segment(vectors[start:stop], alive, start, self.spec, self.directory)
                with self._lock:
                    self._segments = (*self._segments[:first], merged, *self._segments[last + 1 :])
                    self._stats["merges"] += 1
            self._calibrate()
            self._stats["compact_ms_last"] = (time.perf_counter() - started) * 1e3

    def _calibrate(self, force: bool = False) -> None:
        """Pick the cheapest measured ANN budget (fetch multiplier and, with IVF segments, share of
        rows probed) whose recall@10 on sample queries reaches ``recall_target``, or exact search
        (node/vector_calibration.py). Runs after builds (worker thread); skipped unless the live
        count changed by over 25%."""
        if not (force or self._calibration_due()):
            return
        cfg = self.config
        view = self._view(None)
        sealed = sum(s.items for s in view.segments)

        def fixed(q: np.ndarray, budget: float, probe: float) -> np.ndarray:
            search_k = max(cfg.search_k_min, cfg.search_k_per_item * sealed) * budget
            return candidates(view, q, int(fetch_count(cfg.fetch, K, budget)), int(search_k), sealed, probe)

        def bounded(q: np.ndarray, budget: float, margin: float) -> tuple[np.ndarray, np.ndarray]:
            return bounded_candidates(view, q, K, None, fetch_count(cfg.fetch, K, budget), cfg.ivf_first_probe, margin)

        choice = calibrate(
            view.vectors[: view.n], view.alive[: view.n], view.sealed_upto, view.segments, fixed,
            lambda budget: fetch_count(cfg.fetch, K, budget), queries=cfg.calibration_queries, seed=cfg.seed,
            target=cfg.recall_target, fallback_probe=cfg.ivf_probe, bounded=bounded)
        self._budget, self._probe, self._bounded = choice.budget, choice.probe, choice.bounded
        self._calibration = {"live": float(view.live), **choice.summary}

    def _merge_plan(self) -> tuple[int, int] | None:
        """(first, last) adjacent segments to rebuild as one, or None when the policy holds."""
        with self._lock:
            segs, alive = self._segments, self._table.alive
        if not segs:
            return None
        live = [int(alive[s.start : s.stop].sum()) for s in segs]
        cfg = self.config
        for i, seg in enumerate(segs):
            if seg.items and (seg.items - live[i]) > cfg.dead_fraction_max * seg.items:
                return (i - 1, i) if i > 0 and live[i - 1] < live[i] else (i, i)
        # Binomial-heap style tiers: the newest segment joins its predecessor once comparable.
        for i in range(len(segs) - 1, 0, -1):
            if live[i] >= cfg.merge_ratio * live[i - 1]:
                return (i - 1, i)
        if len(segs) > cfg.segments_max:
            pair = min(range(len(segs) - 1), key=lambda j: live[j] + live[j + 1])
            return (pair, pair + 1)
        return None

    # ---- storage internals ----------------------------------------------------------------------

    def _clear(self) -> None:
        self._table = SlotTable(self.dim)
        self._sealed_upto = 0
        self._segments = ()
        self._budget = 1.0
        self._probe = self.config.ivf_probe
        self._bounded = None
        self._calibration = {}

    def _vacuum_due(self) -> bool:
        with self._lock:
            n, dead = self._table.n, self._table.dead
            return n >= 1024 and dead > self.config.dead_fraction_max * n

    def _vacuum(self) -> None:
        """Rewrite the rows without tombstones and reseal them as one segment (under _build_lock,
        which keeps ``_sealed_upto`` fixed meanwhile)."""
        compacted = self._table.compacted(self._lock, self._sealed_upto, 8 * self.config.buffer_max)
        rows = compacted.sealed
        segment = build_segment(compacted.vectors[:rows], np.ones(rows, dtype=bool), 0, self.spec, self.directory)
        with self._lock:
            if self._table.adopt(compacted):  # else a huge batch arrived meanwhile: next compact
                self._sealed_upto, self._segments = rows, (segment,)
                self._stats["vacuums"] += 1

    # ---- persistence, statistics ---------------------------------------------------------------

    def save(self, watermark: int = 0) -> None:
        """Persist to ``directory`` (atomic: a manifest written last names every file); ``watermark``
        is stored as given (e.g. the store's last change number) and read back as ``.watermark``."""
        if self.directory is None:
            return
        with self._save_lock:
            with self._lock:
                arrays = self._table.arrays()
                segments = self._segments
                calibration = dict(self._calibration)
            keep = save_index(self.directory, self.dim, self.spec, arrays, segments, watermark, calibration)
            self.watermark = watermark
            # Under _build_lock: a segment being built now has files on disk but is not live yet.
            with self._build_lock:
                with self._lock:
                    keep |= {name for seg in self._segments for name in seg.files}
                remove_unreferenced(self.directory, keep)

    def _restore(self, loaded: SavedIndex) -> None:
        self._clear()
        self._table.restore(loaded, 8 * self.config.buffer_max)
        self._sealed_upto, self._segments = loaded.sealed_upto, loaded.segments
        self.watermark = loaded.watermark
        self._calibration = loaded.calibration
        if loaded.calibration:
            self._budget = loaded.calibration["budget"] or None
            self._probe = loaded.calibration.get("probe", self.config.ivf_probe)
            if "margin" in loaded.calibration:
                self._bounded = (loaded.calibration["bounded_budget"], loaded.calibration["margin"])

    def statistics(self) -> dict[str, object]:
        with self._lock:
            t = self._table
            out: dict[str, object] = {
                "items": len(t), "slots": t.n, "buffer": t.n - self._sealed_upto,
                "segments": [s.items for s in self._segments], "tombstones": t.dead,
                "groups": len(t.group_live), "dim": self.dim,
            }
        out.update(self._stats)
        out["budget"] = self._budget if self._budget is not None else "exact"
        out["probe"] = self._probe
        out["bounded"] = list(self._bounded) if self._bounded else None
        out["calibration"] = dict(self._calibration)
        return out
