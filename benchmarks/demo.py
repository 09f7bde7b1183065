"""``make demo``: the whole toolkit end to end on built-in phantom data, in about 25 minutes on 2 cores.

Steps 1-3 are skipped when their output is already there (a bundle made by an older spikeseg is
exported again), so a second run is quick; steps 4-6 always run, over the demo's own folders:
  1. phantoms, all on the hard setting: training cases from the wide family (per-case contrasts,
     tumour sizes, foci, bias, noise, slice thickness, storage), held-out test cases from the
     standard family, held-out cases from the heldout family (settings never trained on), and
     labelled wide-family cases kept out of training that the bundles' QC limits are fitted on;
  2. train the tiny U-Seg-Net twin, then the Spiking U-Seg-Net converted from the twin (threshold
     balancing) and trained with FPTT (the recipe that measured best; docs/results/fidelity-lab-record.md),
     one model per view, on a 2 mm grid (80x96x76) with a time budget per model; then the lite
     3D U-Net (one model on 3D patches) with the three views' budget;
  3. export all three to ONNX and OpenVINO, FP32 and INT8 (calibrated on training cases); the 3D
     bundle also gets the uncertainty-guided refinement fitted for two guides (the SNN's views,
     the twin's axial view over spherical projections);
  4. segment the test cases with the torch-free runtime (uncertainty, reports, QC verdicts,
     PNGs), and the SNN refined by the 3D model where its views disagree; the heldout family's
     cases with each model in FP32;
  5. evaluate against the reference labels (with each case's QC verdict); 6. benchmark FP32 vs
     INT8 vs SNN on OpenVINO (``spikeseg bench`` measures every backend), and the refinement
     (benchmarks/refinement.py); 7. the clinic's path: a scanner-style study (DICOM series with
     skull, each sequence moved and on its own grid) through ``spikeseg prepare`` and ``segment``
     with each bundle, scored on the scan's own grid; 8. a table of it all, and where it is.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

from spikeseg.benchmarks.refinement import main as refinement_main
from spikeseg.runtime.atomic import write_text
from spikeseg.runtime.bundle import load_bundle
from spikeseg.runtime.cohort import native_name, prediction_name, report_qc
from spikeseg.runtime.manifest import MANIFEST
from spikeseg.cli import main as cli
from spikeseg.runtime.errors import InputError
from spikeseg.runtime.preprocess import VIEWS
from spikeseg.runtime.qc import QC_VERSION
from spikeseg.snn.unet3d import ARCH as VOLUME_ARCH
from spikeseg.training.run_folder import RunFolder

TRAIN_CASES, TEST_CASES = 12, 4
#: held out from training, the training data's kind: what a good result looks like to the QC verdict
#: (the runs' own validation split is 3 cases)
QC_CASES = 8
#: (folder under data/, family, cases, seed): what the models train on, and the two test sets
DATA = {"train": ("train-wide", "wide", TRAIN_CASES, 1), "test": ("test", "standard", TEST_CASES, 2),
        "heldout": ("heldout", "heldout", TEST_CASES, 3), "qc": ("qc-wide", "wide", QC_CASES, 4)}
#: 2 mm: at the demo's budget both models scored higher than at 4 mm, and 4 mm is too coarse for
#: enhancing rims a few mm thick (docs/results/2026-12-06-lab-record.md).
SPACING_MM = "2"
#: the phantoms' own grid: small (2 mm, the models' grid: nothing resampled) or full (1 mm, BraTS's
#: grid: every case goes through the runtime's 1 mm -> 2 mm resampling, as real scans do)
PHANTOM_SIZE = "small"
MINUTES_PER_MODEL = 1.3
#: the lite 3D U-Net (one model, no views) gets the three views' budget; the small preset on 32^3
#: patches at lr 2e-3 learned fastest at that budget (docs/results/2026-12-06-lab-record.md).
UNET3D_RECIPE = ["--preset", "small", "--patch", "32", "--patches-per-case", "8", "--lr", "2e-3"]
#: the scanner-style study of step 7 (training/scanner.py): one standard phantom as DICOM series
SCANNER_SEED = 5


_STEP_START: list[float] = []


def step(title: str) -> None:
    """A step's heading, after the time the previous step took."""
    if _STEP_START:
        print(f"(took {(time.time() - _STEP_START[-1]) / 60:.1f} min)")
    _STEP_START.append(time.time())
    print(f"\n== {title}", flush=True)


