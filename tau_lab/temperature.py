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
        self.register_buffer("scheduled", torch.tensor([m in SCHEDULES for m in modes]))
        self.moves = any(m != "fixed" for m in modes)  # a Python flag: a tensor test would sync a GPU
        # flags rather than `"ctkd" in self.modes` where a compiled block reads them: torch.compile guards on what
        # the code reads, and the list's every element would tie the graph to this population's order of modes
        self.has_ctkd, self.has_learnable = "ctkd" in modes, "learnable" in modes

    def forward(self, step: int = 0) -> Tensor:
        if not self.moves:
            return self.tau_init
        theta = self.logit_scale
        if self.has_ctkd:  # the reversal acts on ctkd's θ only: learnable members keep their gradient
            theta = _GradientReversal.apply(self.logit_scale, ctkd_lambda(step, self.period))
        scheduled, _ = self.schedule(step, 1)
        return self.tau(self.logit_scale, theta, None if scheduled is None else scheduled[0])

    def schedule(self, start: int, n: int) -> tuple[Tensor | None, Tensor | None]:
        """What τ takes from the step count, for steps ``start … start + n − 1``: the scheduled members' τ
        ``[n, K]`` (0 for the others) and ctkd's λ ``[n]``; ``None`` where no member needs it. A block of steps
        reads its rows, so that τ inside the block follows the live ``logit_scale`` and these."""
        device, steps = self.tau_init.device, range(start, start + n)
        scheduled = lam = None
        if any(m in SCHEDULES for m in self.modes):
            by_mode = [[scheduled_tau(m, s, self.tau_min, self.tau_max, self.period) for m in SCHEDULES] for s in steps]
            column = [SCHEDULES.index(m) if m in SCHEDULES else 0 for m in self.modes]
            scheduled = torch.tensor(by_mode, device=device)[:, column]  # `tau` keeps only the scheduled columns
        if self.has_ctkd:
            lam = torch.tensor([ctkd_lambda(s, self.period) for s in steps], device=device)
        return scheduled, lam

    def tau(self, logit_scale: Tensor, theta: Tensor, scheduled: Tensor | None) -> Tensor:
        """τ ``[K]`` from ``logit_scale`` (learnable: ``e^{−s}``), ``theta`` (ctkd: ``τ_min + (τ_max − τ_min) σ(θ)``;
        ``logit_scale`` itself, or it through the gradient reversal) and a row ``[K]`` of ``schedule``; fixed
        members keep τ₀ exactly. Pure: a compiled block calls it on the values it carries."""
        if not self.moves:
            return self.tau_init
        tau = torch.where(self.clamped, torch.exp(-logit_scale), self.tau_init)
        if self.has_ctkd:
            tau = torch.where(self.ctkd, self.tau_min + (self.tau_max - self.tau_min) * torch.sigmoid(theta), tau)
        if scheduled is not None:
            tau = torch.where(self.scheduled, scheduled, tau)
        return tau

    def logit_scale_grad(self, tau: Tensor, grad_tau: Tensor, step: int, lam: Tensor | None = None) -> Tensor:
        """``∂L/∂logit_scale`` from ``∂L/∂τ`` (``[members]``), as autograd through ``forward(step)`` gives it.

        - ``τ = e^{−s}`` gives ``−τ ∂L/∂τ``;
        - ctkd, ``τ = τ_min + (τ_max − τ_min) σ(θ)``: ``dτ/dθ = (τ_max − τ_min) σ (1 − σ)
          = (τ − τ_min)(τ_max − τ) / (τ_max − τ_min)``, times the reversal ``λ(step)``.

        ``lam``, when given, is ctkd's ``λ(step)`` (a row of ``schedule``: a block's steps are tensors). Only
        learnable and ctkd members are updated; the value for the others is still
        informative (the pull the loss exerts on their τ) and is logged as ``grad_norm_tau``.
        """
        grad = -tau * grad_tau
        if not self.has_ctkd:
            return grad
        dtau = (tau - self.tau_min) * (self.tau_max - tau) / (self.tau_max - self.tau_min)
        lam = ctkd_lambda(step, self.period) if lam is None else lam
        return torch.where(self.ctkd, lam * dtau * grad_tau, grad)

    @torch.no_grad()
    def clamp_(self) -> None:
        """Clamp learnable members to ``[ln(1/τ_max), ln(1/τ_min)]`` in place (after a step)."""
        if self.has_learnable:
            self.logit_scale.copy_(self.clamp(self.logit_scale))

    def clamp(self, logit_scale: Tensor) -> Tensor:
        """``logit_scale`` with learnable members clamped to ``[ln(1/τ_max), ln(1/τ_min)]``; pure.

        ctkd members are left alone: their sigmoid keeps τ in range whatever θ is.
        """
        if not self.has_learnable:
            return logit_scale
        lo, hi = math.log(1.0 / self.tau_max), math.log(1.0 / self.tau_min)
        return torch.where(self.clamped, logit_scale.clamp(lo, hi), logit_scale)

    def extra_repr(self) -> str:
        return f"members={len(self.modes)}, tau_min={self.tau_min:g}, tau_max={self.tau_max:g}"
