"""One look for every figure: size, dpi, colours, markers, log axes, and titles that say what they pool.

Figures are ``matplotlib.figure.Figure`` objects rendered by the Agg canvas, never through pyplot, so
plotting opens no window and leaves the caller's backend and rcParams alone.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.textpath import text_to_path
from matplotlib.ticker import FuncFormatter, Locator, LogLocator, NullFormatter

from tau_lab.analysis.tables import AXIS_NAMES, pooled
from tau_lab.figures import DPI

MARKERS = {"fixed": "o", "learnable": "s", "cosine": "^", "linear": "D"}


FLOOR = 1e-6  # log axes show at most six decades below the maximum; smaller values sit on the floor


@contextlib.contextmanager
def theme() -> Iterator[None]:
    """One look for every figure; a context so that the caller's matplotlib settings stay as they were."""
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.85):
        yield


def figure(width: float, height: float, **grid: Any) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(squeeze=False, **grid)
    return fig, axes


def palette(names: list[str]) -> dict[str, Any]:
    """Colour-blind-safe colours for categories; orange and vermillion (1 and 3) are never neighbours."""
    colours = sns.color_palette("colorblind", 10)
    picks = [colours[i] for i in (0, 1, 2, 4, 3, 9, 5, 7, 8, 6)]
    return {name: picks[i % len(picks)] for i, name in enumerate(names)}


def tau_palette(taus: list[float]) -> dict[float, Any]:
    """τ always in viridis, dark = small τ, as the log colour scale of the planes."""
    ordered = sorted(taus)
    return dict(zip(ordered, sns.color_palette("viridis", len(ordered)), strict=True))


def tau_text(tau: float) -> str:
    return f"{tau:.3g}"


def log_floor(values: pd.Series) -> float | None:
    """The floor of a log axis when the positive values span two decades or more, else ``None``."""
    positive = values[values > 0]
    if positive.empty or positive.max() / positive.min() < 100:
        return None
    return max(positive.min(), positive.max() * FLOOR)


def markers(order: list[str]) -> dict[str, str]:
    return {s: MARKERS.get(s.rsplit(": ", 1)[-1], "o") for s in order}


def minus(value: float, fmt: str = "g") -> str:
    """A number with a typographic minus sign, as matplotlib writes its tick labels."""
    return format(value, fmt).replace("-", "−")


def log_ticks(axis: Any) -> None:
    """Ticks written as plain numbers (``PlainLogLocator``: 1, 2 and 5 × 10^k where their labels fit), no minor
    labels: a log axis over less than two decades would otherwise print overlapping minor labels such as
    2×10⁻², 3×10⁻²."""
    axis.set_major_locator(PlainLogLocator())
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


class PlainLogLocator(Locator):
    """Major ticks of a log axis whose plain labels (``f"{value:g}"``) never touch.

    The first of these that fits: 1, 2 and 5 × 10^k; 1 × 10^k; 1 × 10^k every 2nd, 3rd, … decade. A set fits
    when, at the axis's length in pixels at draw time, every two neighbouring labels in view are at least
    ``GAP`` font sizes apart (label widths from the font's metrics). Over three decades of a 4-inch panel,
    0.001, 0.002 and 0.005 do not fit ("0.0010.002"), and the decades alone do.
    """

    GAP = 0.6  # the least space between two labels, in font sizes
    CANDIDATES = ((1.0, 2.0, 5.0), (1.0,))

    def __call__(self) -> Sequence[float]:
        vmin, vmax = self.axis.get_view_interval()
        return self.tick_values(vmin, vmax)

    def tick_values(self, vmin: float, vmax: float) -> Sequence[float]:
        lo, hi = sorted((vmin, vmax))
        if not 0 < lo < hi or not np.isfinite(hi):
            return LogLocator(subs=(1.0, 2.0, 5.0)).tick_values(vmin, vmax)
        first, last = int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi)))
        pixels_per_decade = self._length() / np.log10(hi / lo)
        fallback: list[float] = []
        for stride in range(1, last - first + 2):
            for subs in self.CANDIDATES if stride == 1 else self.CANDIDATES[-1:]:
                ticks = [s * 10.0**k for k in range(first, last + 1) if k % stride == 0 for s in subs]
                shown = [t for t in ticks if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)]
                if len(shown) < 2:  # one label or none cannot collide, but says little: keep looking
                    fallback = fallback or ticks
                    continue
                if self._fits(shown, pixels_per_decade):
                    return ticks
        return fallback or [10.0**first]

    def _length(self) -> float:
        """The axis's length in pixels (its axes' size now: at draw time, after the layout)."""
        box = self.axis.axes.bbox
        return box.width if self.axis.axis_name == "x" else box.height

    def _fits(self, ticks: list[float], pixels_per_decade: float) -> bool:
        label = self.axis.majorTicks[0].label1  # the tick labels' font
        size = label.get_fontsize() * self.axis.figure.dpi / 72  # pixels
        if self.axis.axis_name != "x":  # labels stacked vertically need their height only
            widths = [size] * len(ticks)
        else:
            font = label.get_fontproperties()
            widths = [
                text_to_path.get_text_width_height_descent(f"{t:g}", font, ismath=False)[0] * self.axis.figure.dpi / 72
                for t in ticks
            ]
        for (a, wa), (b, wb) in itertools.pairwise(zip(ticks, widths, strict=True)):
            if pixels_per_decade * np.log10(b / a) < (wa + wb) / 2 + self.GAP * size:
                return False
        return True


def t2_text(t2: bool) -> str:
    return "with T²" if t2 else "without T²"


def pooled_text(members: pd.DataFrame, by: Sequence[str], unit: str = "line", band: str = "band min–max") -> str:
    """What each ``unit`` of a figure pools, for its title: ``mean over 3 seeds, band min–max`` when only
    seeds are pooled, else ``each line pools 54 members (3 seeds × 3 α × 2 T² settings × 3 labelled
    fractions): mean, band min–max``; ``1 seed`` when nothing is."""
    by = [b for b in by if b in members.columns]  # an axis the table lacks splits nothing
    counts = pooled(members, by)
    if not counts:
        return "1 seed"
    if list(counts) == ["seed"]:
        return f"mean over {counts['seed']} seeds" + (f", {band}" if band else "")
    sizes = members.groupby(list(by)).size()
    n = f"{sizes.max()}" if sizes.min() == sizes.max() else f"{sizes.min()}–{sizes.max()}"
    parts = " × ".join(f"{v} {'seeds' if a == 'seed' else AXIS_NAMES.get(a, a)}" for a, v in counts.items())
    return f"each {unit} pools {n} members ({parts}): mean" + (f", {band}" if band else "")
