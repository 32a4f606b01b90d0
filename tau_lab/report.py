"""The report of a run or a search (``tau-lab report``): ``report.md`` and a self-contained ``report.html``.

Both are rendered from one list of sections, so they say the same thing. The HTML embeds its
figures as base64 data URIs and references nothing outside itself: it opens offline, attached to
a mail or copied off a cluster. Every finding is a sentence computed from the tables
(``tau_lab.analysis.findings``). User strings (the experiment's name and description, file names)
are escaped in both: a report never carries their raw HTML.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

from tau_lab import results
from tau_lab.analysis import findings as find
from tau_lab.analysis import over_seeds, summary_tables
from tau_lab.analysis.tables import grid_axes

SUMMARY_METRICS = {  # column: heading in the members table
    "tau": "final τ",
    "loss": "loss",
    **{  # plain, or in both spaces where there is a projection head: z (the loss's) and h (the probes')
        f"{metric}{space}": f"{metric}{space}"
        for metric in ("alignment", "uniformity", "tolerance")
        for space in ("", ".z", ".h")
    },
    "cross_similarity": "cross-class sim.",
    "effective_negatives": "eff. negatives",
    "grad_norm": "grad norm",
}
TOP_TRIALS = 20  # rows of a search's trials table in its report

# ("p", text) | ("ul", [text]) | ("table", DataFrame) | ("code", toml) | ("shell", command) | ("img", (path, title))
Block = tuple[str, Any]
Sections = list[tuple[str, list[Block]]]


def summary(members: pd.DataFrame) -> pd.DataFrame:
    """The members by τ mode × initial τ × the task's own grid axes that vary (caption noise, batch size, …):
    count, diverged, and each final metric as mean ± sd over seeds.

    Diverged members count but their metrics do not: their last values predate the divergence. Axes are
    never pooled: a row's sd is the seeds' spread alone.
    """
    metrics = [m for m in SUMMARY_METRICS if m in members.columns]
    axes = [a for a in grid_axes(members) if members[a].nunique() > 1]
    by = ["tau_mode", "tau_init", *axes]
    stats = over_seeds(members, by, metrics).set_index(by)
    rows = []
    for mode in find.mode_order(members):
        for key, group in members[members["tau_mode"] == mode].groupby(by[1:], sort=True):
            key = key if isinstance(key, tuple) else (key,)
            row = {"τ mode": mode, "τ₀": f"{key[0]:g}"}
            for axis, value in zip(axes, key[1:], strict=True):  # "caption_noise = 0.3" → column, "0.3"
                row[find.AXIS_WORDS.get(axis, axis)] = find.axis_text(axis, value).split(" = ")[-1]
            row |= {"members": len(group), "diverged": int((group["status"] == "diverged").sum())}
            s = stats.loc[(mode, *key)] if (mode, *key) in stats.index else None
            for m in metrics:
                if s is None or pd.isna(s[f"{m}_mean"]):
                    row[SUMMARY_METRICS[m]] = "–"
                else:
                    row[SUMMARY_METRICS[m]] = find.mean_sd(s[f"{m}_mean"], s[f"{m}_sd"], int(s["seeds"]))
            rows.append(row)
    return pd.DataFrame(rows)


def findings(members: pd.DataFrame, metrics: pd.DataFrame | None = None) -> list[str]:
    """The report's findings (``tau_lab.analysis.findings``)."""
    return find.findings(members, metrics)


def _images(figures: list[Path]) -> list[Block]:
    from tau_lab.figures import caption

    return [("img", (path, caption(path.stem))) for path in figures] or [("p", "No figures.")]


