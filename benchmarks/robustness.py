"""Outside the training data: bundles on a held-out phantom family and on corrupted copies of the
test cases, Dice per region per condition, and how well the QC verdict finds the failures.

``python -m spikeseg.benchmarks.robustness --bundles B1 [B2 ...] --test DIR --out DIR``

Conditions: ``standard`` (the test cases as they are); ``heldout family`` (``spikeseg phantoms
--family heldout``: contrasts, bias, noise, slice thickness and scale never trained on; or
``--heldout DIR``); and corrupted copies of the test cases: not skull-stripped (a skull ring and
background noise), a strong bias field, strong noise, 6 mm slices, a mild blur (what a 1 mm scan's
way to the 2 mm grid does), the FLAIR file holding the T1 image, intensities x0.01 and x100. Each
case is segmented as ``spikeseg segment`` would (OpenVINO FP32 by default) and scored against its
reference.

QC: a failure is a case whose WT Dice is under 0.7; the table gives the share of failures
flagged ``review``, the share of standard cases flagged, and the share of good cases (WT Dice
0.7 or more, any condition) flagged: the false alarms. Writes
``results.md`` / ``results.csv`` and prints the table; the machine is named.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
from scipy import ndimage

from spikeseg.runtime.bundle import load_bundle
from spikeseg.runtime.case_io import find_case, find_cases
from spikeseg.runtime.cohort import prediction_name
from spikeseg.runtime.evaluate import FAILURE_WT_DICE, Reference, evaluate_case
from spikeseg.runtime.labels import REGIONS
from spikeseg.runtime.options import SegmentOptions
from spikeseg.runtime.predictor import Predictor
from spikeseg.runtime.system import cpu_model
from spikeseg.runtime.atomic import write_text
from spikeseg.runtime.tables import refuse_existing_results, rows_to_csv, write_results
from spikeseg.training.phantoms import generate, thick_slices



def _smooth(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return field / (field.std() or 1.0)


def skull(volumes: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A bright ring around the brain and low background noise everywhere else."""
    brain = np.any([v != 0 for v in volumes.values()], axis=0)
    ring = ndimage.binary_dilation(brain, iterations=3) & ~brain
    out = {}
    for k, v in volumes.items():
        top = float(v.max())
        w = v.astype(np.float32).copy()
        w[ring] = 0.8 * top
        rest = ~brain & ~ring
        w[rest] = np.abs(rng.normal(0, 0.03 * top, int(rest.sum())))
        out[k] = w
    return out


