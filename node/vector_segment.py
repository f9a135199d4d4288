"""Sealed, immutable ANN segments of the vector index, and the index's on-disk format.

Owns building/querying one annoy forest over a slot range (optionally on a PCA projection) and
writing/verifying the files of a saved index; it must not mutate a published segment or hold locks.
"""

from __future__ import annotations

import json
import os
import secrets
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from annoy import AnnoyIndex

MANIFEST = "manifest.json"
FORMAT = 2  # 2: IVF segments store list residuals (means, spread) instead of centroids
# PCA is fitted on at most this many rows: the covariance of a 20k sample is stable to ~1%.
_PCA_SAMPLE_ROWS = 20_000
# Rows handled between two GIL hand-overs while building (~0.3 ms of add_item calls).
_CHUNK_ROWS = 256
_ARRAYS = ("vectors", "keys", "groups", "alive")
_OWNED_SUFFIXES = (".ann", ".npy", ".npz", ".tmp")


@dataclass(frozen=True, slots=True)
class SegmentSpec:
    """How segments are built; part of the manifest (a saved index with another spec is rebuilt)."""

    n_trees: int
    projection_dim: int  # 0: annoy indexes the full vectors
    seed: int
    ivf_rows_min: int = 0  # segments with at least this many live rows are IVF (node/vector_ivf.py); 0: never
    ivf_projection_dim: int = 128  # IVF rows are kept as residuals projected to this width (0: full width)
    ivf_lists_per_sqrt: float = 4.0  # IVF segments have this many k-means lists per sqrt(rows)


class SegmentLike(Protocol):
    """What the index needs of a sealed segment (annoy ``Segment`` or ``IvfSegment``)."""

    start: int
    stop: int
    items: int
    name: str
    files: dict[str, list[int]]

    def candidates(self, query: np.ndarray, count: int, search_k: int, probe: float = ...) -> np.ndarray: ...

    def describe(self) -> dict[str, object]: ...


