"""Metrics of embeddings, softmax distributions, gradients and predictions, batched over members.

As in ``tau_lab.losses``, a leading ``members`` axis ``K`` is optional: inputs ``[K, N, D]`` give
``[K]``, inputs ``[N, D]`` give a scalar. Embeddings are L2-normalised here before measuring, as
Wang & Isola (2020) and Wang & Liu (2021) define the metrics on the unit hypersphere.

Each metric computes in its inputs' dtype, at least float32 (``tau_lab.losses.compute_dtype``): float64
in gives float64 out; bf16/fp16 embeddings are lifted to float32 first.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from tau_lab.losses import compute_dtype, scaled_cross_entropy


def _unit(x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Rows scaled to unit length, in ``dtype`` (default ``compute_dtype(x)``)."""
    return F.normalize(x.to(dtype or compute_dtype(x)), dim=-1)


def alignment(x: Tensor, y: Tensor, alpha: float = 2.0) -> Tensor:
    """Alignment of positive pairs: ``E ||f(x) − f(y)||^α`` over rows (Wang & Isola, α = 2).

    Args: x, y: ``[K, N, D]`` (or ``[N, D]``), row i of x paired with row i of y.
    Returns: ``[K]``; 0 for perfectly aligned pairs, 4 for antipodal ones (α = 2).
    """
    dtype = compute_dtype(x, y)
    x, y = _unit(x, dtype), _unit(y, dtype)
    return (x - y).norm(dim=-1).pow(alpha).mean(-1)


