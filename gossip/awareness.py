"""Lifeguard local health awareness: a score that stretches this node's own probe interval and timeouts.

Owns the score and its bounds only; it must not decide when a probe failed (swim.py reports deltas).
"""

from __future__ import annotations


class Awareness:
    """A health score in [0, max_multiplier - 1]: 0 is healthy.

    Missed acks, missing nacks and having to refute a suspicion of ourselves raise it (evidence that
    *we* are slow: starved CPU, lossy link); a successful probe lowers it. Timeouts are multiplied by
    score + 1, so a degraded node waits longer before it accuses anyone (Lifeguard, section 4.1).
    """

    __slots__ = ("_max", "score")

    def __init__(self, max_multiplier: int) -> None:
        # max_multiplier 1 disables awareness: the score is pinned at 0 and scale() is the identity.
        self._max = max(1, max_multiplier)
        self.score = 0

    def apply_delta(self, delta: int) -> None:
        self.score = min(self._max - 1, max(0, self.score + delta))

    def scale(self, seconds: float) -> float:
        return seconds * (self.score + 1)