class Segment:
    """Annoy over the rows of slots ``[start, stop)`` alive at build; annoy item id = slot - start.

    Immutable once built or loaded (its files are written before it is published, because annoy
    remaps its memory on save); ``candidates`` may run in many threads at once.
    """

    __slots__ = ("start", "stop", "items", "spec", "name", "files", "_annoy", "_mean", "_basis")

    def __init__(self, start: int, stop: int, items: int, spec: SegmentSpec, annoy: AnnoyIndex,
                 mean: np.ndarray | None, basis: np.ndarray | None, name: str) -> None:
        self.start, self.stop, self.items, self.spec, self.name = start, stop, items, spec, name
        self.files: dict[str, list[int]] = {}  # file name -> [size, crc32] once saved
        self._annoy, self._mean, self._basis = annoy, mean, basis

    @classmethod
    def build(cls, vectors: np.ndarray, alive: np.ndarray, start: int, spec: SegmentSpec,
              directory: Path | None = None) -> Segment:
        """Index the rows of ``vectors`` (slots ``start...``) where ``alive``; save if ``directory``."""
        rows = np.flatnonzero(alive)
        mean: np.ndarray | None = None
        basis: np.ndarray | None = None
        width = vectors.shape[1]
        if 0 < spec.projection_dim < width and rows.size > spec.projection_dim:
            mean, basis = _fit_pca(vectors, rows, spec.projection_dim, spec.seed)
            width = spec.projection_dim
        annoy = AnnoyIndex(width, "angular")
        annoy.set_seed(spec.seed)
        for lo in range(0, rows.size, _CHUNK_ROWS):
            part = rows[lo : lo + _CHUNK_ROWS]
            data = vectors[part] if basis is None else (vectors[part] - mean) @ basis
            for row, vec in zip(part.tolist(), data, strict=True):
                annoy.add_item(row, vec)
            _yield_gil()
        # n_jobs=1: build in the caller's worker thread only, leaving a core to the event loop.
        annoy.build(spec.n_trees, n_jobs=1)
        stop = start + vectors.shape[0]
        segment = cls(start, stop, int(rows.size), spec, annoy, mean, basis,
                      f"seg-{start}-{stop}-{secrets.token_hex(4)}")
        if directory is not None:
            segment._save(directory)
        return segment

    def candidates(self, query: np.ndarray, count: int, search_k: int, probe: float = 0.0) -> np.ndarray:
        """Slots of up to ``count`` approximate neighbours of the unit ``query`` (``probe`` is IVF's)."""
        if self.items == 0 or count <= 0:
            return np.empty(0, dtype=np.int64)
        point = query if self._basis is None else (query - self._mean) @ self._basis
        ids = self._annoy.get_nns_by_vector(point, count, search_k=max(search_k, count))
        return np.asarray(ids, dtype=np.int64) + self.start

    def _save(self, directory: Path) -> None:
        if self._basis is not None and self._mean is not None:
            np.savez(directory / f"{self.name}.tmp.npz", mean=self._mean, basis=self._basis)
            os.replace(directory / f"{self.name}.tmp.npz", directory / f"{self.name}.npz")
            self.files[f"{self.name}.npz"] = _fingerprint(directory / f"{self.name}.npz")
        tmp = directory / f"{self.name}.ann.tmp"
        self._annoy.save(str(tmp))  # annoy then mmaps the file: a rename keeps the mapping valid
        os.replace(tmp, directory / f"{self.name}.ann")
        self.files[f"{self.name}.ann"] = _fingerprint(directory / f"{self.name}.ann")

    def describe(self) -> dict[str, object]:
        return {"kind": "annoy", "name": self.name, "start": self.start, "stop": self.stop, "items": self.items,
                "spec": asdict(self.spec), "projected": self._basis is not None, "files": self.files}

    @classmethod
    def load(cls, directory: Path, meta: dict, dim: int) -> Segment:
        """Reopen a saved segment (mmap) after checking its files' sizes and checksums."""
        name, spec = str(meta["name"]), SegmentSpec(**meta["spec"])
        files: dict[str, list[int]] = {str(k): list(v) for k, v in dict(meta["files"]).items()}
        for file_name, expected in files.items():
            if _fingerprint(directory / file_name) != expected:
                raise ValueError(f"{file_name} is damaged")
        mean = basis = None
        width = dim
        if meta["projected"]:
            with np.load(directory / f"{name}.npz") as npz:
                mean, basis = npz["mean"], npz["basis"]
            if basis.shape != (dim, spec.projection_dim) or mean.shape != (dim,):
                raise ValueError(f"projection of {name} has the wrong shape")
            width = spec.projection_dim
        if f"{name}.ann" not in files:
            raise ValueError(f"{name}.ann is not listed")
        annoy = AnnoyIndex(width, "angular")
        annoy.load(str(directory / f"{name}.ann"))
        start, stop = int(meta["start"]), int(meta["stop"])
        if annoy.get_n_items() > stop - start or annoy.get_n_trees() != spec.n_trees:
            raise ValueError(f"{name}.ann does not match the manifest")
        segment = cls(start, stop, int(meta["items"]), spec, annoy, mean, basis, name)
        segment.files = files
        return segment


@dataclass(frozen=True, slots=True)
class SavedIndex:
    vectors: np.ndarray
    keys: np.ndarray
    groups: np.ndarray
    alive: np.ndarray
    sealed_upto: int
    segments: tuple[SegmentLike, ...]
    watermark: int
    calibration: dict[str, float]


def save_index(directory: Path, dim: int, spec: SegmentSpec, arrays: dict[str, np.ndarray],
               segments: tuple[SegmentLike, ...], watermark: int, calibration: dict[str, float]) -> set[str]:
    """Write the arrays, then the manifest naming them and the segments' files (atomic rename,
    fsynced). Returns the file names the manifest references."""
    token = secrets.token_hex(4)
    files: dict[str, list[int | str]] = {}
    for name in _ARRAYS:
        file_name = f"{name}-{token}.npy"
        with open(directory / f"{file_name}.tmp", "wb") as fh:
            np.save(fh, arrays[name])
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(directory / f"{file_name}.tmp", directory / file_name)
        files[name] = [file_name, *_fingerprint(directory / file_name)]
    sealed_upto = segments[-1].stop if segments else 0
    manifest = {"format": FORMAT, "dim": dim, "spec": asdict(spec), "n": int(arrays["keys"].shape[0]),
                "sealed_upto": sealed_upto, "arrays": files, "watermark": int(watermark), "calibration": calibration,
                "segments": [s.describe() for s in segments]}
    tmp = directory / f"{MANIFEST}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, directory / MANIFEST)
    return {str(f[0]) for f in files.values()} | {name for s in segments for name in s.files}


