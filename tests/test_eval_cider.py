"""CIDEr-D (janusflow/eval/cider.py) on worked examples computed by hand, as coco-caption computes it.

Notation: N images, L = ln N; an n-gram's weight is tf * (L - ln max(1, df)), df counted over the
images' reference sets only; per n the clipped cosine sum_w min(c_w, r_w) r_w / (|c| |r|); the
Gaussian length penalty exp(-d^2 / 72); score = 10 * mean over n=1..4 / (number of references)."""

from __future__ import annotations

import math

import pytest

from janusflow.errors import InputError
from janusflow.eval.cider import cider_d, tokenize


def test_tokenize_like_ptb_without_punctuation():
    assert tokenize("A man's hat, on a hot-dog stand.") == ["a", "man", "'s", "hat", "on", "a", "hot-dog", "stand"]
    assert tokenize("Don't STOP!!  (3.5 km) -- far...") == ["do", "n't", "stop", "3.5", "km", "far"]
    assert tokenize("\"quoted\" 'words'; ok?") == ["quoted", "words", "ok"]
    assert tokenize(" ... ") == []


def test_identical_two_word_captions_score_5():
    # corpus: image 1 "a cat" / refs ["a cat"], image 2 "a dog" / refs ["a dog"]; L = ln 2
    # df: a = 2 (weight L - ln 2 = 0), cat = dog = "a cat" = "a dog" = 1 (weight L)
    # unigram cosine: (L * L) / (L * L) = 1, bigram cosine 1, no 3- or 4-grams (norm 0 -> 0),
    # no length difference -> 10 * (1 + 1 + 0 + 0) / 4 = 5 for each image
    score, each = cider_d(["a cat", "A dog."], [["a cat"], ["a dog"]])
    assert each == pytest.approx([5.0, 5.0]) and score == pytest.approx(5.0)


def test_partial_match_with_a_length_penalty():
    # image 2 is "a big dog" against "a dog": df(big) = 0, so big weighs L; unigram vectors
    # c = (a 0, big L, dog L), r = (a 0, dog L): cosine L^2 / (sqrt(2) L * L) = 1/sqrt(2);
    # bigrams "a big", "big dog" vs "a dog": 0; trigram only in c: 0.
    # lengths (bigram counts, as coco-caption): 2 vs 1 -> penalty exp(-1/72)
    # score = 10 * (exp(-1/72) / sqrt(2)) / 4
    expected = 10 * math.exp(-1 / 72) / math.sqrt(2) / 4  # 1.74339...
    score, each = cider_d(["a cat", "a big dog"], [["a cat"], ["a dog"]])
    assert each[1] == pytest.approx(expected) and expected == pytest.approx(1.74339, abs=1e-5)
    assert score == pytest.approx((5 + expected) / 2)


def test_two_references_are_averaged():
    # image 1 "a cat" with refs "a cat" (cosines 1, 1) and "the cat": ref unigrams (the L, cat L),
    # cosine L^2 / (L * sqrt(2) L) = 1/sqrt(2); bigram "the cat" vs "a cat": 0
    # score = 10 * ((1 + 1/sqrt(2)) + 1) / 4 / 2 = 3.38388...
    expected = 10 * (2 + 1 / math.sqrt(2)) / 4 / 2
    score, each = cider_d(["a cat", "a dog"], [["a cat", "the cat"], ["a dog"]])
    assert each == pytest.approx([expected, 5.0]) and expected == pytest.approx(3.38388, abs=1e-5)


def test_repeated_ngrams_are_clipped():
    # "cat cat" against "a cat": c_cat = 2L, r_cat = L: min(2L, L) * L / (2L * L) = 1/2 (2L*L/(2L*L) = 1
    # unclipped); bigram "cat cat" absent from the reference: 0; equal bigram counts -> 10 * 0.5 / 4
    _, each = cider_d(["cat cat", "a dog"], [["a cat"], ["a dog"]])
    assert each[0] == pytest.approx(1.25)


def test_one_image_has_no_idf():
    # N = 1: every reference n-gram has df 1 and weight ln 1 - ln 1 = 0, so every score is 0
    assert cider_d(["a cat"], [["a cat"]])[0] == 0.0


def test_bad_input():
    with pytest.raises(InputError, match="reference"):
        cider_d(["a"], [[]])
    with pytest.raises(InputError, match="2 captions for 1"):
        cider_d(["a", "b"], [["a"]])
