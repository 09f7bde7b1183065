"""``spikeseg prepare`` on scanner-style phantoms: its time per case, its registration and brain
mask against the known truth, and what it costs a bundle's Dice.

``python -m spikeseg.benchmarks.prepare_check --bundles B1 [B2 ...] --cases 4 --size full --out DIR``

Per case (:mod:`spikeseg.training.scanner`: DICOM series, each moved and resampled, skull and
scalp): ``prepare`` end to end (seconds, per step); co-registration error (mm, mean over the
brain, worst modality) against the known motion; brain-mask Dice against the phantom's brain on
the native T1ce grid. Per bundle, WT Dice of ``segment`` on (a) the phantom as generated (``--size
full``: 1 mm, the grid ``prepare`` writes), (b) with ``--size small`` only, that 2 mm phantom
resampled onto the 1 mm BraTS grid with no motion (what the resolution alone costs), and (c)
the prepared case, its native output scored on the native T1ce grid; and (d) the prediction of
(a) carried onto the native T1ce grid by the known motion and scored against the same reference
there. (c) against (d) is what the scans and ``prepare`` cost together, on one grid and one
reference (the scans hold less than the phantom: 3 mm T2 and FLAIR slices, each series
resampled once by the simulated acquisition); (d) against (a) is what the scoring grid alone
costs. (e) the oracle: the written series brought back onto the phantom's grid by the known
motion and cut to the true brain (:meth:`~spikeseg.training.scanner.ScannerCase.oracle`), a
perfect ``prepare``; (e) against (a) is what the scans alone cost, (c) against (e) what
registration and brain extraction add.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from spikeseg.prepare.pipeline import prepare
from spikeseg.prepare.register import displacement_mm, ras
from spikeseg.runtime.case_io import MODALITIES
from spikeseg.runtime.options import SegmentOptions
from spikeseg.runtime.predictor import Predictor
from spikeseg.runtime.prepared import NativeGrid, read_record
from spikeseg.runtime.system import cpu_model
from spikeseg.runtime.tables import refuse_existing_results, write_results
from spikeseg.training.phantoms import SIZES, grid_affine
from spikeseg.training.scanner import write_scanner_case


def _wt(pred: np.ndarray, ref: np.ndarray) -> float:
    a, b = pred > 0, ref > 0
    total = a.sum() + b.sum()
    return float(2 * (a & b).sum() / total) if total else float("nan")


def on_brats_grid(image: np.ndarray, labels: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A phantom resampled onto the 1 mm BraTS grid where it lies (linear; labels nearest)."""
    shape, spacing = SIZES["full"]
    target = grid_affine(shape, spacing)
    m = np.linalg.inv(affine) @ target
    image = np.stack([ndimage.affine_transform(v, m[:3, :3], m[:3, 3], output_shape=shape, order=1) for v in image])
    return image, ndimage.affine_transform(labels, m[:3, :3], m[:3, 3], output_shape=shape, order=0), target