def remove_unreferenced(directory: Path, keep: set[str]) -> None:
    """Delete the index's own files (by suffix) that no manifest or live segment needs."""
    for path in directory.iterdir():
        if path.name != MANIFEST and path.name not in keep and path.name.endswith(_OWNED_SUFFIXES):
            path.unlink(missing_ok=True)


def load_index(directory: Path, dim: int, spec: SegmentSpec,
               load_segment: Callable[[Path, dict, np.ndarray], SegmentLike]) -> SavedIndex:
    """Read and verify a saved index; raises ValueError/OSError/KeyError when anything is off.
    ``load_segment(directory, meta, vectors)`` reopens one segment described in the manifest."""
    manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    if manifest["format"] != FORMAT or manifest["dim"] != dim or SegmentSpec(**manifest["spec"]) != spec:
        raise ValueError("saved index has another format, dimension or segment spec")
    n = int(manifest["n"])
    arrays: dict[str, np.ndarray] = {}
    for name in _ARRAYS:
        file_name, size, crc = manifest["arrays"][name]
        if _fingerprint(directory / file_name) != [size, crc]:
            raise ValueError(f"{file_name} is damaged")
        arrays[name] = np.load(directory / file_name, allow_pickle=False)
    if arrays["vectors"].shape != (n, dim) or any(arrays[a].shape != (n,) for a in _ARRAYS[1:]):
        raise ValueError("saved arrays have the wrong shape")
    vectors = arrays["vectors"].astype(np.float32, copy=False)
    segments = tuple(load_segment(directory, meta, vectors) for meta in manifest["segments"])
    edge = 0
    for seg in segments:
        if seg.start != edge or seg.stop > n:
            raise ValueError("segments do not tile the sealed slots")
        edge = seg.stop
    if edge != int(manifest["sealed_upto"]):
        raise ValueError("sealed_upto disagrees with the segments")
    return SavedIndex(vectors, arrays["keys"].astype(np.int64, copy=False),
                      arrays["groups"].astype(np.int64, copy=False), arrays["alive"].astype(bool, copy=False),
                      edge, segments, int(manifest["watermark"]),
                      {str(k): float(v) for k, v in dict(manifest["calibration"]).items()})


def _fingerprint(path: Path) -> list[int]:
    crc = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return [path.stat().st_size, crc]


def _yield_gil() -> None:
    """Let a thread waiting for the GIL (the event loop) run now rather than after the 5 ms
    switch interval: a build otherwise delays every search by ~5 ms per GIL hand-over."""
    time.sleep(0)


def _fit_pca(vectors: np.ndarray, rows: np.ndarray, components: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and top principal axes (dim x components, float32) of ``vectors[rows]`` (sampled)."""
    if rows.size > _PCA_SAMPLE_ROWS:
        rows = np.sort(np.random.default_rng(seed).choice(rows, _PCA_SAMPLE_ROWS, replace=False))
    dim = vectors.shape[1]
    total, gram = np.zeros(dim), np.zeros((dim, dim))
    for lo in range(0, rows.size, _CHUNK_ROWS * 8):
        part = vectors[rows[lo : lo + _CHUNK_ROWS * 8]].astype(np.float64)
        total += part.sum(axis=0)
        gram += part.T @ part
        _yield_gil()
    mean = total / rows.size
    # Covariance from the Gram matrix: sum (x - m)(x - m)^T = X^T X - n m m^T.
    _, vecs = np.linalg.eigh(gram - rows.size * np.outer(mean, mean))
    basis = vecs[:, ::-1][:, :components]
    return mean.astype(np.float32), np.ascontiguousarray(basis, dtype=np.float32)
