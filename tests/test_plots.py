"""Figures of a run directory: each kind is written, is a valid image of its size, in every format."""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from PIL import Image
from typer.testing import CliRunner

from tau_lab import config, engine, figures, report, results, search
from tau_lab.analysis import distill
from tau_lab.cli import app
from tau_lab.errors import UserError
from tau_lab.figures import clip, curves, softmax, style, vs_tau
from tau_lab.figures import distill as distill_figures
from tau_lab.figures import search as search_figures
from tau_lab.figures.runs import load_runs

KINDS = ["training_curves", "final_metrics", "planes", "quadrants"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real quadrants sweep: fixed, learnable and cosine τ, two seeds."""
    exp, _ = config.load_experiment(
        "quadrants",
        [
            "steps=60",
            "log_every=10",
            "eval_every=30",
            "sweep.seeds=[0, 1]",
            "sweep.tau_mode=['fixed', 'learnable', 'cosine']",
        ],
    )
    path, _ = engine.run_sweep(exp, "quadrants", root=tmp_path_factory.mktemp("results"))
    return path


def hand_made_run(root: Path) -> Path:
    """A run directory written by hand: members and metrics only (no config, no embeddings), one member diverged."""
    run_dir = root / "handmade" / "run-1"
    rng = np.random.default_rng(0)
    rows = []
    for seed in (0, 1):
        for mode in ("fixed", "learnable"):
            for tau in (0.5, 0.1, 0.01):
                rows.append({"member": len(rows), "tau_mode": mode, "tau_init": tau, "seed": seed})
    members = pd.DataFrame(rows)
    members["status"] = "ok"
    members.loc[0, "status"] = "diverged"
    members["diverged_step"] = pd.array([20] + [None] * (len(rows) - 1), dtype="Int64")
    members["tau"] = members["tau_init"] * np.where(members["tau_mode"] == "learnable", 1.3, 1.0)
    members["loss"] = 1 + rng.random(len(rows))
    members["grad_norm"] = np.where(members["tau_init"] == 0.01, 0.0, 1.0)
    members["uniformity"] = -2 - members["tau_init"] + 0.01 * rng.random(len(rows))
    members["tolerance"] = 0.9 - members["tau_init"] / 10 + 0.01 * rng.random(len(rows))
    members["alignment"] = 0.2 + members["tau_init"] / 5
    steps = np.arange(0, 50, 10)
    metrics = pd.DataFrame(
        [
            {"member": m, "step": s, "metric": name, "value": value}
            for m in members["member"]
            for s in steps
            for name, value in [("loss", 2.0 / (1 + s)), ("grad_norm", 10.0 ** (-s / 10)), ("tau", 0.1)]
        ]
    )
    results.write_table(members, run_dir / "members", csv=True)
    results.write_table(metrics, run_dir / "metrics")
    return run_dir


def members_only_run(root: Path) -> Path:
    """The hand-made run without its metrics table and with uniformity as its only representation metric."""
    run_dir = hand_made_run(root)
    (run_dir / "metrics.parquet").unlink()
    members = results.read_table(run_dir, "members").drop(columns=["alignment", "tolerance"])
    results.write_table(members, run_dir / "members")
    return run_dir


@pytest.fixture(scope="module")
def drawn_figures(run_dir: Path) -> list[Path]:
    return figures.plot_run([run_dir])


def test_every_figure_kind_is_a_png_of_its_size(run_dir: Path, drawn_figures: list[Path]) -> None:
    assert [p.name for p in drawn_figures] == [f"{k}.png" for k in KINDS]
    assert all(p.parent == run_dir / "figures" for p in drawn_figures)
    for path in drawn_figures:
        with Image.open(path) as image:
            image.verify()  # a whole, valid PNG
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.info["dpi"] == pytest.approx((figures.DPI, figures.DPI), abs=0.1)  # stored as dots per metre
            width, height = image.size
        assert matplotlib.image.imread(path).shape[:2] == (height, width)
        assert width <= 14 * figures.DPI and height <= 8 * figures.DPI, path.name  # modest sizes
    # the pixels are the figure's size in inches × dpi (the layout is constrained, not cropped)
    runs = load_runs([run_dir])
    with style.theme():
        inches = vs_tau.planes(runs).get_size_inches()
    with Image.open(drawn_figures[2]) as image:
        assert image.size == tuple(round(x * figures.DPI) for x in inches)


def test_hand_made_table_skips_absent_inputs(tmp_path: Path) -> None:
    # no embeddings and no config: no quadrants figure; the diverged member is left out of the final metrics
    written = figures.plot_run([hand_made_run(tmp_path)])
    assert [p.name for p in written] == ["training_curves.png", "final_metrics.png", "planes.png"]
    for path in written:
        assert matplotlib.image.imread(path).ndim == 3


def test_members_table_alone(tmp_path: Path) -> None:
    run_dir = members_only_run(tmp_path)
    # only uniformity remains: one final-metrics panel, no curves, no plane has both of its axes
    assert [p.name for p in figures.plot_run([run_dir])] == ["final_metrics.png"]
    for fmt, magic in [("svg", b"<?xml"), ("pdf", b"%PDF")]:
        written = figures.plot_run([run_dir], out=tmp_path / fmt, fmt=fmt)
        assert [p.name for p in written] == [f"final_metrics.{fmt}"]
        assert written[0].read_bytes().startswith(magic)


def test_runs_compared(run_dir: Path, tmp_path: Path) -> None:
    other = members_only_run(tmp_path)
    written = figures.plot_run([run_dir, other], out=tmp_path / "compare")
    # one set of figures for both; one quadrants figure for the run that has embeddings
    assert [p.name for p in written] == [
        "training_curves.png",
        "final_metrics.png",
        "planes.png",
        f"quadrants-{run_dir.name}.png",
    ]
    assert all(path.parent == tmp_path / "compare" for path in written)
    runs = load_runs([run_dir, other])
    assert set(runs.members["run"]) == {run_dir.name, "run-1"}
    assert set(runs.members["series"]) == {f"{run_dir.name}: {m}" for m in ("fixed", "learnable", "cosine")} | {
        "run-1: fixed",
        "run-1: learnable",
    }


def test_bad_format_and_not_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="format = 'jpg'"):
        figures.plot_run([tmp_path], fmt="jpg")
    missing = tmp_path / "not-a-run"
    missing.mkdir()
    with pytest.raises(UserError, match="not-a-run is not a tau-lab run directory") as err:
        figures.plot_run([missing])
    assert "\n" not in str(err.value)
    assert not (missing / "figures").exists()


# ------------------------------------------------------------------ distillation, CLIP, searches, table --plot

SMALL_TEACHER = ["model.teacher.hidden=[16]", "model.teacher.steps=30", "model.teacher.lr=1e-2"]


def check_png(path: Path, fig: Figure | None = None) -> tuple[int, int]:
    """A whole, valid PNG at the package's dpi; of ``fig``'s size in inches × dpi when given."""
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        size = image.size
    assert matplotlib.image.imread(path).shape[:2] == size[::-1]
    assert size[0] <= 14 * figures.DPI and size[1] <= 9 * figures.DPI, path.name
    if fig is not None:
        assert size == tuple(round(x * figures.DPI) for x in fig.get_size_inches()), path.name
    return size


def drawn(draw: Callable[..., Figure | None], *args: Any) -> Figure | None:
    """``draw(*args)`` in the figures' theme, as ``plot_run`` draws it."""
    with style.theme():
        return draw(*args)


@pytest.fixture(scope="module")
def distill_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real digits_kd sweep (a tiny cached teacher): T × α × T² × labelled fraction, two seeds, 4 steps."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TAU_LAB_CACHE", str(tmp_path_factory.mktemp("teachers")))
        exp, _ = config.load_experiment(
            "digits_kd",
            [
                *SMALL_TEACHER,
                'device="cpu"',
                "data.batch_size=32",
                "steps=4",
                "log_every=2",
                "eval_every=4",
                "sweep.tau=[1.0, 4.0, 16.0]",
                "sweep.tau_mode=['fixed']",
                "sweep.alpha=[0.0, 0.9]",
                "sweep.labeled_fraction=[0.05, 1.0]",
                "sweep.seeds=[0, 1]",
            ],
        )
        path, _ = engine.run_sweep(exp, "digits_kd", root=tmp_path_factory.mktemp("results"))
    return path


