"""The softmax temperature τ of a population: one value per member, shape ``[members]``.

Each member is in one of four modes:

- ``fixed``: τ = τ₀ for the whole run; it receives no gradient.
- ``learnable``: stored as CLIP stores it, ``logit_scale = ln(1/τ)``, initialised from τ₀ and
  trained by the optimizer; after every optimizer step it is clamped in place to
  ``[ln(1/τ_max), ln(1/τ_min)]`` (CLIP: τ_min = 0.01, i.e. a scale of at most 100). The clamp
  acts on the value only; gradients are never masked by it.
- ``cosine``: τ(t) = τ_min + ½ (τ_max − τ_min) (1 + cos(2π t / period)): starts at τ_max, reaches
  τ_min at t = period / 2 and returns (Kukleva et al., ICLR 2023).
- ``linear``: τ(t) = τ_max + (τ_min − τ_max) · min(t / period, 1): a linear decay from τ_max to
  τ_min over ``period`` steps, then constant.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from tau_lab.checks import check_positive

MODES = ("fixed", "learnable", "cosine", "linear")
SCHEDULES = ("cosine", "linear")


def scheduled_tau(mode: str, step: int, tau_min: float, tau_max: float, period: int) -> float:
    """τ of a scheduled member at ``step`` (``mode`` is ``cosine`` or ``linear``)."""
    if mode == "cosine":
        return tau_min + 0.5 * (tau_max - tau_min) * (1.0 + math.cos(2.0 * math.pi * step / period))
    if mode == "linear":
        return tau_max + (tau_min - tau_max) * min(step / period, 1.0)
    raise ValueError(f"tau_mode = {mode!r} is not a schedule: allowed are {', '.join(SCHEDULES)}")


class Temperature(nn.Module):
    """One temperature per member, each fixed, learnable or scheduled.

    Args:
        tau_init: τ₀ per member, shape ``[members]`` (or one value for a single member).
        modes: one of ``fixed | learnable | cosine | linear`` per member, or one for all.
        tau_min, tau_max: the clamp of learnable members and the range of scheduled ones.
        period: steps of one schedule period (required when a member is scheduled).

    ``forward(step)`` returns τ, shape ``[members]``; gradients reach ``logit_scale`` only for
    learnable members.
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
        learnable = torch.tensor([m == "learnable" for m in modes])
        outside = learnable & ((tau0 < tau_min) | (tau0 > tau_max))
        if outside.any():
            bad = tau0[outside][0].item()
            raise ValueError(
                f"tau_init = {bad:g} for a learnable member lies outside its clamp "
                f"[tau_min, tau_max] = [{tau_min:g}, {tau_max:g}]: widen the clamp or change tau_init"
            )
        if period is None and any(m in SCHEDULES for m in modes):
            raise ValueError("period is required for scheduled temperatures (cosine, linear)")
        if period is not None and period <= 0:
            raise ValueError(f"period = {period} is not allowed: it must be a positive number of steps")
        self.modes = modes
        self.tau_min, self.tau_max, self.period = float(tau_min), float(tau_max), period
        self.logit_scale = nn.Parameter(torch.log(1.0 / tau0))
        self.register_buffer("learnable", learnable)
        self.register_buffer("tau_init", tau0)

    def forward(self, step: int = 0) -> Tensor:
        tau = torch.where(self.learnable, torch.exp(-self.logit_scale), self.tau_init)  # fixed: τ₀ exactly
        if self.period is None:
            return tau
        scheduled = [
            scheduled_tau(m, step, self.tau_min, self.tau_max, self.period) if m in SCHEDULES else 0.0
            for m in self.modes
        ]
        is_scheduled = torch.tensor([m in SCHEDULES for m in self.modes], device=tau.device)
        return torch.where(is_scheduled, torch.tensor(scheduled, device=tau.device), tau)

    def logit_scale_grad(self, tau: Tensor, grad_tau: Tensor, step: int) -> Tensor:
        """``∂L/∂logit_scale`` from ``∂L/∂τ`` (``[members]``): ``τ = e^{−s}`` gives ``−τ ∂L/∂τ``.

        Only learnable members are updated; the value for the others is still informative (the
        pull the loss exerts on their τ) and is logged as ``grad_norm_tau``.
        """
        return -tau * grad_tau

    @torch.no_grad()
    def clamp_(self) -> None:
        """Clamp learnable members to ``[ln(1/τ_max), ln(1/τ_min)]`` in place (after a step)."""
        lo, hi = math.log(1.0 / self.tau_max), math.log(1.0 / self.tau_min)
        clamped = self.logit_scale.clamp(lo, hi)
        self.logit_scale.copy_(torch.where(self.learnable, clamped, self.logit_scale))

    def extra_repr(self) -> str:
        return f"members={len(self.modes)}, tau_min={self.tau_min:g}, tau_max={self.tau_max:g}"
