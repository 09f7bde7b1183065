"""``spikeseg evaluate``: score predicted label maps against reference case folders.

Predictions are found by :func:`find_prediction`. Each must be on the reference's exact grid;
orientation is handled through the headers.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from runtime.case_io import find_case, find_cases, load_label_file
from runtime.cohort import prediction_name
from runtime.errors import InputError
from runtime.labels import REGIONS, labels_to_regions
from runtime.metrics import region_metrics

METRICS = ("dice", "hd95", "sensitivity", "specificity")


def find_prediction(pred_root: Path, case_id: str) -> Path:
    """``PRED/C/C_pred.nii.gz`` (what ``spikeseg segment`` writes), ``PRED/C_pred.nii.gz`` or the
    BraTS submission name ``PRED/C.nii.gz`` (``.nii`` too). Never ``C_seg``: that is the name of
    the reference, and a prediction folder mistaken for the reference would score itself."""
    stem = prediction_name(case_id).removesuffix(".nii.gz")
    candidates = []
    for ext in (".nii.gz", ".nii"):
        candidates += [pred_root / case_id / f"{stem}{ext}", pred_root / f"{stem}{ext}",
                       pred_root / f"{case_id}{ext}"]
    for c in candidates:
        if c.is_file():
            return c
    raise InputError(pred_root, f"no prediction for case {case_id} "
                                f"(looked for {candidates[0].relative_to(pred_root)} and similar)")


def evaluate_case(pred_path: Path, ref_folder: Path) -> dict[str, float | str]:
    """Metrics of one case: a row with ``<REGION>_<metric>`` columns."""
    files = find_case(ref_folder)
    if files.seg is None:
        raise InputError(ref_folder, "no reference label map (<id>_seg / <id>-seg)")
    ref, geometry = load_label_file(files.seg, files.convention)
    pred, _ = load_label_file(pred_path, files.convention, like=geometry)
    ref_regions = labels_to_regions(ref, files.convention)
    pred_regions = labels_to_regions(pred, files.convention)
    row: dict[str, float | str] = {"case": files.case_id}
    for i, region in enumerate(REGIONS):
        for name, value in region_metrics(pred_regions[i], ref_regions[i], geometry.canonical_spacing).items():
            row[f"{region}_{name}"] = value
    return row


def summarise(rows: list[dict[str, float | str]]) -> list[dict[str, float | str]]:
    """Mean and median rows (NaN cases left out) and, per column, how many cases were NaN."""
    cols = [k for k in rows[0] if k != "case"]
    out = []
    for label, fn in (("mean", np.mean), ("median", np.median)):
        summary: dict[str, float | str] = {"case": label}
        for c in cols:
            vals = np.array([float(r[c]) for r in rows], dtype=float)
            vals = vals[~np.isnan(vals)]
            summary[c] = float(fn(vals)) if vals.size else math.nan
        out.append(summary)
    nan_row: dict[str, float | str] = {"case": "n_undefined"}
    for c in cols:
        nan_row[c] = float(sum(math.isnan(float(r[c])) for r in rows))
    out.append(nan_row)
    return out


def evaluate_dirs(pred_root: str | Path, ref_root: str | Path) -> tuple[list[dict], list[tuple[str, str]]]:
    """Evaluate every reference case; a bad case is reported and the rest go on."""
    pred_root, ref_root = Path(pred_root), Path(ref_root)
    rows, failures = [], []
    for folder in find_cases(ref_root):
        try:
            files = find_case(folder)
            pred = find_prediction(pred_root, files.case_id)
            rows.append(evaluate_case(pred, folder))
        except InputError as exc:
            failures.append((folder.name, str(exc)))
    return rows, failures


def format_table(rows: list[dict[str, float | str]], metrics: tuple[str, ...] = ("dice", "hd95")) -> str:
    """A compact text table for the terminal: Dice and HD95 per region."""
    cols = [f"{r}_{m}" for m in metrics for r in REGIONS]
    width = max(len(str(r["case"])) for r in rows) + 2
    lines = ["case".ljust(width) + "".join(c.rjust(12) for c in cols)]
    for r in rows:
        lines.append(str(r["case"]).ljust(width) + "".join(f"{float(r[c]):12.4f}" for c in cols))
    return "\n".join(lines)
