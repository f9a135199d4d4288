"""Benchmark data sets made offline and deterministically: clustered unit vectors and text passages.

Owns only data generation for bench/ and tests; it must not import node internals or touch the network.
"""

from __future__ import annotations

import os
import re
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import numpy as np

_TRIPLE_QUOTED = re.compile(r'"""(.*?)"""|\'\'\'(.*?)\'\'\'', re.S)
_COMMENT_LINE = re.compile(r"^[ \t]*#(.*)$", re.M)
_SPACES = re.compile(r"\s+")
_WORDISH = re.compile(r"[A-Za-z]{3,}")


def clustered(n: int, dim: int, seed: int, *, clusters: int | None = None, rank: int = 16) -> np.ndarray:
    """``n`` float32 unit vectors in ``clusters`` clusters (default n // 100 within 16..1000).

    Cluster sizes are heavy-tailed (Pareto weights); inside a cluster the points spread along a
    random ``rank``-dimensional subspace (spread ~0.6) plus isotropic noise (~0.3), so the data
    has a low intrinsic dimension like real embeddings rather than being uniform on the sphere,
    which is the worst case where every ANN index collapses. Same (n, dim, seed) -> same array.
    """
    rng = np.random.default_rng(seed)
    c = clusters if clusters is not None else int(min(1000, max(16, n // 100)))
    centers = rng.standard_normal((c, dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    weights = rng.pareto(1.5, c) + 1.0
    assign = rng.choice(c, size=n, p=weights / weights.sum())
    out = np.empty((n, dim), dtype=np.float32)
    order = np.argsort(assign, kind="stable")
    bounds = np.searchsorted(assign[order], np.arange(c + 1))
    for j in range(c):
        rows = order[bounds[j] : bounds[j + 1]]
        if rows.size == 0:
            continue
        basis, _ = np.linalg.qr(rng.standard_normal((dim, rank)))
        spread = rng.uniform(0.4, 0.8)
        z = rng.standard_normal((rows.size, rank)) * (spread / np.sqrt(rank))
        noise = rng.standard_normal((rows.size, dim)) * (0.3 / np.sqrt(dim))
        out[rows] = centers[j] + (z @ basis.T) + noise
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def _source_files() -> Iterator[Path]:
    """The stdlib's .py files first, then those of site-packages (a virtual environment's, then its base
    interpreter's: a bench venv alone holds only ~60k passages): each part in sorted path order."""
    paths = sysconfig.get_paths()
    base = sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_exec_prefix})
    stdlib = Path(paths["stdlib"])
    roots = [stdlib]
    for group in ({paths["purelib"], paths["platlib"]}, {base["purelib"], base["platlib"]}):
        roots += sorted(p for p in map(Path, group) if p not in roots and p.is_dir())
    for i, root in enumerate(roots):
        for dirpath, dirnames, filenames in os.walk(root):
            skip = {"__pycache__"} | ({"site-packages", "dist-packages"} if i == 0 else set())
            dirnames[:] = sorted(d for d in dirnames if d not in skip)
            yield from (Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py"))


def _text_blocks(source: str) -> Iterator[str]:
    for match in _TRIPLE_QUOTED.finditer(source):
        yield match.group(1) if match.group(1) is not None else match.group(2)
    lines: list[str] = []
    last_end = -2
    for match in _COMMENT_LINE.finditer(source):
        # Consecutive comment lines form one block; a gap starts the next one.
        if match.start() > last_end + 1 and lines:
            yield " ".join(lines)
            lines = []
        lines.append(match.group(1).strip(" #!"))
        last_end = match.end()
    if lines:
        yield " ".join(lines)


def _passages(block: str, chars_min: int, chars_max: int) -> Iterator[str]:
    words = _SPACES.sub(" ", block).strip().split(" ")
    current: list[str] = []
    size = 0
    for word in words:
        if size + len(word) + 1 > chars_max and size >= chars_min:
            yield " ".join(current)
            current, size = [], 0
        current.append(word)
        size += len(word) + 1
    if size >= chars_min:
        yield " ".join(current)


def stdlib_passages(n: int | None = None, *, chars_min: int = 200, chars_max: int = 400) -> list[str]:
    """Up to ``n`` passages (~200-400 chars) of docstrings and comments of installed Python code.

    The standard library comes first (about 20k passages); only if ``n`` asks for more do the
    installed site-packages follow, so large sets depend on the environment. Files in sorted path
    order, a file's text blocks packed into passages in file order, exact duplicates (license
    headers) and passages with few words (ASCII art, tables) dropped: deterministic for one install.
    Returns fewer than ``n`` if there is not that much text; ``None`` means the stdlib's only.
    """
    out: list[str] = []
    seen: set[str] = set()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in _source_files():
        if n is None and stdlib not in path.parents:
            break
        try:
            source = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for passage in _passages(" ".join(_text_blocks(source)), chars_min, chars_max):
            if passage in seen or len(_WORDISH.findall(passage)) < 12:
                continue
            seen.add(passage)
            out.append(passage)
            if n is not None and len(out) >= n:
                return out
    return out


def text_split(n: int, queries: int, *, head: bool = False) -> tuple[list[str], list[str]]:
    """(base, queries): `n + queries` passages with `queries` of them held out, none of them stored:
    spread evenly over the corpus (a representative sample), or with `head` its first passages.
    Raises if the install has too little text."""
    texts = stdlib_passages(n + queries)
    if len(texts) < n + queries:
        raise RuntimeError(f"only {len(texts)} passages available (install the bench extra for more)")
    if head:
        return texts[queries:], texts[:queries]
    held = np.zeros(n + queries, dtype=bool)
    held[np.linspace(0, n + queries - 1, queries).round().astype(int)] = True
    return [t for t, h in zip(texts, held, strict=True) if not h], [t for t, h in zip(texts, held, strict=True) if h]
