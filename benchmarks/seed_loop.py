"""The quadrants study as the seed's script runs it, as a whole process: every member trained alone, in turn.

``python benchmarks/seed_loop.py OUT_DIR [--set KEY=VALUE ...]`` loads ``experiments/quadrants.toml`` with the
same overrides as ``tau-lab sweep quadrants --set ...``, runs ``quadrants.train_reference`` (an ``nn.Module``,
``torch.optim``, one Python step at a time) for each member of the grid, and writes each member's loss per
step to ``OUT_DIR/losses.csv``: the plain loop's whole-process counterpart of a sweep, for ``bench.py``'s
end-to-end section.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from tau_lab import config
from tau_lab.tasks.quadrants import train_reference


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for losses.csv")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE, as tau-lab sweep")
    args = parser.parse_args(argv)
    experiment, _ = config.load_experiment("quadrants", args.overrides)
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "losses.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["member", "step", "loss"])
        for row in config.members(experiment):
            losses = train_reference(experiment, row).losses
            writer.writerows((row["member"], step, loss) for step, loss in enumerate(losses))
    return 0


if __name__ == "__main__":
    sys.exit(main())