def test_distillation_figures_from_a_real_run(distill_run: Path) -> None:
    written = figures.plot_run([distill_run])
    assert [p.name for p in written] == ["training_curves.png", "distill_accuracy.png", "distill_gradients.png"]
    runs = load_runs([distill_run])
    heatmap, gradients = drawn(distill_figures.distill_accuracy, runs), drawn(distill_figures.distill_gradients, runs)
    check_png(written[1], heatmap)
    check_png(written[2], gradients)
    # a panel per (fraction, T²), each annotated with the mean accuracy of its 2 α × 3 T cells
    panels = [ax for ax in heatmap.axes if ax.get_title()]
    assert len(panels) == 4
    assert all(len(ax.texts) == 6 for ax in panels)
    # the slopes written on the lines are distill.loglog_slopes's, over T ≥ 4
    slopes = distill.loglog_slopes(runs.members, "grad_soft_params_init", 4.0)
    texts = {t.get_text() for t in gradients.axes[0].texts}
    for _, row in slopes.iterrows():
        assert f"{row['slope_mean']:+.2f} ± {row['slope_sd']:.2f}".replace("-", "−") in " ".join(texts)


def hand_made_distill(root: Path) -> Path:
    """A distillation members table written by hand: 2 fractions × 2 T² × 2 α × 3 T × 3 seeds, known accuracies."""
    rng = np.random.default_rng(1)
    rows = []
    for f in (0.1, 1.0):
        for t2 in (True, False):
            for alpha in (0.5, 0.9):
                for T in (1.0, 4.0, 16.0):
                    for seed in (0, 1, 2):
                        slope = 0.0 if t2 else -2.0
                        rows.append(
                            {"member": len(rows), "tau_mode": "fixed", "tau_init": T, "tau": T, "seed": seed}
                            | {"alpha": alpha, "t2_scaling": t2, "labeled_fraction": f, "status": "ok"}
                            | {"accuracy": 0.8 + 0.1 * f + 0.05 * alpha * t2 - 0.002 * T + 0.01 * rng.random()}
                            | {"kl_teacher": rng.random(), "ece": rng.random()}
                            | {"val_accuracy": 0.79 + 0.1 * f + 0.05 * alpha * t2 - 0.001 * T * seed}
                            | {"grad_soft_params_init": (1 + seed / 10) * T**slope * np.exp(0.05 * rng.normal())}
                            | {"grad_soft_logits_init": T**slope}
                        )
    run_dir = root / "kd_handmade" / "run-1"
    results.write_table(pd.DataFrame(rows), run_dir / "members")
    return run_dir


