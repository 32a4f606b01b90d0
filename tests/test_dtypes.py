"""Every public loss and metric keeps float64 (and lifts bf16 to float32), and matches an independent
float64 formula to ~1e-12; a per-member τ needs a member axis on the features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tau_lab import losses, metrics
from tau_lab.errors import UserError


def _rand(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _logsumexp(a: np.ndarray) -> np.ndarray:
    m = a.max(-1, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(-1, keepdims=True)))[..., 0]


# Each public function on small inputs, as a callable of one dtype.
B, D, C = 6, 5, 4
LABELS = torch.tensor([0, 1, 0, 1, 2, 2])


def _calls(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    x, y = _rand(B, D, seed=1, dtype=dtype), _rand(B, D, seed=2, dtype=dtype)
    logits = _rand(B, C, seed=3, dtype=dtype)
    return {
        "scaled_cross_entropy": losses.scaled_cross_entropy(logits, 0, 0.07),
        "info_nce": losses.info_nce(x, _rand(B, 4, D, seed=4, dtype=dtype), 0.07),
        "nt_xent": losses.nt_xent(x, y, 0.07),
        "clip_loss": losses.clip_loss(x, y, 0.07),
        "siglip_loss": losses.siglip_loss(x, y, 0.1, -10.0),
        "kd_loss": losses.kd_loss(logits, _rand(B, C, seed=5, dtype=dtype), LABELS % C, 4.0, 0.9).total,
        "alignment": metrics.alignment(x, y),
        "uniformity": metrics.uniformity(x),
        "tolerance": metrics.tolerance(x, LABELS),
        "grad_norm": metrics.grad_norm([x, y]),
        "softmax_entropy": metrics.softmax_entropy(logits),
        "effective_negatives": metrics.effective_negatives(logits, 0.07),
        "accuracy": metrics.accuracy(logits, LABELS % C),
        "expected_calibration_error": metrics.expected_calibration_error(logits, LABELS % C),
        "recall_at_1": metrics.recall_at_1(x, y),
        "knn_accuracy": metrics.knn_accuracy(x, y, LABELS, LABELS, k=3),
        "linear_probe": metrics.linear_probe(x, LABELS, y, LABELS, steps=3),
    }


@pytest.mark.parametrize(
    ("given_dtype", "expected"),
    [(torch.float64, torch.float64), (torch.float32, torch.float32), (torch.bfloat16, torch.float32)],
)
def test_every_public_function_computes_in_its_inputs_dtype(given_dtype, expected):
    for name, out in _calls(given_dtype).items():
        assert out.dtype == expected, f"{name}: {given_dtype} in, {out.dtype} out"


def test_a_float64_tau_tensor_promotes_float32_features():
    x, y = _rand(2, B, D, seed=1, dtype=torch.float32), _rand(2, B, D, seed=2, dtype=torch.float32)
    tau = torch.tensor([0.07, 0.5], dtype=torch.float64)
    assert losses.clip_loss(x, y, tau).dtype == torch.float64
    assert losses.clip_loss(x, y, tau.float()).dtype == torch.float32


def test_tau_given_as_a_number_is_not_rounded_to_float32():
    # 0.07 in float32 is 0.07000000029802322: at logits of ±1/τ that rounding shows at 1e-9 relative.
    sims = torch.tensor([[0.9, 0.1, -0.3]], dtype=torch.float64)
    got = losses.scaled_cross_entropy(sims, 0, 0.07).item()
    s = sims.numpy()[0] / 0.07
    assert got == pytest.approx(float(_logsumexp(s) - s[0]), rel=1e-14)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), tau=st.floats(0.01, 2.0), b=st.integers(2, 9))
def test_float64_losses_match_numpy_formulas(seed, tau, b):
    x, y = _rand(b, D, seed=seed), _rand(b, D, seed=seed + 1)
    xn, yn = _unit(x.numpy()), _unit(y.numpy())
    # CLIP: mean of row- and column-wise CE of normalize(x) normalize(y)ᵀ / τ against the diagonal
    s = xn @ yn.T / tau
    ref = ((_logsumexp(s) - np.diag(s)).mean() + (_logsumexp(s.T) - np.diag(s)).mean()) / 2
    assert losses.clip_loss(x, y, tau).item() == pytest.approx(ref, rel=1e-12, abs=1e-12)
    # NT-Xent: 2b views, the twin the positive, self left out of the denominator
    z = np.concatenate([xn, yn])
    s = z @ z.T / tau
    np.fill_diagonal(s, -np.inf)
    twin = np.r_[np.arange(b, 2 * b), np.arange(b)]
    ref = (_logsumexp(s) - s[np.arange(2 * b), twin]).mean()
    assert losses.nt_xent(x, y, tau).item() == pytest.approx(ref, rel=1e-12, abs=1e-12)
    # KD: α T² KL(p‖q) + (1 − α) CE at T = 1, batchmean
    T, alpha, labels = 1 + 3 * tau, 0.7, torch.arange(b) % D
    sl, tl = x.numpy(), y.numpy()
    log_q = sl / T - _logsumexp(sl / T)[:, None]
    log_p = tl / T - _logsumexp(tl / T)[:, None]
    kl = (np.exp(log_p) * (log_p - log_q)).sum(-1).mean()
    ce = (_logsumexp(sl) - sl[np.arange(b), labels.numpy()]).mean()
    got = losses.kd_loss(x, y, labels, T, alpha).total.item()
    assert got == pytest.approx(alpha * T**2 * kl + (1 - alpha) * ce, rel=1e-12, abs=1e-12)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(3, 12))
def test_float64_metrics_match_numpy_formulas(seed, n):
    x, y = _rand(n, D, seed=seed), _rand(n, D, seed=seed + 1)
    xn, yn = _unit(x.numpy()), _unit(y.numpy())
    labels = torch.arange(n) % 2
    assert metrics.alignment(x, y).item() == pytest.approx((np.linalg.norm(xn - yn, axis=1) ** 2).mean(), rel=1e-12)
    i, j = np.triu_indices(n, 1)
    sq = ((xn[i] - xn[j]) ** 2).sum(-1)
    assert metrics.uniformity(x).item() == pytest.approx(np.log(np.exp(-2 * sq).mean()), rel=1e-12)
    same = labels.numpy()[i] == labels.numpy()[j]
    assert metrics.tolerance(x, labels).item() == pytest.approx((xn[i] * xn[j]).sum(-1)[same].mean(), rel=1e-12)
    logits = x.numpy()
    logp = logits - _logsumexp(logits)[:, None]
    entropy = -(np.exp(logp) * logp).sum(-1)
    np.testing.assert_allclose(metrics.softmax_entropy(x).numpy(), entropy, rtol=1e-12)
    assert metrics.grad_norm([x[None], y[None]]).item() == pytest.approx(
        np.sqrt((x.numpy() ** 2).sum() + (y.numpy() ** 2).sum()), rel=1e-12
    )


# The τ shape contract: a number, or [K] with features [K, B, D].


def test_a_per_member_tau_needs_a_member_axis_even_when_the_batch_equals_K():
    x, y = _rand(3, D, seed=1), _rand(3, D, seed=2)
    with pytest.raises(UserError, match=r"tau has shape \[3\] \(one per member\) but image has shape \[3, 5\]"):
        losses.clip_loss(x, y, torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(UserError, match="member"):
        losses.clip_loss(x[:2], y[:2], torch.tensor([0.1, 0.2, 0.3]))


@pytest.mark.parametrize("loss", ["clip_loss", "nt_xent", "info_nce"])
def test_per_member_tau_is_each_members_own_loss(loss):
    k, tau = 3, torch.tensor([0.05, 0.3, 1.0], dtype=torch.float64)
    x, y = _rand(k, B, D, seed=1), _rand(k, B, D, seed=2)
    if loss == "info_nce":
        y = _rand(k, B, 4, D, seed=3)
    fn = getattr(losses, loss)
    together = fn(x, y, tau)
    alone = torch.stack([fn(x[m], y[m], tau[m].item()) for m in range(k)])
    torch.testing.assert_close(together, alone, rtol=1e-14, atol=1e-14)


def test_a_tau_of_the_wrong_length_or_rank_names_both_shapes():
    x, y = _rand(2, B, D, seed=1), _rand(2, B, D, seed=2)
    with pytest.raises(UserError, match=r"tau has shape \[3\] .* image has shape \[2, 6, 5\], 2 members"):
        losses.clip_loss(x, y, torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(UserError, match=r"tau has shape \[2, 1\]: expected a number or \[K\]"):
        losses.nt_xent(x, y, torch.tensor([[0.1], [0.2]]))
    with pytest.raises(UserError, match=r"T has shape \[2\] .* student_logits has shape \[6, 4\]"):
        losses.kd_loss(_rand(B, C), _rand(B, C, seed=1), LABELS % C, torch.tensor([1.0, 2.0]), 0.5)
