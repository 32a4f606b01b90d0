"""Temperature-scaled losses, batched over a population of members.

Shapes: a leading ``members`` axis ``K`` is optional everywhere. With it (features ``[K, B, D]``,
logits ``[K, B, C]``), ``tau`` (and ``T``, ``alpha``) is a tensor ``[K]`` or a number shared by all
members, and each loss returns ``[K]``; without it (features ``[B, D]``), ``tau`` must be a number
(or a 0-d tensor) and the loss is a scalar. A ``[K]`` τ beside features without a member axis is
refused with an error naming both shapes, never applied per row.

Dtype: each loss computes in its inputs' dtype promoted with τ's, and at least float32
(``compute_dtype``): float64 in gives float64 out, to ~1e-15; bf16/fp16 inputs are lifted to float32,
with autocast switched off inside, so the logits ``s/τ`` (±1000 at τ = 0.001) are never rounded to
bf16. Every loss goes through ``log_softmax`` (log-sum-exp), so it stays finite at τ = 0.001.

Numbers and CPU tensors are validated (τ > 0, α ∈ [0, 1]); on an accelerator that check would
stall every step, so there the values are trusted (the engine validates its config up front).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from tau_lab.checks import check_positive, check_shape, check_unit_interval
from tau_lab.errors import UserError


def compute_dtype(*values: float | Tensor | bool) -> torch.dtype:
    """The dtype a loss or metric computes in: its tensors' promoted dtype, at least float32.

    ``float64`` stays ``float64``; ``bfloat16``/``float16`` and integers are lifted to ``float32``;
    Python numbers do not count (τ = 0.07 given as a number takes the features' dtype).
    """
    dtype = torch.float32
    for value in values:
        if isinstance(value, Tensor):
            dtype = torch.promote_types(dtype, value.dtype if value.is_floating_point() else torch.float32)
    return dtype


def _broadcast(value: float | Tensor, like: Tensor, name: str) -> Tensor:
    """A per-member value ``[K]`` (or a number) shaped ``[K, 1, ..., 1]`` to combine with ``like``."""
    value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if value.ndim == 0:
        return value
    expected = f"[{like.shape[0]}] (one per member)" if like.ndim else "a number (the input has no member axis)"
    ok = value.ndim == 1 and like.ndim >= 1 and value.shape[0] == like.shape[0]
    check_shape(name, tuple(value.shape), expected, ok)
    return value.reshape(-1, *([1] * (like.ndim - 1)))


def check_members(name: str, value: float | Tensor | bool, features: Tensor, what: str, member_ndim: int) -> None:
    """A per-member ``value`` needs a member axis on ``features``: ``[K]`` with ``features [K, ...]``.

    ``member_ndim`` is the rank of ``features`` with its member axis (3 for ``[K, B, D]``).
    """
    if not isinstance(value, Tensor) or value.ndim == 0:
        return
    shape = list(features.shape)
    if value.ndim != 1:
        raise UserError(f"{name} has shape {list(value.shape)}: expected a number or [K], one per member")
    if features.ndim != member_ndim:
        raise UserError(
            f"{name} has shape {list(value.shape)} (one per member) but {what} has shape {shape}, without a "
            f"member axis: give {what} as [K, ...] with K = {value.shape[0]} members, or {name} as a number"
        )
    if features.shape[0] != value.shape[0]:
        raise UserError(
            f"{name} has shape {list(value.shape)} (one per member) but {what} has shape {shape}, "
            f"{features.shape[0]} members: the two must agree"
        )


def _checked(check: Callable[[str, Any], None], name: str, value: float | Tensor) -> None:
    # a tensor's values are read on the CPU only: on a GPU that would sync, in a compiled graph it cannot be done
    if not (isinstance(value, Tensor) and (value.device.type != "cpu" or torch.compiler.is_compiling())):
        check(name, value)


def _no_autocast(x: Tensor) -> torch.autocast:
    """Switch autocast off, so similarities and logits are computed in ``compute_dtype``."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def scaled_cross_entropy(sims: Tensor, target: Tensor | int, tau: float | Tensor) -> Tensor:
    """Per-row cross-entropy of ``softmax(sims / τ)`` against ``target``.

    ``-log softmax(s/τ)[y] = logsumexp(s/τ) - s_y/τ``, invariant to adding a constant to a row.

    Args:
        sims: ``[K, ..., N]`` (or ``[..., N]``) similarities or logits.
        target: index of the correct entry per row, ``[K, ...]``, ``[...]`` or one int.
        tau: ``[K]`` or a number.
    Returns: ``[K, ...]``, one loss per row.
    """
    _checked(check_positive, "tau", tau)
    with _no_autocast(sims):
        sims = sims.to(compute_dtype(sims, tau))
        logits = sims / _broadcast(tau, sims, "tau")
        logp = F.log_softmax(logits, dim=-1)
        if isinstance(target, int):
            return -logp[..., target]
        target = target.expand(logp.shape[:-1])
        return -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)