def test_distillation_findings_match_an_independent_computation(tmp_path: Path) -> None:
    run_dir = hand_made_distill(tmp_path)
    members = results.read_table(run_dir, "members")
    found = report.findings(members)
    for f, part in members.groupby("labeled_fraction"):
        # chosen on validation, reported on test
        val = part.groupby(["alpha", "t2_scaling", "tau_init"])["val_accuracy"].agg(["mean", "std"])
        (alpha, t2, T), chosen = val["mean"].idxmax(), val.loc[val["mean"].idxmax()]
        test = part.groupby(["alpha", "t2_scaling", "tau_init"])["accuracy"].agg(["mean", "std"]).loc[(alpha, t2, T)]
        head = f"Best student at labelled fraction {f:g}, chosen on validation accuracy ({chosen['mean']:.3f} ± "
        sentence = (
            f"test accuracy {test['mean']:.3f} ± {test['std']:.3f} (over 3 seeds) "
            f"at T = {T:g} (fixed), α = {alpha:g}, {'with' if t2 else 'without'} T²."
        )
        assert any(s.startswith(head) and sentence in s for s in found), sentence
    slopes = {}
    for t2, part in members[members["tau_init"] >= 4].groupby("t2_scaling"):
        per_seed = [
            np.polyfit(np.log(g["tau_init"]), np.log(g["grad_soft_params_init"]), 1)[0] for _, g in part.groupby("seed")
        ]
        slopes[t2] = f"{np.mean(per_seed):+.2f} ± {np.std(per_seed, ddof=1):.2f}".replace("-", "−")
    (sentence,) = [s for s in found if s.startswith("Log–log slope")]
    assert f"{slopes[False]} without T²; {slopes[True]} with T²" in sentence
    assert abs(float(slopes[False].split()[0].replace("−", "-")) + 2) < 0.2
    # and the figures of the hand-made table, whose members table is all there is
    written = figures.plot_run([run_dir])
    assert [p.name for p in written] == ["distill_accuracy.png", "distill_gradients.png"]
    runs = load_runs([run_dir])
    check_png(written[0], drawn(distill_figures.distill_accuracy, runs))
    md, _ = report.write_report(run_dir, written)
    assert figures.caption("distill_accuracy") in md.read_text()
    # recorded as a distillation run, the report carries the task's own tables (analysis.summary_tables)
    (run_dir / "config.toml").write_text('task = "distill"\n')
    text = report.write_report(run_dir, written)[0].read_text()
    best = distill.best_students(members)
    assert "## Best students by validation accuracy (test accuracy at T = 1, mean and sd over seeds)" in text
    assert f"| {best['accuracy_mean'].iloc[0]:.4g} |" in text
    assert "## Log-log slope of the soft gradient against T (T ≥ 4)" in text


