"""The cascade paper's ablation on this machine: UNet vs ME-UNet vs C-ME-UNet, one run, equal budget.

``python -m spikeseg.benchmarks.cascade_ablation --train DIR --test DIR --out DIR --minutes M``
trains ``unet3d``, ``me-unet`` and ``cascade-me-unet`` (Aliyev & Gardashova 2025, Tables 1-2) on
the same cases with the same wall-clock budget, recipe and patch, exports each to a bundle
(ONNX + OpenVINO, FP32 + INT8 calibrated on the training cases), and runs ``spikeseg bench``
over the three bundles on the held-out cases, so every figure comes from the torch-free runtime:
Dice and HD95 per ET/TC/WT, dense MACs per case and seconds per case, per backend and
precision. Writes ``OUT/results.md`` (the paper's table shape, OpenVINO FP32 and INT8 rows) next
to ``OUT/bench/`` (every configuration). Finished runs and bundles are kept, so an interrupted
benchmark resumes.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from spikeseg.benchmarks.demo import run
from spikeseg.benchmarks.fidelity import add_budget_arguments
from spikeseg.runtime.atomic import write_text
from spikeseg.runtime.manifest import MANIFEST
from spikeseg.training.run_folder import RunFolder
from spikeseg.runtime.tables import refuse_existing_results

ARCHS = ("unet3d", "me-unet", "cascade-me-unet")
PAPER_NAMES = {"unet3d": "UNet", "me-unet": "ME UNet", "cascade-me-unet": "C ME UNet"}


def summary(bench_csv: Path, seconds: dict[str, float], minutes: float, args: argparse.Namespace) -> str:
    with bench_csv.open() as f:
        rows = {(r["architecture"], r["backend"], r["precision"]): r for r in csv.DictReader(f)}
    lines = [f"# Cascade ablation: UNet vs ME-UNet vs C-ME-UNet, {minutes:g} min each", "",
             f"Train {args.train}, test {args.test}, preset {args.preset}, {args.spacing} mm grid, "
             f"{args.patch}^3 patches, seed {args.seed}; each model's own paper recipe (spikeseg train "
             f"defaults{', plus ' + args.train_args if args.train_args else ''}). Runtime figures from "
             f"`spikeseg bench` (OpenVINO, 2 threads).", "",
             "| model | precision | Dice ET | Dice TC | Dice WT | HD95 ET | HD95 TC | HD95 WT | dense MACs/case "
             "| s/case | train s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for arch in ARCHS:
        for precision in ("fp32", "int8"):
            r = rows.get((arch, "openvino", precision))
            if r is None:
                continue
            f = {k: float(v) for k, v in r.items() if k.startswith(("dice_", "hd95_", "latency", "dense"))}
            lines.append(f"| {PAPER_NAMES[arch]} | {precision} | {f['dice_ET']:.3f} | {f['dice_TC']:.3f} | "
                         f"{f['dice_WT']:.3f} | {f['hd95_ET']:.1f} | {f['hd95_TC']:.1f} | {f['hd95_WT']:.1f} | "
                         f"{f['dense_macs']:.2e} | {f['latency_s']:.2f} | {seconds[arch]:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_budget_arguments(p, minutes=4.0, preset="small", spacing="2", per="model")
    p.add_argument("--patch", default="32", help="patch side, a multiple of 16 (default 32)")
    a = p.parse_args(argv)
    refuse_existing_results(a.out / "results.md", a.overwrite)
    seconds: dict[str, float] = {}
    bundles = []
    for arch in ARCHS:
        run_dir, bundle = a.out / "runs" / arch, a.out / "bundles" / arch
        if not RunFolder(run_dir).finished():
            print(f"== training {arch} ({a.minutes:g} min)", flush=True)
            run("train", "--data", a.train, "--out", run_dir, "--arch", arch, "--preset", a.preset,
                "--spacing", a.spacing, "--patch", a.patch, "--seed", str(a.seed), "--epochs", "100000",
                "--max-minutes", a.minutes, "--quiet", "--resume", *a.train_args.split())
        seconds[arch] = float(RunFolder(run_dir).summary()["seconds"])
        if not (bundle / MANIFEST).is_file():
            print(f"== exporting {arch}", flush=True)
            run("export", run_dir, "--out", bundle, "--int8", "--calib", a.train, "--allow-accuracy-drop")
        bundles.append(bundle)
    print("== benchmarking the three bundles on the held-out cases", flush=True)
    run("bench", "--data", a.test, "--bundles", *bundles, "--out", a.out / "bench", "--repeats", "1", "--overwrite")
    text = summary(a.out / "bench" / "results.csv", seconds, a.minutes, a)
    write_text(a.out / "results.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
