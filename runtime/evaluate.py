"""``spikeseg evaluate``: score predicted label maps against reference label maps.

Predictions are found by :func:`find_prediction`. Each must be on the reference's exact grid;
orientation is handled through the headers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spikeseg.runtime.case_io import check_case_id, label_file_id, load_label_file
from spikeseg.runtime.cohort import PREDICTION_SUFFIX, prediction_name, qc_verdict, report_name
from spikeseg.runtime.errors import InputError
from spikeseg.runtime.labels import REGIONS, LabelConvention, convention_for_scheme, labels_to_regions
from spikeseg.runtime.lesionwise import CHALLENGES, lesion_wise
from spikeseg.runtime.metrics import region_metrics

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


@dataclass(frozen=True)
class Reference:
    """One reference label map: ``<id>_seg`` (BraTS 2017-2021) or ``<id>-seg`` (2023+)."""

    case_id: str
    path: Path
    convention: LabelConvention


def find_references(root: Path) -> list[Reference]:
    """Reference label maps in ``root`` or its case folders, with or without the images beside
    them (organisers and most users keep ground truth as label maps only)."""
    if not root.is_dir():
        raise InputError(root, "no such folder")
    found = []
    for folder in [root, *sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))]:
        for f in sorted(folder.iterdir()):
            named = label_file_id(f)
            if named and f.is_file():
                found.append(Reference(check_case_id(named[0], f), f, convention_for_scheme(named[1])))
    if not found:
        raise InputError(root, "no reference label maps (<id>_seg.nii.gz or <id>-seg.nii.gz) here or in "
                               "its sub-folders")
    return found


def evaluate_case(pred_path: Path, ref: Reference, challenge: str = "BraTS-GLI") -> dict[str, float | str]:
    """Metrics of one case: a row with ``<REGION>_<metric>`` columns, voxel-wise (``dice``,
    ``hd95``, ...) and lesion-wise under ``challenge``'s rules (``lw_dice``, ``lw_hd95``,
    ``lw_tp``/``lw_fn``/``lw_fp`` lesion counts)."""
    dilation, min_volume = CHALLENGES[challenge]
    ref_labels, geometry = load_label_file(ref.path, ref.convention)
    pred, _ = load_label_file(pred_path, ref.convention, like=geometry)
    ref_regions = labels_to_regions(ref_labels, ref.convention)
    pred_regions = labels_to_regions(pred, ref.convention)
    row: dict[str, float | str] = {"case": ref.case_id}
    for i, region in enumerate(REGIONS):
        for name, value in region_metrics(pred_regions[i], ref_regions[i], geometry.canonical_spacing).items():
            row[f"{region}_{name}"] = value
        lw = lesion_wise(pred_regions[i], ref_regions[i], geometry.canonical_spacing, dilation, min_volume)
        row.update({f"{region}_lw_dice": lw.dice, f"{region}_lw_hd95": lw.hd95, f"{region}_lw_tp": lw.true_positives,
                    f"{region}_lw_fn": lw.false_negatives, f"{region}_lw_fp": lw.false_positives})
    return row


def summarise(rows: list[dict[str, float | str]]) -> list[dict[str, float | str]]:
    """Mean and median rows (NaN cases left out) and, per column, how many cases were NaN."""
    cols = [k for k in rows[0] if k not in STATUS_COLUMNS]
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


def unreferenced_predictions(pred_root: Path, case_ids: set[str]) -> list[tuple[str, Path]]:
    """Predictions ``segment`` wrote (``<id>_pred`` names, flat or in case folders) whose case
    has no reference: listed, so a missing reference is never silently left out of the mean."""
    stem = PREDICTION_SUFFIX.removesuffix(".nii.gz")
    found = []
    if not pred_root.is_dir():
        return found
    for folder in [pred_root, *sorted(p for p in pred_root.iterdir() if p.is_dir() and not p.name.startswith("."))]:
        for f in sorted(folder.iterdir()):
            for ext in (".nii.gz", ".nii"):
                if f.name.endswith(stem + ext) and not f.name.startswith("."):
                    case_id = f.name[: -len(stem + ext)]
                    if case_id and case_id not in case_ids:
                        found.append((case_id, f))
    return found


#: The columns before the metrics in evaluate's CSV: every case is listed with what became of it,
#: and with the QC verdict ``segment`` gave it (empty where no report lies beside the prediction).
STATUS_COLUMNS = ("case", "status", "qc", "message")
#: a case under this WT Dice counts as a failure the QC verdict should have flagged
FAILURE_WT_DICE = 0.7


def status_table(rows: list[dict[str, float | str]], failures: list[tuple[str, str]],
                 orphans: list[tuple[str, Path]]) -> list[dict[str, float | str]]:
    """Every case in one table: scored ones (``ok``), references that could not be scored
    (``failed``, with why), predictions without a reference (``no reference``), then the summary
    rows, whose ``status`` says how many cases the means cover and how many were left out."""
    table: list[dict[str, float | str]] = [{"case": r["case"], "status": "ok", "qc": r.get("qc", ""), "message": "",
                                            **r} for r in rows]
    table += [{"case": case, "status": "failed", "qc": "", "message": msg} for case, msg in failures]
    table += [{"case": case, "status": "no reference", "qc": "",
               "message": f"{path}: no reference label map for this prediction; not scored"} for case, path in orphans]
    counts = f"{len(rows)} scored, {len(failures)} failed, {len(orphans)} without reference"
    for summary in summarise(rows) if rows else [{"case": "mean"}]:
        table.append({"case": summary["case"], "status": counts, "qc": "", "message": "", **summary})
    return table


def is_metrics_csv(path: Path) -> bool:
    """A file ``spikeseg evaluate --out`` wrote (its header), the only kind it may replace."""
    if path.is_symlink() or not path.is_file() or path.stat().st_size > 256 << 20:
        return False
    try:
        with open(path, encoding="utf-8") as f:
            header = f.readline(4096)
    except (OSError, UnicodeDecodeError):
        return False
    return header.startswith("case,") and "ET_dice" in header


def evaluate_dirs(pred_root: str | Path, ref_root: str | Path,
                  challenge: str = "BraTS-GLI") -> tuple[list[dict], list[tuple[str, str]]]:
    """Evaluate every reference case; a bad case is reported and the rest go on."""
    pred_root, ref_root = Path(pred_root), Path(ref_root)
    rows, failures = [], []
    for ref in find_references(ref_root):
        try:
            pred = find_prediction(pred_root, ref.case_id)
            row = evaluate_case(pred, ref, challenge)
        except InputError as exc:
            failures.append((ref.case_id, str(exc)))
            continue
        rows.append({**row, "qc": qc_verdict(pred.parent / report_name(ref.case_id)) or ""})
    return rows, failures


def qc_line(rows: list[dict[str, float | str]]) -> str | None:
    """How the QC verdicts ``segment`` gave stand against the scores: the cases flagged, and the
    failures (WT Dice under :data:`FAILURE_WT_DICE`) among them; None where no case has a verdict."""
    judged = [r for r in rows if r.get("qc")]
    if not judged:
        return None
    review = [r for r in judged if r["qc"] == "review"]
    failed = [r for r in judged if float(r["WT_dice"]) < FAILURE_WT_DICE]
    caught = [r for r in failed if r["qc"] == "review"]
    return (f"QC: {len(review)} of {len(judged)} cases flagged review; {len(failed)} with WT Dice under "
            f"{FAILURE_WT_DICE}, {len(caught)} of them flagged")


def format_table(rows: list[dict[str, float | str]], metrics: tuple[str, ...] = ("dice", "hd95", "lw_dice")) -> str:
    """A compact text table for the terminal: voxel-wise Dice and HD95, lesion-wise Dice per region."""
    cols = [f"{r}_{m}" for m in metrics for r in REGIONS]
    width = max(len(str(r["case"])) for r in rows) + 2
    qc = any(r.get("qc") for r in rows)  # the verdict column, where segment's reports were found
    lines = ["case".ljust(width) + "".join(c.rjust(12) for c in cols) + ("  qc" if qc else "")]
    for r in rows:
        lines.append(str(r["case"]).ljust(width) + "".join(f"{float(r[c]):12.4f}" for c in cols)
                     + (f"  {r.get('qc', '')}" if qc else ""))
    return "\n".join(lines)
