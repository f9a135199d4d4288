"""Text -> unit vector embedders behind one ``Embedder`` interface, and the registry that names them.

Owns tokenisation and feature hashing only; it must not store, index or compare vectors, and must
never read the network (the optional sentence model loads weights shipped in a package).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from crypto.errors import InvalidArgument


@runtime_checkable
class Embedder(Protocol):
    """Maps texts to float32 rows of unit L2 norm; same text -> same row, in any process."""

    embedder_id: str  # names the vector space: vectors of different ids are never compared
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


_WORD = re.compile(r"\w+")
_MASK32 = np.uint64(0xFFFFFFFF)
# Odd 64-bit multipliers (splitmix/golden ratio): mix two word ids into one bigram id, vectorised.
_MIX_A = np.uint64(0x9E3779B97F4A7C15)
_MIX_B = np.uint64(0xC2B2AE3D27D4EB4F)
# A text with no word characters gets the vector of this reserved feature (never a zero vector).
_EMPTY_FEATURE = "\x00empty"
_BATCH_MAX = 256


def _feature_id(feature: str) -> int:
    return zlib.crc32(feature.encode("utf-8"))


class HashingEmbedder:
    """Signed feature hashing of words, word bigrams and character n-grams (fastText-style).

    Features of a text: each lowercased word (``\\w+``), each pair of adjacent words, and the
    character 3..5-grams of ``<word>``. Every feature gets a stable 32-bit id (crc32 of its UTF-8
    bytes, so identical across processes and hash seeds); bucket = id % dim, sign = bit 31 of the
    id. A feature occurring ``tf`` times in a text weighs ``1 + ln(tf)`` (sublinear tf) times the
    weight of its kind; the row is then L2-normalised. A text without word characters maps to the
    fixed unit vector of a reserved feature, so ``embed`` never returns a zero row.

    Per-word feature ids are cached (bounded by ``cache_words_max``); the cache changes speed,
    never results. Thread-safe: the cache is only read and replaced whole.
    """

    version = "hash-v1"

    def __init__(
        self,
        dim: int = 384,
        *,
        ngram_min: int = 3,
        ngram_max: int = 5,
        word_weight: float = 1.0,
        bigram_weight: float = 0.7,
        ngram_weight: float = 0.35,
        cache_words_max: int = 200_000,
    ) -> None:
        if dim < 8:
            raise InvalidArgument("embedding dim must be >= 8", dim=dim)
        self.dim = dim
        self.embedder_id = f"{self.version}-{dim}"
        self._ngrams = range(ngram_min, ngram_max + 1)
        self._weights = np.array([word_weight, bigram_weight, ngram_weight], dtype=np.float64)
        self._cache_words_max = cache_words_max
        self._cache: dict[str, np.ndarray] = {}

    def _word_ids(self, word: str) -> np.ndarray:
        """uint64 ids of a word's features: [word id, n-gram ids...]; kind is in bits 32-33."""
        ids = self._cache.get(word)
        if ids is not None:
            return ids
        padded = f"<{word}>"
        grams = [padded[i : i + n] for n in self._ngrams for i in range(len(padded) - n + 1)]
        values = [_feature_id("w:" + word)] + [_feature_id("c:" + g) | (2 << 32) for g in grams]
        ids = np.array(values, dtype=np.uint64)
        if len(self._cache) >= self._cache_words_max:
            self._cache = {}  # crude bound; Zipf makes the hot words come back within a batch
        self._cache[word] = ids
        return ids

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        n = len(texts)
        if n > _BATCH_MAX:  # bounds the temporaries (one uint64 per feature) and keeps sorts in cache
            return np.concatenate([self.embed(texts[i : i + _BATCH_MAX]) for i in range(0, n, _BATCH_MAX)])
        out = np.zeros((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        parts: list[np.ndarray] = []
        owners: list[np.ndarray] = []
        for row, text in enumerate(texts):
            words = _WORD.findall(text.lower()) or [_EMPTY_FEATURE]
            per_word = [self._word_ids(w) for w in words]
            word_ids = np.fromiter((a[0] for a in per_word), dtype=np.uint64, count=len(per_word))
            with np.errstate(over="ignore"):
                bigrams = ((word_ids[:-1] * _MIX_A) ^ (word_ids[1:] * _MIX_B)) >> np.uint64(32)
            ids = np.concatenate([*per_word, bigrams | np.uint64(1 << 32)])
            parts.append(ids)
            owners.append(np.full(ids.size, row, dtype=np.uint64))
        # One np.unique over (row, kind, id) for the whole batch counts every feature's tf.
        combined = (np.concatenate(owners) << np.uint64(34)) | np.concatenate(parts)
        unique, tf = np.unique(combined, return_counts=True)
        rows = (unique >> np.uint64(34)).astype(np.intp)
        kind = ((unique >> np.uint64(32)) & np.uint64(3)).astype(np.intp)
        fid = unique & _MASK32
        sign = np.where((fid >> np.uint64(31)) & np.uint64(1), -1.0, 1.0)
        weight = (1.0 + np.log(tf)) * self._weights[kind] * sign
        flat = rows * self.dim + (fid % np.uint64(self.dim)).astype(np.intp)
        dense = np.bincount(flat, weights=weight, minlength=n * self.dim).reshape(n, self.dim)
        norms = np.linalg.norm(dense, axis=1, keepdims=True)
        # Signed buckets can cancel exactly (rare, tiny texts): fall back to the empty-text vector.
        zero = norms[:, 0] == 0.0
        if zero.any():
            dense[zero] = self.embed([""])[0]
            norms[zero] = 1.0
        out[:] = dense / norms
        return out


def _make_minilm(dim: int) -> Embedder:
    from node.embedder_minilm import MiniLMEmbedder  # optional extra: imported only when asked for

    embedder: Embedder = MiniLMEmbedder()
    if dim not in (0, embedder.dim):
        raise InvalidArgument("minilm embeds in 384 dimensions", dim=dim)
    return embedder


_REGISTRY: dict[str, Callable[[int], Embedder]] = {
    "hash": lambda dim: HashingEmbedder(dim or 384),
    "minilm": _make_minilm,
}


def make_embedder(name: str = "hash", dim: int = 384) -> Embedder:
    """The embedder registered as ``name`` ("hash" default, "minilm" needs the optional extra)."""
    factory = _REGISTRY.get(name)
    if factory is None:
        raise InvalidArgument(f"unknown embedder {name!r}", known=sorted(_REGISTRY))
    return factory(dim)
