"""Tests of tau_lab.metrics: hand-computed cases, independent loops and batched-vs-unbatched."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from tau_lab.metrics import (
    accuracy,
    alignment,
    effective_negatives,
    expected_calibration_error,
    grad_norm,
    softmax_entropy,
    tolerance,
    uniformity,
)

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True)


seeds = st.integers(0, 2**31 - 1)


def _simplex(n: int) -> torch.Tensor:
    """n unit vectors in R^n with pairwise squared distance 2n/(n−1) (centred basis vectors)."""
    x = torch.eye(n, dtype=torch.float64) - 1.0 / n
    return x / x.norm(dim=-1, keepdim=True)


def _embeddings(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# Alignment
# ---------------------------------------------------------------------------------------------


def test_alignment_identical_pairs_is_zero():
    x = _embeddings(0, 6, 4)
    # scaling a row must not matter: the metric is defined on normalised embeddings
    assert alignment(x, 3.0 * x).item() == pytest.approx(0.0, abs=1e-6)


def test_alignment_antipodal_pairs_is_four():
    x = _embeddings(1, 6, 4)
    assert alignment(x, -0.5 * x).item() == pytest.approx(4.0, abs=1e-5)


def test_alignment_orthogonal_pairs_is_two():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    y = torch.tensor([[0.0, 5.0], [-1.0, 0.0]])
    assert alignment(x, y).item() == pytest.approx(2.0, abs=1e-6)


def test_alignment_alpha_exponent():
    # ||x − y|| = √2 for orthogonal unit vectors: α = 1 gives √2, α = 4 gives 4
    x, y = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert alignment(x, y, alpha=1.0).item() == pytest.approx(math.sqrt(2), abs=1e-6)
    assert alignment(x, y, alpha=4.0).item() == pytest.approx(4.0, abs=1e-5)


@SETTINGS
@given(seed=seeds, n=st.integers(1, 8), d=st.integers(2, 8))
def test_alignment_is_two_minus_twice_mean_cosine(seed, n, d):
    x, y = _embeddings(seed, 2, n, d)
    value = alignment(x, y).item()
    mean_cos = F.cosine_similarity(x.double(), y.double(), dim=-1).mean().item()
    assert value == pytest.approx(2 - 2 * mean_cos, abs=1e-5)
    assert -1e-6 <= value <= 4 + 1e-5


# ---------------------------------------------------------------------------------------------
# Uniformity
# ---------------------------------------------------------------------------------------------


def _uniformity_loop(x: torch.Tensor, t: float = 2.0) -> float:
    x = x.double() / x.double().norm(dim=-1, keepdim=True)
    n = len(x)
    terms = [math.exp(-t * (x[i] - x[j]).pow(2).sum().item()) for i in range(n) for j in range(i + 1, n)]
    return math.log(sum(terms) / len(terms))


def test_uniformity_two_antipodal_points():
    # one pair at squared distance 4: log exp(−2·4) = −8 (the docstring of uniformity says −4)
    x = torch.tensor([[1.0, 0.0], [-3.0, 0.0]])
    assert uniformity(x).item() == pytest.approx(-8.0, abs=1e-5)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 8])
def test_uniformity_regular_simplex(n):
    x = _simplex(n)
    sq = 2 * n / (n - 1)
    torch.testing.assert_close((x[0] - x[1]).pow(2).sum(), torch.tensor(sq, dtype=torch.float64))
    assert uniformity(x.float()).item() == pytest.approx(-2 * sq, abs=1e-5)


def test_uniformity_identical_points_is_zero():
    x = torch.tensor([[1.0, 2.0, 3.0]]).repeat(5, 1) * torch.arange(1.0, 6.0).unsqueeze(-1)
    assert uniformity(x).item() == pytest.approx(0.0, abs=1e-6)


def test_uniformity_temperature_parameter():
    # a single pair at squared distance 2 (orthogonal): log exp(−t·2) = −2t
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    for t in (0.5, 1.0, 2.0, 3.0):
        assert uniformity(x, t=t).item() == pytest.approx(-2 * t, abs=1e-5)


@SETTINGS
@given(seed=seeds, n=st.integers(2, 10), d=st.integers(2, 6))
def test_uniformity_matches_loop_and_bounds(seed, n, d):
    x = _embeddings(seed, n, d)
    value = uniformity(x).item()
    assert value == pytest.approx(_uniformity_loop(x), abs=1e-5)
    # Jensen: log mean exp(−2 d²) ≥ −2 mean d², and mean d² ≤ 2n/(n−1) on the sphere, so the
    # bound is −4n/(n−1) (the simplex), which is below −4 for every finite n
    assert -4 * n / (n - 1) - 1e-5 <= value <= 1e-6


# ---------------------------------------------------------------------------------------------
# Tolerance
# ---------------------------------------------------------------------------------------------


def _tolerance_loop(x: torch.Tensor, labels: torch.Tensor) -> float:
    x = x.double() / x.double().norm(dim=-1, keepdim=True)
    n = len(x)
    cos = [(x[i] @ x[j]).item() for i in range(n) for j in range(i + 1, n) if labels[i] == labels[j]]
    return sum(cos) / len(cos)


def test_tolerance_collapsed_classes_is_one():
    x = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.5, 0.0], [0.0, -1.0], [0.0, -4.0]])
    labels = torch.tensor([0, 0, 0, 1, 1])
    assert tolerance(x, labels).item() == pytest.approx(1.0, abs=1e-6)


def test_tolerance_hand_case():
    # class 0 at angles 0°, 60°, 90°: cosines 0.5, 0, cos 30°; class 1 at 90°, 180°: cosine 0;
    # cross-class pairs must not count
    angles = torch.tensor([0.0, 60.0, 90.0, 90.0, 180.0]) * math.pi / 180
    x = torch.stack([angles.cos(), angles.sin()], dim=-1) * torch.tensor([[1.0], [2.0], [3.0], [0.5], [1.0]])
    labels = torch.tensor([0, 0, 0, 1, 1])
    expected = (0.5 + 0.0 + math.cos(math.pi / 6) + 0.0) / 4
    assert tolerance(x, labels).item() == pytest.approx(expected, abs=1e-6)


@SETTINGS
@given(seed=seeds, n=st.integers(2, 10), d=st.integers(2, 6), classes=st.integers(1, 3))
def test_tolerance_matches_loop_and_bounds(seed, n, d, classes):
    x = _embeddings(seed, n, d)
    labels = torch.arange(n) % classes
    if classes >= n:  # need one class with two rows
        labels[1] = labels[0]
    value = tolerance(x, labels).item()
    assert value == pytest.approx(_tolerance_loop(x, labels), abs=1e-5)
    assert -1 - 1e-6 <= value <= 1 + 1e-6


# ---------------------------------------------------------------------------------------------
# Gradient norm
# ---------------------------------------------------------------------------------------------


def test_grad_norm_is_per_member_flattened_norm():
    g = torch.Generator().manual_seed(5)
    grads = [torch.randn(3, 4, 5, generator=g), torch.randn(3, 7, generator=g), torch.randn(3, generator=g)]
    got = grad_norm(grads)
    assert got.shape == (3,)
    for k in range(3):
        flat = torch.cat([gr[k].reshape(-1).double() for gr in grads])
        assert got[k].item() == pytest.approx(flat.norm().item(), rel=1e-6)


def test_grad_norm_hand_case():
    grads = [torch.tensor([[3.0], [0.0]]), torch.tensor([[4.0, 0.0], [5.0, 12.0]])]
    torch.testing.assert_close(grad_norm(grads), torch.tensor([5.0, 13.0]))


# ---------------------------------------------------------------------------------------------
# Softmax entropy and effective negatives
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 10, 1000])
def test_softmax_entropy_uniform_is_log_n(n):
    assert softmax_entropy(torch.full((n,), 0.3)).item() == pytest.approx(math.log(n), rel=1e-6)


def test_softmax_entropy_hand_case_and_one_hot():
    # logits log(1), log(3): probabilities 1/4, 3/4
    h = softmax_entropy(torch.tensor([[0.0, math.log(3.0)], [0.0, -1e4]]))
    expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert h[0].item() == pytest.approx(expected, rel=1e-6)
    assert h[1].item() == pytest.approx(0.0, abs=1e-6)


@SETTINGS
@given(seed=seeds, n=st.integers(2, 12), positive=st.integers(0, 11))
def test_effective_negatives_limits(seed, n, positive):
    positive = positive % n
    sims = torch.rand(3, n, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    # huge τ: every negative weighs the same
    huge = effective_negatives(sims, 1e6, positive)
    torch.testing.assert_close(huge, torch.full((3,), float(n - 1)), rtol=1e-5, atol=1e-5)
    # tiny τ with distinct negatives: the hardest takes all the weight
    tiny = effective_negatives(sims, 1e-6, positive)
    torch.testing.assert_close(tiny, torch.ones(3), rtol=0, atol=1e-4)


def test_effective_negatives_hand_case_ignores_positive():
    # negatives 0.5, 0.5 and the positive at index 1 with a huge similarity: 2 equal negatives
    sims = torch.tensor([0.5, 100.0, 0.5])
    assert effective_negatives(sims, 0.1, positive=1).item() == pytest.approx(2.0, rel=1e-6)


def test_effective_negatives_per_member_tau():
    sims = torch.rand(3, 4, 6, generator=torch.Generator().manual_seed(6)) * 2 - 1
    taus = torch.tensor([0.05, 0.5, 5.0])
    out = effective_negatives(sims, taus)
    assert out.shape == (3, 4)
    for k in range(3):
        torch.testing.assert_close(out[k], effective_negatives(sims[k], taus[k].item()))
    # lower τ concentrates the weight: fewer effective negatives
    assert (out[0] < out[1]).all() and (out[1] < out[2]).all()


# ---------------------------------------------------------------------------------------------
# Accuracy and calibration
# ---------------------------------------------------------------------------------------------


def test_accuracy_hand_case():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 1.0], [5.0, 0.0, 6.0]])
    labels = torch.tensor([0, 1, 0, 0])
    assert accuracy(logits, labels).item() == pytest.approx(0.5)
    # a second member predicting class 0 everywhere: right on 3 of the 4 labels
    batched = torch.stack([logits, torch.tensor([[1.0, 0.0, 0.0]]).expand(4, 3)])
    torch.testing.assert_close(accuracy(batched, labels), torch.tensor([0.5, 0.75]))


def _ece_loop(logits: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    probs = np.exp(logits.double().numpy())
    probs /= probs.sum(-1, keepdims=True)
    conf, pred, y = probs.max(-1).tolist(), probs.argmax(-1).tolist(), labels.tolist()
    n = len(y)
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        members = [i for i in range(n) if lo < conf[i] <= hi]
        if not members:
            continue
        acc = sum(float(pred[i] == y[i]) for i in members) / len(members)
        mean_conf = sum(conf[i] for i in members) / len(members)
        total += len(members) / n * abs(acc - mean_conf)
    return total


@SETTINGS
@given(seed=seeds, n=st.integers(1, 40), c=st.integers(2, 6), scale=st.floats(0.1, 5.0))
def test_ece_matches_loop(seed, n, c, scale):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, n, c, generator=g) * scale
    labels = torch.randint(0, c, (n,), generator=g)
    out = expected_calibration_error(logits, labels)
    assert out.shape == (3,)
    for k in range(3):
        assert out[k].item() == pytest.approx(_ece_loop(logits[k], labels), abs=1e-5)
        torch.testing.assert_close(out[k], expected_calibration_error(logits[k], labels))


def test_ece_hand_case():
    # two rows at confidence 0.75 (bin 11 of 15), one right, one wrong: |0.5 − 0.75| = 0.25
    logits = torch.tensor([[math.log(3.0), 0.0], [math.log(3.0), 0.0]])
    labels = torch.tensor([0, 1])
    assert expected_calibration_error(logits, labels).item() == pytest.approx(0.25, abs=1e-6)
    # split into separate bins, gaps don't cancel: row 0 conf 0.75 correct, row 1 conf 0.95 wrong
    logits = torch.tensor([[math.log(3.0), 0.0], [math.log(19.0), 0.0]])
    assert expected_calibration_error(logits, labels).item() == pytest.approx((0.25 + 0.95) / 2, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Batched [K, N, D] equals K unbatched calls
# ---------------------------------------------------------------------------------------------


def test_batched_embedding_metrics_equal_unbatched():
    g = torch.Generator().manual_seed(8)
    x, y = torch.randn(3, 7, 5, generator=g), torch.randn(3, 7, 5, generator=g)
    labels = torch.tensor([0, 1, 0, 1, 2, 2, 0])
    results = {
        "alignment": (alignment(x, y), lambda k: alignment(x[k], y[k])),
        "uniformity": (uniformity(x), lambda k: uniformity(x[k])),
        "tolerance": (tolerance(x, labels), lambda k: tolerance(x[k], labels)),
        "softmax_entropy": (softmax_entropy(x), lambda k: softmax_entropy(x[k])),
        "accuracy": (accuracy(x, labels), lambda k: accuracy(x[k], labels)),
    }
    for name, (batched, single) in results.items():
        assert batched.shape[0] == 3, name
        for k in range(3):
            torch.testing.assert_close(batched[k], single(k), msg=name)
