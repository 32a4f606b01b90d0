"""Tests of tau_lab.losses against independent float64 references and the seed documents."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from tau_lab.losses import clip_loss, info_nce, kd_loss, nt_xent, scaled_cross_entropy

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True)


seeds = st.integers(0, 2**31 - 1)
taus = st.sampled_from([0.01, 0.05, 0.07, 0.1, 0.5, 1.0, 2.0])


# ---------------------------------------------------------------------------------------------
# Independent references (float64, no library code)
# ---------------------------------------------------------------------------------------------


def _softmax64(z: list[float], tau: float) -> list[float]:
    logits = [x / tau for x in z]
    m = max(logits)
    lse = m + math.log(sum(math.exp(x - m) for x in logits))
    return [math.exp(x - lse) for x in logits]


def _ce64(z: list[float], tau: float, target: int) -> float:
    logits = [x / tau for x in z]
    m = max(logits)
    return m + math.log(sum(math.exp(x - m) for x in logits)) - logits[target]


def _lib_logprobs(z: list[float], tau: float) -> torch.Tensor:
    """log softmax(z/τ) as the library sees it: -scaled_cross_entropy against every target."""
    n = len(z)
    sims = torch.tensor(z, dtype=torch.float32).expand(n, n)
    return -scaled_cross_entropy(sims, torch.arange(n), tau).double()


def _np_log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def _kd_ref(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, T: float, alpha: float, t2: bool = True):
    s64, t64 = s.double().numpy(), t.double().numpy()
    log_q = _np_log_softmax(s64 / T)
    log_p = _np_log_softmax(t64 / T)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(-1).mean()
    soft = (T**2 if t2 else 1.0) * kl
    log_s = _np_log_softmax(s64)
    hard = -log_s[np.arange(len(y)), y.numpy()].mean()
    return alpha * soft + (1 - alpha) * hard, soft, hard


def _normalize64(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return x / x.norm(dim=-1, keepdim=True)


# ---------------------------------------------------------------------------------------------
# Seed 001: the two tables
# ---------------------------------------------------------------------------------------------

Z_POS_FIRST = [0.5, 0.25, -0.45, -0.1]
Z_NEG_FIRST = [0.25, 0.5, -0.45, -0.1]

# (logits, τ, probabilities as the seed prints them, cross-entropy as the seed prints it).
# The seed writes "6.1-06", "5.5-42" and "8.7-27" (no "e"); they are spelled with "e" here.
SEED001 = [
    (Z_POS_FIRST, 1.0, ["0.3684", "0.2869", "0.1425", "0.2022"], "0.9986"),
    (Z_POS_FIRST, 0.5, ["0.4861", "0.2948", "0.0727", "0.1464"], "0.7214"),
    (Z_POS_FIRST, 0.05, ["0.9933", "6.6e-03", "5.5e-09", "6.1e-06"], "0.0067"),
    # The seed prints CE "0"; the true value is log(1 + e^-25 + ...) ≈ 1.39e-11, "0" at 4 decimals.
    (Z_POS_FIRST, 0.01, ["1.00", "1.3e-11", "5.5e-42", "8.7e-27"], "0"),
    (Z_NEG_FIRST, 1.0, ["0.2869", "0.3684", "0.1425", "0.2022"], "1.2486"),
    (Z_NEG_FIRST, 0.5, ["0.2948", "0.4861", "0.0727", "0.1464"], "1.2214"),
    (Z_NEG_FIRST, 0.05, ["6.6e-03", "0.9933", "5.5e-09", "6.1e-06"], "5.0067"),
    (Z_NEG_FIRST, 0.01, ["1.3e-11", "1.00", "5.5e-42", "8.7e-27"], "25"),
]

# The seed truncates (not rounds) these to two significant digits: the math gives 6.69e-03,
# 5.57e-09, 1.39e-11 and 8.76e-27, i.e. 6.7e-03, 5.6e-09, 1.4e-11 and 8.8e-27 when rounded.
SEED001_TRUNCATED = {"6.6e-03", "5.5e-09", "1.3e-11", "8.7e-27"}


def _unit_of_last_digit(printed: str) -> float:
    mantissa, _, exponent = printed.partition("e")
    decimals = len(mantissa.partition(".")[2])
    return 10.0 ** (int(exponent or 0) - decimals)


@pytest.mark.parametrize(("z", "tau", "printed_p", "printed_ce"), SEED001)
def test_seed001_library_matches_float64_math(z, tau, printed_p, printed_ce):
    ref_p = _softmax64(z, tau)
    ref_logp = [math.log(p) for p in ref_p]
    logp = _lib_logprobs(z, tau)
    # float32 logits of magnitude ≤ 95 carry ≈ 1e-5 absolute error in log-space
    torch.testing.assert_close(logp, torch.tensor(ref_logp, dtype=torch.float64), rtol=1e-6, atol=2e-5)
    torch.testing.assert_close(logp.exp(), torch.tensor(ref_p, dtype=torch.float64), rtol=2e-5, atol=1e-7)
    ce = scaled_cross_entropy(torch.tensor([z]), 0, tau).item()
    assert ce == pytest.approx(_ce64(z, tau, 0), rel=1e-6, abs=1e-6)


@pytest.mark.parametrize(("z", "tau", "printed_p", "printed_ce"), SEED001)
def test_seed001_printed_values_at_printed_precision(z, tau, printed_p, printed_ce):
    ref_p = _softmax64(z, tau)
    for true, printed in zip(ref_p, printed_p, strict=True):
        unit = _unit_of_last_digit(printed)
        if printed in SEED001_TRUNCATED:
            assert float(printed) < true < float(printed) + unit
        else:
            assert abs(true - float(printed)) <= unit / 2
    ce = _ce64(z, tau, 0)
    assert round(ce, 4) == float(printed_ce)
    # and the library agrees with the seed at the seed's precision
    lib_ce = scaled_cross_entropy(torch.tensor([z]), 0, tau).item()
    assert round(lib_ce, 4) == float(printed_ce)


def test_seed001_tau_trend_of_the_loss():
    # the seed's conclusion: lower τ lowers the loss when the positive is the most similar and
    # raises it when a negative is; in the second table only from τ = 0.5 on (1.2486 → 1.2214 first)
    losses_pos = [scaled_cross_entropy(torch.tensor([Z_POS_FIRST]), 0, t).item() for t in (1, 0.5, 0.05, 0.01)]
    losses_neg = [scaled_cross_entropy(torch.tensor([Z_NEG_FIRST]), 0, t).item() for t in (1, 0.5, 0.05, 0.01)]
    assert losses_pos == sorted(losses_pos, reverse=True)
    assert losses_neg[1:] == sorted(losses_neg[1:])


# ---------------------------------------------------------------------------------------------
# Seed 003: logits (2, 5, 8)
# ---------------------------------------------------------------------------------------------

# What seed 003 prints for τ = 5 and τ = 0.5. Both are wrong: with equally spaced logits
# (spacing 3) the log-ratios of consecutive probabilities must both equal 3/τ, but the printed
# vectors have log-ratios (1.626, 1.107) and (2.972, 2.998), so no single τ produces either.
SEED003_PRINTED = {
    5.0: [0.04661262, 0.23688284, 0.71650454],
    0.5: [0.00242826, 0.04741446, 0.95015728],
}


@pytest.mark.parametrize("tau", [5.0, 0.5])
def test_seed003_correct_math_not_seed_print(tau):
    z = [2.0, 5.0, 8.0]
    ref = torch.tensor(_softmax64(z, tau), dtype=torch.float64)
    probs = _lib_logprobs(z, tau).exp()
    torch.testing.assert_close(probs, ref, rtol=1e-5, atol=1e-8)
    printed = torch.tensor(SEED003_PRINTED[tau], dtype=torch.float64)
    assert (probs - printed).abs().max() > 0.01


def test_seed003_known_values_at_tau5():
    probs = _lib_logprobs([2.0, 5.0, 8.0], 5.0).exp()
    torch.testing.assert_close(probs, torch.tensor([0.1628, 0.2967, 0.5405], dtype=torch.float64), rtol=0, atol=1e-4)


@pytest.mark.parametrize("tau", [5.0, 0.5])
def test_seed003_printed_vectors_match_no_temperature(tau):
    log_ratios = np.diff(np.log(SEED003_PRINTED[tau]))
    # 8 printed digits bound the error of each log-ratio by ~1e-6; the two differ by far more
    assert abs(log_ratios[0] - log_ratios[1]) > 1e-3


# ---------------------------------------------------------------------------------------------
# Softmax-temperature properties
# ---------------------------------------------------------------------------------------------


@SETTINGS
@given(seed=seeds, b=st.integers(1, 5), n=st.integers(2, 8), tau=st.floats(0.05, 5.0), data=st.data())
def test_scaled_cross_entropy_shift_invariant(seed, b, n, tau, data):
    g = torch.Generator().manual_seed(seed)
    sims = torch.rand(b, n, generator=g) * 2 - 1
    shift = torch.tensor(data.draw(st.lists(st.floats(-5, 5), min_size=b, max_size=b))).unsqueeze(-1)
    target = torch.randint(0, n, (b,), generator=g)
    base = scaled_cross_entropy(sims, target, tau)
    shifted = scaled_cross_entropy(sims + shift, target, tau)
    torch.testing.assert_close(shifted, base, rtol=1e-4, atol=1e-4)


@SETTINGS
@given(seed=seeds, b=st.integers(1, 5), n=st.integers(2, 10))
def test_scaled_cross_entropy_matches_float64_reference(seed, b, n):
    g = torch.Generator().manual_seed(seed)
    sims = torch.rand(b, n, generator=g) * 2 - 1
    target = torch.randint(0, n, (b,), generator=g)
    for tau in (0.001, 0.07, 1.0):
        ref = F.cross_entropy(sims.double() / tau, target, reduction="none")
        torch.testing.assert_close(scaled_cross_entropy(sims, target, tau).double(), ref, rtol=1e-5, atol=1e-4)


@SETTINGS
@given(seed=seeds, n=st.integers(2, 10))
def test_huge_tau_gives_uniform(seed, n):
    g = torch.Generator().manual_seed(seed)
    z = (torch.rand(n, generator=g) * 2 - 1).tolist()
    probs = _lib_logprobs(z, 1e6).exp()
    torch.testing.assert_close(probs, torch.full((n,), 1.0 / n, dtype=torch.float64), rtol=0, atol=1e-5)


@SETTINGS
@given(data=st.data(), n=st.integers(2, 10))
def test_tiny_tau_gives_one_hot_on_argmax(data, n):
    # distinct logits on a 0.01 grid within [-1, 1]: gaps / τ ≥ 100
    grid = data.draw(st.lists(st.integers(-100, 100), min_size=n, max_size=n, unique=True))
    z = [k / 100 for k in grid]
    probs = _lib_logprobs(z, 1e-4).exp()
    expected = torch.zeros(n, dtype=torch.float64)
    expected[int(np.argmax(z))] = 1.0
    torch.testing.assert_close(probs, expected, rtol=0, atol=1e-30)


# ---------------------------------------------------------------------------------------------
# Contrastive losses against direct computations
# ---------------------------------------------------------------------------------------------


def _clip_ref(img: torch.Tensor, txt: torch.Tensor, tau: float) -> torch.Tensor:
    logits = _normalize64(img) @ _normalize64(txt).T / tau
    target = torch.arange(len(img))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def _nt_xent_ref(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    n = len(z1)
    z = _normalize64(torch.cat([z1, z2]))
    sims = z @ z.T
    sims.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(sims / tau, target)


def _info_nce_ref(anchor: torch.Tensor, candidates: torch.Tensor, tau: float, target) -> torch.Tensor:
    """One anchor at a time; candidates [B, N, D] (per anchor) or [N, D] (shared)."""
    losses = []
    for b in range(len(anchor)):
        cands = candidates[b] if candidates.ndim == 3 else candidates
        sims = _normalize64(cands) @ _normalize64(anchor[b])
        y = target if isinstance(target, int) else int(target[b])
        losses.append(torch.logsumexp(sims / tau, 0) - sims[y] / tau)
    return torch.stack(losses).mean()


@SETTINGS
@given(seed=seeds, b=st.integers(1, 6), d=st.integers(2, 8), tau=taus)
def test_clip_loss_is_mean_of_both_directions(seed, b, d, tau):
    g = torch.Generator().manual_seed(seed)
    img, txt = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)
    torch.testing.assert_close(clip_loss(img, txt, tau).double(), _clip_ref(img, txt, tau), rtol=1e-5, atol=1e-5)


def test_clip_loss_is_not_symmetric_in_one_direction_only():
    # a non-square-symmetric similarity matrix: the two directions differ, the loss is their mean
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    logits = _normalize64(img) @ _normalize64(txt).T / 0.1
    i2t = F.cross_entropy(logits, torch.arange(5))
    t2i = F.cross_entropy(logits.T, torch.arange(5))
    assert abs(i2t - t2i) > 1e-3
    assert clip_loss(img, txt, 0.1).item() == pytest.approx(((i2t + t2i) / 2).item(), rel=1e-5)


@SETTINGS
@given(seed=seeds, b=st.integers(1, 6), d=st.integers(2, 8), tau=taus)
def test_nt_xent_matches_reference(seed, b, d, tau):
    g = torch.Generator().manual_seed(seed)
    z1, z2 = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)
    torch.testing.assert_close(nt_xent(z1, z2, tau).double(), _nt_xent_ref(z1, z2, tau), rtol=1e-5, atol=1e-5)


def test_nt_xent_single_pair_has_no_negatives():
    # with B = 1 each view's only candidate is its twin: probability 1, loss 0 at any τ
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(1, 4, generator=g), torch.randn(1, 4, generator=g)
    for tau in (0.01, 0.5, 10.0):
        assert nt_xent(z1, z2, tau).item() == pytest.approx(0.0, abs=1e-6)


def test_nt_xent_excludes_self_similarity():
    # identical views: including self-similarity (cos 1) would give each view two perfect
    # matches and a loss ≥ log 2 at tiny τ; excluding it leaves only the twin at cos 1
    z = F.normalize(torch.eye(3), dim=-1)
    assert nt_xent(z, z.clone(), 0.01).item() == pytest.approx(0.0, abs=1e-6)


@SETTINGS
@given(seed=seeds, b=st.integers(1, 5), n=st.integers(2, 6), d=st.integers(2, 6), tau=taus)
def test_info_nce_per_anchor_candidates(seed, b, n, d, tau):
    g = torch.Generator().manual_seed(seed)
    anchor, cands = torch.randn(b, d, generator=g), torch.randn(b, n, d, generator=g)
    target = torch.randint(0, n, (b,), generator=g)
    torch.testing.assert_close(
        info_nce(anchor, cands, tau).double(), _info_nce_ref(anchor, cands, tau, 0), rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(
        info_nce(anchor, cands, tau, target).double(),
        _info_nce_ref(anchor, cands, tau, target),
        rtol=1e-5,
        atol=1e-5,
    )


@SETTINGS
@given(seed=seeds, b=st.integers(1, 5), n=st.integers(2, 6), d=st.integers(2, 6), tau=taus)
def test_info_nce_shared_candidates(seed, b, n, d, tau):
    g = torch.Generator().manual_seed(seed)
    anchor, bank = torch.randn(b, d, generator=g), torch.randn(n, d, generator=g)
    target = torch.randint(0, n, (b,), generator=g)
    torch.testing.assert_close(
        info_nce(anchor, bank, tau, target).double(),
        _info_nce_ref(anchor, bank, tau, target),
        rtol=1e-5,
        atol=1e-5,
    )


def test_info_nce_reproduces_seed001_loss():
    # seed 001's anchor with one positive and three negatives, realised as 2-D unit vectors whose
    # cosines with the anchor are the table's similarities
    sims = torch.tensor(Z_POS_FIRST, dtype=torch.float64)
    cands = torch.stack([sims, (1 - sims**2).sqrt()], dim=-1).float()
    anchor = torch.tensor([[1.0, 0.0]])
    for tau, printed in ((1.0, 0.9986), (0.5, 0.7214), (0.05, 0.0067)):
        assert info_nce(anchor, cands.unsqueeze(0), tau).item() == pytest.approx(printed, abs=5e-5)


# ---------------------------------------------------------------------------------------------
# Knowledge distillation
# ---------------------------------------------------------------------------------------------


def _kd_inputs(seed: int, b: int = 6, c: int = 5, k: int | None = None):
    g = torch.Generator().manual_seed(seed)
    lead = (k,) if k else ()
    s = torch.randn(*lead, b, c, generator=g) * 3
    t = torch.randn(b, c, generator=g) * 3
    y = torch.randint(0, c, (b,), generator=g)
    return s, t, y


@SETTINGS
@given(seed=seeds, b=st.integers(1, 6), c=st.integers(2, 8), T=st.floats(0.5, 20))
def test_kd_alpha_zero_is_plain_cross_entropy(seed, b, c, T):
    s, t, y = _kd_inputs(seed, b, c)
    out = kd_loss(s, t, y, T, 0.0)
    torch.testing.assert_close(out.total, F.cross_entropy(s, y), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.hard, F.cross_entropy(s, y), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0, 10.0])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.9, 1.0])
@pytest.mark.parametrize("t2", [True, False])
def test_kd_matches_float64_reference(T, alpha, t2):
    s, t, y = _kd_inputs(seed=int(T * 100 + alpha * 10))
    out = kd_loss(s, t, y, T, alpha, t2)
    total, soft, hard = _kd_ref(s, t, y, T, alpha, t2)
    assert out.total.item() == pytest.approx(total, rel=1e-5, abs=1e-6)
    assert out.soft.item() == pytest.approx(soft, rel=1e-5, abs=1e-6)
    assert out.hard.item() == pytest.approx(hard, rel=1e-5, abs=1e-6)


def test_kd_soft_is_batchmean_kl_div_times_t2():
    # REFERENCE.md's form: kl_div(log_softmax(s/T), softmax(t/T), reduction="batchmean") · T²;
    # reduction="mean" would be 1/C of it
    s, t, y = _kd_inputs(seed=3)
    T = 4.0
    ref = F.kl_div(F.log_softmax(s.double() / T, -1), F.softmax(t.double() / T, -1), reduction="batchmean") * T**2
    assert kd_loss(s, t, y, T, 0.9).soft.item() == pytest.approx(ref.item(), rel=1e-5)


def test_kd_finite_when_teacher_probabilities_underflow():
    # teacher logits 1000 apart at T = 1: p = exp(-1000) underflows to 0 in float32
    s = torch.tensor([[0.0, 1.0, 2.0]])
    t = torch.tensor([[1000.0, 0.0, -1000.0]])
    out = kd_loss(s, t, torch.tensor([0]), 1.0, 1.0)
    _, soft, _ = _kd_ref(s, t, torch.tensor([0]), 1.0, 1.0)
    assert torch.isfinite(out.total)
    assert out.soft.item() == pytest.approx(soft, rel=1e-5)


def _soft_grad(z: torch.Tensor, v: torch.Tensor, T: float, t2: bool) -> torch.Tensor:
    s = z.clone().requires_grad_()
    kd_loss(s, v, torch.zeros(len(z), dtype=torch.long), T, 1.0, t2).soft.backward()
    return s.grad


@pytest.mark.parametrize("T", [0.5, 1.0, 4.0, 20.0])
@pytest.mark.parametrize("t2", [True, False])
def test_kd_soft_gradient_exact_formula(T, t2):
    # d/ds [T² KL(p‖q)] = T (q − p) / B ; without T²: (q − p) / (T B)
    g = torch.Generator().manual_seed(7)
    z, v = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    q, p = F.softmax(z.double() / T, -1), F.softmax(v.double() / T, -1)
    expected = (T if t2 else 1 / T) * (q - p) / len(z)
    torch.testing.assert_close(_soft_grad(z, v, T, t2).double(), expected, rtol=1e-4, atol=1e-7)


def test_kd_t2_gradient_law():
    # zero-mean logits: softmax(z/T) ≈ (1 + z/T)/N for large T, so q − p ≈ (z − v)/(N T) and
    # the soft gradient T(q − p)/B → (z − v)/(N B) with T²; without T² it is that limit / T²
    g = torch.Generator().manual_seed(11)
    b, n = 4, 6
    z, v = torch.randn(b, n, generator=g), torch.randn(b, n, generator=g)
    z, v = z - z.mean(-1, keepdim=True), v - v.mean(-1, keepdim=True)
    limit = (z - v) / (n * b)

    def rel_err(grad: torch.Tensor) -> float:
        return ((grad - limit).norm() / limit.norm()).item()

    errs_t2 = [rel_err(_soft_grad(z, v, T, True)) for T in (1.0, 10.0, 100.0)]
    errs_no = [rel_err(_soft_grad(z, v, T, False) * T**2) for T in (1.0, 10.0, 100.0)]
    for errs in (errs_t2, errs_no):
        assert errs[0] > errs[1] > errs[2]
        assert errs[2] < 0.02
    # without T² the gradient itself shrinks as 1/T²
    g10, g100 = _soft_grad(z, v, 10.0, False), _soft_grad(z, v, 100.0, False)
    assert (g10.norm() / g100.norm()).item() == pytest.approx(100.0, rel=0.05)


# ---------------------------------------------------------------------------------------------
# Batched member axis
# ---------------------------------------------------------------------------------------------

K_TAUS = torch.tensor([0.01, 0.07, 0.5])


def test_batched_info_nce_per_member_tau():
    g = torch.Generator().manual_seed(21)
    anchor, cands = torch.randn(3, 4, 5, generator=g), torch.randn(3, 4, 6, 5, generator=g)
    bank = torch.randn(3, 6, 5, generator=g)
    target = torch.randint(0, 6, (3, 4), generator=g)
    batched = info_nce(anchor, cands, K_TAUS, target)
    batched_bank = info_nce(anchor, bank, K_TAUS, target)
    assert batched.shape == batched_bank.shape == (3,)
    for k in range(3):
        tau = K_TAUS[k].item()
        torch.testing.assert_close(batched[k], info_nce(anchor[k], cands[k], tau, target[k]))
        torch.testing.assert_close(batched_bank[k], info_nce(anchor[k], bank[k], tau, target[k]))


def test_batched_nt_xent_and_clip_per_member_tau():
    g = torch.Generator().manual_seed(22)
    a, b = torch.randn(3, 5, 4, generator=g), torch.randn(3, 5, 4, generator=g)
    nt, cl = nt_xent(a, b, K_TAUS), clip_loss(a, b, K_TAUS)
    assert nt.shape == cl.shape == (3,)
    for k in range(3):
        tau = K_TAUS[k].item()
        torch.testing.assert_close(nt[k], nt_xent(a[k], b[k], tau))
        torch.testing.assert_close(cl[k], clip_loss(a[k], b[k], tau))


def test_batched_tau_shared_number():
    g = torch.Generator().manual_seed(23)
    a, b = torch.randn(3, 5, 4, generator=g), torch.randn(3, 5, 4, generator=g)
    out = clip_loss(a, b, 0.07)
    for k in range(3):
        torch.testing.assert_close(out[k], clip_loss(a[k], b[k], 0.07))


@pytest.mark.parametrize("teacher_per_member", [False, True])
def test_batched_kd_per_member_T_alpha_t2(teacher_per_member):
    s, t, y = _kd_inputs(seed=24, k=3)
    if teacher_per_member:
        t = t + torch.randn(3, *t.shape, generator=torch.Generator().manual_seed(25))
    T = torch.tensor([1.0, 4.0, 10.0])
    alpha = torch.tensor([0.0, 0.5, 0.9])
    t2 = torch.tensor([True, False, True])
    out = kd_loss(s, t, y, T, alpha, t2)
    for part in out:
        assert part.shape == (3,)
    for k in range(3):
        tk = t[k] if teacher_per_member else t
        single = kd_loss(s[k], tk, y, T[k].item(), alpha[k].item(), bool(t2[k]))
        for got, want in zip(out, single, strict=True):
            torch.testing.assert_close(got[k], want)


# ---------------------------------------------------------------------------------------------
# Numerical stability at τ = 0.001
# ---------------------------------------------------------------------------------------------


def _loss_cases(dtype: torch.dtype):
    g = torch.Generator().manual_seed(31)
    b, n, d = 4, 5, 8

    def leaf(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype).requires_grad_()

    anchor = leaf(b, d)
    # positive nearly identical to the anchor, one negative antipodal: cosines ±1 → logits ±1000
    cands = torch.randn(b, n, d, generator=g)
    cands[:, 0] = anchor.detach().float() + 1e-3 * torch.randn(b, d, generator=g)
    cands[:, 1] = -anchor.detach().float()
    cands = cands.to(dtype).requires_grad_()
    z1 = leaf(b, d)
    z2 = leaf(b, d)
    img, txt = leaf(b, d), leaf(b, d)
    student, teacher = leaf(b, n, scale=3.0), leaf(b, n, scale=3.0)
    labels = torch.randint(0, n, (b,), generator=g)
    sims = (torch.rand(b, n, generator=g) * 2 - 1).to(dtype).requires_grad_()
    return {
        "scaled_cross_entropy": (lambda tau: scaled_cross_entropy(sims, 1, tau).mean(), [sims]),
        "info_nce": (lambda tau: info_nce(anchor, cands, tau), [anchor, cands]),
        "info_nce_hard_negative_first": (lambda tau: info_nce(anchor, cands, tau, 1), [anchor, cands]),
        "nt_xent": (lambda tau: nt_xent(z1, z2, tau), [z1, z2]),
        "clip_loss": (lambda tau: clip_loss(img, txt, tau), [img, txt]),
        "kd_loss": (lambda tau: kd_loss(student, teacher, labels, tau, 0.5).total, [student, teacher]),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "name", ["scaled_cross_entropy", "info_nce", "info_nce_hard_negative_first", "nt_xent", "clip_loss", "kd_loss"]
)
def test_losses_finite_at_tiny_tau(dtype, name):
    fn, leaves = _loss_cases(dtype)[name]
    loss = fn(0.001)
    assert torch.isfinite(loss).all()
    loss.backward()
    for x in leaves:
        assert x.grad is not None
        assert torch.isfinite(x.grad).all()
        assert x.grad.dtype == dtype


@pytest.mark.parametrize("name", ["info_nce", "nt_xent", "clip_loss", "kd_loss"])
def test_losses_finite_at_tiny_tau_under_bf16_autocast(name):
    fn, leaves = _loss_cases(torch.float32)[name]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = fn(0.001)
    assert torch.isfinite(loss).all()
    loss.backward()
    for x in leaves:
        assert torch.isfinite(x.grad).all()


def test_info_nce_accurate_at_tiny_tau():
    # hard negative as the target: loss ≈ (1 − (−1))/τ = 2000, reachable only through log-sum-exp
    g = torch.Generator().manual_seed(32)
    anchor = torch.randn(4, 8, generator=g)
    cands = torch.randn(4, 5, 8, generator=g)
    cands[:, 0] = anchor + 1e-3 * torch.randn(4, 8, generator=g)
    cands[:, 1] = -anchor
    for target in (0, 1):
        ref = _info_nce_ref(anchor, cands, 0.001, target)
        assert info_nce(anchor, cands, 0.001, target).item() == pytest.approx(ref.item(), rel=1e-4, abs=2e-3)
    assert 1990 < info_nce(anchor, cands, 0.001, 1).item() < 2001


# ---------------------------------------------------------------------------------------------
# Argument errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("T", "pattern"),
    [(0.0, r"T = 0\b"), (-1.0, r"T = -1\b"), (float("nan"), r"T = nan"), (float("inf"), r"T = inf")],
)
def test_kd_rejects_bad_T(T, pattern):
    s, t, y = _kd_inputs(seed=41)
    with pytest.raises(ValueError, match=pattern):
        kd_loss(s, t, y, T, 0.5)


def test_kd_rejects_bad_T_among_members():
    s, t, y = _kd_inputs(seed=42, k=3)
    with pytest.raises(ValueError, match=r"T = -2\b"):
        kd_loss(s, t, y, torch.tensor([1.0, -2.0, 4.0]), 0.5)


@pytest.mark.parametrize(
    ("alpha", "pattern"), [(1.5, r"alpha = 1\.5"), (-0.1, r"alpha = -0\.1"), (float("nan"), "alpha = nan")]
)
def test_kd_rejects_bad_alpha(alpha, pattern):
    s, t, y = _kd_inputs(seed=43)
    with pytest.raises(ValueError, match=pattern):
        kd_loss(s, t, y, 4.0, alpha)


def test_clip_loss_rejects_mismatched_batches():
    with pytest.raises(ValueError, match=r"text has shape \[5, 8\]"):
        clip_loss(torch.randn(4, 8), torch.randn(5, 8), 0.07)


def test_nt_xent_rejects_mismatched_views():
    with pytest.raises(ValueError, match="z2"):
        nt_xent(torch.randn(4, 8), torch.randn(4, 7), 0.5)


@pytest.mark.parametrize(
    "call",
    [
        lambda tau: scaled_cross_entropy(torch.randn(3, 4, 5), 0, tau),
        lambda tau: info_nce(torch.randn(3, 4, 5), torch.randn(3, 4, 6, 5), tau),
        lambda tau: info_nce(torch.randn(3, 4, 5), torch.randn(3, 6, 5), tau),
        lambda tau: nt_xent(torch.randn(3, 4, 5), torch.randn(3, 4, 5), tau),
        lambda tau: clip_loss(torch.randn(3, 4, 5), torch.randn(3, 4, 5), tau),
    ],
    ids=["scaled_cross_entropy", "info_nce", "info_nce_bank", "nt_xent", "clip_loss"],
)
@pytest.mark.parametrize("length", [2, 4])
def test_per_member_tau_of_wrong_length(call, length):
    with pytest.raises(ValueError, match=rf"tau has shape \[{length}\]"):
        call(torch.full((length,), 0.1))


def test_kd_per_member_T_of_wrong_length():
    s, t, y = _kd_inputs(seed=44, k=3)
    with pytest.raises(ValueError, match=r"T has shape \[2\]"):
        kd_loss(s, t, y, torch.tensor([1.0, 2.0]), 0.5)


# Regressions found in review: the contrastive losses validate τ like kd_loss validates T; per-member α
# must match the member axis; similarities stay float32 under bf16 autocast.
@pytest.mark.parametrize("tau", [0.0, -0.07, float("nan")])
def test_contrastive_losses_reject_bad_tau(tau):
    z = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    for call in (lambda: scaled_cross_entropy(z, 0, tau), lambda: clip_loss(z, z, tau), lambda: nt_xent(z, z, tau)):
        with pytest.raises(ValueError, match="tau"):
            call()


def test_kd_per_member_alpha_must_match_members():
    s, t, y = torch.randn(3, 4, 5), torch.randn(4, 5), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="alpha"):
        kd_loss(s, t, y, 2.0, torch.tensor([0.1, 0.2, 0.3, 0.4]))
    with pytest.raises(ValueError, match="alpha"):
        kd_loss(s[0], t, y, 2.0, torch.tensor([0.1, 0.2, 0.3]))


def test_similarities_are_float32_under_bf16_autocast():
    g = torch.Generator().manual_seed(3)
    image, text = torch.randn(8, 64, generator=g), torch.randn(8, 64, generator=g)
    exact = clip_loss(image.double(), text.double(), 0.001)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = clip_loss(image, text, 0.001)
    assert under_autocast.item() == pytest.approx(exact.item(), rel=1e-5)


def test_nt_xent_gradient_of_a_learnable_tau_is_finite():
    # Masking self-similarity with −∞ before dividing by τ makes ∂L/∂τ = 0·∞ = NaN.
    g = torch.Generator().manual_seed(4)
    z1, z2 = torch.randn(2, 6, 8, generator=g), torch.randn(2, 6, 8, generator=g)
    tau = torch.tensor([0.1, 0.5], requires_grad=True)
    nt_xent(z1, z2, tau).sum().backward()
    assert torch.isfinite(tau.grad).all() and (tau.grad != 0).all()
