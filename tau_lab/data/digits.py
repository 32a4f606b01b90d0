"""scikit-learn's bundled handwritten digits: 1797 real 8×8 images, 10 classes, no download."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class Digits(NamedTuple):
    """A seeded, stratified split. Images are ``[N, 64]`` in [0, 1]; labels ``[N]``."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor


def load_digits(test_fraction: float = 0.25, seed: int = 0, device: torch.device | str = "cpu") -> Digits:
    """Load the digits and split them: in every class the same fraction goes to the test set.

    Pixel values (0..16 in the file) are scaled to [0, 1]. The split depends only on ``seed``.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction = {test_fraction:g} is not allowed: it must lie in (0, 1)")
    from sklearn.datasets import load_digits as sklearn_digits  # imported here: slow, and only digits tasks need it

    data = sklearn_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    test = torch.zeros(len(y), dtype=torch.bool)
    for c in range(10):
        idx = (y == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        test[idx[: round(test_fraction * len(idx))]] = True
    x, y = x.to(device), y.to(device)
    test = test.to(device)
    return Digits(x[~test], y[~test], x[test], y[test])