def run_dirs(folder: Path, arch: str) -> list[Path]:
    """The run folders of one model: a view model's three views, or the volume model's one."""
    return [folder] if arch == VOLUME_ARCH else [folder / v for v in VIEWS]


def trained_on(folder: Path, arch: str) -> set[tuple[float, str]]:
    """The (grid spacing, data folder) pairs a model's runs were trained on (a demo folder from an
    older spikeseg may hold runs on another grid or data: those are trained again, not reused)."""
    settings = [RunFolder(d).record().settings for d in run_dirs(folder, arch) if RunFolder(d).is_run()]
    return {(float(c.spacing_mm), str(c.data)) for c in settings}


def finished(folder: Path, arch: str, data: Path) -> bool:
    return (all(RunFolder(d).finished() for d in run_dirs(folder, arch))
            and trained_on(folder, arch) == {(float(SPACING_MM), str(data))})


def fitted_for(bundle, guides: list[str]) -> bool:
    """Whether a 3D bundle holds a refinement fit for each ``BUNDLE:mode`` guide as it is now
    (a guide exported again has a new checksum, and its fit must be made again)."""
    fits = {(f.guide_sha256, f.mode) for f in bundle.manifest.refinement}
    for g in guides:
        path, mode = g.rsplit(":", 1)
        try:
            if (load_bundle(path).checksum, mode) not in fits:
                return False
        except InputError:
            return False
    return True


def metrics_csv(seg_out: Path) -> Path:
    return seg_out.with_name(seg_out.name + ".metrics.csv")


def results_table(seg_dirs: dict[Path, Path]) -> str:
    """Mean Dice per region and the QC verdicts of every segmentation, from evaluate's CSVs."""
    lines = [f"{'segmentation':<28}{'ET':>7}{'TC':>7}{'WT':>7}  QC review", "-" * 60]
    for seg_out in seg_dirs:
        path = metrics_csv(seg_out)
        if not path.is_file():
            lines.append(f"{seg_out.name:<28}  (not evaluated)")
            continue
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        cases = [r for r in rows if r["status"] == "ok"]
        mean = next(r for r in rows if r["case"] == "mean")
        review = sum(r.get("qc") == "review" for r in cases)
        lines.append(f"{seg_out.name:<28}" + "".join(f"{float(mean[f'{k}_dice']):7.3f}" for k in ("ET", "TC", "WT"))
                     + f"  {review} of {len(cases)}")
    return "\n".join(lines)


def scanner_path(out: Path, bundles: dict[str, Path]) -> str:
    """A scanner-style study through ``prepare`` and ``segment`` with each bundle, as a clinic runs
    them; WT Dice of the labels on the native T1ce grid against the phantom's (and the verdict)."""
    import nibabel as nib
    import numpy as np

    from spikeseg.training.scanner import write_scanner_case

    study, truth = out / "data" / "scanner-study", out / "data" / "scanner-study-truth.nii.gz"
    if not truth.exists():  # the demo's own folder: written once, kept
        sc = write_scanner_case(study, seed=SCANNER_SEED)
        nib.save(nib.Nifti1Image(sc.labels_t1ce, sc.t1ce_affine), truth)
    case = out / "prepared" / "P000"
    run("prepare", study, case, "--quiet", "--overwrite")
    ref = np.asarray(nib.load(truth).dataobj) > 0
    lines = ["scanner study -> prepare -> segment (OpenVINO FP32): WT Dice on the scan's native T1ce grid",
             f"{'bundle':10s} {'WT Dice':>8s}  QC"]
    for name in ("twin", "snn", "unet3d"):
        seg = out / "segment" / f"prepared-{name}"
        run("segment", bundles[name], case, seg, "--png", "--quiet", "--overwrite")
        pred = np.asarray(nib.load(seg / "P000" / native_name(prediction_name("P000"))).dataobj) > 0
        verdict = report_qc(seg, "P000")
        lines.append(f"{name:10s} {2 * (pred & ref).sum() / max(pred.sum() + ref.sum(), 1):8.3f}  {verdict}")
    return "\n".join(lines)


