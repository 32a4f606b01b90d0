"""Batched augmentations of 8×8 digit images: every image gets its own random draw, in one tensor op.

Images are rows ``[..., 64]`` (an 8×8 image flattened row-major) with values in [0, 1]. ``augment``
applies, in this order, to every image independently:

1. **shift**: an integer translation ``(dy, dx)`` in ``[-max_shift, max_shift]²``, zero filled;
2. **intensity**: a scaling of all pixels by ``s ~ U[1 - intensity, 1 + intensity]``;
3. **erasing**: with probability ``erase_prob``, a random rectangle of side 1..``erase_size`` set to 0;
4. **noise**: ``N(0, noise²)`` added to every pixel;

and clips the result to [0, 1]. All randomness comes from one ``torch.Generator``, so a seed gives the same
views on any run; with every setting at zero the images come back unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

SIDE = 8  # the digits are 8×8


class Augment(BaseModel):
    """Strength of each augmentation (``[data.augment]`` of a study)."""

    model_config = ConfigDict(extra="forbid")
    max_shift: int = Field(1, ge=0, le=SIDE - 1, description="largest translation in pixels")
    intensity: float = Field(0.3, ge=0, lt=1, description="pixels scaled by U[1 - intensity, 1 + intensity]")
    erase_prob: float = Field(0.5, ge=0, le=1, description="probability of erasing a rectangle")
    erase_size: int = Field(3, ge=1, le=SIDE, description="largest side of the erased rectangle")
    noise: float = Field(0.1, ge=0, description="standard deviation of the Gaussian pixel noise")


def shift(images: Tensor, dy: Tensor, dx: Tensor, max_shift: int) -> Tensor:
    """Translate each image by ``(dy, dx)`` pixels (down, right), filling with zeros.

    Args:
        images: ``[M, 8, 8]``.
        dy, dx: ``[M]`` integers in ``[-max_shift, max_shift]``.
    Returns: ``[M, 8, 8]`` with ``out[m, r, c] = images[m, r - dy, c - dx]`` (0 outside the image).
    """
    m = max_shift
    padded = F.pad(images, (m, m, m, m))  # [M, 8 + 2m, 8 + 2m]; row r of the image is row r + m here
    grid = torch.arange(SIDE, device=images.device)
    rows = (m - dy)[:, None] + grid  # [M, 8]
    cols = (m - dx)[:, None] + grid
    batch = torch.arange(len(images), device=images.device)[:, None, None]
    return padded[batch, rows[:, :, None], cols[:, None, :]]


def erase(images: Tensor, top: Tensor, left: Tensor, height: Tensor, width: Tensor) -> Tensor:
    """Set the rectangle ``[top, top + height) × [left, left + width)`` of each image to 0.

    Args: images ``[M, 8, 8]``; top, left, height, width ``[M]`` (height 0 erases nothing).
    """
    grid = torch.arange(SIDE, device=images.device)
    in_rows = (grid >= top[:, None]) & (grid < (top + height)[:, None])  # [M, 8]
    in_cols = (grid >= left[:, None]) & (grid < (left + width)[:, None])
    return images.masked_fill(in_rows[:, :, None] & in_cols[:, None, :], 0.0)


def augment(images: Tensor, generator: torch.Generator, settings: Augment) -> Tensor:
    """One random view of every image: shift, intensity scaling, erasing, noise, clip to [0, 1].

    Args:
        images: ``[..., 64]`` in [0, 1], on the generator's device.
        generator: the source of every random draw.
        settings: the strength of each augmentation.
    Returns: ``[..., 64]`` in [0, 1].
    """
    shape = images.shape
    x = images.reshape(-1, SIDE, SIDE)
    n, device = len(x), x.device

    def uniform(*size: int) -> Tensor:
        return torch.rand(*size, generator=generator, device=device)

    def integers(low: int, high: int | Tensor) -> Tensor:  # uniform on low..high (inclusive), per image
        return low + (uniform(n) * (high - low + 1)).long()

    m = settings.max_shift
    x = shift(x, integers(-m, m), integers(-m, m), m)
    x = x * (1 + settings.intensity * (2 * uniform(n, 1, 1) - 1))
    height, width = integers(1, settings.erase_size), integers(1, settings.erase_size)
    erased = uniform(n) < settings.erase_prob
    top, left = integers(0, SIDE - height), integers(0, SIDE - width)
    x = erase(x, top, left, height * erased, width)
    x = x + settings.noise * torch.randn(x.shape, generator=generator, device=device)
    return x.clamp(0.0, 1.0).reshape(shape)
