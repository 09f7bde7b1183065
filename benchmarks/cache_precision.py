"""What the float16 preprocessed cache costs training: the same run, same seed, once on a
float32 cache and once on the float16 one (``python -m spikeseg.benchmarks.cache_precision
--data DIR --out DIR``).

Writes ``results.md``: per storage type the cache's size on disk, the largest and mean change
of a cached intensity, and the run's validation Dice per region at its best epoch. Training
is deterministic on the CPU at one seed, so any difference between the two rows comes from
the storage alone.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from spikeseg.benchmarks.augment_cost import add_run_arguments
from spikeseg.cli import main as cli
from spikeseg.runtime.system import cpu_model
from spikeseg.runtime.tables import refuse_existing_results, write_results
from spikeseg.training import data as cache
from spikeseg.training.run_folder import RunFolder

STORAGE = (np.float32, np.float16)


def train_on(dtype: type, a: argparse.Namespace) -> tuple[RunFolder, list[cache.CachedCase]]:
    """One run on a cache stored as ``dtype`` (its own cache folder)."""
    name = np.dtype(dtype).name
    run, root = a.out / "runs" / name, a.out / f"cache-{name}"
    cache.CACHE_DTYPE = dtype  # the storage is the only thing that differs between the two runs
    rc = cli(["train", "--data", str(a.data), "--out", str(run), "--arch", a.arch, "--view", a.view,
              "--preset", a.preset, "--spacing", a.spacing, "--epochs", str(a.epochs), "--seed", "0",
              "--device", "cpu", "--cache", str(root), "--quiet", "--overwrite"])
    if rc != 0:
        raise SystemExit(f"training on the {name} cache failed (exit {rc})")
    (folder,) = [d for d in root.iterdir() if d.is_dir()]
    cases = sorted(folder.glob("*_image.npy"))
    return RunFolder(run), [cache.CachedCase(p.name.removesuffix("_image.npy"), p,
                                             p.with_name(p.name.replace("_image", "_regions"))) for p in cases]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(p, "useg", 6, "epochs of each run (default 6)")
    a = p.parse_args(argv)
    refuse_existing_results(a.out / "results.md", a.overwrite)
    default = cache.CACHE_DTYPE
    try:
        runs = {np.dtype(d).name: train_on(d, a) for d in STORAGE}
    finally:
        cache.CACHE_DTYPE = default
    exact = {c.case_id: c.load()[0] for c in runs["float32"][1]}
    rows = []
    for name, (run, cases) in runs.items():
        diffs = [np.abs(c.load()[0] - exact[c.case_id]) for c in cases]
        best = max(RunFolder(run.path).metrics(), key=lambda r: float(r["val_dice_mean"]))
        rows.append({"storage": name,
                     "cache_mb": sum(c.image_path.stat().st_size + c.regions_path.stat().st_size for c in cases) / 2**20,
                     "max_abs_change": float(max(d.max() for d in diffs)), "mean_abs_change": float(np.mean(diffs)),
                     "best_epoch": int(best["epoch"]),
                     **{f"val_dice_{r}": float(best[f"val_dice_{r}"]) for r in ("ET", "TC", "WT")}})
    text = "\n".join([f"# The preprocessed cache's storage type ({a.arch} {a.preset}, {a.view}, {a.spacing} mm, "
                      f"{a.epochs} epochs, seed 0)", "",
                      f"Machine: {cpu_model()}, torch on the CPU; same data, seed and settings, the cache's storage "
                      f"the only difference.", "",
                      "| storage | cache MB | largest change | mean change | best epoch | val Dice ET | TC | WT |",
                      "|---|---|---|---|---|---|---|---|"]
                     + [f"| {r['storage']} | {r['cache_mb']:.1f} | {r['max_abs_change']:.2e} | {r['mean_abs_change']:.2e} | "
                        f"{r['best_epoch']} | {r['val_dice_ET']:.4f} | {r['val_dice_TC']:.4f} | {r['val_dice_WT']:.4f} |"
                        for r in rows]) + "\n"
    write_results(a.out, text, rows)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