def bias(volumes: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {k: v * np.exp(0.8 * _smooth(rng, v.shape, 20.0) / 2).astype(np.float32) for k, v in volumes.items()}


def noise(volumes: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {}
    for k, v in volumes.items():
        brain = v != 0
        sd = 0.12 * float(v[brain].mean()) if brain.any() else 0.0
        noisy = np.sqrt((v + rng.normal(0, sd, v.shape)) ** 2 + rng.normal(0, sd, v.shape) ** 2)
        out[k] = np.where(brain, noisy, 0.0).astype(np.float32)
    return out


def thick(volumes: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    brain = np.any([v != 0 for v in volumes.values()], axis=0)
    keys = list(volumes)
    stack = thick_slices(np.stack([volumes[k].astype(np.float32) for k in keys]), brain, 2, 3.0)
    return dict(zip(keys, stack))


def blur(volumes: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A mild Gaussian blur (0.6 voxel) inside the brain: the smoothing a 1 mm scan gets on its way to a
    2 mm grid, which a model trained on phantoms drawn at 2 mm never saw."""
    out = {}
    for k, v in volumes.items():
        brain = v != 0
        out[k] = np.where(brain, ndimage.gaussian_filter(v.astype(np.float32), 0.6), 0.0).astype(np.float32)
    return out


def flair_holds_t1(volumes: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {**volumes, "flair": volumes["t1"].copy()}


def scaled(factor: float) -> Callable[[dict[str, np.ndarray], np.random.Generator], dict[str, np.ndarray]]:
    def scale(volumes: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {k: (v * factor).astype(np.float32) for k, v in volumes.items()}
    return scale


CORRUPTIONS: dict[str, Callable[[dict[str, np.ndarray], np.random.Generator], dict[str, np.ndarray]]] = {
    "not skull-stripped": skull, "strong bias": bias, "strong noise": noise, "6 mm slices": thick,
    "mild blur": blur, "FLAIR holds T1": flair_holds_t1, "intensities x0.01": scaled(0.01),
    "intensities x100": scaled(100.0),
}


def corrupt(case_dir: Path, dest: Path, fn, seed: int) -> Path:
    """A copy of a case with ``fn`` applied to its four modalities (the label map copied as it is)."""
    files = find_case(case_dir)
    dest.mkdir(parents=True, exist_ok=True)
    imgs = {k: nib.load(str(p)) for k, p in files.modalities.items()}
    out = fn({k: np.asarray(img.dataobj, dtype=np.float32) for k, img in imgs.items()}, np.random.default_rng(seed))
    for k, img in imgs.items():
        header = img.header.copy()
        header.set_data_dtype(np.float32)
        header.set_slope_inter(1.0, 0.0)
        nib.save(nib.Nifti1Image(out[k].astype(np.float32), img.affine, header), str(dest / files.modalities[k].name))
    if files.seg is not None:
        shutil.copy(files.seg, dest / files.seg.name)
    return dest


def conditions(test: Path, heldout: Path | None, heldout_cases: int, work: Path) -> dict[str, list[Path]]:
    cases = find_cases(test)
    if heldout is None:
        heldout = work / "heldout"
        if not heldout.exists():
            generate(heldout, heldout_cases, seed=9, difficulty=1.0, family="heldout", progress=False)
    out = {"standard": cases, "heldout family": find_cases(heldout)}
    for k, (name, fn) in enumerate(CORRUPTIONS.items()):
        folder = work / name.replace(" ", "-")
        out[name] = [corrupt(c, folder / c.name, fn, 1000 * k + i) if not (folder / c.name).exists()
                     else folder / c.name for i, c in enumerate(cases)]
    return out


def run(bundle_paths: list[Path], conds: dict[str, list[Path]], backend: str, threads: int, work: Path):
    rows, per_case = [], []
    for path in bundle_paths:
        bundle = load_bundle(path)
        seg = Predictor(bundle, SegmentOptions(backend=backend, threads=threads))
        for name, cases in conds.items():
            scores = {r: [] for r in REGIONS}
            verdicts = []
            for case_dir in cases:
                out = work / "segment" / path.name / name.replace(" ", "-")
                rep = seg.run(case_dir, out)
                files = find_case(case_dir)
                row = evaluate_case(out / rep["case"] / prediction_name(rep["case"]),
                                    Reference(rep["case"], files.seg, files.convention))
                for r in REGIONS:
                    scores[r].append(float(row[f"{r}_dice"]))
                verdicts.append(rep["qc"]["verdict"])
                per_case.append({"bundle": path.name, "condition": name, "case": rep["case"],
                                 "wt_dice": float(row["WT_dice"]), "qc": rep["qc"]["verdict"],
                                 "reasons": "; ".join(rep["qc"]["reasons"])})
            rows.append({"bundle": path.name, "architecture": bundle.architecture, "condition": name,
                         **{f"dice_{r}": float(np.nanmean(scores[r])) for r in REGIONS},
                         "review_share": verdicts.count("review") / len(verdicts), "cases": len(cases)})
    return rows, per_case


def qc_summary(per_case: list[dict]) -> dict[str, float]:
    failures = [c for c in per_case if c["wt_dice"] < FAILURE_WT_DICE]
    standard = [c for c in per_case if c["condition"] == "standard"]
    good = [c for c in per_case if c["wt_dice"] >= FAILURE_WT_DICE]

    def flagged(cases: list[dict]) -> float:
        return sum(c["qc"] == "review" for c in cases) / len(cases) if cases else float("nan")

    return {"failures": len(failures), "failures_flagged": flagged(failures),
            "standard_cases": len(standard), "standard_flagged": flagged(standard),
            "good_cases": len(good), "good_flagged": flagged(good)}


def markdown(rows: list[dict], qc: dict[str, float], args: argparse.Namespace) -> str:
    lines = [f"# Robustness: outside the training data ({args.backend} FP32, {args.threads} threads, {cpu_model()})", "",
             "Dice per region (mean over the condition's cases; a region empty in both masks left out) and the "
             "share of cases the QC verdict sends to review.", "",
             "| bundle | condition | Dice ET | Dice TC | Dice WT | QC review | cases |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['bundle']} | {r['condition']} | {r['dice_ET']:.3f} | {r['dice_TC']:.3f} | {r['dice_WT']:.3f} | "
              f"{100 * r['review_share']:.0f} % | {r['cases']} |" for r in rows]
    lines += ["", f"QC against failures (WT Dice < {FAILURE_WT_DICE}): {qc['failures']} failures, "
                  f"{100 * qc['failures_flagged']:.0f} % flagged review; standard cases flagged: "
                  f"{100 * qc['standard_flagged']:.0f} % of {qc['standard_cases']}; good cases (WT Dice >= "
                  f"{FAILURE_WT_DICE}, any condition) flagged: {100 * qc['good_flagged']:.0f} % of {qc['good_cases']}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundles", type=Path, nargs="+", required=True)
    p.add_argument("--test", type=Path, required=True, help="labelled standard test cases")
    p.add_argument("--heldout", type=Path, help="labelled held-out family cases (default: generated)")
    p.add_argument("--heldout-cases", type=int, default=8, help="held-out family cases to generate (default 8)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--backend", choices=["openvino", "onnxruntime"], default="openvino")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    refuse_existing_results(a.out / "results.md", a.overwrite)
    work = a.out / "work"
    conds = conditions(a.test, a.heldout, a.heldout_cases, work / "cases")
    rows, per_case = run(a.bundles, conds, a.backend, a.threads, work)
    qc = qc_summary(per_case)
    write_results(a.out, markdown(rows, qc, a), rows)
    write_text(a.out / "cases.csv", rows_to_csv(per_case))
    return 0


if __name__ == "__main__":
    sys.exit(main())
