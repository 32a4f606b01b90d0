"""SigLIP against CLIP in one ``clip`` study (the grid axis ``objective``): members of one seed share their
towers' initial weights and their batches whatever their loss, so the two are compared seed by seed."""

from __future__ import annotations

import pandas as pd

from tau_lab.analysis.tables import finished, grid_axes, over_seeds, paired_difference

METRICS = ("zero_shot_ensemble", "zero_shot_single", "recall_i2t")  # the clip task's headline metrics


def _settings(members: pd.DataFrame) -> list[str]:
    """The columns a comparison is made within: τ's mode and start, and the grid axes that vary but
    ``objective``."""
    axes = [a for a in grid_axes(members) if a != "objective" and members[a].nunique() > 1]
    return ["tau_mode", "tau_init", *axes]


def siglip_minus_clip(members: pd.DataFrame, metric: str, level: float = 0.95) -> pd.DataFrame:
    """Per setting (τ mode and start, batch size, …): the mean ``metric`` of CLIP and of SigLIP over seeds, and
    SigLIP − CLIP paired by seed with its ``level`` t-interval (``tables.paired_difference``)."""
    return paired_difference(members, "objective", "siglip", "clip", _settings(members), metric, level)


def learned(members: pd.DataFrame) -> pd.DataFrame:
    """Where learnable members end: the final ``tau`` and ``logit_bias`` (SigLIP's; NaN for CLIP), mean and sd
    over seeds, per loss and setting."""
    ok = finished(members)
    ok = ok[ok["tau_mode"] == "learnable"]
    columns = ["tau", "logit_bias"] if "logit_bias" in ok.columns else ["tau"]
    return over_seeds(ok, ["objective", *_settings(members)[1:]], columns)


def summary_tables(members: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The comparison tables of a study with both losses (``{}`` otherwise), by title."""
    if "objective" not in members.columns or set(members["objective"]) != {"clip", "siglip"}:
        return {}
    out = {
        f"SigLIP − CLIP, {metric}, paired by seed": siglip_minus_clip(members, metric)
        for metric in METRICS
        if metric in members.columns
    }
    if (members["tau_mode"] == "learnable").any():
        out["learned τ and bias at the end (learnable members)"] = learned(members)
    return out
