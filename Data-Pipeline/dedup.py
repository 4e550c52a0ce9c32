"""Duplicate detection for the dataset build, linear in the number of examples.

Three modes (``dataset.dedup``):

- ``exact``: identical normalised text (a SHA-256 per example).
- ``near``: MinHash signatures of word shingles of the request and of the
  answer (datasketch ``MinHash``), requests indexed with locality-sensitive
  hashing (``MinHashLSH``). Each example is compared only with the earlier
  kept examples that share an LSH band, and dropped when both Jaccard
  estimates reach ``dataset.near_dup_jaccard``.
- ``embedding``: sentence embeddings blocked by random-hyperplane (SimHash)
  bands; only examples sharing a band are compared by cosine
  (``dataset.near_dup_threshold``).

Both approximate modes are greedy in input order: an example is dropped when it
is similar to an earlier *kept* example of the same query kind, so the result
does not depend on how many examples there are, only on their order.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import zlib
from collections import Counter, defaultdict
from typing import Callable, Sequence

import numpy as np

Embedder = Callable[[list[str]], np.ndarray]  # texts -> L2-normalised rows
SIMHASH_BITS = 16  # hyperplanes per band: examples share a band when all 16 sides agree
SIMHASH_BANDS = 8


def normalise_text(text: str) -> str:
    """Case-, accent- and whitespace-insensitive form used by the duplicate checks."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return re.sub(r"\s+", " ", text).strip()


def exact_key(text: str) -> str:
    return hashlib.sha256(normalise_text(text).encode()).hexdigest()


WORD = re.compile(r"\w+")


def shingles(text: str, size: int) -> set[bytes]:
    """Word n-grams of the case- and accent-folded text (the whole text when it has fewer words)."""
    words = WORD.findall(unicodedata.normalize("NFKC", text).casefold())
    if len(words) <= size:
        return {" ".join(words).encode()}
    return {" ".join(gram).encode() for gram in zip(*(words[i:] for i in range(size)))}


class MinHashIndex:
    """Greedy near-duplicate filter over (request, answer) pairs.

    A pair is a near duplicate of an earlier kept pair when the MinHash estimates of both the
    request's and the answer's Jaccard similarity reach ``jaccard``: the same question with the
    same answer. (One set over both would let the long answer JSON dominate: different people
    who get the same plan would look like duplicates.) Requests are indexed with LSH, so each
    pair is compared only with the kept pairs that share a band. Few requests share a band with
    any earlier one (26 of 8k in a 10k-query run), so a kept answer is held compressed and its
    signature computed the first time a later request collides with it.
    """

    def __init__(self, jaccard: float, num_perm: int, shingle_size: int, seed: int = 1):
        from datasketch import MinHash, MinHashLSH

        self.jaccard, self.shingle_size = jaccard, shingle_size
        # crc32 is deterministic across processes (Python's hash() is salted) and fast
        self._sketch = MinHash(num_perm=num_perm, seed=seed, hashfunc=zlib.crc32)
        self._lsh = MinHashLSH(threshold=jaccard, num_perm=num_perm)
        self._requests: list[np.ndarray] = []
        self._answers: list[bytes | np.ndarray] = []  # zlib-compressed text until first compared, then its signature

    def _signature(self, text: str) -> np.ndarray:
        self._sketch.clear()
        self._sketch.update_batch(shingles(text, self.shingle_size))
        return self._sketch.hashvalues.astype(np.uint32)  # MinHash values are below 2**32

    def _answer_signature(self, key: int) -> np.ndarray:
        held = self._answers[key]
        if isinstance(held, bytes):
            held = self._answers[key] = self._signature(zlib.decompress(held).decode())
        return held

    def _similar(self, a: np.ndarray, b: np.ndarray) -> bool:
        return np.count_nonzero(a == b) >= self.jaccard * len(a)

    def add(self, request: str, answer: str) -> bool:
        """True when the pair is kept (no near-identical kept pair before it)."""
        request_sig = self._signature(request)
        candidates = [key for key in self._lsh.query(self._sketch) if self._similar(self._requests[key], request_sig)]
        if candidates:
            sketch = self._sketch.copy()  # the request's, for the LSH insert below
            answer_sig = self._signature(answer)
            if any(self._similar(self._answer_signature(key), answer_sig) for key in candidates):
                return False
            self._sketch = sketch
        self._lsh.insert(len(self._requests), self._sketch, check_duplication=False)
        self._requests.append(request_sig)
        self._answers.append(zlib.compress(answer.encode(), 1))
        return True


def minhash_near_duplicates(pairs: Sequence[tuple[str, str]], jaccard: float, num_perm: int,
                            shingle_size: int) -> list[int]:
    """Indices of the (request, answer) ``pairs`` to drop: each near-identical to an earlier kept pair."""
    index = MinHashIndex(jaccard, num_perm, shingle_size)
    return [i for i, (request, answer) in enumerate(pairs) if not index.add(request, answer)]


