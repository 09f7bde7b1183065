"""``make demo``: the whole toolkit end to end on built-in phantom data, in about 15 minutes on 2 cores.

Steps 1-3 are skipped when their output is already there (a bundle made by an older spikeseg is
exported again), so a second run is quick; steps 4-6 always run, over the demo's own folders:
  1. phantoms: training cases and held-out test cases, both on the hard setting;
  2. train the tiny U-Seg-Net twin, then the Spiking U-Seg-Net converted from the twin (threshold
     balancing) and trained with FPTT (the recipe that measured best; benchmarks/FIDELITY.md),
     one model per view, on a 2 mm grid (80x96x76) with a time budget per model; then the lite
     3D U-Net (one model on 3D patches) with the three views' budget;
  3. export all three to ONNX and OpenVINO, FP32 and INT8 (calibrated on training cases); the 3D
     bundle also gets the uncertainty-guided refinement fitted for two guides (the SNN's views,
     the twin's axial view over spherical projections);
  4. segment the held-out cases with the torch-free runtime (uncertainty, reports, PNGs), and
     the SNN refined by the 3D model where its views disagree;
  5. evaluate against the reference labels; 6. benchmark FP32 vs INT8 vs SNN, and the refinement
     (benchmarks/refinement.py); 7. say where it all is.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from spikeseg.benchmarks.refinement import main as refinement_main
from spikeseg.runtime.bundle import load_bundle
from spikeseg.cli import main as cli
from spikeseg.runtime.errors import InputError
from spikeseg.runtime.preprocess import VIEWS
from spikeseg.snn.unet3d import ARCH as VOLUME_ARCH

TRAIN_CASES, TEST_CASES = 12, 4
#: 2 mm: with the same 80 s per model, 4 mm gave the SNN / twin WT Dice 0.74 / 0.81 and 2 mm
#: 0.81 / 0.89 (benchmarks/fidelity.py --spacing 2, the README's "Measured here"); 4 mm is also
#: too coarse for enhancing rims a few mm thick.
SPACING_MM = "2"
MINUTES_PER_MODEL = 1.3
#: the lite 3D U-Net (one model, no views) gets the three views' budget. Measured at that budget on
#: the demo's cases (held-out ET/TC/WT): tiny, 32^3 patches, lr 2e-3: 0.00/0.00/0.59; small, the
#: same: 0.00/0.64/0.85; with the paper's lr 5e-4 the tiny model's validation WT Dice after 8
#: epochs was 0.034, with 2e-3 0.089. A 32^3 patch trains ~3x faster than a 48^3 one (torch, CPU).
UNET3D_RECIPE = ["--preset", "small", "--patch", "32", "--patches-per-case", "8", "--lr", "2e-3"]


def step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.time()


def run_dirs(folder: Path, arch: str) -> list[Path]:
    """The run folders of one model: a view model's three views, or the volume model's one."""
    return [folder] if arch == VOLUME_ARCH else [folder / v for v in VIEWS]


def grids(folder: Path, arch: str) -> set[float]:
    """The grid spacings a model's runs were trained on (a demo folder from an older
    spikeseg may hold runs on another grid: those are trained again, not silently reused)."""
    return {float(json.loads((d / "config.json").read_text())["spacing_mm"])
            for d in run_dirs(folder, arch) if (d / "config.json").is_file()}


def finished(folder: Path, arch: str) -> bool:
    return (all((d / "summary.json").is_file() for d in run_dirs(folder, arch))
            and grids(folder, arch) == {float(SPACING_MM)})


def fitted_for(bundle, guides: list[str]) -> bool:
    """Whether a 3D bundle holds a refinement fit for each ``BUNDLE:mode`` guide as it is now
    (a guide exported again has a new checksum, and its fit must be made again)."""
    fits = {(f["guide"]["sha256"], f["guide"]["mode"]) for f in bundle.manifest.get("refinement", [])}
    for g in guides:
        path, mode = g.rsplit(":", 1)
        try:
            if (load_bundle(path).checksum, mode) not in fits:
                return False
        except InputError:
            return False
    return True


def run(*args: str | Path) -> None:
    """One ``spikeseg`` command in this process; a failure ends the script naming it."""
    rc = cli([str(a) for a in args])
    if rc != 0:
        raise SystemExit(f"step failed: spikeseg {' '.join(map(str, args))} (exit {rc})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("demo"))
    p.add_argument("--minutes-per-model", type=float, default=MINUTES_PER_MODEL)
    a = p.parse_args(argv)
    out = a.out
    started = time.time()
    data_train, data_test = out / "data" / "train", out / "data" / "test"
    step("1/7 phantom cases (MNI152 anatomy, hard setting)")
    for folder, n, seed in ((data_train, TRAIN_CASES, 1), (data_test, TEST_CASES, 2)):
        if not folder.exists():
            run("phantoms", folder, "--cases", n, "--seed", seed, "--difficulty", "hard", "--quiet")
        else:
            print(f"{folder}: already there")

    step("2/7 training: U-Seg-Net twin, then the Spiking U-Seg-Net started from it (FPTT), three views each; "
         "the lite 3D U-Net on patches with the three views' budget")
    runs = {"twin": ("useg", out / "runs" / "twin"), "snn": ("spiking-useg", out / "runs" / "snn"),
            "unet3d": (VOLUME_ARCH, out / "runs" / "unet3d")}
    recipe = {"twin": ["--view", "all", "--preset", "tiny", "--max-minutes", a.minutes_per_model],
              "snn": ["--view", "all", "--preset", "tiny", "--max-minutes", a.minutes_per_model,
                      "--init-from", runs["twin"][1]],
              "unet3d": [*UNET3D_RECIPE, "--max-minutes", 3 * a.minutes_per_model]}
    retrained: set[str] = set()
    for name, (arch, folder) in runs.items():
        stale_twin = name == "snn" and "twin" in retrained  # an SNN whose twin was just trained starts over
        if finished(folder, arch) and not stale_twin:
            print(f"{folder}: already trained")
            continue
        other_grid = bool(grids(folder, arch) - {float(SPACING_MM)})
        if other_grid:
            print(f"{folder}: trained on another grid; training it again at {SPACING_MM} mm")
        # a killed run resumes; a run on another grid starts over
        retrained.add(name)
        run("train", "--data", data_train, "--out", folder, "--arch", arch, "--spacing", SPACING_MM,
            "--epochs", "400", "--quiet", "--overwrite" if other_grid or stale_twin else "--resume", *recipe[name])

    step("3/7 export: ONNX + OpenVINO, FP32 + INT8; the 3D bundle with its refinement fits")
    bundles = {name: out / "bundles" / name for name in runs}
    guides = {"unet3d": [f"{bundles['snn']}:views", f"{bundles['twin']}:projections"]}
    for name, (arch, folder) in runs.items():
        stale = []
        if (bundles[name] / "manifest.json").is_file():
            try:
                bundle = load_bundle(bundles[name])
                current = (bundle.preprocess.spacing_mm[0] == float(SPACING_MM) and name not in retrained
                           and all(bundle.view(v).passes == 2 for v in bundle.views if bundle.view(v).stateful))
                if current and fitted_for(bundle, guides.get(name, [])):
                    print(f"{bundles[name]}: already exported")
                    continue
                print(f"{bundles[name]}: " + ("its refinement was not fitted for the current guide bundles"
                                              if current else "made from other runs or runs one way")
                      + "; exporting again")
            except InputError as exc:  # e.g. made by an older spikeseg: export it again
                print(f"{bundles[name]}: {exc.problem}; exporting again")
            stale = ["--overwrite"]
        refine = [a for g in guides.get(name, []) for a in ("--refine-guide", g)]
        run("export", *run_dirs(folder, arch), "--out", bundles[name], "--int8",
            "--calib", data_train, "--calib-items", "200", "--allow-accuracy-drop", *refine, *stale)

    step("4/7 segment held-out cases with the torch-free runtime (OpenVINO FP32 and INT8)")
    segmentations = {**{name: (bundles[name], []) for name in bundles},
                     "snn-refined": (bundles["snn"], ["--refine", str(bundles["unet3d"]), "--guide", "views"])}
    for name, (bundle, extra) in segmentations.items():
        for precision in ("fp32", "int8"):
            seg_out = out / "segment" / f"{name}-{precision}"
            cli(["segment", str(bundle), str(data_test), str(seg_out), "--precision", precision, "--png",
                 "--quiet", "--overwrite", *extra])  # the demo owns its folder; a re-export must not leave stale results

    step("5/7 evaluate against the reference labels")
    for name in segmentations:
        for precision in ("fp32", "int8"):
            seg_out = out / "segment" / f"{name}-{precision}"
            print(f"-- {name} {precision}")
            # beside the predictions, never among them: evaluate's output stays out of its inputs
            cli(["evaluate", str(seg_out), str(data_test), "--out", str(seg_out.with_name(seg_out.name + ".metrics.csv")),
                 "--overwrite"])

    step("6/7 benchmark: FP32 vs INT8 vs SNN on the same cases")
    run("bench", "--data", data_test, "--bundles", bundles["snn"], bundles["twin"], bundles["unet3d"],
        "--out", out / "bench",
        "--repeats", "1", "--overwrite")
    refinement_main(["--data", str(data_test), "--twin", str(bundles["twin"]), "--snn", str(bundles["snn"]),
                     "--refiner", str(bundles["unet3d"]), "--out", str(out / "refinement"), "--overwrite"])

    step("7/7 where everything is")
    print(f"phantom cases      {data_train}, {data_test}")
    print(f"training runs      {out / 'runs'}  (metrics.csv, TensorBoard in tb/)")
    print(f"bundles            {out / 'bundles'}  (manifest.json with checksums)")
    print(f"segmentations      {out / 'segment'}  (<case>_pred / _uncertainty .nii.gz, report, quick-look PNG; "
          f"<run>.metrics.csv)")
    print(f"benchmark          {out / 'bench' / 'results.md'}  (+ results.csv, PNG plots)")
    print(f"refinement         {out / 'refinement' / 'results.md'}  (2D vs 3D vs 2D + uncertainty-guided 3D)")
    print(f"demo took {(time.time() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