def measure_case(seed: int, work: Path, size: str) -> tuple[dict, object, Path]:
    sc = write_scanner_case(work / f"study{seed}", seed=seed, size=size)
    t = time.perf_counter()
    result = prepare(sc.folder, work / f"P{seed:03d}", log=lambda _: None)
    seconds = time.perf_counter() - t
    maps = {m: np.array(result.record.provenance["transforms_lps"][m]) for m in MODALITIES}
    pts = np.argwhere(sc.brain_t1ce)[::20]
    pts = (np.c_[pts, np.ones(len(pts))] @ sc.t1ce_affine.T)[:, :3]
    errors = [displacement_mm(ras(maps[m] @ np.linalg.inv(maps["t1ce"])),
                              sc.motion[m] @ np.linalg.inv(sc.motion["t1ce"]), pts) for m in ("t1", "t2", "flair")]
    import nibabel as nib
    from spikeseg.runtime.case_io import Geometry

    img = nib.load(result.folder / "prepare" / "brain_mask.nii.gz")
    g = Geometry.of(img)
    grid = NativeGrid.open(result.folder, read_record(result.folder))
    mask = grid.geometry.from_canonical(grid.resample(g.to_canonical(np.asarray(img.dataobj)), g, True)) > 0
    dice = 2 * float((mask & sc.brain_t1ce).sum()) / float(mask.sum() + sc.brain_t1ce.sum())
    row = {"case": seed, "prepare_s": round(seconds, 1), **{f"{k}_s": v for k, v in result.seconds.items()
                                                             if k != "total"},
           "coreg_error_mm": round(max(errors), 3), "brain_dice": round(dice, 4)}
    return row, sc, result.folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundles", type=Path, nargs="*", default=[], help="bundles to segment with (optional)")
    p.add_argument("--cases", type=int, default=4)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--size", choices=list(SIZES), default="full",
                   help="the phantoms the scans are made from (default full: 1 mm; small: 2 mm, quicker)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    refuse_existing_results(a.out / "results.md", a.overwrite)
    work = a.out / "work"
    predictors = {b.name: Predictor(b, SegmentOptions(threads=a.threads, progress=False)) for b in a.bundles}
    rows = []
    for seed in range(a.cases):
        row, sc, folder = measure_case(seed, work, a.size)
        image, labels, affine = sc.phantom
        fine = on_brats_grid(image, labels, affine) if a.size == "small" else None
        for name, pr in predictors.items():
            original = pr.predict(image, affine=affine)
            row[f"{name}_wt_phantom"], row[f"{name}_qc_phantom"] = _wt(original.labels, labels), original.qc.verdict
            # the same prediction scored where the prepared case is scored: the grid's own cost left out
            row[f"{name}_wt_phantom_native"] = _wt(sc.on_native_t1ce(original.labels, affine), sc.labels_t1ce)
            oracle = pr.predict(sc.oracle(), affine=affine)  # a perfect prepare of the same scans
            row[f"{name}_wt_oracle"], row[f"{name}_qc_oracle"] = _wt(oracle.labels, labels), oracle.qc.verdict
            if fine is not None:
                row[f"{name}_wt_1mm"] = _wt(pr.predict(fine[0], affine=fine[2]).labels, fine[1])
            prepared = pr.predict(folder)
            native = prepared.native.resample(prepared.labels, prepared.case.geometry, labels=True)
            row[f"{name}_wt_prepared"] = _wt(prepared.native.geometry.from_canonical(native), sc.labels_t1ce)
            row[f"{name}_qc_prepared"] = prepared.qc.verdict
        rows.append(row)
        print(f"case {seed}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                           for k, v in row.items() if k != "case"), file=sys.stderr)
    write_results(a.out, markdown(rows, list(predictors), a), rows)
    return 0


def markdown(rows: list[dict], bundles: list[str], a: argparse.Namespace) -> str:
    def mean(key: str) -> float:
        return statistics.fmean(r[key] for r in rows)

    lines = [f"# spikeseg prepare on scanner-style phantoms ({len(rows)} cases, {a.threads} threads, {cpu_model()})", "",
             "| measure | mean | worst |", "|---|---|---|",
             f"| prepare, seconds per case | {mean('prepare_s'):.1f} | {max(r['prepare_s'] for r in rows):.1f} |",
             f"| co-registration error, mm (worst modality) | {mean('coreg_error_mm'):.3f} | "
             f"{max(r['coreg_error_mm'] for r in rows):.3f} |",
             f"| brain mask Dice | {mean('brain_dice'):.4f} | {min(r['brain_dice'] for r in rows):.4f} |", "",
             "Seconds per step (mean): " + ", ".join(f"{k.removesuffix('_s')} {mean(k):.1f}" for k in rows[0]
                                                      if k.endswith("_s") and k != "prepare_s") + "."]
    if bundles:
        fine = "_wt_1mm" in "".join(rows[0])
        base = "_wt_1mm" if fine else "_wt_phantom"
        lines += ["", f"WT Dice of `segment` (mean over the cases): the phantom as generated ({a.size}), "
                      + ("the 2 mm phantom on the 1 mm BraTS grid, " if fine else "")
                      + "the same prediction carried onto the native T1ce grid by the known motion, and the "
                        "prepared case, its native output; both native columns scored against the phantom's "
                        "labels on the native T1ce grid. Prepared - phantom on the native grid is what the scans "
                        "(3 mm T2 and FLAIR, each series resampled once by the simulated acquisition) and "
                        "`prepare` cost together, on one grid and one reference. The oracle is a perfect `prepare` "
                        "of the same scans (the known motion, the true brain): oracle - phantom is what the scans "
                        "alone cost, prepared - oracle what registration and brain extraction add.", "",
                  "| bundle | phantom | " + ("phantom, 1 mm grid | " if fine else "") + "phantom, native grid | "
                  "oracle (phantom grid) | prepared (native) | oracle - phantom | prepared - oracle | "
                  "prepared - phantom, native grid | "
                  f"prepared - {'1 mm grid' if fine else 'phantom'} | QC review, phantom | QC review, prepared |",
                  "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if fine else "")]
        for b in bundles:
            lines.append(f"| {b} | {mean(f'{b}_wt_phantom'):.3f} | " + (f"{mean(f'{b}_wt_1mm'):.3f} | " if fine else "")
                         + f"{mean(f'{b}_wt_phantom_native'):.3f} | {mean(f'{b}_wt_oracle'):.3f} | "
                         f"{mean(f'{b}_wt_prepared'):.3f} | "
                         f"{mean(f'{b}_wt_oracle') - mean(f'{b}_wt_phantom'):+.3f} | "
                         f"{mean(f'{b}_wt_prepared') - mean(f'{b}_wt_oracle'):+.3f} | "
                         f"{mean(f'{b}_wt_prepared') - mean(f'{b}_wt_phantom_native'):+.3f} | "
                         f"{mean(f'{b}_wt_prepared') - mean(b + base):+.3f} | "
                         f"{sum(r[f'{b}_qc_phantom'] == 'review' for r in rows)} of {len(rows)} | "
                         f"{sum(r[f'{b}_qc_prepared'] == 'review' for r in rows)} of {len(rows)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