def simhash_blocks(vectors: np.ndarray, seed: int, bands: int = SIMHASH_BANDS, bits: int = SIMHASH_BITS) -> np.ndarray:
    """Band keys per row (rows x bands): the sign pattern of ``bits`` random hyperplanes per band."""
    rng = np.random.default_rng(seed)
    planes = rng.standard_normal((vectors.shape[1], bands * bits)).astype(vectors.dtype)
    signs = (vectors @ planes > 0).reshape(len(vectors), bands, bits)
    return signs @ (1 << np.arange(bits, dtype=np.int64))


def embedding_near_duplicates(vectors: np.ndarray, threshold: float, seed: int = 0) -> list[int]:
    """Indices to drop: cosine >= ``threshold`` to an earlier kept row sharing a SimHash band.

    Only rows in a common bucket are compared, so the cost grows with bucket sizes, not n^2.
    """
    keys = simhash_blocks(vectors, seed)
    buckets: list[dict[int, list[int]]] = [defaultdict(list) for _ in range(keys.shape[1])]
    dropped: list[int] = []
    for i in range(len(vectors)):
        candidates = {j for band, key in enumerate(keys[i]) for j in buckets[band].get(int(key), ())}
        if candidates:
            idx = np.fromiter(candidates, dtype=np.int64)
            if (vectors[idx] @ vectors[i] >= threshold).any():
                dropped.append(i)
                continue
        for band, key in enumerate(keys[i]):
            buckets[band][int(key)].append(i)
    return dropped


class StreamingDedup:
    """``exact`` and ``near`` duplicate checks one example at a time, in order; the decisions are those
    ``deduplicate`` makes over the whole list (exact first, then near within the kind, greedy in order),
    without holding the texts: memory is the seen hashes and the MinHash index of the kept examples."""

    def __init__(self, mode: str, *, jaccard: float, num_perm: int, shingle_size: int):
        if mode not in ("exact", "near"):
            raise ValueError(f"streaming dedup supports exact and near, not {mode!r}")
        self.near = mode == "near"
        self.jaccard, self.num_perm, self.shingle_size = jaccard, num_perm, shingle_size
        self.seen: set[bytes] = set()
        self.indexes: dict[str, MinHashIndex] = {}
        self.dropped: Counter = Counter({"near_duplicate": 0}) if self.near else Counter()

    def keep(self, request: str, answer: str, kind: str) -> bool:
        key = hashlib.sha256(normalise_text(request + "\n" + answer).encode()).digest()
        if key in self.seen:
            self.dropped["exact_duplicate"] += 1
            return False
        self.seen.add(key)
        if self.near:
            index = self.indexes.get(kind)
            if index is None:
                index = self.indexes[kind] = MinHashIndex(self.jaccard, self.num_perm, self.shingle_size)
            if not index.add(request, answer):
                self.dropped["near_duplicate"] += 1
                return False
        return True


def deduplicate(pairs: Sequence[tuple[str, str]], kinds: Sequence[str], mode: str, *, jaccard: float,
                cosine: float, num_perm: int, shingle_size: int,
                embed: Embedder | None = None) -> tuple[list[int], Counter]:
    """Indices of the (request, answer) pairs to keep, in order, and drop counts by reason.

    Exact duplicates are always dropped; ``near`` / ``embedding`` also drop near duplicates
    within the same query kind.
    """
    if mode in ("exact", "near"):
        stream = StreamingDedup(mode, jaccard=jaccard, num_perm=num_perm, shingle_size=shingle_size)
        keep = [i for i, ((request, answer), kind) in enumerate(zip(pairs, kinds)) if stream.keep(request, answer, kind)]
        return keep, stream.dropped
    dropped: Counter = Counter()
    seen: set[str] = set()
    unique: list[int] = []
    for i, (request, answer) in enumerate(pairs):
        key = exact_key(request + "\n" + answer)
        if key in seen:
            dropped["exact_duplicate"] += 1
            continue
        seen.add(key)
        unique.append(i)
    if embed is None:
        raise ValueError("dataset.dedup=embedding needs an embedder")
    by_kind: dict[str, list[int]] = defaultdict(list)
    for i in unique:
        by_kind[kinds[i]].append(i)
    drop: set[int] = set()
    for idx in by_kind.values():
        if len(idx) < 2:
            continue
        local = embedding_near_duplicates(embed([normalise_text("\n".join(pairs[i])) for i in idx]), cosine)
        drop.update(idx[j] for j in local)
    dropped[f"{mode}_duplicate"] += len(drop)
    return [i for i in unique if i not in drop], dropped
