"""Captions: the vocabulary, deterministic draws per seed, exact and nested caption noise, prompts."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tau_lab.data import captions
from tau_lab.data.captions import NAMES, SYNONYMS, TEMPLATES, Vocabulary

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True)
VOCAB = Vocabulary()


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_captions_name_their_digit():
    assert captions.caption(0, 7, 0) == "a handwritten seven"
    assert captions.caption(1, 7, 1) == "the number 7"
    for t in range(len(TEMPLATES)):
        for d in range(10):
            for s in range(len(SYNONYMS[d])):
                words = captions.words(captions.caption(t, d, s))
                assert SYNONYMS[d][s] in words
                # and no other digit: a caption carries exactly one digit
                others = {w for e in range(10) if e != d for w in SYNONYMS[e]}
                assert not others & set(words)


def test_encode_decode_round_trip_and_unknown_words():
    texts = ["a handwritten seven", "seven, written by hand", "the number 7"]
    ids = VOCAB.encode(texts)
    assert ids.shape == (3, 4)
    assert VOCAB.decode(ids) == ["a handwritten seven", "seven written by hand", "the number 7"]
    with pytest.raises(ValueError, match="'octopus'"):
        VOCAB.encode(["a handwritten octopus"])


def test_bags_are_normalised_word_counts():
    ids = VOCAB.encode(["the number 7", "a handwritten seven"])
    bags = VOCAB.bags(ids)
    torch.testing.assert_close(bags.sum(1), torch.ones(2))
    assert bags[0, VOCAB.index["number"]] == pytest.approx(1 / 3)
    assert bags[1, VOCAB.index["seven"]] == pytest.approx(1 / 3)
    assert (bags[:, 0] == 0).all()  # padding is no word
    table = captions.bag_table(VOCAB)
    assert table.shape == (len(TEMPLATES), 10, 2, len(VOCAB))
    torch.testing.assert_close(table[1, 7, 1], bags[0])


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 300))
def test_caption_draws_are_deterministic_per_seed(seed, n):
    first, again = captions.draw_captions(n, _generator(seed)), captions.draw_captions(n, _generator(seed))
    assert torch.equal(first.template, again.template) and torch.equal(first.synonym, again.synonym)
    assert first.template.max() < len(TEMPLATES) and first.synonym.max() < 2


def test_different_seeds_draw_different_captions():
    a, b = captions.draw_captions(200, _generator(0)), captions.draw_captions(200, _generator(1))
    assert not torch.equal(a.template, b.template)
    assert set(a.template.tolist()) == set(range(len(TEMPLATES)))  # every template is used


@SETTINGS
@given(
    seed=st.integers(0, 2**31 - 1), levels=st.lists(st.floats(0, 0.99), min_size=1, max_size=4), n=st.integers(1, 400)
)
def test_caption_noise_is_exact_wrong_and_nested(seed, levels, n):
    labels = torch.randint(10, (n,), generator=_generator(seed))
    digits = captions.caption_noise(labels, torch.tensor(levels), _generator(seed + 1))  # [levels, n]
    wrong = digits != labels
    for level, row in zip(levels, wrong, strict=True):
        assert int(row.sum()) == round(torch.tensor(level, dtype=torch.float32).item() * n)
    assert ((digits >= 0) & (digits < 10)).all()
    order = sorted(range(len(levels)), key=lambda i: levels[i])
    for lo, hi in itertools.pairwise(order):
        assert not (wrong[lo] & ~wrong[hi]).any()  # a higher level keeps every wrong caption of a lower one


def test_caption_noise_wrong_digits_cover_the_other_nine():
    labels = torch.full((2000,), 3)
    digits = captions.caption_noise(labels, 1.0 - 1e-6, _generator(0))
    assert set(digits.tolist()) == set(range(10)) - {3}


def test_prompts_single_and_ensemble():
    single, ensemble = captions.prompt_bags(VOCAB, False), captions.prompt_bags(VOCAB, True)
    assert single.shape == (1, 10, len(VOCAB))
    assert ensemble.shape == (len(TEMPLATES) * 2, 10, len(VOCAB))
    for d, name in enumerate(NAMES):
        assert single[0, d, VOCAB.index[name]] > 0
        assert single[0, d, VOCAB.index["handwritten"]] > 0
    # the ensemble holds every template with every synonym of each digit
    numerals = ensemble[:, 7, VOCAB.index["7"]] > 0
    assert int(numerals.sum()) == len(TEMPLATES)