def _environment(env: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(
        [(k, " ".join(map(str, v)) if isinstance(v, list) else str(v)) for k, v in env.items() if v is not None],
        columns=["key", "value"],
    )


def _run_sections(run_dir: Path, figures: list[Path]) -> tuple[str, Sections]:
    members = results.read_table(run_dir, "members")
    metrics = results.read_table(run_dir, "metrics") if (run_dir / "metrics.parquet").is_file() else None
    config_text = (run_dir / "config.toml").read_text() if (run_dir / "config.toml").is_file() else ""
    cfg = tomllib.loads(config_text) if config_text else {}
    env = json.loads((run_dir / "env.json").read_text()) if (run_dir / "env.json").is_file() else {}
    experiment = run_dir.resolve().parent.name
    title = f"{experiment}: run {run_dir.name}"
    seeds = members["seed"].nunique()
    intro: list[Block] = [("p", cfg["description"])] if cfg.get("description") else []
    intro.append(
        (
            "p",
            f"{len(members)} members ({', '.join(find.mode_order(members))} τ; {seeds} seed{'s' * (seeds > 1)}), "
            f"{cfg.get('steps', '?')} steps of task {cfg.get('task', '?')} on {env.get('device', '?')}.",
        )
    )
    what: list[Block] = [("p", "Reproduce:"), ("shell", f"tau-lab sweep {run_dir / 'config.toml'}")]
    if config_text:
        what += [("p", "Resolved configuration (config.toml):"), ("code", config_text)]
    if env:
        what += [("p", "Environment (env.json):"), ("table", _environment(env))]
    task_tables = [
        (heading[0].upper() + heading[1:], [("table", frame.map(_cell))])
        for heading, frame in summary_tables(cfg.get("task", ""), members).items()
    ]
    sections = [
        ("", intro),
        ("Findings", [("ul", findings(members, metrics))]),
        ("Members (final metrics, mean ± sd over seeds; diverged members left out)", [("table", summary(members))]),
        *task_tables,
        ("Figures", _images(figures)),
        ("What was run", what),
    ]
    return title, sections


def _search_sections(directory: Path, figures: list[Path]) -> tuple[str, Sections]:
    """A search directory: its objective, the trials by state, the best trials, figures and a batch's config."""
    from tau_lab.figures.search import load_search

    search = load_search(directory)
    trials, done = search.trials, search.completed
    states = ", ".join(f"{n} {state.lower()}" for state, n in trials["state"].value_counts().items())
    intro: list[Block] = [
        ("p", f"Objective: {search.objective} ({search.direction}); {len(trials)} trials: {states}."),
    ]
    params = [c for c in trials.columns if c.startswith("params_")]
    if not done.empty:
        best = done.loc[done["value"].idxmin() if search.direction == "minimize" else done["value"].idxmax()]
        chosen = ", ".join(f"{c.removeprefix('params_')} = {_cell(best[c])}" for c in params)
        intro.append(
            ("p", f"Best trial {int(best['number'])}: {search.objective} = {_cell(best['value'])} with {chosen}.")
        )
    ranked = done.sort_values("value", ascending=search.direction == "minimize").head(TOP_TRIALS)
    table = ranked[["number", "value", *params]].rename(columns=lambda c: c.removeprefix("params_"))
    table = table.map(_cell) if not table.empty else table
    configs = sorted(directory.glob("*/config.toml"))
    what: list[Block] = [
        ("p", "Trials table (and trials.csv beside it):"),
        ("shell", str(directory / "trials.parquet")),
    ]
    if configs:
        what += [("p", f"Configuration of the first batch ({configs[0].parent.name}/config.toml):")]
        what += [("code", configs[0].read_text())]
    sections = [
        ("", intro),
        (f"Completed trials, best first (at most {TOP_TRIALS})", [("table", table)]),
        ("Figures", _images(figures)),
        ("What was run", what),
    ]
    return search.study, sections


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _md_text(text: str) -> str:
    """Markdown prose whose raw HTML is escaped: ``<script>`` in a description shows as text.

    Markdown reads ``<`` as HTML only before a letter, ``/``, ``!`` or ``?`` (tags, comments, declarations,
    autolinks); every other ``<``, as in "gradient norm < 1e-06", stays readable in the plain file.
    """
    return re.sub(r"<(?=[A-Za-z/!?])", "&lt;", text)


def _fence(text: str) -> str:
    """A code fence longer than any run of backticks in ``text``, which then cannot close it early."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _markdown(title: str, sections: Sections, base: Path) -> str:
    lines = [f"# {_md_text(title)}", ""]
    for heading, blocks in sections:
        if heading:
            lines += [f"## {_md_text(heading)}", ""]
        for kind, value in blocks:
            if kind == "p":
                lines += [_md_text(value), ""]
            elif kind == "ul":
                lines += [f"- {_md_text(item)}" for item in value] + [""]
            elif kind in ("code", "shell"):  # verbatim inside a fence that the text cannot close
                fence = _fence(value)
                lines += [fence + ("toml" if kind == "code" else "sh"), value.rstrip(), fence, ""]
            elif kind == "table":
                cells = [[_md_text(str(c)).replace("|", "\\|") for c in row] for row in value.itertuples(index=False)]
                lines += ["| " + " | ".join(_md_text(str(c)) for c in value.columns) + " |"]
                lines += ["|" + "---|" * len(value.columns)]
                lines += ["| " + " | ".join(row) + " |" for row in cells] + [""]
            elif kind == "img":
                path, caption = value
                # the link is percent-encoded so that a file name cannot close it or carry markup
                link = "/".join(map(quote, Path(os.path.relpath(path, base)).parts))
                text = _md_text(caption).replace("[", "\\[").replace("]", "\\]")
                lines += [f"![{text}]({link})", "", f"*{text}*", ""]
    return "\n".join(lines)


def _data_uri(path: Path) -> str | None:
    kind = {".png": "image/png", ".svg": "image/svg+xml"}.get(path.suffix.lower())
    return None if kind is None else f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


STYLE = """body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:1rem 0;font-size:.9rem}th,td{border:1px solid #ccc;padding:.25rem .5rem}
th{background:#f3f3f3}td{text-align:right;white-space:nowrap}td:first-child{text-align:left}
pre{background:#f6f6f6;padding:.75rem;overflow-x:auto}figure{margin:1.5rem 0}img{max-width:100%}
figcaption{color:#555;font-style:italic}"""


def _html(title: str, sections: Sections) -> str:
    out = [f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"]
    out += [f"<style>{STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    for heading, blocks in sections:
        if heading:
            out.append(f"<h2>{html.escape(heading)}</h2>")
        for kind, value in blocks:
            if kind == "p":
                out.append(f"<p>{html.escape(value)}</p>")
            elif kind == "ul":
                out.append("<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in value) + "</ul>")
            elif kind in ("code", "shell"):
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
    """Write ``report.md`` and a self-contained ``report.html`` into a run or search directory; return both.

    With ``figures`` None, the directory's figures are drawn first (PNG, into ``run_dir/figures``).
    """
    from tau_lab import figures as drawing
    from tau_lab.figures.search import is_search_dir

    run_dir = Path(run_dir)
    searching = is_search_dir(run_dir)
    if not searching:
        results.read_table(run_dir, "members")  # one clear line if this is not a run directory
    if figures is None:
        figures = drawing.plot_run([run_dir])
    paths = [Path(f) for f in figures]
    title, sections = _search_sections(run_dir, paths) if searching else _run_sections(run_dir, paths)
    md_path, html_path = run_dir / "report.md", run_dir / "report.html"
    results.write_text(md_path, _markdown(title, sections, run_dir))
    results.write_text(html_path, _html(title, sections))
    return md_path, html_path
