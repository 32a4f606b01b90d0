"""The report of a run (``tau-lab report``): ``report.md`` and a self-contained ``report.html``.

Both are rendered from one list of sections, so they say the same thing. The HTML embeds its
figures as base64 data URIs and references nothing outside itself: it opens offline, attached to
a mail or copied off a cluster. Every finding is a sentence computed from the members table.
"""

from __future__ import annotations

import base64
import html
import json
import os
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from tau_lab import plots, results
from tau_lab.tasks import distill
from tau_lab.temperature import MODES

SUMMARY_METRICS = {  # column: heading in the members table
    "tau": "final τ",
    "loss": "loss",
    "alignment": "alignment",
    "uniformity": "uniformity",
    "tolerance": "tolerance",
    "cross_similarity": "cross-class sim.",
    "effective_negatives": "eff. negatives",
    "grad_norm": "grad norm",
}
DISTILL_COLUMNS = {"accuracy", "alpha", "t2_scaling", "labeled_fraction", "kl_teacher", "ece", "tau"}
VANISHED = 1e-6  # a final gradient norm below this means the member has stopped learning
FIGURE_CAPTIONS = {
    "training_curves": "Training curves: loss, gradient norm and τ over steps.",
    "final_metrics": "Final metrics against τ (learnable and scheduled members at their final τ).",
    "planes": "The alignment–uniformity and uniformity–tolerance planes, one point per member.",
    "quadrants": "The embedded points before and after training, as seed 001 draws them.",
    "distill_accuracy": "Student test accuracy over T × α (fixed T, mean over seeds), a panel per T² setting and "
    "labelled fraction; the best cell of each panel outlined.",
    "distill_gradients": "The soft term's gradient norm at initialisation against T (log–log), a line per T² "
    "setting, with the slopes fitted per seed.",
    "clip_zero_shot": "Zero-shot accuracy against τ: a single prompt against the prompt ensemble.",
    "clip_logit_scale": "The learnable logit_scale over steps, with its clamp (ln 100 for τ_min = 0.01).",
}

Block = tuple[
    str, Any
]  # ("p", text) | ("ul", [text]) | ("table", DataFrame) | ("code", text) | ("img", (path, caption))


def number(x: float) -> str:
    """Three decimals in the usual range, scientific notation outside it."""
    return f"{x:.3f}" if x == 0 or 1e-3 <= abs(x) < 1e4 else f"{x:.2e}"