def test_clip_figures_from_a_real_run(tmp_path: Path) -> None:
    exp, _ = config.load_experiment(
        "digits_clip",
        [
            "steps=4",
            "log_every=2",
            "eval_every=4",
            "data.batch_size=32",
            "model.hidden=16",
            "model.width=8",
            "model.embed_dim=4",
            "sweep.tau=[0.01, 0.3]",
            "sweep.caption_noise=[0.0, 0.3]",
            "sweep.seeds=[0, 1]",
        ],
    )
    run_dir, _ = engine.run_sweep(exp, "digits_clip", root=tmp_path)
    written = {p.stem: p for p in figures.plot_run([run_dir])}
    assert {"clip_zero_shot", "clip_logit_scale"} <= set(written)
    runs = load_runs([run_dir])
    zero_shot, scale = drawn(clip.clip_zero_shot, runs), drawn(clip.clip_logit_scale, runs)
    check_png(written["clip_zero_shot"], zero_shot)
    check_png(written["clip_logit_scale"], scale)
    assert [ax.get_title() for ax in zero_shot.axes] == ["all captions correct", "30% of the captions wrong"]
    # the clamp at ln(1/τ_min) = ln 100 is drawn on the logit_scale axis
    ax = scale.axes[0]
    assert any(np.allclose(line.get_ydata(), np.log(100)) for line in ax.lines)
    assert any("ln 100" in t.get_text() for t in ax.texts)
    # the geometry in both spaces: the joint space z, and the image tower's h (no alignment: no shared space)
    planes, final = drawn(vs_tau.planes, runs), drawn(vs_tau.final_metrics, runs)
    assert [ax.get_title() for ax in planes.axes if ax.get_visible() and ax.get_title()] == [
        "alignment–uniformity (Wang & Isola) of z",
        "uniformity–tolerance (Wang & Liu) of z",
        "uniformity–tolerance (Wang & Liu) of h",
    ]
    assert [ax.get_ylabel() for ax in final.axes if ax.get_visible() and ax.get_ylabel()] == [
        "uniformity of z",
        "uniformity of h",
        "tolerance of z",
        "tolerance of h",
        "alignment of z",
    ]
    for kind in ("planes", "final_metrics"):
        check_png(written[kind], planes if kind == "planes" else final)


