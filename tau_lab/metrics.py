"""Metrics of embeddings, softmax distributions, gradients and predictions, batched over members.

As in ``tau_lab.losses``, a leading ``members`` axis ``K`` is optional: inputs ``[K, N, D]`` give
``[K]``, inputs ``[N, D]`` give a scalar. Embeddings are L2-normalised here before measuring, as
Wang & Isola (2020) and Wang & Liu (2021) define the metrics on the unit hypersphere.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor


def alignment(x: Tensor, y: Tensor, alpha: float = 2.0) -> Tensor:
    """Alignment of positive pairs: ``E ||f(x) − f(y)||^α`` over rows (Wang & Isola, α = 2).

    Args: x, y: ``[K, N, D]`` (or ``[N, D]``), row i of x paired with row i of y.
    Returns: ``[K]``; 0 for perfectly aligned pairs, 4 for antipodal ones (α = 2).
    """
    x, y = F.normalize(x.float(), dim=-1), F.normalize(y.float(), dim=-1)
    return (x - y).norm(dim=-1).pow(alpha).mean(-1)


def _distinct_pairs(n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    i, j = torch.triu_indices(n, n, offset=1, device=device)
    return i, j


def uniformity(x: Tensor, t: float = 2.0) -> Tensor:
    """Uniformity: ``log E_{i<j} exp(−t ||f(x_i) − f(x_j)||²)`` over distinct pairs (t = 2).

    Lower is more uniform; −4 for two antipodal points, 0 when all points collapse to one.
    Computed with log-sum-exp: ``logsumexp(−t d²) − log(#pairs)``.

    Args: x: ``[K, N, D]`` (or ``[N, D]``), N ≥ 2.
    Returns: ``[K]``.
    """
    x = F.normalize(x.float(), dim=-1)
    i, j = _distinct_pairs(x.shape[-2], x.device)
    sq = (x[..., i, :] - x[..., j, :]).pow(2).sum(-1)
    return torch.logsumexp(-t * sq, dim=-1) - math.log(len(i))


def tolerance(x: Tensor, labels: Tensor) -> Tensor:
    """Tolerance (Wang & Liu, CVPR 2021): mean cosine similarity over distinct same-class pairs.

    Args:
        x: ``[K, N, D]`` (or ``[N, D]``).
        labels: ``[N]`` class of each row (at least one class with two rows).
    Returns: ``[K]``; 1 when each class collapses to a point.
    """
    x = F.normalize(x.float(), dim=-1)
    i, j = _distinct_pairs(x.shape[-2], x.device)
    same = labels[i] == labels[j]
    i, j = i[same], j[same]
    return (x[..., i, :] * x[..., j, :]).sum(-1).mean(-1)


def grad_norm(grads: Iterable[Tensor | None]) -> Tensor:
    """Per-member L2 norm over a group of stacked gradients ``[K, ...]``: ``sqrt(Σ g²)``.

    Returns ``[K]``. ``None`` entries (parameters without a gradient) count as zero.
    """
    sq = [g.float().pow(2).reshape(g.shape[0], -1).sum(-1) for g in grads if g is not None]
    return torch.stack(sq).sum(0).sqrt()


def softmax_entropy(logits: Tensor) -> Tensor:
    """Entropy ``H = −Σ p log p`` of ``softmax(logits)`` over the last axis, in nats."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def effective_negatives(sims: Tensor, tau: float | Tensor, positive: int = 0) -> Tensor:
    """Effective number of negatives ``exp(H)`` of the softmax over the negatives' ``s/τ``.

    This is the hardness distribution each negative's gradient follows: ``exp(s_i/τ) / Σ_j
    exp(s_j/τ)`` over negatives j. It equals the number of negatives when τ → ∞ and falls to 1 as
    τ → 0 and the hardest negative takes all the weight.

    Args:
        sims: ``[K, ..., N]`` similarities, the positive at index ``positive``.
        tau: ``[K]`` or a number.
    Returns: ``[K, ...]``.
    """
    negatives = torch.cat([sims[..., :positive], sims[..., positive + 1 :]], dim=-1).float()
    tau = torch.as_tensor(tau, dtype=torch.float32, device=sims.device)
    if tau.ndim:
        tau = tau.reshape(-1, *([1] * (sims.ndim - 1)))
    return softmax_entropy(negatives / tau).exp()


def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Fraction of rows whose arg-max is the label. ``logits [K, N, C]``, ``labels [N]`` → ``[K]``."""
    return (logits.argmax(-1) == labels).float().mean(-1)


def expected_calibration_error(logits: Tensor, labels: Tensor, bins: int = 15) -> Tensor:
    """ECE: ``Σ_b (|B_b| / N) · |acc(B_b) − conf(B_b)|`` over equal-width confidence bins.

    The confidence of a row is its largest softmax probability (at T = 1: pass raw logits).

    Args:
        logits: ``[K, N, C]`` (or ``[N, C]``).
        labels: ``[N]``.
    Returns: ``[K]``.
    """
    probs = F.softmax(logits.float(), dim=-1)
    conf, pred = probs.max(-1)
    correct = (pred == labels).float()
    # bin b holds confidences in (b/bins, (b+1)/bins]; confidence is ≥ 1/C > 0
    index = (conf * bins).ceil().long().clamp(1, bins) - 1
    one_hot = F.one_hot(index, bins).float()  # [K, N, bins]
    gap = ((correct - conf).unsqueeze(-1) * one_hot).sum(-2).abs()  # |Σ_b (acc − conf)|
    return gap.sum(-1) / conf.shape[-1]
