"""IVF segments of the vector index: k-means lists over a slot range, scored on a PCA copy.

Owns building (seeded k-means, PCA, list assignment), querying and saving/loading one immutable
IVF segment; it must not mutate a published segment, hold index locks or see tombstones.
"""

from __future__ import annotations

import math
import os
import secrets
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from node.vector_segment import Segment, SegmentSpec, _fingerprint, _fit_pca, _yield_gil

# Rows per matrix product while building: BLAS releases the GIL, but argmax/argsort on the
# (rows x lists) scores do not; 2048 x 632 of them take ~1-2 ms.
_CHUNK_ROWS = 2048
_KMEANS_ITERATIONS = 10
# k-means runs on a sample: 40 rows per list (at least 30k) place the centroids well enough.
_KMEANS_SAMPLE_MIN = 30_000
_KMEANS_SAMPLE_PER_LIST = 40


class IvfSegment:
    """Inverted lists over the rows of slots ``[start, stop)`` alive at build.

    Rows are stored grouped by list as a PCA copy ``(x - mean) @ basis`` (or the full vectors
    when the dimension is already small); a query is projected as ``q @ basis`` without centring,
    which shifts every row's score by the same constant and so keeps the ranking. Immutable;
    ``candidates`` may run in many threads at once.
    """

    kind = "ivf"
    __slots__ = ("start", "stop", "items", "spec", "name", "files", "_centroids", "_mean", "_basis",
                 "_bounds", "_slots", "_copy")

    def __init__(self, start: int, stop: int, spec: SegmentSpec, centroids: np.ndarray, mean: np.ndarray | None,
                 basis: np.ndarray | None, bounds: np.ndarray, slots: np.ndarray, copy: np.ndarray, name: str) -> None:
        self.start, self.stop, self.items, self.spec, self.name = start, stop, int(slots.size), spec, name
        self.files: dict[str, list[int]] = {}
        self._centroids, self._mean, self._basis = centroids, mean, basis
        self._bounds, self._slots, self._copy = bounds, slots, copy

    @property
    def lists(self) -> int:
        return int(self._centroids.shape[0])

    @classmethod
    def build(cls, vectors: np.ndarray, alive: np.ndarray, start: int, spec: SegmentSpec,
              directory: Path | None = None) -> IvfSegment:
        """Index the rows of ``vectors`` (slots ``start...``) where ``alive``; save if ``directory``."""
        rows = np.flatnonzero(alive)
        nlist = max(1, min(rows.size, round(2 * math.sqrt(rows.size))))
        rng = np.random.default_rng(spec.seed)
        centroids = _kmeans(vectors, rows, nlist, rng)
        assigned = _assign(vectors, rows, centroids)
        order = np.argsort(assigned, kind="stable")
        local = rows[order]
        bounds = np.searchsorted(assigned[order], np.arange(nlist + 1)).astype(np.int64)
        mean = basis = None
        if 0 < spec.ivf_projection_dim < vectors.shape[1] and rows.size > spec.ivf_projection_dim:
            mean, basis = _fit_pca(vectors, rows, spec.ivf_projection_dim, spec.seed)
        stop = start + vectors.shape[0]
        segment = cls(start, stop, spec, centroids, mean, basis, bounds, local + start,
                      _project(vectors, local, mean, basis), f"ivf-{start}-{stop}-{secrets.token_hex(4)}")
        if directory is not None:
            segment._save(directory)
        return segment

    def candidates(self, query: np.ndarray, count: int, search_k: int, probe: float = 0.1) -> np.ndarray:
        """Slots of up to ``count`` rows of the ``probe`` share of lists nearest the unit ``query``,
        best first by their projected score (``search_k`` is annoy's and unused here)."""
        if self.items == 0 or count <= 0:
            return np.empty(0, dtype=np.int64)
        nlist = self.lists
        nprobe = min(nlist, max(1, math.ceil(probe * nlist)))
        near = self._centroids @ query
        lists = np.arange(nlist) if nprobe >= nlist else np.argpartition(-near, nprobe - 1)[:nprobe]
        lists.sort()
        point = query if self._basis is None else query @ self._basis
        # Adjacent probed lists are contiguous rows: score each run with one matrix product.
        bounds = self._bounds
        lo, hi = bounds[lists], bounds[lists + 1]
        breaks = np.flatnonzero(lo[1:] != hi[:-1]) + 1
        run_lo = lo[np.concatenate(([0], breaks))]
        run_hi = hi[np.concatenate((breaks - 1, [lists.size - 1]))]
        lengths = run_hi - run_lo
        offsets = np.concatenate(([0], np.cumsum(lengths)))
        scores = np.empty(int(offsets[-1]), dtype=np.float32)
        for a, b, at in zip(run_lo.tolist(), run_hi.tolist(), offsets.tolist(), strict=False):
            np.matmul(self._copy[a:b], point, out=scores[at : at + b - a])
        picked = np.argpartition(-scores, count - 1)[:count] if scores.size > count else np.arange(scores.size)
        # Position in `scores` -> row: the run it falls in, plus its offset inside that run.
        run = np.searchsorted(offsets, picked, side="right") - 1
        index = run_lo[run] + (picked - offsets[run])
        return self._slots[index]

    def _save(self, directory: Path) -> None:
        # The PCA copy is not saved: load recomputes it from the index's stored full vectors.
        arrays: dict[str, Any] = {"centroids": self._centroids, "bounds": self._bounds, "slots": self._slots}
        if self._basis is not None and self._mean is not None:
            arrays.update(mean=self._mean, basis=self._basis)
        tmp = directory / f"{self.name}.tmp.npz"
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, directory / f"{self.name}.npz")
        self.files[f"{self.name}.npz"] = _fingerprint(directory / f"{self.name}.npz")

    def describe(self) -> dict[str, object]:
        return {"kind": self.kind, "name": self.name, "start": self.start, "stop": self.stop, "items": self.items,
                "spec": asdict(self.spec), "projected": self._basis is not None, "files": self.files}

    @classmethod
    def load(cls, directory: Path, meta: dict, vectors: np.ndarray) -> IvfSegment:
        """Reopen a saved segment after checking its file; ``vectors`` are the index's full rows."""
        name, spec = str(meta["name"]), SegmentSpec(**meta["spec"])
        files: dict[str, list[int]] = {str(k): list(v) for k, v in dict(meta["files"]).items()}
        if list(files) != [f"{name}.npz"]:
            raise ValueError(f"{name} lists the wrong files")
        if _fingerprint(directory / f"{name}.npz") != files[f"{name}.npz"]:
            raise ValueError(f"{name}.npz is damaged")
        with np.load(directory / f"{name}.npz", allow_pickle=False) as npz:
            centroids, bounds, slots = npz["centroids"], npz["bounds"].astype(np.int64), npz["slots"].astype(np.int64)
            mean = npz["mean"] if meta["projected"] else None
            basis = npz["basis"] if meta["projected"] else None
        start, stop, dim = int(meta["start"]), int(meta["stop"]), vectors.shape[1]
        nlist = centroids.shape[0]
        if (centroids.shape != (nlist, dim) or bounds.shape != (nlist + 1,) or bounds[0] != 0
                or bounds[-1] != slots.size or np.any(np.diff(bounds) < 0) or slots.size != int(meta["items"])
                or (slots.size and (slots.min() < start or slots.max() >= stop)) or stop > vectors.shape[0]):
            raise ValueError(f"{name} does not match the manifest")
        if basis is not None and (mean is None or basis.shape != (dim, spec.ivf_projection_dim)
                                  or mean.shape != (dim,)):
            raise ValueError(f"projection of {name} has the wrong shape")
        copy = _project(vectors, slots, mean, basis)
        segment = cls(start, stop, spec, centroids.astype(np.float32), mean, basis, bounds, slots, copy, name)
        segment.files = files
        return segment


