"""Uncertainty-guided 2D-to-3D refinement, one run: is the 3D model worth running where the 2D
model is unsure, and what does it cost?

``python -m spikeseg.benchmarks.refinement --data TEST --twin B2D --snn BSNN --refiner B3D --out DIR``
segments the same held-out cases with the torch-free runtime (``spikeseg segment``, one
configuration per row) and scores them with ``spikeseg evaluate``'s metrics:

- 2D: the twin's axial view alone, and over N spherical projections (the seed's 2D model);
- 3D: the refiner everywhere (sliding window, mirrored copies);
- 2D projections + refinement (the seed's method);
- the Spiking U-Seg-Net's 3-view ensemble alone, and + refinement (its views' uncertainty as the guide).

Per row: Dice and HD95 per region, seconds per case (the models' compute, as each report times
it), share of the brain refined, 3D compute saved against running it everywhere, and dense MACs
per case (guide + refiner). The refiner must hold fusions fitted for both guides
(``spikeseg export RUN3D --refine-guide B2D:projections --refine-guide BSNN:views``). Writes
``OUT/results.md`` and ``OUT/results.csv``; the segmentations stay in ``OUT/<row>/``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from spikeseg.runtime.bundle import load_bundle
from spikeseg.runtime.cohort import read_report, report_path
from spikeseg.runtime.evaluate import evaluate_dirs, summarise
from spikeseg.runtime.labels import REGIONS
from spikeseg.runtime.options import SegmentOptions
from spikeseg.runtime.segment import segment
from spikeseg.runtime.tables import write_results

COMPUTE = ("view_", "refine")  # report timings that are model compute (not load, preprocess, write)


def rows(a: argparse.Namespace) -> list[tuple[str, Path, dict]]:
    """(label, guide bundle, segment options) per row."""
    k = a.projections
    return [("2D twin, axial", a.twin, {"views": ("axial",)}),
            (f"2D twin, axial x {k} projections", a.twin, {"views": ("axial",), "projections": k}),
            ("3D everywhere", a.refiner, {}),
            ("2D twin projections + 3D refinement", a.twin, {"refine": a.refiner, "guide_mode": "projections"}),
            ("SNN 3 views", a.snn, {}),
            ("SNN 3 views + 3D refinement", a.snn, {"refine": a.refiner, "guide_mode": "views"})]


def case_figures(folder: Path) -> dict[str, float]:
    """Means over the cases' reports."""
    reports = [read_report(folder, d.name) for d in sorted(folder.iterdir()) if report_path(folder, d.name).is_file()]
    secs = [sum(v for k, v in r["seconds"].items() if k.startswith(COMPUTE)) for r in reports]
    macs = [sum(o["dense_macs"] for o in r["operations"].values()) for r in reports]
    ref = [r.get("refinement") for r in reports]
    return {"seconds": float(np.mean(secs)), "dense_macs": float(np.mean(macs)),
            "refined": float(np.mean([x["fraction_of_brain_refined"] for x in ref])) if ref[0] else float("nan"),
            "saved": float(np.mean([x["compute_saved"] for x in ref])) if ref[0] else float("nan")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="held-out cases with reference labels")
    p.add_argument("--twin", type=Path, required=True, help="the 2D bundle whose axial view the projections run")
    p.add_argument("--snn", type=Path, required=True, help="the Spiking U-Seg-Net bundle (3 views)")
    p.add_argument("--refiner", type=Path, required=True, help="the 3D bundle with fusions fitted for both guides")
    p.add_argument("--projections", type=int, default=None,
                   help="for the 2D projection row (default: the count the refiner's fit used)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--backend", choices=["openvino", "onnxruntime"], default="openvino")
    p.add_argument("--precision", choices=["fp32", "int8"], default="fp32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--overwrite", action="store_true", help="replace OUT")
    a = p.parse_args(argv)
    if a.out.exists() and not a.overwrite:
        sys.exit(f"{a.out}: exists; pass --overwrite to replace it")
    if a.projections is None:
        fits = load_bundle(a.refiner).manifest.refinement
        a.projections = next((f.projections for f in fits if f.mode == "projections"), 16)
    table = []
    for i, (label, bundle, options) in enumerate(rows(a)):
        folder = a.out / f"row{i}"
        print(f"-- {label}", flush=True)
        segment(bundle, a.data, folder, SegmentOptions(backend=a.backend, precision=a.precision, threads=a.threads,
                                                       **options), overwrite=True)
        scored, failures = evaluate_dirs(folder, a.data)
        if failures:
            sys.exit(f"{label}: could not score {failures}")
        mean = summarise(scored)[0]
        table.append({"model": label, **{f"dice_{r}": mean[f"{r}_dice"] for r in REGIONS},
                      **{f"hd95_{r}": mean[f"{r}_hd95"] for r in REGIONS}, **case_figures(folder)})
    lines = [f"# Uncertainty-guided refinement: {len(scored)} cases of {a.data}, {a.backend} {a.precision}, "
             f"{a.threads} threads", "",
             "| model | Dice ET | Dice TC | Dice WT | HD95 ET | HD95 TC | HD95 WT | s/case | brain refined "
             "| 3D compute saved | dense MACs/case |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        pct = lambda x: "-" if np.isnan(x) else f"{100 * x:.0f} %"  # noqa: E731
        lines.append(f"| {r['model']} | {r['dice_ET']:.3f} | {r['dice_TC']:.3f} | {r['dice_WT']:.3f} | "
                     f"{r['hd95_ET']:.1f} | {r['hd95_TC']:.1f} | {r['hd95_WT']:.1f} | {r['seconds']:.2f} | "
                     f"{pct(r['refined'])} | {pct(r['saved'])} | {r['dense_macs']:.2e} |")
    write_results(a.out, "\n".join(lines) + "\n", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
