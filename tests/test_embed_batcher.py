"""EmbedBatcher: concurrent texts are embedded together, each caller gets its own text's vector,
failures reach every waiter, and a cancelled leader never strands its followers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import trio

from node.embed_batcher import EmbedBatcher
from node.embedder import HashingEmbedder


class CountingEmbedder:
    def __init__(self, fail: bool = False) -> None:
        self.inner = HashingEmbedder(64)
        self.embedder_id, self.dim = self.inner.embedder_id, self.inner.dim
        self.calls: list[int] = []
        self.fail = fail

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(len(texts))
        if self.fail:
            raise RuntimeError("model crashed")
        return self.inner.embed(texts)


async def test_concurrent_texts_share_a_call_and_get_their_own_vectors() -> None:
    emb = CountingEmbedder()
    batcher = EmbedBatcher(emb)
    texts = [f"text number {i} about topic {i % 3}" for i in range(20)]
    out: dict[int, np.ndarray] = {}

    async def one(i: int) -> None:
        out[i] = await batcher.embed(texts[i])

    async with trio.open_nursery() as n:
        for i in range(20):
            n.start_soon(one, i)
    assert sum(emb.calls) == 20 and len(emb.calls) < 20  # batched
    expected = emb.inner.embed(texts)
    for i in range(20):
        np.testing.assert_allclose(out[i], expected[i], rtol=1e-6)


async def test_failure_reaches_every_waiter() -> None:
    batcher = EmbedBatcher(CountingEmbedder(fail=True))
    errors: list[BaseException] = []

    async def one(i: int) -> None:
        try:
            await batcher.embed(f"t{i}")
        except RuntimeError as e:
            errors.append(e)

    with trio.fail_after(5):
        async with trio.open_nursery() as n:
            for i in range(5):
                n.start_soon(one, i)
    assert len(errors) == 5


async def test_cancelled_leader_does_not_strand_followers() -> None:
    emb = CountingEmbedder()
    batcher = EmbedBatcher(emb)
    got: list[np.ndarray] = []

    async def follower() -> None:
        got.append(await batcher.embed("follower text"))

    async def leader() -> None:
        with trio.CancelScope() as scope:
            scope.cancel()  # the leader's request is already cancelled when it leads
            await batcher.embed("leader text")

    # Started together, the two join one round; trio's scheduling order is random, so over 30
    # rounds the cancelled request leads some of them.
    with trio.fail_after(5):
        for _ in range(30):
            async with trio.open_nursery() as n:
                n.start_soon(leader)
                n.start_soon(follower)
    assert len(got) == 30


@pytest.mark.parametrize("n", [1, 3])
async def test_sequential_calls_each_work(n: int) -> None:
    batcher = EmbedBatcher(CountingEmbedder())
    for i in range(n):
        v = await batcher.embed(f"solo {i}")
        assert v.shape == (64,) and abs(float(np.linalg.norm(v)) - 1.0) < 1e-5