def _mean_sd(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return "–"
    if len(values) == 1:
        return number(values.iloc[0])
    return f"{number(values.mean())} ± {number(values.std())}"


def _mode_order(members: pd.DataFrame) -> list[str]:
    present = list(dict.fromkeys(members["tau_mode"]))
    return [m for m in MODES if m in present] + [m for m in present if m not in MODES]


def _where(mode: str, tau_init: float, final_tau: float | None) -> str:
    """Where a member sits on the τ axis: ``τ = 0.05 (fixed)`` or ``τ = 0.5 → 0.377 (learnable)``."""
    if mode == "fixed" or final_tau is None or pd.isna(final_tau):
        return f"τ = {tau_init:g} ({mode})"
    return f"τ = {tau_init:g} → {final_tau:.3g} ({mode})"


def summary(members: pd.DataFrame) -> pd.DataFrame:
    """The members by τ mode × initial τ: count, diverged, and each final metric as mean ± sd over seeds.

    Diverged members count but their metrics do not: their last values predate the divergence.
    """
    metrics = [m for m in SUMMARY_METRICS if m in members.columns]
    rows = []
    for mode in _mode_order(members):
        for tau_init, group in members[members["tau_mode"] == mode].groupby("tau_init", sort=True):
            ok = group[group["status"] == "ok"]
            row = {"τ mode": mode, "τ₀": f"{tau_init:g}", "members": len(group)}
            row["diverged"] = int((group["status"] == "diverged").sum())
            rows.append(row | {SUMMARY_METRICS[m]: _mean_sd(ok[m]) for m in metrics})
    return pd.DataFrame(rows)


def _by_tau(ok: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean and sd of ``metric`` (and of the final τ, when recorded) per τ mode and initial τ."""
    columns = [metric] + (["tau"] if "tau" in ok.columns and metric != "tau" else [])
    agg = ok.groupby(["tau_mode", "tau_init"])[columns].agg(["mean", "std", "count"])
    agg.columns = [f"{c}_{s}" for c, s in agg.columns]
    return agg.reset_index()


def _at(row: pd.Series) -> str:
    return _where(row["tau_mode"], row["tau_init"], row.get("tau_mean"))


def _value(row: pd.Series, metric: str, fmt: Callable[[float], str] = number) -> str:
    mean, sd, count = row[f"{metric}_mean"], row[f"{metric}_std"], row[f"{metric}_count"]
    return fmt(mean) if count < 2 else f"{fmt(mean)} ± {fmt(sd)}"


def _trend(ok: pd.DataFrame, metric: str, name: str) -> str | None:
    """How ``metric`` moves from the largest to the smallest τ of one mode (fixed if swept)."""
    table = _by_tau(ok, metric)
    modes = [m for m in _mode_order(ok) if (table["tau_mode"] == m).sum() >= 2]
    if not modes:
        return None
    part = table[table["tau_mode"] == modes[0]].sort_values("tau_init")
    high, low = part.iloc[-1], part.iloc[0]
    a, b = number(high[f"{metric}_mean"]), number(low[f"{metric}_mean"])
    verb = "stays at" if a == b else ("rises" if low[f"{metric}_mean"] > high[f"{metric}_mean"] else "falls")
    if verb == "stays at":
        return f"{name} stays at {a} from τ = {high['tau_init']:g} to τ = {low['tau_init']:g} ({modes[0]})."
    return f"{name} {verb} from {a} at τ = {high['tau_init']:g} to {b} at τ = {low['tau_init']:g} ({modes[0]})."


def _best(ok: pd.DataFrame, metric: str, what: str) -> str:
    """The setting with the lowest mean ``metric``, and how many others lie within one sd of it."""
    table = _by_tau(ok, metric).sort_values(f"{metric}_mean", kind="stable")
    best = table.iloc[0]
    sentence = f"{what} {_value(best, metric)} at {_at(best)}"
    if best[f"{metric}_count"] > 1:
        close = int((table[f"{metric}_mean"].iloc[1:] <= best[f"{metric}_mean"] + best[f"{metric}_std"]).sum())
        sentence += f"; {close} of the other {len(table) - 1} settings lie within one sd of it"
    return sentence + "."


def _best_students(members: pd.DataFrame) -> list[str]:
    """Per labelled fraction, the distillation setting with the best mean accuracy (``distill.best_students``)."""
    out = []
    for _, row in distill.best_students(members, top=1).iterrows():
        accuracy = number(row["accuracy_mean"]) + (
            "" if pd.isna(row["accuracy_sd"]) else f" ± {number(row['accuracy_sd'])}"
        )
        where = _where(row["tau_mode"], row["tau_init"], row["tau_mean"]).replace("τ", "T", 1)
        t2 = "with" if row["t2_scaling"] else "without"
        out.append(
            f"Best student at labelled fraction {row['labeled_fraction']:g}: accuracy {accuracy} "
            f"(over {row['seeds']} seed{'s' * (row['seeds'] > 1)}) at {where}, α = {row['alpha']:g}, {t2} T²."
        )
    return out


def _gradient_slopes(members: pd.DataFrame) -> list[str]:
    """The log–log slope of the soft gradient at init against T, per T² setting (``distill.loglog_slopes``)."""
    fixed = members[members["tau_mode"] == "fixed"]
    if fixed["tau_init"].nunique() < 2:
        return []
    min_T = plots.slope_min_T(fixed["tau_init"])
    table = distill.loglog_slopes(members, "grad_soft_params_init", min_T).sort_values("t2_scaling")
    parts = [
        f"{r['slope_mean']:+.2f}".replace("-", "−")
        + ("" if pd.isna(r["slope_sd"]) else f" ± {r['slope_sd']:.2f}")
        + f" {'with' if r['t2_scaling'] else 'without'} T²"
        for _, r in table.iterrows()
    ]
    if not parts:
        return []
    return [
        f"Log–log slope of the soft term's gradient at initialisation against T (T ≥ {min_T:g}, fitted per seed, "
        f"mean ± sd): {'; '.join(parts)}; theory for large T: −2 without T², 0 with it."
    ]


def findings(members: pd.DataFrame) -> list[str]:
    """Short findings, each computed from the members table (diverged members are left out of the metrics)."""
    out = []
    total, bad = len(members), members[members["status"] != "ok"]
    if bad.empty:
        out.append(f"None of the {total} members diverged.")
    else:
        where = [
            f"{_where(r.tau_mode, r.tau_init, None)} seed {r.seed} at step {r.diverged_step}"
            for r in bad.itertuples(index=False)
        ]
        out.append(f"{len(bad)} of {total} members diverged: {'; '.join(where)}. Their metrics are left out.")
    ok = members[members["status"] == "ok"]
    if ok.empty:
        return out
    for metric, what in [
        ("uniformity", "Lowest (best) uniformity"),
        ("alignment", "Closest positives (lowest alignment)"),
    ]:
        if metric in ok.columns:
            out.append(_best(ok, metric, what))
    for metric, name in [
        ("tolerance", "Same-class similarity (tolerance)"),
        ("cross_similarity", "Cross-class similarity"),
    ]:
        if metric in ok.columns and (sentence := _trend(ok, metric, name)):
            out.append(sentence)
    learnable = ok[ok["tau_mode"] == "learnable"]
    if not learnable.empty and "tau" in ok.columns:
        table = _by_tau(learnable, "tau").sort_values("tau_init", ascending=False)
        moves = [f"{r['tau_init']:g} → {_value(r, 'tau', lambda x: f'{x:.3g}')}" for _, r in table.iterrows()]
        rose = int((table["tau_mean"] > table["tau_init"]).sum())
        out.append(f"Learnable τ, start → end: {', '.join(moves)}; it rose from {rose} of {len(table)} starts.")
    if set(ok.columns) >= DISTILL_COLUMNS:
        out += _best_students(members)
    if {"grad_soft_params_init", "t2_scaling"} <= set(ok.columns):
        out += _gradient_slopes(members)
    if "grad_norm" in ok.columns:
        still = ok[ok["grad_norm"] < VANISHED]
        if not still.empty:
            counts = (
                ok.assign(still=ok["grad_norm"] < VANISHED)
                .groupby(["tau_mode", "tau_init"])["still"]
                .agg(["sum", "count"])
            )
            where = [
                f"{mode} τ = {tau_init:g} ({n} of {m})"
                for mode in _mode_order(still)
                for (row_mode, tau_init), (n, m) in counts.sort_index(ascending=[True, False]).iterrows()
                if row_mode == mode and n > 0
            ]
            out.append(
                f"Gradients vanished (final gradient norm < {VANISHED:g}) for {len(still)} of {len(ok)} finished "
                f"members: {'; '.join(where)}."
            )
    return out


def _sections(run_dir: Path, figures: list[Path]) -> tuple[str, list[tuple[str, list[Block]]]]:
    members = results.read_table(run_dir, "members")
    config_text = (run_dir / "config.toml").read_text() if (run_dir / "config.toml").is_file() else ""
    cfg = tomllib.loads(config_text) if config_text else {}
    env = json.loads((run_dir / "env.json").read_text()) if (run_dir / "env.json").is_file() else {}
    experiment = run_dir.resolve().parent.name
    title = f"{experiment}: run {run_dir.name}"
    seeds = members["seed"].nunique()
    intro = [("p", cfg.get("description", ""))] if cfg.get("description") else []
    intro.append(
        (
            "p",
            f"{len(members)} members ({', '.join(_mode_order(members))} τ; {seeds} seed{'s' * (seeds > 1)}), "
            f"{cfg.get('steps', '?')} steps of task {cfg.get('task', '?')} on {env.get('device', '?')}.",
        )
    )
    env_rows = pd.DataFrame(
        [(k, " ".join(map(str, v)) if isinstance(v, list) else str(v)) for k, v in env.items() if v is not None],
        columns=["key", "value"],
    )
    images: list[Block] = []
    for path in figures:
        caption = next((c for k, c in FIGURE_CAPTIONS.items() if path.stem.startswith(k)), path.stem)
        images.append(("img", (path, caption)))
    what = [("p", f"Reproduce: `tau-lab sweep {run_dir / 'config.toml'}`")]
    if config_text:
        what += [("p", "Resolved configuration (config.toml):"), ("code", config_text)]
    if not env_rows.empty:
        what += [("p", "Environment (env.json):"), ("table", env_rows)]
    sections = [
        ("", intro),
        ("Findings", [("ul", findings(members))]),
        ("Members (final metrics, mean ± sd over seeds; diverged members left out)", [("table", summary(members))]),
        ("Figures", images or [("p", "No figures.")]),
        ("What was run", what),
    ]
    return title, sections


def _markdown(title: str, sections: list[tuple[str, list[Block]]], base: Path) -> str:
    lines = [f"# {title}", ""]
    for heading, blocks in sections:
        if heading:
            lines += [f"## {heading}", ""]
        for kind, value in blocks:
            if kind == "p":
                lines += [value, ""]
            elif kind == "ul":
                lines += [f"- {item}" for item in value] + [""]
            elif kind == "code":
                lines += ["```toml", value.rstrip(), "```", ""]
            elif kind == "table":
                cells = [[str(c).replace("|", "\\|") for c in row] for row in value.itertuples(index=False)]
                lines += ["| " + " | ".join(value.columns) + " |", "|" + "---|" * len(value.columns)]
                lines += ["| " + " | ".join(row) + " |" for row in cells] + [""]
            elif kind == "img":
                path, caption = value
                lines += [f"![{caption}]({os.path.relpath(path, base)})", "", f"*{caption}*", ""]
    return "\n".join(lines)


def _data_uri(path: Path) -> str | None:
    kind = {".png": "image/png", ".svg": "image/svg+xml"}.get(path.suffix.lower())
    return None if kind is None else f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _inline(text: str) -> str:
    """Escape, then turn `code` spans into <code>: the only markdown the sections use."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


STYLE = """body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:1rem 0;font-size:.9rem}th,td{border:1px solid #ccc;padding:.25rem .5rem}
th{background:#f3f3f3}td{text-align:right;white-space:nowrap}td:first-child{text-align:left}
pre{background:#f6f6f6;padding:.75rem;overflow-x:auto}figure{margin:1.5rem 0}img{max-width:100%}
figcaption{color:#555;font-style:italic}"""


def _html(title: str, sections: list[tuple[str, list[Block]]]) -> str:
    out = [f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"]
    out += [f"<style>{STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    for heading, blocks in sections:
        if heading:
            out.append(f"<h2>{html.escape(heading)}</h2>")
        for kind, value in blocks:
            if kind == "p":
                out.append(f"<p>{_inline(value)}</p>")
            elif kind == "ul":
                out.append("<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in value) + "</ul>")
            elif kind == "code":
                out.append(f"<pre><code>{html.escape(value)}</code></pre>")
            elif kind == "table":
                head = "".join(f"<th>{html.escape(str(c))}</th>" for c in value.columns)
                body = "".join(
                    "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                    for row in value.itertuples(index=False)
                )
                out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            elif kind == "img":
                path, caption = value
                uri = _data_uri(path)
                if uri is None:  # a PDF cannot be shown inline; name it instead
                    out.append(f"<p>{html.escape(caption)} ({html.escape(path.name)})</p>")
                else:
                    alt = html.escape(caption)
                    out.append(f"<figure><img src='{uri}' alt='{alt}'><figcaption>{alt}</figcaption></figure>")
    out.append("</body></html>\n")
    return "\n".join(out)


def write_report(run_dir: Path, figures: list[Path] | None = None) -> tuple[Path, Path]:
    """Write ``report.md`` and a self-contained ``report.html`` into ``run_dir``; return both paths.

    With ``figures`` None, the run's figures are drawn first (PNG, into ``run_dir/figures``).
    """
    run_dir = Path(run_dir)
    results.read_table(run_dir, "members")  # one clear line if this is not a run directory
    if figures is None:
        figures = plots.plot_run([run_dir])
    title, sections = _sections(run_dir, [Path(f) for f in figures])
    md_path, html_path = run_dir / "report.md", run_dir / "report.html"
    results.write_text(md_path, _markdown(title, sections, run_dir))
    results.write_text(html_path, _html(title, sections))
    return md_path, html_path
