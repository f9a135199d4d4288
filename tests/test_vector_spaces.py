"""VectorSpaces: the node's per-embedder indexes and their seal passes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trio
import trio.testing

from node.effects import IndexAdd
from node.vector_index import VectorIndexConfig
from node.vector_spaces import VectorSpaces

DIM = 8


def _adds(lo: int, hi: int) -> list[IndexAdd]:
    rng = np.random.default_rng(lo)
    return [IndexAdd("sp", i, rng.standard_normal(DIM).astype(np.float32), 1, None) for i in range(lo, hi)]


async def test_a_forced_seal_during_a_running_pass_waits_and_seals_everything(tmp_path: Path) -> None:
    """`admin.seal` (and the benchmarks) must not return while a periodic pass holds the index: it
    waits for that pass, then seals what the pass did not take."""
    spaces = VectorSpaces(tmp_path, DIM, VectorIndexConfig(buffer_max=64, recall_target=0.0, n_trees=2))
    spaces.add_batch(_adds(1, 200))
    idx = spaces.indexes["sp"]
    forced_done = trio.Event()

    async def forced() -> None:
        await spaces.seal_if_needed(force=True)
        forced_done.set()

    async with trio.open_nursery() as nursery:
        idx._build_lock.acquire()  # the periodic pass's build is stuck mid-way
        try:
            nursery.start_soon(spaces.seal_if_needed)
            await trio.testing.wait_all_tasks_blocked()
            spaces.add_batch(_adds(200, 230))  # arrives while that pass runs
            nursery.start_soon(forced)
            await trio.testing.wait_all_tasks_blocked()
            assert not forced_done.is_set()
        finally:
            idx._build_lock.release()
    assert forced_done.is_set()
    stats = spaces.statistics()["sp"]
    assert stats["buffer"] == 0 and sum(stats["segments"]) == 229
