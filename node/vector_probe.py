"""Probing IVF segments for one query: ranking their lists together, scanning them in rounds.

Owns candidate selection over IVF segments (a leading share of the rows, lists above a bound) and
the recall surface calibration reads (``ivf_hits``); it must not build, save or change segments
(node/vector_ivf.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # segments are only read through their query-side methods
    from node.vector_ivf import IvfSegment

# Candidate selection scores every probed row, then keeps those above a threshold estimated on
# every _SELECT_STEP-th score: cheaper than argpartition over 30k+ scores.
_SELECT_STEP = 8


def ivf_candidates(segments: Sequence[IvfSegment], query: np.ndarray, count: int, probe: float) -> np.ndarray:
    """Slots of up to ``count`` rows of ``segments``, the best by approximate score to the unit
    ``query`` among the lists probed: all segments' lists ranked together, best first, until
    ``probe`` of their rows are covered. One budget over all segments (rather than ``probe`` of
    each) lets a list compete on rank whichever segment holds it, and makes recall a function of
    one (probe, count) grid that calibration can read off (``ivf_hits``); on stdlib text it
    recalled as well as equal shares per segment."""
    probing = IvfProbe(segments, query)
    return probing.take(probing.leading(probe), count)


class IvfProbe:
    """One query's probe of the lists of ``segments``, ranked together once and scanned in rounds
    (``take``), each list at most once: the leading lists covering a share of the rows, then
    (``above``) every list whose optimistic score (``IvfSegment._rank``) clears a bound, which the
    caller sets from the exact scores the first round found. Not thread-safe; cheap to create."""

    def __init__(self, segments: Sequence[IvfSegment], query: np.ndarray) -> None:
        self._live = [seg for seg in segments if seg.items]
        self._ranked = [seg._rank(query) for seg in self._live]
        empty = np.empty(0)
        self.rank = np.concatenate([r[2] for r in self._ranked]) if self._live else empty
        self._sizes = np.concatenate([np.diff(seg._bounds) for seg in self._live]) if self._live else empty
        self._first = np.concatenate(([0], np.cumsum([seg.lists for seg in self._live])))
        self._scanned = np.zeros(self.rank.size, dtype=bool)

    def leading(self, probe: float) -> np.ndarray:
        """Not yet scanned lists among the best-ranked ones holding ``probe`` of the rows (sorted)."""
        if not self.rank.size:
            return np.empty(0, dtype=np.int64)
        chosen = np.arange(self.rank.size) if probe >= 1.0 else _leading(self.rank, self._sizes, probe)
        return chosen[~self._scanned[chosen]]

    def above(self, bound: float) -> np.ndarray:
        """Not yet scanned lists whose optimistic score is at least ``bound`` (sorted)."""
        return np.flatnonzero((self.rank >= bound) & ~self._scanned)

    def take(self, lists: np.ndarray, count: int) -> np.ndarray:
        """Slots of the best ``count`` rows of ``lists`` (sorted ids) by approximate score; marks
        them scanned."""
        if not lists.size or count <= 0:
            return np.empty(0, dtype=np.int64)
        self._scanned[lists] = True
        scans = self._scans(lists)
        scores = [part for _, part, _ in scans]
        maps = [to_slots for _, _, to_slots in scans]
        if len(scores) == 1:
            return maps[0](_best(scores[0], count))
        offsets = np.cumsum([0] + [part.size for part in scores])
        picked = np.sort(_best(np.concatenate(scores), count))
        cuts = np.searchsorted(picked, offsets)
        return np.concatenate([to_slots(picked[cuts[i] : cuts[i + 1]] - offsets[i]) for i, to_slots in enumerate(maps)])

    def _scans(self, lists: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, Callable[[np.ndarray], np.ndarray]]]:
        """Per segment holding some of ``lists`` (sorted ids): (global ids of its lists, their rows'
        approximate scores, the map from positions in those to slots), in segment order."""
        out = []
        for i, seg in enumerate(self._live):
            mine = lists[(lists >= self._first[i]) & (lists < self._first[i + 1])]
            if mine.size:
                part, to_slots = seg._scan(self._ranked[i][0], self._ranked[i][1], mine - self._first[i])
                out.append((mine, part, to_slots))
        return out


def ivf_hits(segments: Sequence[IvfSegment], query: np.ndarray, truth: np.ndarray, probes: Sequence[float],
             counts: Sequence[int]) -> np.ndarray:
    """How many of the ``truth`` slots ``ivf_candidates(segments, query, count, probe)`` returns,
    for every (probe, count): an int array of shape (len(probes), len(counts)), from one scan.

    A probe takes a prefix of the lists in rank order, and a truth row is returned iff its list is
    in the prefix and fewer than ``count`` rows of the prefix score above it: so scanning the
    widest prefix once, noting each row's list position in the ranking, answers every cell
    (calibration's recall surface)."""
    probing = IvfProbe(segments, query)
    out = np.zeros((len(probes), len(counts)), dtype=np.int64)
    if not probing.rank.size:
        return out
    best = np.argsort(-probing.rank, kind="stable")
    covered = np.cumsum(probing._sizes[best])
    probed = np.asarray([best.size if p >= 1.0 else int(np.searchsorted(covered, max(1.0, p * covered[-1]))) + 1
                         for p in probes])
    widest = int(probed.max())
    position = np.full(best.size, widest, dtype=np.int64)  # each list's place in the ranking
    position[best[:widest]] = np.arange(widest)
    scans = probing._scans(np.sort(best[:widest]))
    scores = [part for _, part, _ in scans]
    places = [np.repeat(position[mine], probing._sizes[mine]) for mine, _, _ in scans]
    slots = [to_slots(np.arange(part.size)) for _, part, to_slots in scans]
    score, place = np.concatenate(scores), np.concatenate(places)
    need = np.asarray(counts)
    for row in np.flatnonzero(np.isin(np.concatenate(slots), truth)).tolist():
        # Rows scoring above this one, by the ranking place of their list: those in a probe's prefix.
        above = np.cumsum(np.bincount(place[score > score[row]], minlength=widest))
        rank = above[probed - 1]
        out += (place[row] < probed)[:, None] & (rank[:, None] < need[None, :])
    return out


def _leading(rank: np.ndarray, sizes: np.ndarray, probe: float) -> np.ndarray:
    """The best-ranked lists (sorted by id) holding ``probe`` of the rows: the fewest in rank
    order whose sizes reach it. Sorts only a generous top part of the ranks when it suffices."""
    goal = max(1.0, probe * float(sizes.sum()))
    guess = min(rank.size, 2 * math.ceil(probe * rank.size) + 16)
    top = np.argpartition(-rank, guess - 1)[:guess] if guess < rank.size else np.arange(rank.size)
    top = top[np.argsort(-rank[top], kind="stable")]
    covered = np.cumsum(sizes[top])
    if covered[-1] < goal and guess < rank.size:  # big lists ranked first: rank them all
        top = np.argsort(-rank, kind="stable")
        covered = np.cumsum(sizes[top])
    return np.sort(top[: int(np.searchsorted(covered, goal)) + 1])


def _best(scores: np.ndarray, count: int) -> np.ndarray:
    """Positions of the ``count`` highest ``scores`` (fewer if there are fewer), in no order."""
    total = scores.shape[0]
    if total <= count:
        return np.arange(total)
    if total >= 4 * _SELECT_STEP * count:
        # Threshold at the matching rank of a strided sample, a little generous, then trim.
        sample = scores[::_SELECT_STEP]
        rank = min(sample.size, math.ceil(1.25 * count / _SELECT_STEP))
        threshold = np.partition(sample, sample.size - rank)[sample.size - rank]
        picked = np.flatnonzero(scores >= threshold)
        if picked.size >= count:
            return picked[np.argpartition(scores[picked], picked.size - count)[picked.size - count :]]
    return np.argpartition(scores, total - count)[total - count :]
