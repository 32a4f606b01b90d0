"""Progress of a population's training: a bar on a terminal, a line every N seconds elsewhere.

Under nohup, Slurm or ``| tee`` a bar is unreadable (it redraws with carriage returns), so when stderr is
not a terminal one plain line is printed every ``TAU_LAB_PROGRESS_EVERY`` seconds (default 30):

    chunk 1/2: step 1200/10000 · 10/10 alive · loss 0.512..1.31 · 850 steps/s · 10 s left
"""

from __future__ import annotations

import os
import sys
import time

from tqdm import tqdm

EVERY_SECONDS = 30.0


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """Steps ``start..total`` of one population; ``label`` names it (``chunk 1/2``)."""

    def __init__(self, total: int, start: int, label: str, enabled: bool) -> None:
        self.total, self.label = total, label
        self.terminal = enabled and sys.stderr.isatty()
        self.lines = enabled and not self.terminal
        self.bar = tqdm(total=total, initial=start, disable=not self.terminal, unit="step", dynamic_ncols=True)
        self.bar.set_description_str(label)
        self.every = float(os.environ.get("TAU_LAB_PROGRESS_EVERY", EVERY_SECONDS))
        self.start_step, self.start_time = start, time.monotonic()
        self.next_line = self.start_time + self.every
        self.summary = ""

    def status(self, alive: int, members: int, low: float | None = None, high: float | None = None) -> None:
        """What the line and the bar show beside the step: members alive, the range of their logged loss."""
        if not (self.terminal or self.lines):
            return
        loss = "" if low is None else f" · loss {low:.3g}..{high:.3g}"
        self.summary = f"{alive}/{members} alive{loss}"
        if self.terminal:
            self.bar.set_postfix_str(self.summary)

    def update(self, step: int) -> None:
        """``step`` steps are done."""
        if self.terminal:
            self.bar.update()
        elif self.lines and time.monotonic() >= self.next_line:
            now = time.monotonic()
            rate = (step - self.start_step) / (now - self.start_time)
            left = _duration((self.total - step) / rate) if rate > 0 else "?"
            line = f"{self.label}: step {step}/{self.total} · {self.summary} · {rate:.3g} steps/s · {left} left"
            print(line, file=sys.stderr, flush=True)
            self.next_line = now + self.every

    def close(self) -> None:
        self.bar.close()
