"""The softmax temperature τ of a population: one value per member, shape ``[members]``.

Each member is in one of five modes:

- ``fixed``: τ = τ₀ for the whole run; it receives no gradient.
- ``learnable``: stored as CLIP stores it, ``logit_scale = ln(1/τ)``, initialised from τ₀ and
  trained by the optimizer; after every optimizer step it is clamped in place to
  ``[ln(1/τ_max), ln(1/τ_min)]`` (CLIP: τ_min = 0.01, i.e. a scale of at most 100). The clamp
  acts on the value only; gradients are never masked by it.
- ``cosine``: τ(t) = τ_min + ½ (τ_max − τ_min) (1 + cos(2π t / period)): starts at τ_max, reaches
  τ_min at t = period / 2 and returns (Kukleva et al., ICLR 2023).
- ``linear``: τ(t) = τ_max + (τ_min − τ_max) · min(t / period, 1): a linear decay from τ_max to
  τ_min over ``period`` steps, then constant.
- ``ctkd``: Curriculum Temperature for Knowledge Distillation (Li et al., AAAI 2023). The same
  ``logit_scale`` slot holds an unconstrained θ and τ = τ_min + (τ_max − τ_min) σ(θ), so τ never
  leaves its range and the clamp does not apply. θ is trained *adversarially*: its gradient passes
  a gradient-reversal layer that multiplies it by λ(t) = −½ (1 − cos(π min(t / period, 1))), a
  cosine curriculum from 0 (no push) to −1 (full reversal) over ``period`` steps. Gradient descent
  on θ then *raises* the loss: τ moves where the distillation task is hardest for the student.
  CTKD's own range is T = 1 + 20 σ(θ); tau-lab takes [τ_min, τ_max] from the experiment.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from tau_lab.checks import check_positive

MODES = ("fixed", "learnable", "cosine", "linear", "ctkd")
SCHEDULES = ("cosine", "linear")
NEEDS_PERIOD = (*SCHEDULES, "ctkd")  # modes that follow the step count


def scheduled_tau(mode: str, step: int, tau_min: float, tau_max: float, period: int) -> float:
    """τ of a scheduled member at ``step`` (``mode`` is ``cosine`` or ``linear``)."""
    if mode == "cosine":
        return tau_min + 0.5 * (tau_max - tau_min) * (1.0 + math.cos(2.0 * math.pi * step / period))
    if mode == "linear":
        return tau_max + (tau_min - tau_max) * min(step / period, 1.0)
    raise ValueError(f"tau_mode = {mode!r} is not a schedule: allowed are {', '.join(SCHEDULES)}")


def start_tau(mode: str, tau: float, tau_min: float, tau_max: float) -> float:
    """Where a member starts: schedules at τ_max, ``ctkd`` at the middle of its range (θ = 0), the
    others at ``tau``. Schedules and ``ctkd`` thus ignore a sweep's τ (``config.members``)."""
    if mode in SCHEDULES:
        return tau_max
    if mode == "ctkd":
        return (tau_min + tau_max) / 2
    return tau


def ctkd_lambda(step: int, period: int) -> float:
    """CTKD's gradient-reversal strength: a cosine from 0 at step 0 to −1 at ``period``, then −1."""
    return -0.5 * (1.0 - math.cos(math.pi * min(step / period, 1.0)))