def run(*args: str | Path) -> None:
    """One ``spikeseg`` command in this process; a failure ends the script naming it."""
    rc = cli([str(a) for a in args])
    if rc != 0:
        raise SystemExit(f"step failed: spikeseg {' '.join(map(str, args))} (exit {rc})")


def phantoms(folder: Path, family: str, cases: int, seed: int, size: str = PHANTOM_SIZE) -> bool:
    """``cases`` hard phantoms of ``family`` into ``folder`` unless it is there; True if made. The
    same seed gives nested sets: the first n cases of a larger set are the n-case set."""
    if folder.exists():
        return False
    run("phantoms", folder, "--cases", cases, "--seed", seed, "--difficulty", "hard", "--family", family,
        "--size", size, "--quiet")
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("demo"))
    p.add_argument("--minutes-per-model", type=float, default=MINUTES_PER_MODEL)
    p.add_argument("--phantom-size", choices=("full", "small"), default=PHANTOM_SIZE,
                   help=f"the phantoms' grid: full (1 mm, BraTS's) or small (2 mm, the models'); "
                        f"default {PHANTOM_SIZE}")
    a = p.parse_args(argv)
    out = a.out
    started = time.time()
    data = {k: out / "data" / (v[0] + ("-1mm" if a.phantom_size == "full" else "")) for k, v in DATA.items()}
    data_train, data_test = data["train"], data["test"]
    step("1/8 phantom cases (MNI152 anatomy, hard setting): training on the wide family, testing on the "
         "standard family and on the heldout family; QC's held-out cases from the wide family")
    for key, (_, family, n, seed) in DATA.items():
        if not phantoms(data[key], family, n, seed, a.phantom_size):
            print(f"{data[key]}: already there")

    step("2/8 training: U-Seg-Net twin, then the Spiking U-Seg-Net started from it (FPTT), three views each; "
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
        if finished(folder, arch, data_train) and not stale_twin:
            print(f"{folder}: already trained")
            continue
        other_grid = bool(trained_on(folder, arch) - {(float(SPACING_MM), str(data_train))})
        if other_grid:
            print(f"{folder}: trained on another grid or other data; training it again")
        # a killed run resumes; a run on another grid starts over
        retrained.add(name)
        run("train", "--data", data_train, "--out", folder, "--arch", arch, "--spacing", SPACING_MM,
            "--epochs", "400", "--quiet", "--overwrite" if other_grid or stale_twin else "--resume",
            "--cache", out / "preprocessed", *recipe[name])  # one copy of the cases for the runs on one grid

    step("3/8 export: ONNX + OpenVINO, FP32 + INT8; the 3D bundle with its refinement fits")
    bundles = {name: out / "bundles" / name for name in runs}
    guides = {"unet3d": [f"{bundles['snn']}:views", f"{bundles['twin']}:projections"]}
    for name, (arch, folder) in runs.items():
        stale = []
        if (bundles[name] / MANIFEST).is_file():
            try:
                bundle = load_bundle(bundles[name])
                current = (bundle.preprocess.spacing_mm[0] == float(SPACING_MM) and name not in retrained
                           and all(bundle.view(v).passes == 2 for v in bundle.views if bundle.view(v).stateful)
                           and bundle.qc is not None and bundle.qc.version == QC_VERSION)
                if current and fitted_for(bundle, guides.get(name, [])):
                    print(f"{bundles[name]}: already exported")
                    continue
                print(f"{bundles[name]}: " + ("its refinement was not fitted for the current guide bundles"
                                              if current else "made from other runs, runs one way, or an older QC")
                      + "; exporting again")
            except InputError as exc:  # e.g. made by an older spikeseg: export it again
                print(f"{bundles[name]}: {exc.problem}; exporting again")
            stale = ["--overwrite"]
        refine = [a for g in guides.get(name, []) for a in ("--refine-guide", g)]
        run("export", *run_dirs(folder, arch), "--out", bundles[name], "--int8",
            "--calib", data_train, "--calib-items", "200", "--qc-cases", data["qc"], "--allow-accuracy-drop",
            *refine, *stale)

    step("4/8 segment the test cases with the torch-free runtime (OpenVINO FP32 and INT8), and the "
         "heldout family's cases (FP32)")
    extra = {"snn-refined": ["--refine", str(bundles["unet3d"]), "--guide", "views"]}
    # (name, bundle, precision, test set): the run folder is segment/<name>-<precision>[-heldout]
    segmentations = [(name, bundles[name.removesuffix("-refined")], precision, "test")
                     for name in [*bundles, "snn-refined"] for precision in ("fp32", "int8")]
    segmentations += [(name, bundles[name], "fp32", "heldout") for name in bundles]
    seg_dirs = {}
    for name, bundle, precision, test_set in segmentations:
        seg_out = out / "segment" / (f"{name}-{precision}" + ("-heldout" if test_set == "heldout" else ""))
        seg_dirs[seg_out] = data[test_set]
        cli(["segment", str(bundle), str(data[test_set]), str(seg_out), "--precision", precision, "--png",
             "--quiet", "--overwrite", *extra.get(name, [])])  # the demo owns its folder; no stale results

    step("5/8 evaluate against the reference labels (qc: the verdict segment gave each case)")
    for seg_out, refs in seg_dirs.items():
        print(f"-- {seg_out.name}")
        # beside the predictions, never among them: evaluate's output stays out of its inputs
        cli(["evaluate", str(seg_out), str(refs), "--out", str(metrics_csv(seg_out)), "--overwrite"])

    step("6/8 benchmark: FP32 vs INT8 vs SNN on the same cases (OpenVINO)")
    run("bench", "--data", data_test, "--bundles", bundles["snn"], bundles["twin"], bundles["unet3d"],
        "--out", out / "bench", "--backends", "openvino", "--repeats", "1", "--overwrite")
    refinement_main(["--data", str(data_test), "--twin", str(bundles["twin"]), "--snn", str(bundles["snn"]),
                     "--refiner", str(bundles["unet3d"]), "--out", str(out / "refinement"), "--overwrite"])

    step("7/8 the clinic's path: a scanner-style study (DICOM series, skull, each sequence moved) -> "
         "spikeseg prepare -> segment, the labels back on the scan's own grid")
    clinic = scanner_path(out, bundles)

    step("8/8 the results, and where everything is")
    table = results_table(seg_dirs)
    print(table)
    print(clinic)
    write_text(out / "results.md", "# make demo: mean Dice per region (OpenVINO), and the QC verdicts\n\n"
               "```\n" + table + "\n```\n\n" + clinic + "\n")
    print(f"phantom cases      {', '.join(map(str, data.values()))}")
    print(f"training runs      {out / 'runs'}  (metrics.csv, TensorBoard in tb/)")
    print(f"bundles            {out / 'bundles'}  (manifest.json with checksums)")
    print(f"segmentations      {out / 'segment'}  (<case>_pred / _uncertainty .nii.gz, report, quick-look PNG; "
          f"<run>.metrics.csv)")
    print(f"benchmark          {out / 'bench' / 'results.md'}  (+ results.csv, PNG plots)")
    print(f"refinement         {out / 'refinement' / 'results.md'}  (2D vs 3D vs 2D + uncertainty-guided 3D)")
    print(f"scanner study      {out / 'data' / 'scanner-study'} -> {out / 'prepared'} (prepare/quicklook.png) -> "
          f"{out / 'segment'}/prepared-*  (*.native.nii.gz overlay the DICOM T1ce)")
    print(f"this table         {out / 'results.md'}")
    print(f"demo took {(time.time() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
