"""Captions of digit images for CLIP in miniature: templates, synonyms, a word vocabulary, caption noise.

A caption is a template filled with one synonym of the digit: ``"a handwritten seven"``, ``"the number 7"``,
``"seven, written by hand"``. Tokenisation splits on anything that is not a letter or a digit, lower-cased.
The text tower reads a caption as a *bag of words*: its normalised word counts ``[V]`` (padding excluded),
so a caption's text feature is ``bag @ E`` for a word-embedding matrix ``E [V, W]`` (an embedding bag).

Every caption there can be (template × digit × synonym) is tokenised once into a table; drawing captions for
N images is then an index into that table, with no Python loop over images.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SYNONYMS = tuple((name, str(digit)) for digit, name in enumerate(NAMES))  # [digit][synonym]: word, numeral
TEMPLATES = (
    "a handwritten {}",
    "the number {}",
    "{}, written by hand",
    "a scan of the digit {}",
    "a small black and white image of a handwritten {}",
    "someone wrote the number {}",
    "the digit {}, blurry and pixelated",
    "a tiny drawing of the number {}",
)
PAD = "<pad>"


def words(text: str) -> list[str]:
    """The tokens of ``text``: runs of letters and digits, lower-cased."""
    return re.findall(r"[a-z0-9]+", text.lower())


def caption(template: int, digit: int, synonym: int) -> str:
    """``TEMPLATES[template]`` filled with synonym ``synonym`` of ``digit``."""
    return TEMPLATES[template].format(SYNONYMS[digit][synonym])


class Vocabulary:
    """The words of every template and synonym; index 0 is the padding token."""

    def __init__(self) -> None:
        every = " ".join(TEMPLATES) + " " + " ".join(s for pair in SYNONYMS for s in pair)
        self.words = [PAD, *sorted(set(words(every)))]
        self.index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, texts: Sequence[str]) -> Tensor:
        """Token ids ``[n, L]``, padded with 0 to the longest text. Unknown words are an error."""
        tokens = [words(t) for t in texts]
        for text, toks in zip(texts, tokens, strict=True):
            unknown = [w for w in toks if w not in self.index]
            if unknown:
                raise ValueError(f"caption {text!r}: words {unknown} are not in the vocabulary")
        length = max(len(t) for t in tokens)
        return torch.tensor([[self.index[w] for w in t] + [0] * (length - len(t)) for t in tokens])

    def decode(self, ids: Tensor) -> list[str]:
        """Texts from token ids ``[n, L]`` (padding dropped), words joined by spaces."""
        return [" ".join(self.words[i] for i in row if i != 0) for row in ids.tolist()]

    def bags(self, ids: Tensor) -> Tensor:
        """Normalised word counts ``[n, V]`` of token ids ``[n, L]``: each row sums to 1, padding excluded."""
        counts = torch.zeros(len(ids), len(self), device=ids.device)
        counts.scatter_add_(1, ids, torch.ones(ids.shape, device=ids.device))
        counts[:, 0] = 0
        return counts / counts.sum(1, keepdim=True)


def bag_table(vocab: Vocabulary) -> Tensor:
    """The bag of every caption, ``[templates, 10 digits, synonyms, V]``."""
    texts = [caption(t, d, s) for t in range(len(TEMPLATES)) for d in range(10) for s in range(len(SYNONYMS[0]))]
    return vocab.bags(vocab.encode(texts)).reshape(len(TEMPLATES), 10, len(SYNONYMS[0]), len(vocab))


class Draw(NamedTuple):
    """Which template and which synonym each image's caption uses, ``[N]`` each."""

    template: Tensor
    synonym: Tensor


def draw_captions(n: int, generator: torch.Generator) -> Draw:
    """A template and a synonym for each of ``n`` captions, uniformly at random."""
    device = generator.device
    template = torch.randint(len(TEMPLATES), (n,), generator=generator, device=device)
    synonym = torch.randint(len(SYNONYMS[0]), (n,), generator=generator, device=device)
    return Draw(template, synonym)


def caption_noise(labels: Tensor, noise: float | Tensor, generator: torch.Generator) -> Tensor:
    """The digit each caption names, when a fraction ``noise`` of captions is wrong (as in web data).

    Exactly ``round(noise · N)`` captions, chosen at random, name a wrong digit (uniform over the other
    nine); the others name the image's own. Several noise levels given at once (``noise [K]``) share the
    random choice, so a higher level's wrong captions include every wrong caption of a lower one.

    Args:
        labels: ``[N]`` the images' digits.
        noise: a fraction in [0, 1], or ``[K]`` of them.
        generator: the source of the random choice.
    Returns: ``[N]`` digits (``[K, N]`` for ``noise [K]``).
    """
    n, device = len(labels), labels.device
    order = torch.randperm(n, generator=generator, device=device)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n, device=device)  # a uniformly random position per caption
    wrong = (labels + torch.randint(1, 10, (n,), generator=generator, device=device)) % 10
    count = torch.round(torch.as_tensor(noise, dtype=torch.float32, device=device) * n)
    return torch.where(rank < count[..., None], wrong, labels)


def prompt_bags(vocab: Vocabulary, ensemble: bool) -> Tensor:
    """Class prompts for zero-shot classification, ``[prompts, 10, V]``.

    The single prompt is the first template with each digit's name (``"a handwritten seven"``); the
    ensemble is every template with every synonym, whose text embeddings a classifier averages per class.
    """
    table = bag_table(vocab)  # [T, 10, S, V]
    if not ensemble:
        return table[:1, :, 0]
    return table.transpose(1, 2).reshape(-1, 10, len(vocab))