class _GradientReversal(torch.autograd.Function):
    """CTKD's gradient-reversal layer: identity forward; backward multiplies the gradient by ``lam`` ≤ 0."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor, lam: float) -> Tensor:
        ctx.lam = lam
        return x.clone()

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:
        return ctx.lam * grad, None


class Temperature(nn.Module):
    """One temperature per member, each fixed, learnable, scheduled or ctkd.

    Args:
        tau_init: τ₀ per member, shape ``[members]`` (or one value for a single member).
        modes: one of ``fixed | learnable | cosine | linear | ctkd`` per member, or one for all.
        tau_min, tau_max: the clamp of learnable members, the range of scheduled and ctkd ones.
        period: steps of one schedule period, and of the ctkd curriculum (required for those modes).

    ``forward(step)`` returns τ, shape ``[members]``; gradients reach ``logit_scale`` only for
    learnable and ctkd members (the latter through the gradient reversal of ``step``). The
    ``learnable`` buffer marks the members the optimizer trains: both of those modes.
    """

    def __init__(
        self,
        tau_init: Sequence[float] | Tensor | float = 0.07,
        modes: Sequence[str] | str = "fixed",
        tau_min: float = 0.01,
        tau_max: float = 1.0,
        period: int | None = None,
    ) -> None:
        super().__init__()
        tau0 = torch.as_tensor(tau_init, dtype=torch.get_default_dtype()).reshape(-1)
        check_positive("tau_init", tau0)
        check_positive("tau_min", tau_min)
        check_positive("tau_max", tau_max)
        if not tau_min < tau_max:
            raise ValueError(f"tau_min = {tau_min:g} must be smaller than tau_max = {tau_max:g}")
        modes = [modes] * len(tau0) if isinstance(modes, str) else list(modes)
        if len(modes) != len(tau0):
            raise ValueError(f"modes has {len(modes)} entries for {len(tau0)} values of tau_init")
        for mode in modes:
            if mode not in MODES:
                raise ValueError(f"tau_mode = {mode!r} is not allowed: use one of {', '.join(MODES)}")
        clamped = torch.tensor([m == "learnable" for m in modes])
        ctkd = torch.tensor([m == "ctkd" for m in modes])
        outside = clamped & ((tau0 < tau_min) | (tau0 > tau_max))
        if outside.any():
            bad = tau0[outside][0].item()
            raise ValueError(
                f"tau_init = {bad:g} for a learnable member lies outside its clamp "
                f"[tau_min, tau_max] = [{tau_min:g}, {tau_max:g}]: widen the clamp or change tau_init"
            )
        outside = ctkd & ((tau0 <= tau_min) | (tau0 >= tau_max))
        if outside.any():
            bad = tau0[outside][0].item()
            raise ValueError(
                f"tau_init = {bad:g} for a ctkd member must lie strictly inside its range "
                f"(tau_min, tau_max) = ({tau_min:g}, {tau_max:g}): a sigmoid reaches neither end"
            )
        if period is None and any(m in NEEDS_PERIOD for m in modes):
            raise ValueError("period is required for scheduled temperatures (cosine, linear) and for ctkd")
        if period is not None and period <= 0:
            raise ValueError(f"period = {period} is not allowed: it must be a positive number of steps")
        self.modes = modes
        self.tau_min, self.tau_max, self.period = float(tau_min), float(tau_max), period
        theta0 = torch.logit((tau0 - tau_min) / (tau_max - tau_min))  # σ(θ₀) is τ₀'s place in the range
        self.logit_scale = nn.Parameter(torch.where(ctkd, theta0, torch.log(1.0 / tau0)))
        self.register_buffer("learnable", clamped | ctkd)
        self.register_buffer("clamped", clamped)
        self.register_buffer("ctkd", ctkd)
        self.register_buffer("tau_init", tau0)

    def forward(self, step: int = 0) -> Tensor:
        # Python flags, not tensor tests: a step's overhead matters, and on a GPU a test would sync
        if not any(m != "fixed" for m in self.modes):
            return self.tau_init
        tau = torch.where(self.clamped, torch.exp(-self.logit_scale), self.tau_init)  # fixed: τ₀ exactly
        if self.period is None:
            return tau
        if "ctkd" in self.modes:
            theta = _GradientReversal.apply(self.logit_scale, ctkd_lambda(step, self.period))
            tau = torch.where(self.ctkd, self.tau_min + (self.tau_max - self.tau_min) * torch.sigmoid(theta), tau)
        scheduled = [
            scheduled_tau(m, step, self.tau_min, self.tau_max, self.period) if m in SCHEDULES else 0.0
            for m in self.modes
        ]
        is_scheduled = torch.tensor([m in SCHEDULES for m in self.modes], device=tau.device)
        return torch.where(is_scheduled, torch.tensor(scheduled, device=tau.device), tau)

    def logit_scale_grad(self, tau: Tensor, grad_tau: Tensor, step: int) -> Tensor:
        """``∂L/∂logit_scale`` from ``∂L/∂τ`` (``[members]``), as autograd through ``forward(step)`` gives it.

        - ``τ = e^{−s}`` gives ``−τ ∂L/∂τ``;
        - ctkd, ``τ = τ_min + (τ_max − τ_min) σ(θ)``: ``dτ/dθ = (τ_max − τ_min) σ (1 − σ)
          = (τ − τ_min)(τ_max − τ) / (τ_max − τ_min)``, times the reversal ``λ(step)``.

        Only learnable and ctkd members are updated; the value for the others is still
        informative (the pull the loss exerts on their τ) and is logged as ``grad_norm_tau``.
        """
        grad = -tau * grad_tau
        if "ctkd" not in self.modes:
            return grad
        dtau = (tau - self.tau_min) * (self.tau_max - tau) / (self.tau_max - self.tau_min)
        return torch.where(self.ctkd, ctkd_lambda(step, self.period) * dtau * grad_tau, grad)

    @torch.no_grad()
    def clamp_(self) -> None:
        """Clamp learnable members to ``[ln(1/τ_max), ln(1/τ_min)]`` in place (after a step).

        ctkd members are left alone: their sigmoid keeps τ in range whatever θ is.
        """
        if "learnable" not in self.modes:
            return
        lo, hi = math.log(1.0 / self.tau_max), math.log(1.0 / self.tau_min)
        clamped = self.logit_scale.clamp(lo, hi)
        self.logit_scale.copy_(torch.where(self.clamped, clamped, self.logit_scale))

    def extra_repr(self) -> str:
        return f"members={len(self.modes)}, tau_min={self.tau_min:g}, tau_max={self.tau_max:g}"