def positive_first(n: int, views: bool, device: torch.device) -> Tensor:
    """Columns that reorder each row of an ``[n, n]`` similarity matrix to ``[positive, negatives…]``.

    ``views=False``: the keys are a second set paired row by row (CLIP: image i, text i); row i's positive
    is column i and all n columns stay: ``[n, n]``. ``views=True``: the keys are the queries themselves, two
    views stacked (NT-Xent: ``[z¹; z²]``); row i's positive is column ``(i + n/2) % n`` and its own column is
    dropped: ``[n, n - 1]``.
    """
    offsets = torch.arange(n, device=device)
    if not views:
        return (offsets[:, None] + offsets) % n
    half = n // 2
    columns = (offsets[:, None] + half + offsets) % n
    return columns[:, offsets != half]  # offset n/2 past the twin is the row itself


def info_nce(anchor: Tensor, candidates: Tensor, tau: float | Tensor, target: Tensor | int = 0) -> Tensor:
    """InfoNCE: each anchor against its candidates (one positive and negatives), cosine similarity.

    ``L = -log exp(cos(a, c_y)/τ) / Σ_j exp(cos(a, c_j)/τ)``, averaged over anchors.

    Args:
        anchor: ``[K, B, D]`` (or ``[B, D]``).
        candidates: ``[K, B, N, D]``, each anchor its own candidates (the quadrants study: positive first,
            then three negatives), or ``[K, N, D]`` shared by all anchors (a memory bank).
        tau: ``[K]`` or a number.
        target: index of the positive among the candidates, per anchor ``[K, B]`` / ``[B]`` or int.
    Returns: ``[K]`` (or a scalar), the mean over anchors.
    """
    check_members("tau", tau, anchor, "anchor", member_ndim=3)
    with _no_autocast(anchor):
        dtype = compute_dtype(anchor, candidates, tau)
        a = F.normalize(anchor.to(dtype), dim=-1)
        c = F.normalize(candidates.to(dtype), dim=-1)
        if c.ndim == a.ndim + 1:  # per-anchor candidates
            sims = torch.einsum("...bd,...bnd->...bn", a, c)
        else:
            sims = a @ c.transpose(-1, -2)
        return scaled_cross_entropy(sims, target, tau).mean(-1)


def nt_xent(z1: Tensor, z2: Tensor, tau: float | Tensor) -> Tensor:
    """NT-Xent (SimCLR): 2B views, each view's positive is its twin, the other 2B-2 are negatives.

    With ``z = normalize([z1; z2])`` and ``s_ij = z_i·z_j``, the loss of view i with twin j is
    ``-log exp(s_ij/τ) / Σ_{k≠i} exp(s_ik/τ)``; mean over 2B views. Self-similarity is left out of
    each row (``positive_first``) rather than masked with −∞, which would make ∂L/∂τ = 0·∞ = NaN.

    Args:
        z1, z2: ``[K, B, D]`` (or ``[B, D]``), the two views' projections.
        tau: ``[K]`` or a number.
    Returns: ``[K]`` (or a scalar).
    """
    check_shape("z2", tuple(z2.shape), f"{list(z1.shape)} like z1", z1.shape == z2.shape)
    check_members("tau", tau, z1, "z1", member_ndim=3)
    with _no_autocast(z1):
        z = F.normalize(torch.cat([z1, z2], dim=-2).to(compute_dtype(z1, z2, tau)), dim=-1)
        columns = positive_first(z.shape[-2], views=True, device=z.device)  # [2B, 2B − 1], twin first
        sims = (z @ z.transpose(-1, -2)).gather(-1, columns.expand(*z.shape[:-2], -1, -1))
        return scaled_cross_entropy(sims, 0, tau).mean(-1)


