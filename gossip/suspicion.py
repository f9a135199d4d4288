"""Lifeguard dynamic suspicion timer: starts long and shrinks as independent members confirm.

Owns one suspicion's deadline arithmetic; it must not read a clock (`now` is passed in) nor declare
anyone dead (swim.py does that when `deadline` has passed).
"""

from __future__ import annotations

import math


def suspicion_min_s(suspicion_mult: int, n: int, probe_interval_s: float) -> float:
    """SWIM's suspicion timeout: suspicion_mult * max(1, log10(n)) probe intervals (as memberlist).

    The floor of 1 keeps small groups from declaring death within a single probe interval.
    """
    return suspicion_mult * max(1.0, math.log10(max(1, n))) * probe_interval_s


def suspicion_timeout_s(confirmations: int, k: int, min_s: float, max_s: float) -> float:
    """Total timeout after `confirmations` of `k` expected: max at 0, falling logarithmically to min at k.

    Logarithmic because the first few independent confirmations carry most of the evidence
    (Lifeguard, section 4.2); never below min.
    """
    if k < 1 or confirmations <= 0:
        return max_s
    frac = math.log(confirmations + 1.0) / math.log(k + 1.0)
    return max(min_s, max_s - frac * (max_s - min_s))


class SuspicionTimer:
    """One member's suspicion: when it started, who confirmed it, and the resulting absolute deadline.

    `k` is how many independent confirmations drive the timeout to its minimum; with k = 0 the
    timeout stays at max (too few members to expect confirmations). The initial accuser is not
    counted again, because our own suspicion may be gossiped back to us.
    """

    __slots__ = ("k", "min_s", "max_s", "started_at", "confirmations", "_seen", "deadline")

    def __init__(self, by: str, k: int, min_s: float, max_s: float, now: float) -> None:
        self.k = k
        self.min_s = min_s
        self.max_s = max(min_s, max_s)
        self.started_at = now
        self.confirmations = 0
        self._seen = {by}
        self.deadline = now + self.max_s

    def confirm(self, by: str) -> bool:
        """Count `by` once; True if it was new evidence (the deadline may have moved earlier)."""
        if self.confirmations >= self.k or by in self._seen:
            return False
        self._seen.add(by)
        self.confirmations += 1
        total = suspicion_timeout_s(self.confirmations, self.k, self.min_s, self.max_s)
        self.deadline = self.started_at + total
        return True
