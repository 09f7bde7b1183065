"""What training-time augmentation costs: one epoch per ``--augment`` level, same data, model,
seed and machine, in one run (``python -m spikeseg.benchmarks.augment_cost --data DIR --out DIR``).

Prints and writes ``results.md``: per level the epoch's training seconds and the ratio to
``none``; the machine (CPU model, threads) is named. The augmentation is per volume (slice
models) or per patch (volume models), so its share shrinks as the model grows.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spikeseg.cli import main as cli
from spikeseg.runtime.system import cpu_model
from spikeseg.runtime.tables import refuse_existing_results, write_results
from spikeseg.training.augment import LEVELS
from spikeseg.training.run_folder import RunFolder


def add_run_arguments(p: argparse.ArgumentParser, arch: str, epochs: int, epochs_help: str) -> None:
    """What a benchmark that trains one view model a few epochs per variant asks."""
    p.add_argument("--data", type=Path, required=True, help="labelled training cases")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--arch", default=arch)
    p.add_argument("--view", default="axial")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--spacing", default="2")
    p.add_argument("--epochs", type=int, default=epochs, help=epochs_help)
    p.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in --out")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(p, "spiking-useg", 2, "epochs per level; the mean of all but the first is kept")
    a = p.parse_args(argv)
    refuse_existing_results(a.out / "results.md", a.overwrite)
    rows = []
    for level in ("none", *[lv for lv in LEVELS if lv != "none"]):
        run = a.out / "runs" / level
        rc = cli(["train", "--data", str(a.data), "--out", str(run), "--arch", a.arch, "--view", a.view,
                  "--preset", a.preset, "--spacing", a.spacing, "--epochs", str(a.epochs), "--augment", level,
                  "--device", "cpu", "--quiet", "--overwrite"])
        if rc != 0:
            raise SystemExit(f"training with --augment {level} failed (exit {rc})")
        seconds = [float(r["train_seconds"]) for r in RunFolder(run).metrics()]
        kept = seconds[1:] or seconds
        rows.append({"augment": level, "epoch_train_s": sum(kept) / len(kept)})
    base = rows[0]["epoch_train_s"]
    for r in rows:
        r["ratio_to_none"] = r["epoch_train_s"] / base
    text = "\n".join([f"# Augmentation cost per epoch ({a.arch} {a.preset}, {a.view}, {a.spacing} mm, "
                      f"{len(list(a.data.iterdir()))} case folders)", "",
                      f"Machine: {cpu_model()}, torch on the CPU. Training seconds of one epoch (the mean of "
                      f"epochs 2..{a.epochs}), same seed and data.", "",
                      "| --augment | epoch train s | x none |", "|---|---|---|"]
                     + [f"| {r['augment']} | {r['epoch_train_s']:.2f} | {r['ratio_to_none']:.2f} |" for r in rows]) + "\n"
    write_results(a.out, text, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
