"""select_hits: the best k by (score desc, key asc) among those accept keeps, each offered once."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from node.vector_select import select_hits


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**16), total=st.integers(0, 900), k=st.integers(1, 40), batch=st.integers(1, 300),
       keep_odd=st.booleans(), ties=st.booleans())
def test_select_hits_matches_a_sort(seed: int, total: int, k: int, batch: int, keep_odd: bool, ties: bool) -> None:
    rng = np.random.default_rng(seed)
    keys = rng.permutation(10 * total + 1)[:total].astype(np.int64)
    scores = rng.integers(0, 5, total).astype(np.float32) if ties else rng.standard_normal(total).astype(np.float32)
    offered: list[int] = []

    def accept(part: np.ndarray) -> np.ndarray:
        assert part.size <= batch
        offered.extend(part.tolist())
        return part % 2 == 1

    hits = select_hits(keys, scores, k, accept if keep_odd else None, batch)
    pool = [(float(s), int(key)) for key, s in zip(keys, scores, strict=True) if not keep_odd or key % 2 == 1]
    expected = sorted(pool, key=lambda sk: (-sk[0], sk[1]))[:k]
    assert hits == [(key, s) for s, key in expected]
    assert len(offered) == len(set(offered))
