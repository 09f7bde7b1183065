"""A full case at a preset's scale, end to end, the way a clinic runs it: ``spikeseg segment`` in a
fresh process per run (load, preprocess, three views, fuse, uncertainty, write), OpenVINO FP32
and INT8, SNN and twin, each set against the ops / peak lower bound measured in the same run.

Speed and memory do not depend on the weights, so the bundles are exported from freshly
initialised models (seeded) and calibrated on the case itself, without the export's accuracy
check (the manifests say "not checked"): the figures are speed and memory, not accuracy.
The configurations are run in interleaved rounds with a peak probe per round, because this
shared machine's speed drifts by tens of percent within minutes.

    python -m spikeseg.benchmarks.case_latency --case CASE_DIR --preset paper --spacing 1 --out bench/case
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from spikeseg.benchmarks.bench import median_peaks, peak_shares
from spikeseg.cli import add_threads_argument
from spikeseg.export.build import build_bundle
from spikeseg.runtime.atomic import write_json, write_text
from spikeseg.runtime.case_io import find_cases
from spikeseg.runtime.cohort import read_report
from spikeseg.runtime.energy import measure_conv_peaks
from spikeseg.runtime.errors import InputError
from spikeseg.runtime.preprocess import VIEWS
from spikeseg.runtime.tables import refuse_existing_results
from spikeseg.training.run_folder import write_untrained_run

ARCHS = {"SNN": "spiking-useg", "twin": "useg"}
PRECISIONS = ("int8", "fp32")


def fresh_runs(root: Path, arch: str, preset: str, spacing: float, seed: int = 0) -> list[Path]:
    """One run folder per view holding a seeded, untrained model: what ``spikeseg export`` reads."""
    return [write_untrained_run(root / arch / view, arch, view, preset, spacing, seed,
                                "untrained: a speed benchmark").path for view in VIEWS]


def segment_once(bundle: Path, case: Path, out: Path, precision: str, threads: int) -> dict[str, Any]:
    """``spikeseg segment`` in a fresh process (peak memory is the process's); returns its report."""
    cmd = [sys.executable, "-m", "spikeseg.cli", "segment", str(bundle), str(case), str(out), "--backend", "openvino",
           "--precision", precision, "--threads", str(threads), "--overwrite", "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"segment failed ({' '.join(cmd)}):\n{r.stderr}")
    return read_report(out, case.name)


def summarise(name: str, precision: str, reports: list[dict[str, Any]], peaks: dict[str, Any]) -> dict[str, Any]:
    """Median over rounds of the end-to-end and inference seconds, against the bound of the dense
    MACs the reports counted over the slices they ran."""
    views = reports[0]["operations"].values()
    macs = sum(v["dense_macs"] for v in views)
    total = statistics.median(r["seconds"]["total"] for r in reports)
    infer = statistics.median(sum(v for k, v in r["seconds"].items() if k.startswith("view_")) for r in reports)
    shares = peak_shares(macs, infer, precision, peaks)
    bound = shares["bound_s"]
    return {"model": name, "precision": precision, "rounds": len(reports), "total_s": total,
            "total_s_range": [min(r["seconds"]["total"] for r in reports), max(r["seconds"]["total"] for r in reports)],
            "inference_s": infer, "outside_inference_s": total - infer, "outside_share": (total - infer) / total,
            "peak_rss_mb": max(r["peak_rss_mb"] for r in reports), "dense_macs": macs,
            "slices_run": sum(v["slices"] for v in views),
            "air_slices_skipped": sum(v["air_slices_skipped"] for v in views),
            "compute_precision": reports[0]["compute_precision"], **shares,
            "x_bound_end_to_end": total / bound if bound else None}


def markdown(rows: list[dict[str, Any]], peaks: dict[str, Any], preset: str, spacing: float, threads: int,
             case: str) -> str:
    int8_peak = f"{2 * peaks['int8'] / 1e9:.0f}" if peaks.get("int8") else "not measured"
    out = [f"Full case `{case}`, `{preset}` preset on the {spacing:g} mm grid, three views with uncertainty, "
           f"OpenVINO, {threads} threads, `spikeseg segment` in a fresh process per run (median of "
           f"{rows[0]['rounds']} interleaved rounds). This CPU's peaks in the same run (3x3 conv probe): "
           f"FP32 {2 * peaks['fp32'] / 1e9:.0f} GOP/s, INT8 {int8_peak} GOP/s.\n",
           "| model | precision | end to end s | inference s | outside inference | GOP/s | % of its peak | "
           "bound s (ops / peak) | end to end / bound | peak MB | INT8 vs FP32 (end to end) |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    by = {(r["model"], r["precision"]): r for r in rows}
    num = lambda v, f="{:.1f}": "-" if v is None else f.format(v)  # noqa: E731
    for r in rows:
        pct = r["pct_int8_peak"] if r["precision"] == "int8" else r["pct_fp32_peak"]
        fp32 = by.get((r["model"], "fp32"))
        ratio = f"{fp32['total_s'] / r['total_s']:.2f}x" if r["precision"] == "int8" and fp32 else ""
        lo, hi = r["total_s_range"]
        out.append(f"| {r['model']} | {r['precision']} | {r['total_s']:.1f} ({lo:.1f}-{hi:.1f}) | "
                   f"{r['inference_s']:.1f} | {r['outside_inference_s']:.1f} s ({100 * r['outside_share']:.0f} %) | "
                   f"{r['gops']:.0f} | {num(pct, '{:.0f} %')} | {num(r['bound_s'])} | "
                   f"{num(r['x_bound_end_to_end'], '{:.2f}')} | {r['peak_rss_mb']:.0f} | {ratio} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", type=Path, required=True, help="one case folder (BraTS layout), e.g. a full-size phantom")
    p.add_argument("--preset", default="paper")
    p.add_argument("--spacing", type=float, default=1.0, help="model grid in mm (the paper's: 1)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds over the configurations")
    p.add_argument("--calib-items", type=int, default=32, help="INT8 calibration steps per view")
    p.add_argument("--models", default="SNN,twin", help="comma list from SNN,twin")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in --out")
    add_threads_argument(p, "inference threads of every run")
    a = p.parse_args(argv)
    refuse_existing_results(a.out / "case_latency.json", a.overwrite)
    cases = find_cases(a.case)
    if len(cases) != 1:
        raise InputError(a.case, "give one case folder")
    case = cases[0]
    names = [m.strip() for m in a.models.split(",") if m.strip()]
    if not names or any(m not in ARCHS for m in names):
        raise InputError(None, f"--models: choose from {list(ARCHS)}")
    a.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=a.out) as tmp_dir:
        tmp = Path(tmp_dir)
        bundles = {}
        for name in names:
            print(f"exporting a fresh {a.preset} {name} (FP32 + INT8, calibrated on {case.name})", flush=True)
            runs = fresh_runs(tmp / "runs", ARCHS[name], a.preset, a.spacing)
            bundles[name] = build_bundle(runs, tmp / f"{name}.bundle", int8=True, calib=case, threads=a.threads,
                                         calib_items=a.calib_items, check_accuracy=False, log=lambda *_: None)
        reports: dict[tuple[str, str], list[dict]] = {(n, pr): [] for n in names for pr in PRECISIONS}
        probes = []
        for r in range(a.rounds):
            probes.append(measure_conv_peaks(a.threads, seconds=0.3))
            for name, precision in reports:
                rep = segment_once(bundles[name], case, tmp / "seg", precision, a.threads)
                reports[(name, precision)].append(rep)
                print(f"round {r + 1}/{a.rounds} {name} {precision}: {rep['seconds']['total']:.1f} s, "
                      f"peak {rep['peak_rss_mb']:.0f} MB", flush=True)
        peaks = median_peaks(probes)
        rows = [summarise(name, precision, reps, peaks) for (name, precision), reps in reports.items()]
    text = markdown(rows, peaks, a.preset, a.spacing, a.threads, case.name)
    write_text(a.out / "case_latency.md", text)
    write_json(a.out / "case_latency.json", {"rows": rows, "peaks": peaks, "probes": probes, "threads": a.threads})
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