def _distinct_pairs(n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    i, j = torch.triu_indices(n, n, offset=1, device=device)
    return i, j


def uniformity(x: Tensor, t: float = 2.0) -> Tensor:
    """Uniformity: ``log E_{i<j} exp(−t ||f(x_i) − f(x_j)||²)`` over distinct pairs (t = 2).

    Lower is more uniform: 0 when all points collapse to one, −8 for two antipodal points, and
    ``−4N/(N−1)`` at best for N points (a regular simplex).
    Computed with log-sum-exp: ``logsumexp(−t d²) − log(#pairs)``.

    Args: x: ``[K, N, D]`` (or ``[N, D]``), N ≥ 2.
    Returns: ``[K]``.
    """
    x = _unit(x)
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
    x = _unit(x)
    i, j = _distinct_pairs(x.shape[-2], x.device)
    same = labels[i] == labels[j]
    i, j = i[same], j[same]
    return (x[..., i, :] * x[..., j, :]).sum(-1).mean(-1)


def grad_norm(grads: Iterable[Tensor]) -> Tensor:
    """Per-member L2 norm over a group (at least one) of stacked gradients ``[K, ...]``: ``sqrt(Σ g²)``.

    Returns ``[K]``.
    """
    sq = [g.to(compute_dtype(g)).pow(2).reshape(g.shape[0], -1).sum(-1) for g in grads]
    return torch.stack(sq).sum(0).sqrt()


def softmax_entropy(logits: Tensor) -> Tensor:
    """Entropy ``H = −Σ p log p`` of ``softmax(logits)`` over the last axis, in nats."""
    logp = F.log_softmax(logits.to(compute_dtype(logits)), dim=-1)
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
    dtype = compute_dtype(sims, tau)
    negatives = torch.cat([sims[..., :positive], sims[..., positive + 1 :]], dim=-1).to(dtype)
    tau = torch.as_tensor(tau, dtype=dtype, device=sims.device)
    if tau.ndim:
        tau = tau.reshape(-1, *([1] * (sims.ndim - 1)))
    return softmax_entropy(negatives / tau).exp()


def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Fraction of rows whose arg-max is the label. ``logits [K, N, C]``, ``labels [N]`` → ``[K]``."""
    return (logits.argmax(-1) == labels).to(compute_dtype(logits)).mean(-1)


def expected_calibration_error(logits: Tensor, labels: Tensor, bins: int = 15) -> Tensor:
    """ECE: ``Σ_b (|B_b| / N) · |acc(B_b) − conf(B_b)|`` over equal-width confidence bins.

    The confidence of a row is its largest softmax probability (at T = 1: pass raw logits).

    Args:
        logits: ``[K, N, C]`` (or ``[N, C]``).
        labels: ``[N]``.
    Returns: ``[K]``.
    """
    probs = F.softmax(logits.to(compute_dtype(logits)), dim=-1)
    conf, pred = probs.max(-1)
    correct = (pred == labels).to(probs.dtype)
    # bin b holds confidences in (b/bins, (b+1)/bins]; confidence is ≥ 1/C > 0
    index = (conf * bins).ceil().long().clamp(1, bins) - 1
    one_hot = F.one_hot(index, bins).to(probs.dtype)  # [K, N, bins]
    gap = ((correct - conf).unsqueeze(-1) * one_hot).sum(-2).abs()  # |Σ_b (acc − conf)|
    return gap.sum(-1) / conf.shape[-1]


def recall_at_1(
    queries: Tensor, keys: Tensor, query_labels: Tensor | None = None, key_labels: Tensor | None = None
) -> Tensor:
    """Retrieval recall@1: the fraction of queries whose most similar key (cosine) is a match.

    By default query i matches key i only (paired rows, ``N = M``); with labels, any key whose label equals
    the query's is a match (e.g. every caption of the image's digit). Ties go to the first key.

    Args:
        queries: ``[K, N, D]`` (or ``[N, D]``).
        keys: ``[K, M, D]`` (or ``[M, D]``).
        query_labels, key_labels: ``[N]`` and ``[M]``, or both ``None``.
    Returns: ``[K]``.
    """
    if query_labels is None or key_labels is None:
        query_labels = key_labels = torch.arange(queries.shape[-2], device=queries.device)
    dtype = compute_dtype(queries, keys)
    q, k = _unit(queries, dtype), _unit(keys, dtype)
    best = (q @ k.transpose(-1, -2)).argmax(-1)  # [K, N]
    return (key_labels[best] == query_labels).to(dtype).mean(-1)


def knn_accuracy(queries: Tensor, bank: Tensor, bank_labels: Tensor, labels: Tensor, k: int = 20) -> Tensor:
    """Accuracy of a cosine k-nearest-neighbour classifier: each query takes the majority label of its
    ``k`` most similar bank rows (ties go to the smallest label).

    Args:
        queries: ``[K, N, D]`` (or ``[N, D]``), e.g. test features.
        bank: ``[K, M, D]`` (or ``[M, D]``), e.g. train features; ``M ≥ k``.
        bank_labels: ``[M]`` integer labels in ``0..C-1``.
        labels: ``[N]`` the queries' true labels.
    Returns: ``[K]``.
    """
    dtype = compute_dtype(queries, bank)
    q, b = _unit(queries, dtype), _unit(bank, dtype)
    nearest = (q @ b.transpose(-1, -2)).topk(k, dim=-1).indices  # [K, N, k]
    classes = int(max(bank_labels.max(), labels.max())) + 1
    votes = F.one_hot(bank_labels[nearest], classes).sum(-2)  # [K, N, C]
    return accuracy(votes.to(dtype), labels)


def linear_probe(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    steps: int = 100,
    lr: float = 0.05,
) -> Tensor:
    """Test accuracy of a multinomial logistic regression on frozen features, one per member, trained together.

    Features are standardised with the train split's mean and standard deviation (per member and feature);
    the weights ``W [K, D, C]`` and bias ``b [K, 1, C]`` start at zero and take ``steps`` full-batch Adam
    steps on ``Σ_k CE_k`` (each member's mean cross-entropy: Adam's update is elementwise, so every member
    trains as if alone). Deterministic: no random draws.

    Args:
        train_x: ``[K, N, D]`` (or ``[N, D]``); train_y: ``[N]`` labels in ``0..C-1``.
        test_x: ``[K, M, D]`` (or ``[M, D]``); test_y: ``[M]``.
    Returns: ``[K]`` (or a scalar).
    """
    dtype = compute_dtype(train_x, test_x)
    train_x, test_x = train_x.to(dtype), test_x.to(dtype)
    mean = train_x.mean(-2, keepdim=True)
    std = train_x.std(-2, keepdim=True).clamp_min(1e-6)  # a dead feature stays 0, not NaN
    x, x_test = (train_x - mean) / std, (test_x - mean) / std
    classes = int(max(train_y.max(), test_y.max())) + 1
    w = torch.zeros(*x.shape[:-2], x.shape[-1], classes, dtype=x.dtype, device=x.device, requires_grad=True)
    b = torch.zeros(*x.shape[:-2], 1, classes, dtype=x.dtype, device=x.device, requires_grad=True)
    optimizer = torch.optim.Adam([w, b], lr=lr)
    with torch.enable_grad():  # evaluation runs under no_grad
        for _ in range(steps):
            loss = scaled_cross_entropy(x @ w + b, train_y, 1.0).mean(-1)  # [K]
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()
            optimizer.step()
    with torch.no_grad():
        return accuracy(x_test @ w + b, test_y)
