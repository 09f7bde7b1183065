"""Does the heldout family's gap close with more training time, or with more training cases?

``python -m spikeseg.benchmarks.transfer_budget --out DIR [--grid 12:1.3,12:4,...]``

The trust work asks the demo's bundles for WT Dice >= 0.85 on the heldout family (settings never
trained on); at the demo's budget (1.3 minutes per view model, 12 wide-family cases) they score
0.56-0.68. This measures the two levers a CPU cannot spend in ``make demo``: minutes of training
and number of training cases. One model (the U-Seg-Net twin, one view: the SNN starts from it)
is trained for each ``cases:minutes`` point of ``--grid`` on the demo's wide family, exported
(OpenVINO FP32) and run on the standard test cases and on the heldout family's cases, exactly as
``spikeseg segment`` runs them. The case sets are nested (seed 1 like the demo's: the first 12 of
48 are the demo's 12), so a row differs from another only in its lever. Writes ``results.md`` /
``results.csv`` and prints the table; the machine is named.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from spikeseg.benchmarks.demo import DATA, SPACING_MM, phantoms, run as spikeseg
from spikeseg.benchmarks.robustness import run as segment_and_score
from spikeseg.runtime.case_io import find_cases
from spikeseg.runtime.preprocess import VIEWS
from spikeseg.runtime.system import cpu_model
from spikeseg.runtime.tables import refuse_existing_results, write_results
from spikeseg.training.run_folder import RunFolder

DEFAULT_GRID = "12:1.3,12:4,12:12,48:4,48:12"


def parse_grid(spec: str) -> list[tuple[int, float]]:
    """``"12:1.3,48:4"`` -> [(12, 1.3), (48, 4.0)]: training cases and minutes per point."""
    points = []
    for item in spec.split(","):
        cases, _, minutes = item.partition(":")
        try:
            points.append((int(cases), float(minutes)))
        except ValueError:
            raise SystemExit(f"--grid: {item!r} is not CASES:MINUTES (e.g. 12:1.3)")
    return points


def best_val_wt(run: RunFolder) -> float:
    """The run's validation WT Dice at the epoch it kept (its best)."""
    best = run.summary()["best_epoch"]
    return next(float(m["val_dice_WT"]) for m in run.metrics() if int(m["epoch"]) == best)


def markdown(rows: list[dict], arch: str, view: str, train_args: str = "") -> str:
    extra = f", {train_args}" if train_args else ""
    lines = [f"# Heldout family vs training time and cases ({arch}, {view} view{extra}, OpenVINO FP32, "
             f"{cpu_model()})", "",
             "Mean Dice per region; `epochs` is what the time allowed (per view), `val WT` the run's best "
             "validation Dice (wide family; the views' mean).", "",
             "| cases | minutes | epochs | val WT | std ET | std TC | std WT | heldout ET | heldout TC | heldout WT |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['cases']} | {r['minutes']:g} | {r['epochs']} | {r['val_wt']:.3f} | {r['std_ET']:.3f} | "
              f"{r['std_TC']:.3f} | {r['std_WT']:.3f} | {r['heldout_ET']:.3f} | {r['heldout_TC']:.3f} | "
              f"{r['heldout_WT']:.3f} |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data", type=Path, help="where the phantom sets are made, or found (default OUT/data): "
                   "runs of several levers can share them")
    p.add_argument("--grid", default=DEFAULT_GRID, help=f"CASES:MINUTES points (default {DEFAULT_GRID})")
    p.add_argument("--arch", default="useg", help="slice model trained at each point (default useg, the twin)")
    p.add_argument("--view", default="axial", help="the view trained, or all: three views, scored as their ensemble, "
                   "--grid's minutes per view (default axial)")
    p.add_argument("--train-args", default="",
                   help='more `spikeseg train` options for every point, e.g. --train-args="--lr 3e-3" (a lever '
                        'beside time and cases; name the --out after it)')
    p.add_argument("--heldout-cases", type=int, default=8, help="heldout-family test cases (default 8)")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    refuse_existing_results(a.out / "results.md", a.overwrite)
    grid = parse_grid(a.grid)
    data = a.data or a.out / "data"
    _, _, test_cases, test_seed = DATA["test"]
    _, held_family, _, held_seed = DATA["heldout"]
    phantoms(data / "test", "standard", test_cases, test_seed, "small")  # on the models' 2 mm grid
    phantoms(data / "heldout", held_family, a.heldout_cases, held_seed, "small")
    conds = {"std": find_cases(data / "test"), "heldout": find_cases(data / "heldout")}
    _, train_family, _, train_seed = DATA["train"]
    rows = []
    for cases, minutes in grid:
        started = time.time()
        train = data / f"train-{cases}"
        phantoms(train, train_family, cases, train_seed, "small")
        name = f"c{cases}-m{minutes:g}"
        run = a.out / "runs" / name
        views = [run / v for v in VIEWS] if a.view == "all" else [run]
        if not all(RunFolder(v).finished() for v in views):  # a killed run resumes; nothing is overwritten
            spikeseg("train", "--data", train, "--out", run, "--arch", a.arch, "--view", a.view, "--preset", "tiny",
                     "--spacing", SPACING_MM, "--epochs", "400", "--max-minutes", minutes, "--quiet", "--resume",
                     "--cache", a.out / "preprocessed", *shlex.split(a.train_args))
        bundle = a.out / "bundles" / name
        if not bundle.exists():
            spikeseg("export", *views, "--out", bundle, "--quiet")
        scored, _ = segment_and_score([bundle], conds, "openvino", 2, a.out / "work")
        summaries = [RunFolder(v).summary() for v in views]
        row = {"cases": cases, "minutes": minutes, "epochs": "/".join(str(s["epochs_run"]) for s in summaries),
               "val_wt": float(np.mean([best_val_wt(RunFolder(v)) for v in views]))}
        for r in scored:
            row.update({f"{r['condition']}_{k}": r[f"dice_{k}"] for k in ("ET", "TC", "WT")})
        rows.append(row)
        print(f"{name}: {row['epochs']} epochs, std WT {row['std_WT']:.3f}, heldout WT "
              f"{row['heldout_WT']:.3f} ({(time.time() - started) / 60:.1f} min)", flush=True)
    write_results(a.out, markdown(rows, a.arch, a.view, a.train_args), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
