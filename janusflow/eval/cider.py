"""CIDEr-D (Vedantam et al. 2015) as coco-caption's ``cider_scorer.py`` computes it, in Python.

Captions are tokenised as coco-caption's PTB tokenizer with its punctuation removal does, closely:
lower-case, clitics split ("dog's" -> dog 's, "don't" -> do n't), punctuation tokens dropped, hyphenated
words and decimal numbers kept whole. For n = 1..4, an n-gram's weight in a caption is tf-idf:

    g_n(w) = count(w in caption) * (log N - log max(1, df(w)))

with N the number of images and df(w) the number of images whose references contain w (the
reference corpus only). For a candidate c and its references s_1..s_m:

    CIDEr-D_n(c, S) = 10 / m * sum_j  exp(-(l(c) - l(s_j))^2 / (2 sigma^2))
                      * sum_w min(g_n^c(w), g_n^s_j(w)) g_n^s_j(w) / (|g_n^c| |g_n^s_j|)
    CIDEr-D(c, S)   = mean over n = 1..4 of CIDEr-D_n,   sigma = 6

(a term whose norm is 0 counts 0, the min clips repeated n-grams). The corpus score is the mean
over images. As in coco-caption, the length l is the caption's number of bigrams (its words - 1),
so the penalty reads the same differences as words would.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

from ..errors import InputError

MAX_N = 4
SIGMA = 6.0

_CONTRACTIONS = re.compile(r"(\w)(n't|'s|'re|'ve|'ll|'d|'m)\b")
_TOKEN = re.compile(r"n't|'(?:s|re|ve|ll|d|m)\b|\d+(?:[.,]\d+)+|\w+(?:-\w+)*|[^\w\s]")


def tokenize(caption: str) -> list[str]:
    """Lower-cased PTB-style tokens without punctuation tokens."""
    text = _CONTRACTIONS.sub(r"\1 \2", caption.lower())
    return [t for t in _TOKEN.findall(text) if any(ch.isalnum() for ch in t)]


def ngram_counts(tokens: Sequence[str]) -> Counter:
    """Counts of every n-gram, n = 1..MAX_N (tuples of tokens)."""
    return Counter(tuple(tokens[i:i + n]) for n in range(1, MAX_N + 1) for i in range(len(tokens) - n + 1))


def _vector(counts: Counter, document_frequency: Counter, log_n: float):
    """tf-idf weights per n (a dict each), their norms, and the caption's length (its bigrams)."""
    weights: list[dict[tuple, float]] = [{} for _ in range(MAX_N)]
    for gram, tf in counts.items():
        weights[len(gram) - 1][gram] = tf * (log_n - math.log(max(1.0, document_frequency[gram])))
    norms = [math.sqrt(sum(w * w for w in by_gram.values())) for by_gram in weights]
    length = sum(tf for gram, tf in counts.items() if len(gram) == 2)
    return weights, norms, length


def _similarity(candidate, reference) -> list[float]:
    (cand, cand_norm, cand_len), (ref, ref_norm, ref_len) = candidate, reference
    penalty = math.exp(-((cand_len - ref_len) ** 2) / (2 * SIGMA ** 2))
    values = []
    for n in range(MAX_N):
        value = sum(min(w, ref[n].get(gram, 0.0)) * ref[n].get(gram, 0.0) for gram, w in cand[n].items())
        if cand_norm[n] != 0 and ref_norm[n] != 0:
            value /= cand_norm[n] * ref_norm[n]
        values.append(value * penalty)
    return values


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[float, list[float]]:
    """(corpus CIDEr-D, the score of each candidate); ``references[i]`` are candidate i's references."""
    if len(candidates) != len(references):
        raise InputError(f"{len(candidates)} captions for {len(references)} reference sets")
    if not candidates:
        raise InputError("no captions to score")
    if any(not refs for refs in references):
        raise InputError("every caption needs at least one reference")
    cand_counts = [ngram_counts(tokenize(c)) for c in candidates]
    ref_counts = [[ngram_counts(tokenize(r)) for r in refs] for refs in references]
    document_frequency: Counter = Counter()
    for refs in ref_counts:
        document_frequency.update({gram for counts in refs for gram in counts})
    log_n = math.log(len(candidates))
    scores = []
    for cand, refs in zip(cand_counts, ref_counts):
        vector = _vector(cand, document_frequency, log_n)
        total = [0.0] * MAX_N
        for ref in refs:
            total = [t + s for t, s in zip(total, _similarity(vector, _vector(ref, document_frequency, log_n)))]
        scores.append(10.0 * sum(total) / MAX_N / len(refs))
    return sum(scores) / len(scores), scores
