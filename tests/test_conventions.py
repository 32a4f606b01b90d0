"""Where tau-lab's conventions differ from its peers', one test per row of docs/conventions.md.

Each peer's formula is written out here from its source (open_clip, torchdistill,
pytorch-metric-learning, Wang & Isola's reference code), in float64, so the tests pin both what agrees
and exactly where and by how much the two differ.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tau_lab import losses, metrics


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def torchdistill_kd(student, teacher, targets, temperature, alpha):
    """torchdistill's ``KDLoss`` (beta = 1 − alpha): alpha weights the cross-entropy; alpha = 0 returns
    the bare KL, without T²."""
    soft = F.kl_div(
        torch.log_softmax(student / temperature, 1), torch.softmax(teacher / temperature, 1), reduction="batchmean"
    )
    if alpha == 0:
        return soft
    return alpha * F.cross_entropy(student, targets) + (1 - alpha) * temperature**2 * soft


@pytest.mark.parametrize("alpha", [0.1, 0.5, 0.9])
def test_alpha_weights_the_soft_term_here_and_the_cross_entropy_in_torchdistill(alpha):
    s, t, y, T = _rand(8, 5, seed=1), _rand(8, 5, seed=2), torch.arange(8) % 5, 4.0
    ours = losses.kd_loss(s, t, y, T, alpha).total
    torch.testing.assert_close(ours, torchdistill_kd(s, t, y, T, 1 - alpha), rtol=1e-13, atol=1e-13)


def test_torchdistill_drops_t_squared_at_its_alpha_zero():
    s, t, y, T = _rand(8, 5, seed=1), _rand(8, 5, seed=2), torch.arange(8) % 5, 4.0
    ours = losses.kd_loss(s, t, y, T, 1.0).total  # all soft term: T² KL
    torch.testing.assert_close(ours, T**2 * torchdistill_kd(s, t, y, T, 0.0), rtol=1e-13, atol=1e-13)


def pml_nt_xent(z1, z2, tau):
    """pytorch-metric-learning's NTXentLoss: per anchor ``−log(p + tiny)``, so it stops at −log(tiny)."""
    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    n = len(z1)
    s = z @ z.T / tau
    s.fill_diagonal_(-math.inf)
    twin = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    p = torch.softmax(s, -1)[torch.arange(2 * n), twin]
    return -torch.log(p + torch.finfo(z.dtype).tiny).mean()


def test_nt_xent_agrees_with_pytorch_metric_learning_until_its_cap():
    z1, z2 = _rand(6, 4, seed=1), _rand(6, 4, seed=2)
    torch.testing.assert_close(losses.nt_xent(z1, z2, 0.2), pml_nt_xent(z1, z2, 0.2), rtol=1e-12, atol=1e-12)
    # every anchor's twin is its opposite and another view is itself: at τ = 0.001 the loss is ~2000 here,
    # the peer's stops at −log(tiny) = 708.4 (float64) with zero gradient beyond
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    z1, z2 = torch.cat([a, a]), torch.cat([-a, -a])
    cap = -math.log(torch.finfo(torch.float64).tiny)
    assert cap == pytest.approx(708.396, abs=1e-3)
    assert losses.nt_xent(z1, z2, 0.001).item() == pytest.approx(2000 + math.log(1), abs=1.0)
    assert pml_nt_xent(z1, z2, 0.001).item() == pytest.approx(cap, rel=1e-9)


def open_clip_loss(image, text, logit_scale):
    """open_clip's ``ClipLoss``: features as given (the model normalises), ``logit_scale`` = 1/τ."""
    logits = logit_scale * image @ text.T
    labels = torch.arange(len(image))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def test_clip_loss_normalises_inside_where_open_clip_expects_unit_features():
    x, y = 3 * _rand(8, 4, seed=1), 0.5 * _rand(8, 4, seed=2)
    unit = open_clip_loss(F.normalize(x, dim=-1), F.normalize(y, dim=-1), 1 / 0.07)
    torch.testing.assert_close(losses.clip_loss(x, y, 0.07), unit, rtol=1e-13, atol=1e-13)
    assert abs(losses.clip_loss(x, y, 0.07) - open_clip_loss(x, y, 1 / 0.07)) > 1.0  # unnormalised input differs
    # the input gradient here is orthogonal to each row (the normalisation's Jacobian); open_clip's is not
    xg = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(losses.clip_loss(xg, y, 0.07), xg)
    torch.testing.assert_close((grad * x).sum(-1), torch.zeros(8, dtype=torch.float64), rtol=0, atol=1e-12)
    xg = x.clone().requires_grad_()
    (peer,) = torch.autograd.grad(open_clip_loss(xg, y, 1 / 0.07), xg)
    assert (peer * x).sum(-1).abs().max() > 1e-3


def wang_isola_align(x, y, alpha=2):
    return (x - y).norm(p=2, dim=1).pow(alpha).mean()


def wang_isola_uniform(x, t=2):
    return torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log()