def clip_loss(image: Tensor, text: Tensor, tau: float | Tensor) -> Tensor:
    """CLIP's symmetric loss: the mean of the image→text and text→image cross-entropies.

    ``logits = normalize(image) @ normalize(text)ᵀ / τ`` (CLIP writes ``/τ`` as
    ``· exp(logit_scale)``); row i's target is column i.

    Args:
        image, text: ``[K, B, D]`` (or ``[B, D]``), paired row by row.
        tau: ``[K]`` or a number.
    Returns: ``[K]`` (or a scalar).
    """
    check_shape("text", tuple(text.shape), f"{list(image.shape)} like image", image.shape == text.shape)
    check_members("tau", tau, image, "image", member_ndim=3)
    with _no_autocast(image):
        dtype = compute_dtype(image, text, tau)
        i = F.normalize(image.to(dtype), dim=-1)
        t = F.normalize(text.to(dtype), dim=-1)
        sims = i @ t.transpose(-1, -2)
        target = torch.arange(sims.shape[-1], device=sims.device)
        image_to_text = scaled_cross_entropy(sims, target, tau).mean(-1)
        text_to_image = scaled_cross_entropy(sims.transpose(-1, -2), target, tau).mean(-1)
        return (image_to_text + text_to_image) / 2


def rows_columns(columns: Tensor, rows: slice) -> Tensor:
    """The rows of ``positive_first(n, views, ...)`` of a process holding the global rows ``rows``: ``[b, ·]``
    (``views=False``), or ``[2b, ·]`` for the two views' halves (``views=True``: rows of view 1, then view 2)."""
    n = len(columns)
    if columns.shape[1] == n:
        return columns[rows]
    return torch.cat([columns[: n // 2][rows], columns[n // 2 :][rows]])


def clip_loss_rows(
    image: Tensor,
    text: Tensor,
    image_all: Tensor,
    text_all: Tensor,
    tau: Tensor,
    offset: int = 0,
    exclude: Tensor | None = None,
) -> Tensor:
    """CLIP's symmetric loss of some rows of a batch against all of it (open_clip's ``local_loss``): ``[K]``.

    With ``ℓ_ij = û_i·v̂_j / τ`` over the global batch, rows ``i = offset … offset + b − 1`` and ``E`` the
    excluded pairs (never the diagonal),

        L_rows = ½ mean_i (−ℓ_ii + log Σ_{j ∉ E_i·} exp ℓ_ij) + ½ mean_i (−ℓ_ii + log Σ_{j ∉ E_·i} exp ℓ_ji),

    whose mean over equal shards of rows is ``clip_loss`` of the whole batch (``clip_loss_rows(u, v, u, v, τ)``
    is the full batch). The excluded logits are set to −∞ *after* the division by τ: masking the similarities
    before it would give ``∂(−∞/τ)/∂τ`` times a zero weight, ``0 · ∞`` = NaN.

    When the rows are the whole batch (``b = B``: one process), ``image_all`` and ``text_all`` are ``image`` and
    ``text``, and the text→image logits are the transpose of the image→text ones: the batch is normalised and
    multiplied once, and the second cross-entropy is taken down its columns. The logits are computed as
    ``(û / τ) v̂ᵀ``: the division then runs, forward and backward, on ``[K, b, D]`` rows rather than on the
    ``[K, b, B]`` logits (D = 32 against B = 128 in the digits study).

    Args:
        image, text: ``[K, b, D]``, the rows, paired row by row.
        image_all, text_all: ``[K, B, D]``, the whole batch (rows ``offset …`` are ``image`` and ``text``).
        tau: ``[K]``.
        offset: the global index of the first row.
        exclude: ``[K, B, B]`` bool or ``None``; ``exclude[k, i, j]``: caption j is no negative of image i (nor
            image i of caption j); the diagonal must be ``False``.
    """
    check_members("tau", tau, image, "image", member_ndim=3)
    with _no_autocast(image):
        dtype = compute_dtype(image, text, tau)
        u, v = F.normalize(image.to(dtype), dim=-1), F.normalize(text.to(dtype), dim=-1)
        scale = _broadcast(tau, u, "tau")
        if image.shape[1] == image_all.shape[1]:  # the rows are the batch: one [K, B, B] matrix serves both ways
            logits = (u / scale) @ v.transpose(1, 2)
            if exclude is not None:
                logits = logits.masked_fill(exclude, float("-inf"))
            image_to_text = -F.log_softmax(logits, dim=2).diagonal(dim1=1, dim2=2).mean(-1)
            text_to_image = -F.log_softmax(logits, dim=1).diagonal(dim1=1, dim2=2).mean(-1)
            return (image_to_text + text_to_image) / 2
        u_all, v_all = F.normalize(image_all.to(dtype), dim=-1), F.normalize(text_all.to(dtype), dim=-1)
        image_to_text, text_to_image = (u / scale) @ v_all.transpose(1, 2), (v / scale) @ u_all.transpose(1, 2)
        if exclude is not None:
            rows = slice(offset, offset + u.shape[1])
            image_to_text = image_to_text.masked_fill(exclude[:, rows], float("-inf"))
            text_to_image = text_to_image.masked_fill(exclude.transpose(1, 2)[:, rows], float("-inf"))
        losses = [
            -F.log_softmax(logits, dim=2).diagonal(offset, dim1=1, dim2=2).mean(-1)
            for logits in (image_to_text, text_to_image)
        ]
        return (losses[0] + losses[1]) / 2


def nt_xent_rows(z1: Tensor, z2: Tensor, z1_all: Tensor, z2_all: Tensor, tau: Tensor, offset: int = 0) -> Tensor:
    """NT-Xent of some rows' two views against all 2B views of the batch (``local_loss`` for SimCLR): ``[K]``.

    Each of the 2b anchors (``z1`` rows, then ``z2`` rows, global indices ``offset …``) against the other
    2B − 1 views, its twin first (``positive_first`` rows of the anchors); the mean over equal shards of rows
    is ``nt_xent`` of the whole batch.

    Args:
        z1, z2: ``[K, b, D]``, the rows' two views.
        z1_all, z2_all: ``[K, B, D]``, the whole batch's.
        tau: ``[K]``.
        offset: the global index of the first row.
    """
    check_members("tau", tau, z1, "z1", member_ndim=3)
    with _no_autocast(z1):
        dtype = compute_dtype(z1, z2, tau)
        anchors = F.normalize(torch.cat([z1, z2], dim=1).to(dtype), dim=-1)  # [K, 2b, D]
        keys = F.normalize(torch.cat([z1_all, z2_all], dim=1).to(dtype), dim=-1)  # [K, 2B, D]
        all_columns = positive_first(keys.shape[1], views=True, device=keys.device)
        columns = rows_columns(all_columns, slice(offset, offset + z1.shape[1]))  # [2b, 2B − 1], twin first
        sims = (anchors @ keys.transpose(1, 2)).gather(2, columns.expand(len(anchors), -1, -1))
        return scaled_cross_entropy(sims, 0, tau).mean(-1)


def siglip_loss(image: Tensor, text: Tensor, tau: float | Tensor, bias: float | Tensor) -> Tensor:
    """SigLIP's pairwise sigmoid loss (Zhai et al. 2023), as open_clip's ``SigLipLoss`` computes it.

    ``L = −(1/B) Σ_{i,j} log σ(z_ij (x_i·y_j / τ + b))`` on normalised rows, ``z_ii = +1``, ``z_ij = −1``
    (i ≠ j): every pair is a binary problem, so no softmax couples a row's negatives. The sum over B²
    pairs is divided by B, not B². SigLIP learns ``t' = log(1/τ)`` from ``log 10`` (τ = 0.1) and the bias
    ``b`` from −10. Unlike open_clip, the rows are normalised here (as in ``clip_loss``).

    Args:
        image, text: ``[K, B, D]`` (or ``[B, D]``), paired row by row.
        tau: ``[K]`` or a number, > 0.
        bias: ``[K]`` or a number.
    Returns: ``[K]`` (or a scalar).
    """
    check_shape("text", tuple(text.shape), f"{list(image.shape)} like image", image.shape == text.shape)
    _checked(check_positive, "tau", tau)
    check_members("tau", tau, image, "image", member_ndim=3)
    check_members("bias", bias, image, "image", member_ndim=3)
    with _no_autocast(image):
        dtype = compute_dtype(image, text, tau, bias)
        i = F.normalize(image.to(dtype), dim=-1)
        t = F.normalize(text.to(dtype), dim=-1)
        sims = i @ t.transpose(-1, -2)  # [K, B, B]
        logits = sims / _broadcast(tau, sims, "tau") + _broadcast(bias, sims, "bias")
        n = sims.shape[-1]
        signs = 2 * torch.eye(n, dtype=dtype, device=sims.device) - 1  # +1 on the diagonal, −1 elsewhere
        return -F.logsigmoid(signs * logits).sum((-2, -1)) / n


def siglip_loss_rows(
    image: Tensor,
    text_all: Tensor,
    tau: Tensor,
    bias: Tensor,
    offset: int = 0,
    exclude: Tensor | None = None,
) -> Tensor:
    """SigLIP's loss of some rows' images against every caption of the batch (open_clip's global batch): ``[K]``.

    With ``ℓ_ij = û_i·v̂_j / τ + b`` over the global batch, the rows ``i = offset … offset + b − 1``,
    ``z_ij = +1`` when ``j = i`` (the global diagonal: row i of process r is global row ``r·b + i``), ``−1``
    elsewhere, and ``E`` the excluded pairs (never the diagonal),

        L_rows = −(1/b) Σ_{i in rows} Σ_{j ∉ E_i} log σ(z_ij ℓ_ij).

    The B² pairs split by rows, so with P equal shards (B = P·b) the mean of the shards' losses is
    ``−(1/P)(1/b) Σ_{all i, j} = −(1/B) Σ_{all i, j}``: ``siglip_loss`` of the whole batch, whose divisor is
    B (``siglip_loss_rows(u, v, τ, b)`` is the full batch). Each process's images against the gathered
    captions cover every pair once, so no caption needs to meet the gathered images as well. An excluded pair
    contributes 0 and the divisor stays b, as a left-out pair of the full batch leaves B.

    Args:
        image: ``[K, b, D]``, the rows' images.
        text_all: ``[K, B, D]``, every caption of the batch (rows ``offset …`` are the rows' own).
        tau, bias: ``[K]``.
        offset: the global index of the first row.
        exclude: ``[K, B, B]`` bool or ``None``; ``exclude[k, i, j]``: the pair (image i, caption j) is left
            out of the sum; the diagonal must be ``False``.
    """
    check_members("tau", tau, image, "image", member_ndim=3)
    check_members("bias", bias, image, "image", member_ndim=3)
    with _no_autocast(image):
        dtype = compute_dtype(image, text_all, tau, bias)
        u, v = F.normalize(image.to(dtype), dim=-1), F.normalize(text_all.to(dtype), dim=-1)
        logits = u @ v.transpose(1, 2) / _broadcast(tau, u, "tau") + _broadcast(bias, u, "bias")  # [K, b, B]
        rows, columns = logits.shape[1:]
        own = torch.arange(offset, offset + rows, device=u.device)
        signs = torch.where(own[:, None] == torch.arange(columns, device=u.device), 1.0, -1.0).to(dtype)
        pairs = -F.logsigmoid(signs * logits)
        if exclude is not None:
            pairs = pairs.masked_fill(exclude[:, offset : offset + rows], 0.0)
        return pairs.sum((1, 2)) / rows


class KDLoss(NamedTuple):
    """The distillation loss and its two parts, each ``[K]`` (or a scalar)."""

    total: Tensor
    soft: Tensor  # T² · KL(p_teacher^T ‖ p_student^T) (without T² when t2_scaling is off)
    hard: Tensor  # CE(student, labels) at T = 1


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    T: float | Tensor,
    alpha: float | Tensor,
    t2_scaling: bool | Tensor = True,
) -> KDLoss:
    """Hinton et al.'s distillation loss; α weights the soft term (torchdistill's α weights the cross-entropy).

    ``total = α · T² · KL_batchmean(softmax(t/T) ‖ softmax(s/T)) + (1 − α) · CE(s, y)``

    The KL is computed from log-probabilities on both sides, so it is finite even when the
    teacher's probabilities underflow. The gradient of the soft term with respect to the student
    logits is ``T (q − p) / B`` with T² scaling (and ``(q − p) / (T B)`` without), where q and p
    are the student's and teacher's softened probabilities.

    Args:
        student_logits: ``[K, B, C]`` (or ``[B, C]``).
        teacher_logits: ``[B, C]`` shared by all members, or ``[K, B, C]``.
        labels: ``[B]`` class indices.
        T: ``[K]`` or a number, > 0.
        alpha: ``[K]`` or a number in [0, 1].
        t2_scaling: multiply the soft term by T² (a bool, or ``[K]`` bools).
    """
    _checked(check_positive, "T", T)
    _checked(check_unit_interval, "alpha", alpha)
    for name, value in (("T", T), ("alpha", alpha), ("t2_scaling", t2_scaling)):
        check_members(name, value, student_logits, "student_logits", member_ndim=3)
    with _no_autocast(student_logits):
        dtype = compute_dtype(student_logits, teacher_logits, T, alpha)
        s = student_logits.to(dtype)
        t = teacher_logits.to(dtype).expand_as(s)
        log_q = F.log_softmax(s / _broadcast(T, s, "T"), dim=-1)
        log_p = F.log_softmax(t / _broadcast(T, s, "T"), dim=-1)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean(-1)  # batchmean: sum over classes, mean over rows
        T_m, a = _broadcast(T, kl, "T"), _broadcast(alpha, kl, "alpha")
        soft = torch.where(_broadcast(t2_scaling, kl, "t2_scaling") > 0, T_m**2, 1.0) * kl
        hard = scaled_cross_entropy(s, labels, 1.0).mean(-1)
        return KDLoss(a * soft + (1 - a) * hard, soft, hard)