def test_clip_figures_are_skipped_without_their_metrics(tmp_path: Path) -> None:
    runs = load_runs([hand_made_run(tmp_path)])  # logs no logit_scale and has no zero-shot columns
    assert clip.clip_zero_shot(runs) is None and clip.clip_logit_scale(runs) is None
    assert distill_figures.distill_accuracy(runs) is None and distill_figures.distill_gradients(runs) is None


def test_search_directory_figures(tmp_path: Path) -> None:
    spec = search.load(
        "quadrants_search",
        ["steps=10", "log_every=5", "eval_every=5"],
        n_trials=6,
        batch_size=3,
        seed=0,
        pruner=search.PrunerName.none,
        root=tmp_path,
    )
    search.run(spec)
    written = figures.plot_run([spec.directory])
    assert [p.name for p in written] == ["search_history.png", "search_importance.png", "search_space.png"]
    assert all(p.parent == spec.directory / "figures" for p in written)
    found = search_figures.load_search(spec.directory)
    assert (found.objective, found.direction) == ("cross_similarity", "minimize")
    importance = drawn(search_figures.search_importance, found)
    assert "Optuna" in importance.axes[0].get_title()
    draws = [search_figures.search_history, search_figures.search_importance, search_figures.search_space]
    for path, draw in zip(written, draws, strict=True):
        check_png(path, drawn(draw, found))
    # without its storage, the importances come from the trials table, and the title says so
    (spec.directory / "journal.log").unlink()
    assert "η² from trials.parquet" in drawn(search_figures.search_importance, found).axes[0].get_title()
    with pytest.raises(ValueError, match="cannot be drawn together"):
        figures.plot_run([spec.directory, hand_made_run(tmp_path)])


def test_search_over_tau_and_alpha_draws_the_plane(tmp_path: Path) -> None:
    """A hand-made search directory: trials over τ × α, one pruned; η² importances against pandas."""
    directory = tmp_path / "kd" / "search-kd"
    batch = directory / "batch-1"
    batch.mkdir(parents=True)
    (batch / "config.toml").write_text(
        '[search]\nobjective = "accuracy"\ndirection = "maximize"\n[search.space]\n'
        "tau = { low = 1.0, high = 20.0, log = true }\nalpha = { low = 0.0, high = 1.0 }\n"
    )
    rng = np.random.default_rng(0)
    tau, alpha = np.exp(rng.uniform(0, 3, 12)), rng.uniform(0, 1, 12)
    trials = pd.DataFrame({"number": range(12), "value": 0.9 + 0.05 * alpha - 0.001 * tau, "state": "COMPLETE"})
    trials = trials.assign(params_tau=tau, params_alpha=alpha)
    trials.loc[5, ["state", "value"]] = ["PRUNED", np.nan]
    results.write_table(trials, directory / "trials")
    written = figures.plot_run([directory], out=tmp_path / "figures")
    assert [p.name for p in written] == ["search_history.png", "search_importance.png", "search_space.png"]
    found = search_figures.load_search(directory)
    space = drawn(search_figures.search_space, found)
    check_png(written[2], space)
    assert space.axes[0].get_xscale() == "log" and space.axes[0].get_ylabel().startswith("α")
    shares, how = search_figures._importances(found, ["tau", "alpha"])
    assert "η²" in how
    done = trials[trials["state"] == "COMPLETE"]
    eta = {}
    for name in ("tau", "alpha"):
        bins = pd.qcut(done[f"params_{name}"], 5, labels=False)
        means = done.groupby(bins)["value"].transform("mean")
        eta[name] = ((means - done["value"].mean()) ** 2).sum() / ((done["value"] - done["value"].mean()) ** 2).sum()
    assert shares == pytest.approx({k: v / sum(eta.values()) for k, v in eta.items()})


