"""IVF segments of the vector index: k-means lists over a slot range, rows kept as list residuals.

Owns building (seeded k-means, list means, residual PCA), querying and saving/loading
one immutable IVF segment; it must not mutate a published segment, hold index locks or see tombstones.
"""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from node.vector_probe import ivf_candidates
from node.vector_segment import Segment, SegmentSpec, _fingerprint, _fit_pca, _yield_gil

# Rows per matrix product while building: BLAS releases the GIL, but argmax/argsort on the
# (rows x lists) scores do not; 2048 x 1264 of them take ~1-2 ms.
_CHUNK_ROWS = 2048
_KMEANS_ITERATIONS = 4  # 6 or 10 gave the same recall on stdlib text (a third more build time)
# k-means runs on a sample: 40 rows per list (at least 30k) place the centroids well enough
# (24-32 rows per list cost ~0.01-0.03 recall@10 at equal scan on stdlib text). It runs on the
# full vectors: on a PCA view, small tight groups whose directions the top axes miss (doctests
# amid prose) were lumped into diffuse lists and missed by probing (recall 0.77-0.93 by seed).
_KMEANS_SAMPLE_MIN = 30_000
_KMEANS_SAMPLE_PER_LIST = 40
# Lists are probed in order of an optimistic score: mean score of their rows plus this many
# standard deviations (the best of ~100 rows lies ~2.5 deviations above their mean).
_SPREAD_Z = 2.0
# Residuals are kept as int8 codes (a per-axis scale: the largest magnitude on a seeded sample of
# _SCALE_SAMPLE rows maps to 127; rarer larger ones are clipped). A query converts the codes of
# _SCAN_ROWS rows at a time to float32 in a block that stays in L2, then one product scores them.
# At 100k x 128 on stdlib text: recall@10 identical to float32 residuals at every (probe, count)
# measured, a quarter of the memory (12.8 MB: fits a 32 MB L3), scans as fast at a 10% probe and
# 0-20% faster at 32% (the int8->float32 conversion costs about what the smaller reads save).
_SCALE_SAMPLE = 20_000
_SCAN_ROWS = 1024