def test_alignment_and_uniformity_normalise_inside_where_wang_and_isola_expect_unit_rows():
    x, y = 2 * _rand(10, 3, seed=1), _rand(10, 3, seed=2)
    xn, yn = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
    torch.testing.assert_close(metrics.alignment(x, y), wang_isola_align(xn, yn), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(metrics.uniformity(x), wang_isola_uniform(xn), rtol=1e-13, atol=1e-13)
    assert abs(metrics.uniformity(x) - wang_isola_uniform(x)) > 0.1  # their code on raw rows measures another thing


def test_ece_bins_are_closed_on_the_right():
    # Row A: confidence exactly 1/3 = 5/15 (three equal logits, a fourth at −1000), correct. Row B: confidence
    # 0.3, wrong. In bins (b/15, (b+1)/15] both fall in (4/15, 5/15] and their gaps cancel: |2/3 − 0.3| / 2.
    # Bins closed on the left would put A in [5/15, 6/15): (2/3 + 0.3) / 2.
    a = torch.tensor([0.0, 0.0, 0.0, -1000.0], dtype=torch.float64)
    b = torch.log(torch.tensor([0.3, 0.25, 0.25, 0.2], dtype=torch.float64))
    logits, labels = torch.stack([a, b]), torch.tensor([0, 1])
    assert torch.softmax(a, 0).max().item() * 15 == 5.0
    expected = abs((1 - 1 / 3) + (0 - 0.3)) / 2
    assert metrics.expected_calibration_error(logits, labels).item() == pytest.approx(expected, rel=1e-12)


def test_tolerance_pools_distinct_same_class_pairs_over_classes():
    # class 0 has 3 rows (3 pairs, cosine 1 each), class 1 has 2 rows (1 pair, cosine −1): pooled (3 − 1)/4 = 0.5,
    # where a mean of per-class means would give 0
    x = torch.tensor([[1.0, 0], [2.0, 0], [3.0, 0], [0, 1.0], [0, -1.0]], dtype=torch.float64)
    assert metrics.tolerance(x, torch.tensor([0, 0, 0, 1, 1])).item() == pytest.approx(0.5, abs=1e-15)


def test_effective_negatives_is_the_exp_entropy_of_the_negatives_weights_per_row():
    sims = _rand(2, 5, 9, seed=3)
    w = torch.softmax(sims[..., 1:] / 0.1, -1)  # one batch: [2 members, 5 anchors, 8 negatives]
    expected = torch.exp(-(w * w.log()).sum(-1))
    torch.testing.assert_close(metrics.effective_negatives(sims, 0.1), expected, rtol=1e-12, atol=1e-12)
    equal = torch.zeros(1, 1, 9, dtype=torch.float64)
    assert metrics.effective_negatives(equal, 0.1).item() == pytest.approx(8.0, rel=1e-12)


def open_clip_siglip(image, text, logit_scale, logit_bias):
    """open_clip's ``SigLipLoss`` (one process): ``−Σ log σ(labels · logits) / B`` on the features as given."""
    logits = logit_scale * image @ text.T + logit_bias
    labels = 2 * torch.eye(len(image), dtype=image.dtype) - 1
    return -F.logsigmoid(labels * logits).sum() / len(image)


@pytest.mark.parametrize(("tau", "bias"), [(0.1, -10.0), (0.03, -3.0), (1.0, 0.5)])
def test_siglip_loss_matches_open_clip_on_unit_features(tau, bias):
    x, y = _rand(8, 4, seed=1), _rand(8, 4, seed=2)
    peer = open_clip_siglip(F.normalize(x, dim=-1), F.normalize(y, dim=-1), 1 / tau, bias)
    torch.testing.assert_close(losses.siglip_loss(x, y, tau, bias), peer, rtol=1e-13, atol=1e-13)


def test_siglip_at_its_initialisation_is_dominated_by_the_bias():
    # t' = log 10, b = −10: every logit lies in [−20, 0], so the B² − B negatives cost ≈ 0 and each positive
    # ≈ −log σ(10·cos − 10); when every image is orthogonal to every text that is log(1 + e^10) per row
    eye = torch.eye(8, dtype=torch.float64)
    loss = losses.siglip_loss(eye[:4], eye[4:], 0.1, -10.0).item()
    expected = (math.log1p(math.exp(10)) * 4 + 12 * math.log1p(math.exp(-10))) / 4
    assert loss == pytest.approx(expected, rel=1e-12)


def test_siglip_per_member_tau_and_bias_are_each_members_own_loss():
    x, y = _rand(3, 6, 4, seed=1), _rand(3, 6, 4, seed=2)
    tau, bias = (
        torch.tensor([0.1, 0.5, 1.0], dtype=torch.float64),
        torch.tensor([-10.0, -2.0, 0.0], dtype=torch.float64),
    )
    together = losses.siglip_loss(x, y, tau, bias)
    alone = torch.stack([losses.siglip_loss(x[k], y[k], tau[k].item(), bias[k].item()) for k in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-14, atol=1e-14)
