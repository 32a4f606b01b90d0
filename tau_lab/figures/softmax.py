"""The softmax figure of ``tau-lab table --plot``: p_i = softmax(z / τ)_i of given logits against τ."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from tau_lab import table
from tau_lab.figures import style


def softmax_curves(logits: list[float], taus: list[float], target: int | None = None) -> Figure:
    """How τ sharpens a softmax, computed by ``table.softmax_table`` (log-sum-exp, float64): ``p_i`` of the
    logits against τ on a dense log grid spanning the given τ, which are marked; with a target, its
    cross-entropy in a second panel."""
    given = table.softmax_table(logits, taus, target)  # validates the inputs, one clear line
    low, high = min(taus), max(taus)
    low, high = (low / 10, high * 10) if low == high else (low / 1.5, high * 1.5)
    curves = table.softmax_table(logits, np.geomspace(low, high, 400).tolist(), target)
    labels = [f"p{i} (z{i} = {style.minus(z)})" + (", target" if i == target else "") for i, z in enumerate(logits)]
    colours = style.palette(labels)
    fig, axes = style.figure(6.8 + (4.4 if target is not None else 0), 4.4, ncols=2 if target is not None else 1)
    ax = axes[0, 0]
    for i, label in enumerate(labels):
        ax.plot(curves["tau"], curves[f"p{i}"], color=colours[label], lw=2.6 if i == target else 1.8, label=label)
        ax.plot(given["tau"], given[f"p{i}"], "o", color=colours[label], markeredgecolor="black", markersize=6)
    for tau in taus:
        ax.axvline(tau, color="0.6", ls=":", lw=1, zorder=0)
    ax.set_xscale("log")
    style.log_ticks(ax.xaxis)
    ax.set(xlim=(low, high), ylim=(-0.02, 1.02), xlabel="τ (log scale; dotted: the given τ)", ylabel="probability p_i")
    ax.set_title("softmax(z / τ)")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper", frameon=False)
    if target is not None:
        ce = axes[0, 1]
        ce.plot(curves["tau"], curves["cross_entropy"], color=colours[labels[target]], lw=2.2)
        ce.plot(given["tau"], given["cross_entropy"], "o", color=colours[labels[target]], markeredgecolor="black")
        ce.set_xscale("log")
        style.log_ticks(ce.xaxis)
        ce.set(xlim=(low, high), xlabel="τ (log scale)", ylabel=f"cross-entropy −log p{target} (nats)")
        ce.set_title(f"cross-entropy, target {target}")
    z = ", ".join(style.minus(v) for v in logits)
    fig.suptitle(f"softmax probabilities of the logits z = ({z}) as τ varies")
    return fig