def test_table_plot_writes_the_softmax_figure(tmp_path: Path) -> None:
    path = tmp_path / "softmax.png"
    args = ["table", "--logits", "0.5,0.25,-0.45,-0.1", "--tau", "1,0.5,0.05,0.01", "--target", "0"]
    result = CliRunner().invoke(app, [*args, "--format", "csv", "--plot", str(path)])
    assert result.exit_code == 0, result.output
    assert pd.read_csv(io.StringIO(result.stdout)).columns[0] == "tau"  # stdout is still the CSV
    fig = drawn(softmax.softmax_curves, [0.5, 0.25, -0.45, -0.1], [1, 0.5, 0.05, 0.01], 0)
    check_png(path, fig)
    ax = fig.axes[0]
    # p_i of the dense curve at the given τ are softmax(z / τ) exactly; the given τ are marked
    for line, i in zip(ax.lines[0::2][:4], range(4), strict=True):
        tau, p = line.get_data()
        assert tau.min() < 0.01 and tau.max() > 1 and len(tau) >= 200
        z = np.array([0.5, 0.25, -0.45, -0.1]) / tau[:, None]
        expected = np.exp(z - z.max(1, keepdims=True))
        np.testing.assert_allclose(p, (expected / expected.sum(1, keepdims=True))[:, i], rtol=1e-9)
    marked = [line for line in ax.lines if line.get_marker() == "o"]
    assert sorted(marked[0].get_xdata()) == [0.01, 0.05, 0.5, 1]
    bad = CliRunner().invoke(app, [*args, "--plot", str(tmp_path / "softmax.jpg")])
    assert bad.exit_code == 2 and "suffix must be one of" in bad.output


# ------------------------------------------------------------------ what a figure pools; which task gets which figure


def test_distillation_titles_count_what_each_line_pools(distill_run: Path) -> None:
    runs = load_runs([distill_run])
    # a line is a τ mode and an initial T; it pools the seeds and every other grid axis of the task
    per_line = runs.members.groupby(["tau_mode", "tau_init"]).size()
    assert set(per_line) == {16}
    title = drawn(curves.training_curves, runs)._suptitle.get_text()
    assert "each line pools 16 members (2 seeds × 2 α × 2 T² settings × 2 labelled fractions)" in title
    assert "mean over 2 seeds" not in title  # the old title, which hid the pooled axes
    # a point of the gradient figure is a T² setting and a T: it pools seeds, α and fractions
    title = drawn(distill_figures.distill_gradients, runs)._suptitle.get_text()
    assert "each point pools 8 members (2 seeds × 2 α × 2 labelled fractions)" in title
    # a heatmap cell is one (fraction, T², α, T): only the seeds are pooled
    assert "mean over 2 seeds" in drawn(distill_figures.distill_accuracy, runs)._suptitle.get_text()


def test_seeds_alone_are_named_as_before(run_dir: Path) -> None:
    runs = load_runs([run_dir])
    assert "mean over 2 seeds, band min–max" in drawn(curves.training_curves, runs)._suptitle.get_text()
    final = drawn(vs_tau.final_metrics, runs)
    assert "mean over 2 seeds, bars ± sd" in final._suptitle.get_text()
    # τ ticks are plain numbers, not 6×10⁻² and 2×10⁻¹ that collide on a short log axis
    assert final.axes[0].xaxis.get_major_formatter()(0.2, 0) == "0.2"


