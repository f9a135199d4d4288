"""Choosing a search's hits among scored candidates: best first, ties by key, through an accept filter.

Owns the progressive ranking that offers each candidate to ``accept`` at most once; it must not
score vectors or know about segments.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Accept = Callable[[np.ndarray], np.ndarray]  # keys -> bool mask of those a search may return


def select_hits(keys: np.ndarray, scores: np.ndarray, k: int, accept: Accept | None, batch: int) -> list[tuple[int, float]]:
    """Best ``k`` (key, score) by score (ties by key) among those ``accept`` keeps.

    Ranks progressively (argpartition on a growing prefix) so a selective ``accept`` on many
    candidates does not sort them all; each candidate is offered to ``accept`` at most once.
    """
    total = scores.shape[0]
    if total == 0:
        return []
    if accept is None:
        top = _top(keys, scores, min(k, total))
        return list(zip(keys[top].tolist(), scores[top].astype(float).tolist(), strict=True))
    chosen: list[int] = []
    offered = np.zeros(total, dtype=bool)
    width = min(total, max(2 * k, batch))
    while True:
        top = _top(keys, scores, width)
        top = top[~offered[top]]
        offered[top] = True
        for lo in range(0, top.size, batch):
            part = top[lo : lo + batch]
            mask = np.asarray(accept(keys[part]), dtype=bool)
            chosen.extend(part[mask].tolist())
            if len(chosen) >= k:
                break
        if len(chosen) >= k or width >= total:
            break
        width = min(total, width * 4)
    picked = np.asarray(chosen, dtype=np.intp)
    order = np.lexsort((keys[picked], -scores[picked]))[:k]
    picked = picked[order]
    return list(zip(keys[picked].tolist(), scores[picked].astype(float).tolist(), strict=True))


def _top(keys: np.ndarray, scores: np.ndarray, width: int) -> np.ndarray:
    """Indices of the ``width`` best scores, sorted by (score desc, key asc)."""
    if width < scores.shape[0]:
        part = np.argpartition(-scores, width - 1)[:width]
        # argpartition breaks ties at the cut arbitrarily: take every row tied with it, then by key.
        part = np.flatnonzero(scores >= scores[part].min())
    else:
        part = np.arange(scores.shape[0])
    return part[np.lexsort((keys[part], -scores[part]))][:width]