def build_segment(vectors: np.ndarray, alive: np.ndarray, start: int, spec: SegmentSpec,
                  directory: Path | None = None) -> Segment | IvfSegment:
    """An IVF segment when at least ``spec.ivf_rows_min`` rows are alive (0: never), else annoy."""
    if spec.ivf_rows_min and int(np.count_nonzero(alive)) >= spec.ivf_rows_min:
        return IvfSegment.build(vectors, alive, start, spec, directory)
    return Segment.build(vectors, alive, start, spec, directory)


def load_segment(directory: Path, meta: dict, vectors: np.ndarray) -> Segment | IvfSegment:
    if meta.get("kind") == IvfSegment.kind:
        return IvfSegment.load(directory, meta, vectors)
    return Segment.load(directory, meta, vectors.shape[1])


def _kmeans(vectors: np.ndarray, rows: np.ndarray, nlist: int, rng: np.random.Generator) -> np.ndarray:
    """Spherical Lloyd on a seeded sample of ``vectors[rows]``; unit float32 centroids."""
    size = min(rows.size, max(_KMEANS_SAMPLE_MIN, _KMEANS_SAMPLE_PER_LIST * nlist))
    dim = vectors.shape[1]
    if size == 0:  # nothing alive: one empty list
        return np.zeros((nlist, dim), dtype=np.float32)
    chosen = np.sort(rng.choice(rows, size, replace=False))
    # Gathered and transposed in chunks: one 40 MB copy would hold the GIL for ~15 ms.
    sample = np.empty((size, dim), dtype=np.float32)
    columns = np.empty((dim, size), dtype=np.float32)  # per-dimension bincounts: ~5x faster than np.add.at
    for lo in range(0, size, _CHUNK_ROWS):
        sample[lo : lo + _CHUNK_ROWS] = vectors[chosen[lo : lo + _CHUNK_ROWS]]
        columns[:, lo : lo + _CHUNK_ROWS] = sample[lo : lo + _CHUNK_ROWS].T
        _yield_gil()
    centroids = sample[rng.choice(size, nlist, replace=False)].copy()
    for _ in range(_KMEANS_ITERATIONS):
        assigned = _assign(sample, np.arange(size), centroids)
        sums = np.empty((nlist, dim), dtype=np.float64)
        for j in range(dim):
            sums[:, j] = np.bincount(assigned, weights=columns[j], minlength=nlist)
            if j % 8 == 7:
                _yield_gil()
        empty = np.flatnonzero(np.bincount(assigned, minlength=nlist) == 0)
        sums[empty] = sample[rng.choice(size, empty.size, replace=False)]
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        centroids = (sums / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    return centroids


def _assign(vectors: np.ndarray, rows: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest centroid (by dot product) of each of ``vectors[rows]``."""
    out = np.empty(rows.size, dtype=np.int64)
    for lo in range(0, rows.size, _CHUNK_ROWS):
        out[lo : lo + _CHUNK_ROWS] = np.argmax(vectors[rows[lo : lo + _CHUNK_ROWS]] @ centroids.T, axis=1)
        _yield_gil()
    return out


def _project(vectors: np.ndarray, rows: np.ndarray, mean: np.ndarray | None, basis: np.ndarray | None) -> np.ndarray:
    """``(vectors[rows] - mean) @ basis`` (or the rows themselves), built in GIL-yielding chunks."""
    width = vectors.shape[1] if basis is None else basis.shape[1]
    out = np.empty((rows.size, width), dtype=np.float32)
    for lo in range(0, rows.size, _CHUNK_ROWS):
        part = vectors[rows[lo : lo + _CHUNK_ROWS]]
        out[lo : lo + _CHUNK_ROWS] = part if basis is None else (part - mean) @ basis
        _yield_gil()
    return out
