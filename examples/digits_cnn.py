"""Your own model and data in a tau-lab study: a small CNN on scikit-learn's digits, upsampled to 16×16.

`examples/digits_cnn.toml` points tau-lab at the two functions below; run it with

    tau-lab sweep examples/digits_cnn.toml

Each pair is two different images of the same digit (a, b), so the contrastive loss pulls a digit's images
together; the held-out pairs give recall@1, uniformity and tolerance per τ. To study your own network,
write the same two functions for it: `model()` returns an `nn.Module` whose `forward(a, b)` returns the two
embeddings, and `data()` returns `(a, b, labels)` tensors (or a `torch.utils.data.Dataset` of such tuples).
On CIFAR-10, for example, `data()` could read `torchvision.datasets.CIFAR10(root, download=False)` from a
local copy and pair each image with an augmented view of itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SmallCNN(nn.Module):
    """conv 3×3 (16) → ReLU → conv 3×3 stride 2 (32) → ReLU → global average pool → linear (dim), applied to
    both sides of a pair. No BatchNorm: a population keeps no per-member running statistics (GroupNorm works)."""

    def __init__(self, dim: int = 32, groups: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.GroupNorm(groups, 16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(32, dim)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.embed(a), self.embed(b)


def model(dim: int = 32) -> nn.Module:
    return SmallCNN(dim)


def data(pairs: int = 600, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`pairs` pairs of two different images of one digit, `[pairs, 1, size, size]` each, and the digits."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [1797, 1, 8, 8]
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    labels = torch.tensor(digits.target)
    g = torch.Generator().manual_seed(seed)
    first = torch.randperm(len(labels), generator=g)[:pairs]
    second = torch.empty_like(first)
    for i, j in enumerate(first.tolist()):  # another image of the same digit
        same = (labels == labels[j]).nonzero().squeeze(1)
        same = same[same != j]
        second[i] = same[torch.randint(len(same), (1,), generator=g)]
    return images[first], images[second], labels[first]