def test_figures_are_chosen_by_the_task_in_config_toml(tmp_path: Path) -> None:
    run_dir = hand_made_run(tmp_path)
    # the hand-made table has the geometry columns; recorded as a distillation run it gets no geometry figure
    (run_dir / "config.toml").write_text('task = "distill"\n')
    assert [p.name for p in figures.plot_run([run_dir])] == ["training_curves.png"]
    (run_dir / "config.toml").write_text('task = "simclr"\n')
    assert [p.name for p in figures.plot_run([run_dir])] == ["training_curves.png", "final_metrics.png", "planes.png"]
    specs = figures.run_figures() + figures.search_figures()
    assert len({s.name for s in specs}) == len(specs) and all(s.caption for s in specs)
    assert figures.caption("quadrants-run-2") == next(s.caption for s in specs if s.name == "quadrants")


def test_headline_metrics_against_tau(tmp_path: Path) -> None:
    run_dir = hand_made_run(tmp_path)
    members = results.read_table(run_dir, "members")
    members["probe_accuracy"] = 0.5 + members["tau_init"]
    results.write_table(members, run_dir / "members")
    (run_dir / "config.toml").write_text('task = "simclr"\n')
    written = figures.plot_run([run_dir])
    assert [p.name for p in written] == [
        "training_curves.png",
        "final_metrics.png",
        "headline_metrics.png",
        "planes.png",
    ]
    fig = drawn(vs_tau.headline_metrics, load_runs([run_dir]))
    check_png(written[2], fig)
    (panel,) = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert panel.get_title().startswith("linear-probe accuracy")
    # the fixed members' points are the means over their finished seeds (τ = 0.5 lost seed 0 to divergence)
    fixed = members[(members["tau_mode"] == "fixed") & (members["status"] == "ok")]
    expected = fixed.groupby("tau_init")["probe_accuracy"].mean()
    x, y = panel.lines[0].get_data()
    assert dict(zip(np.round(x, 12), y, strict=True)) == pytest.approx(expected.to_dict())


def test_three_final_metrics_panels_all_have_tau_ticks(tmp_path: Path) -> None:
    """Uniformity, tolerance and alignment fill three of a 2 × 2 grid: the panel above the empty slot keeps
    its τ tick labels (a shared x axis used to hide them)."""
    fig = drawn(vs_tau.final_metrics, load_runs([hand_made_run(tmp_path)]))
    fig.canvas.draw()
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_ylabel() for ax in panels] == ["uniformity", "tolerance", "alignment"]
    for ax in panels:
        labels = [t.get_text() for t in ax.get_xticklabels() if t.get_visible() and t.get_text()]
        assert "0.1" in labels and ax.get_xlabel() == "τ (log scale)", ax.get_ylabel()


def _tick_labels_in_view(ax: Any) -> list[tuple[str, Any]]:
    """The visible x tick labels inside the view, with their pixel boxes after a draw."""
    ax.figure.canvas.draw()
    renderer = ax.figure.canvas.get_renderer()
    lo, hi = ax.get_xlim()
    return [
        (t.get_text(), t.get_window_extent(renderer))
        for tick, t in zip(ax.get_xticks(), ax.get_xticklabels(), strict=True)
        if t.get_visible() and t.get_text() and lo <= tick <= hi
    ]


def _assert_apart(labels: list[tuple[str, Any]]) -> None:
    for (a, box_a), (b, box_b) in itertools.pairwise(labels):
        assert box_a.x1 < box_b.x0, f"tick labels {a!r} and {b!r} overlap: {box_a.x1:.1f} ≥ {box_b.x0:.1f}"