class IvfSegment:
    """Inverted lists over the rows of slots ``[start, stop)`` alive at build.

    A row x of list j is stored, grouped by list, as its residual from the list's mean m_j
    projected on the residuals' principal axes B: ``(x - m_j) @ B``, as int8 codes times a
    per-axis scale (``_SCALE_SAMPLE``). A query q scores it as
    ``q.m_j + (q @ B).((x - m_j) @ B)``: the list mean carries the coarse part of every score
    exactly, so the projection only approximates what is left (which ranks far better than a PCA
    of x of the same width). Lists are probed in order of ``q.m_j + z * sd_j(q)`` (sd_j: spread of
    the list's scores along q, from the list's mean square residual per dimension on and off the
    axes; per-axis variances ranked no better on text) until ``probe`` of the rows are covered.
    Immutable; ``candidates`` may run in many threads at once.
    """

    kind = "ivf"
    __slots__ = ("start", "stop", "items", "spec", "name", "files", "_means", "_basis", "_spread", "_rest",
                 "_bounds", "_slots", "_codes", "_scale")

    def __init__(self, start: int, stop: int, spec: SegmentSpec, means: np.ndarray, basis: np.ndarray | None,
                 spread: np.ndarray, rest: np.ndarray, bounds: np.ndarray, slots: np.ndarray, codes: np.ndarray,
                 scale: np.ndarray, name: str) -> None:
        self.start, self.stop, self.items, self.spec, self.name = start, stop, int(slots.size), spec, name
        self.files: dict[str, list[int]] = {}
        self._means, self._basis, self._spread, self._rest = means, basis, spread, rest
        self._bounds, self._slots, self._codes, self._scale = bounds, slots, codes, scale

    @property
    def lists(self) -> int:
        return int(self._means.shape[0])

    @classmethod
    def build(cls, vectors: np.ndarray, alive: np.ndarray, start: int, spec: SegmentSpec,
              directory: Path | None = None) -> IvfSegment:
        """Index the rows of ``vectors`` (slots ``start...``) where ``alive``; save if ``directory``."""
        rows = np.flatnonzero(alive)
        dim, width = vectors.shape[1], spec.ivf_projection_dim
        nlist = max(1, min(rows.size, round(spec.ivf_lists_per_sqrt * math.sqrt(rows.size))))
        rng = np.random.default_rng(spec.seed)
        projected = 0 < width < dim and rows.size > width
        centroids = _kmeans(vectors, rows, nlist, rng)
        # Lists numbered so that near lists are adjacent rows: a query probes lists near each
        # other, so more of them merge into one run (one matrix product): ~25% fewer on text.
        label = np.empty(nlist, dtype=np.int64)
        label[_nearby_order(centroids, np.arange(nlist))] = np.arange(nlist)
        assigned = label[_assign(vectors, rows, centroids)]
        order = np.argsort(assigned, kind="stable")
        local, lists = rows[order], assigned[order]
        bounds = np.searchsorted(lists, np.arange(nlist + 1)).astype(np.int64)
        means = _list_means(vectors, local, lists, nlist)
        basis = _residual_basis(vectors, local, lists, means, width, spec.seed) if projected else None
        codes, scale, spread, rest = _residuals(vectors, local, lists, means, basis, spec.seed)
        stop = start + vectors.shape[0]
        segment = cls(start, stop, spec, means, basis, spread, rest, bounds, local + start, codes, scale,
                      f"ivf-{start}-{stop}-{secrets.token_hex(4)}")
        if directory is not None:
            segment._save(directory)
        return segment

    def candidates(self, query: np.ndarray, count: int, search_k: int, probe: float = 0.1) -> np.ndarray:
        """Slots of up to ``count`` rows, the best by approximate score among the lists probed for
        the unit ``query`` (``probe``: share of the rows; ``search_k`` is annoy's, unused here)."""
        return ivf_candidates((self,), query, count, probe)

    def _rank(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(q.m_j per list, q on the axes, optimistic score of each list's best rows)."""
        near = self._means @ query
        point = query if self._basis is None else query @ self._basis
        on = float(point @ point)
        return near, point, near + _SPREAD_Z * np.sqrt(self._spread * on + self._rest * max(0.0, 1.0 - on))

    def _scan(self, near: np.ndarray, point: np.ndarray, lists: np.ndarray) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
        """Approximate scores of the rows of ``lists`` (sorted), and a map from positions in them to slots."""
        # Adjacent probed lists are contiguous rows: score each run with one matrix-vector product.
        lo, hi = self._bounds[lists], self._bounds[lists + 1]
        breaks = np.flatnonzero(lo[1:] != hi[:-1]) + 1
        run_lo = lo[np.concatenate(([0], breaks))]
        run_hi = hi[np.concatenate((breaks - 1, [lists.size - 1]))]
        offsets = np.concatenate(([0], np.cumsum(run_hi - run_lo)))
        scores = np.empty(int(offsets[-1]), dtype=np.float32)
        codes, scaled = self._codes, (point * self._scale).astype(np.float32)
        block = np.empty((min(_SCAN_ROWS, scores.size), codes.shape[1]), dtype=np.float32)
        for a, b, at in zip(run_lo.tolist(), run_hi.tolist(), offsets.tolist(), strict=False):
            while a < b:
                rows = min(b - a, _SCAN_ROWS)
                np.copyto(block[:rows], codes[a : a + rows], casting="unsafe")
                np.dot(block[:rows], scaled, out=scores[at : at + rows])
                a, at = a + rows, at + rows
        scores += np.repeat(near[lists].astype(np.float32), hi - lo)

        def slots(positions: np.ndarray) -> np.ndarray:  # the run a position falls in, plus its offset there
            run = np.searchsorted(offsets, positions, side="right") - 1
            return self._slots[run_lo[run] + (positions - offsets[run])]

        return scores, slots

    def _save(self, directory: Path) -> None:
        # The residual codes are not saved: load recomputes them (and their seeded scale) from
        # the index's stored full vectors.
        arrays: dict[str, Any] = {"means": self._means, "spread": self._spread, "rest": self._rest,
                                  "bounds": self._bounds, "slots": self._slots}
        if self._basis is not None:
            arrays["basis"] = self._basis
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
            means, spread, rest = npz["means"], npz["spread"], npz["rest"]
            bounds, slots = npz["bounds"].astype(np.int64), npz["slots"].astype(np.int64)
            basis = npz["basis"] if meta["projected"] else None
        start, stop, dim = int(meta["start"]), int(meta["stop"]), vectors.shape[1]
        nlist, width = means.shape[0], dim if basis is None else spec.ivf_projection_dim
        if (means.shape != (nlist, dim) or spread.shape != (nlist,) or rest.shape != (nlist,)
                or bounds.shape != (nlist + 1,) or bounds[0] != 0 or bounds[-1] != slots.size
                or np.any(np.diff(bounds) < 0) or slots.size != int(meta["items"])
                or (slots.size and (slots.min() < start or slots.max() >= stop)) or stop > vectors.shape[0]):
            raise ValueError(f"{name} does not match the manifest")
        if basis is not None and basis.shape != (dim, width):
            raise ValueError(f"projection of {name} has the wrong shape")
        lists = np.repeat(np.arange(nlist), np.diff(bounds))
        codes, scale, _, _ = _residuals(vectors, slots, lists, means, basis, spec.seed)
        segment = cls(start, stop, spec, means, basis, spread, rest, bounds, slots, codes, scale, name)
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


def _nearby_order(points: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``ids`` ordered by recursive halving along the principal axis of ``points[ids]``: points
    close together end up close in the order (at every scale)."""
    if ids.size <= 2:
        return ids
    part = points[ids] - points[ids].mean(axis=0)
    axis = np.ones(points.shape[1], dtype=np.float64)  # power iteration from a fixed start: deterministic
    for _ in range(8):
        axis = part.T @ (part @ axis)
        norm = float(np.linalg.norm(axis))
        if norm == 0.0:
            return ids
        axis /= norm
    ranked = ids[np.argsort(part @ axis, kind="stable")]
    half = ids.size // 2
    return np.concatenate((_nearby_order(points, ranked[:half]), _nearby_order(points, ranked[half:])))


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


def _per_list(lists: np.ndarray, values: np.ndarray, nlist: int) -> tuple[np.ndarray, np.ndarray]:
    """(list ids, per-list column sums of ``values``) for a chunk whose ``lists`` are sorted."""
    present, inverse = np.unique(lists, return_inverse=True)
    onehot = np.zeros((present.size, lists.size), dtype=values.dtype)
    onehot[inverse, np.arange(lists.size)] = 1.0
    return present, onehot @ values  # a BLAS product: faster than np.add.at, and it releases the GIL


def _list_means(vectors: np.ndarray, local: np.ndarray, lists: np.ndarray, nlist: int) -> np.ndarray:
    """Mean of each list's rows (``local``, sorted by ``lists``); zeros for an empty list."""
    sums = np.zeros((nlist, vectors.shape[1]), dtype=np.float64)
    for lo in range(0, local.size, _CHUNK_ROWS):
        present, part = _per_list(lists[lo : lo + _CHUNK_ROWS], vectors[local[lo : lo + _CHUNK_ROWS]], nlist)
        sums[present] += part
        _yield_gil()
    counts = np.bincount(lists, minlength=nlist)
    return (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)


def _residual_basis(vectors: np.ndarray, local: np.ndarray, lists: np.ndarray, means: np.ndarray,
                    width: int, seed: int) -> np.ndarray:
    """Top ``width`` principal axes of the rows' residuals from their list means (a sample of them)."""
    rng = np.random.default_rng(seed + 1)
    chosen = np.sort(rng.choice(local.size, min(local.size, 20_000), replace=False))
    sample = vectors[local[chosen]] - means[lists[chosen]]
    return _fit_pca(sample, np.arange(chosen.size), width, seed)[1]


def _residuals(vectors: np.ndarray, local: np.ndarray, lists: np.ndarray, means: np.ndarray,
               basis: np.ndarray | None, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(int8 codes of the projected residuals of ``local`` in order, their per-axis scale, per-list
    mean square per dimension on the axes, and outside them), built in GIL-yielding chunks. The
    scale depends only on the inputs and ``seed``: a load recomputes the codes a build made."""
    nlist, dim = means.shape
    width = dim if basis is None else basis.shape[1]

    def project(chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        residual = vectors[local[chunk]] - means[lists[chunk]]
        return residual, residual if basis is None else residual @ basis

    rng = np.random.default_rng(seed + 2)
    sample = np.sort(rng.choice(local.size, min(local.size, _SCALE_SAMPLE), replace=False))
    peak = np.zeros(width, dtype=np.float32)
    for lo in range(0, sample.size, _CHUNK_ROWS):
        peak = np.maximum(peak, np.abs(project(sample[lo : lo + _CHUNK_ROWS])[1]).max(axis=0))
        _yield_gil()
    scale = (np.where(peak > 0, peak, 1.0) / 127.0).astype(np.float32)
    codes = np.empty((local.size, width), dtype=np.int8)
    spread = np.zeros(nlist, dtype=np.float64)
    rest = np.zeros(nlist, dtype=np.float64)
    for lo in range(0, local.size, _CHUNK_ROWS):
        hi = min(local.size, lo + _CHUNK_ROWS)
        residual, projected = project(np.arange(lo, hi))
        inside = np.einsum("ij,ij->i", projected, projected)
        codes[lo:hi] = np.clip(np.rint(projected / scale), -127, 127)
        outside = np.einsum("ij,ij->i", residual, residual) - inside
        present, part = _per_list(lists[lo:hi], np.column_stack((inside, outside)), nlist)
        spread[present] += part[:, 0]
        rest[present] += part[:, 1]
        _yield_gil()
    counts = np.maximum(np.bincount(lists, minlength=nlist), 1)
    spread /= counts * width
    rest = np.maximum(rest, 0.0) / counts / max(1, dim - width)
    return codes, scale, spread.astype(np.float32), rest.astype(np.float32)