def test_tau_tick_labels_of_the_final_metrics_figure_do_not_overlap(tmp_path: Path) -> None:
    """τ = 0.001, 0.002, 0.005, … used to print "0.0010.002" on the final-metrics figure's log axis."""
    rows = [
        {"member": 6 * seed + i, "tau_mode": "fixed", "tau_init": tau, "seed": seed}
        for seed in (0, 1)
        for i, tau in enumerate([0.001, 0.002, 0.005, 0.01, 0.1, 1])
    ]
    members = pd.DataFrame(rows).assign(status="ok")
    members["tau"] = members["tau_init"]
    members["uniformity"] = -members["tau_init"]
    results.write_table(members, tmp_path / "grid" / "run" / "members")
    fig = drawn(vs_tau.final_metrics, load_runs([tmp_path / "grid" / "run"]))
    (ax,) = [ax for ax in fig.axes if ax.get_visible()]
    labels = _tick_labels_in_view(ax)
    _assert_apart(labels)
    texts = [text for text, _ in labels]
    assert texts[0] == "0.001" and texts[-1] == "1" and len(texts) >= 4  # the whole grid stays labelled


@pytest.mark.parametrize("width", [1.5, 3.0, 4.4, 8.0, 16.0])
@pytest.mark.parametrize("span", [(0.001, 1.0), (0.05, 1.0), (1e-5, 10.0), (0.2, 0.6)])
def test_log_tick_labels_never_touch_at_any_width(width: float, span: tuple[float, float]) -> None:
    with style.theme():
        _, axes = style.figure(width, 2.0)
        ax = axes[0, 0]
        ax.plot(span, [0, 1])
        ax.set_xscale("log")
        style.log_ticks(ax.xaxis)
        labels = _tick_labels_in_view(ax)
    _assert_apart(labels)
    assert len(labels) >= 1
    shown = {float(text) for text, _ in labels}
    assert all(span[0] * 0.9 <= v <= span[1] * 1.1 for v in shown)
    if width >= 8.0 and span == (0.001, 1.0):
        assert {0.001, 0.002, 0.005, 0.01} <= shown  # room enough: 1, 2 and 5 × 10^k


def test_headline_by_axis_draws_the_tau_by_lr_interaction_with_t_intervals(tmp_path: Path) -> None:
    from scipy import stats

    rng = np.random.default_rng(1)
    rows = [
        {"member": 0, "tau_mode": "fixed", "tau_init": tau, "lr": lr, "seed": seed}
        for lr in (0.001, 0.01)
        for seed in range(3)
        for tau in (0.05, 0.2, 1.0)
    ]
    members = pd.DataFrame(rows).assign(member=range(len(rows)), status="ok")
    members["tau"] = members["tau_init"]
    members["knn_accuracy"] = 0.9 - 0.05 * np.log10(members["tau_init"]) * np.sign(members["lr"] - 0.005)
    members["knn_accuracy"] += 0.01 * rng.random(len(rows))
    run_dir = tmp_path / "digits_simclr_lr" / "run-1"
    results.write_table(members, run_dir / "members")
    (run_dir / "config.toml").write_text('task = "simclr"\n')
    written = [p.name for p in figures.plot_run([run_dir])]
    assert "headline_by_axis.png" in written
    fig = drawn(lambda runs: vs_tau.headline_by_axis(runs, "run-1"), load_runs([run_dir]))
    (ax,) = [ax for ax in fig.axes if ax.get_visible()]
    assert ax.get_title().startswith("k-NN accuracy by lr")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["lr = 0.001", "lr = 0.01"]
    for container, lr in zip(ax.containers, (0.001, 0.01), strict=True):
        part = members[members["lr"] == lr].groupby("tau_init")["knn_accuracy"]
        x, y = container.lines[0].get_data()
        np.testing.assert_allclose(x, part.mean().index)
        np.testing.assert_allclose(y, part.mean().to_numpy())
        half = stats.t.ppf(0.975, 2) * part.std(ddof=1).to_numpy() / np.sqrt(3)
        segments = container.lines[2][0].get_segments()
        np.testing.assert_allclose([s[1][1] - s[0][1] for s in segments], 2 * half)
    # no varying axis: no figure
    plain = members[members["lr"] == 0.001]
    results.write_table(plain, tmp_path / "plain" / "run-2" / "members")
    assert vs_tau.headline_by_axis(load_runs([tmp_path / "plain" / "run-2"]), "run-2") is None
