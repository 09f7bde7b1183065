"""``spikeseg bench``: FP32 vs INT8 vs SNN on the same held-out cases, in one run, on this machine.

For every bundle: torch FP32 (when the bundle's training run is reachable), ONNX Runtime FP32
and INT8, OpenVINO FP32 and INT8, all through the same runtime pipeline (preprocess, views,
fusion), so only the engine differs. Per configuration: Dice and HD95 per region, NLL,
inference latency per case (median of repeats) and its ratio to torch FP32 of the same
architecture measured in this run, achieved GOP/s as a share of this CPU's FP32 and INT8
peaks (a convolution probe, measured in the same run) and the ops/peak lower bound, peak
memory, MACs/ACs and energy per hardware profile. Ratios, not absolute timings, are what carry
over to another machine. Every model is also set against the twin (``useg``) on the same backend
and precision, case by case: the Dice gap with a paired bootstrap interval over the cases, since
a few held-out cases move an ET gap by points.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spikeseg.benchmarks.commands import BACKENDS
from spikeseg.benchmarks.paired_gap import gap_rows
from spikeseg.runtime.atomic import write_text
from spikeseg.runtime.bundle import Bundle, load_bundle
from spikeseg.runtime.case_io import find_cases
from spikeseg.runtime.energy import energy_table, measure_conv_peaks
from spikeseg.runtime.ensemble import fuse
from spikeseg.runtime.inference import open_engine, run_view
from spikeseg.runtime.labels import REGIONS, labels_to_regions
from spikeseg.runtime.metrics import dice, nll, region_scores, undefined_regions
from spikeseg.runtime.preprocess import load_model_space, to_native_space
from spikeseg.runtime.opcount import view_operations
from spikeseg.runtime.system import peak_rss_mb, reset_peak_rss
from spikeseg.runtime.tables import rows_to_csv


@dataclass
class Config:
    bundle: Bundle
    backend: str
    precision: str

    @property
    def label(self) -> str:
        return f"{self.bundle.architecture} {self.backend} {self.precision}"


def _engines(cfg: Config, threads: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per view, the deployed engine (counters pruned) and the counting one."""
    deployed, counting = {}, {}
    for view in cfg.bundle.views:
        if cfg.backend == "torch":
            from spikeseg.snn.graphs import TorchEngine
            from spikeseg.training.run_folder import load_run
            model, _, _ = load_run(cfg.bundle.view(view).training_run)  # read once, wrapped twice
            deployed[view] = TorchEngine(model, cfg.bundle.view(view), threads, counting=False)
            counting[view] = TorchEngine(model, cfg.bundle.view(view), threads, counting=True)
        else:
            deployed[view] = open_engine(cfg.bundle, view, cfg.backend, cfg.precision, threads, counting=False)
            counting[view] = open_engine(cfg.bundle, view, cfg.backend, cfg.precision, threads, counting=True)
    return deployed, counting


def _torch_available(bundle: Bundle) -> bool:
    import importlib.util
    if importlib.util.find_spec("torch") is None:
        return False
    runs = [bundle.view(v).training_run for v in bundle.views]
    from spikeseg.training.run_folder import RunFolder

    return all(r and RunFolder(Path(r)).best.is_file() for r in runs)


def evaluate_config(cfg: Config, cases: list[tuple[Any, np.ndarray, Any]], threads: int,
                    repeats: int) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Counts from one pass of the counting graphs, accuracy and time from ``repeats`` passes of
    the deployed ones (the counters pruned, as a clinical case runs). Returns the results row and
    the per-case Dice (``dice_<region>``) that the gap to the twin pairs."""
    reset_peak_rss()
    engines, counters = _engines(cfg, threads)
    scores: dict[str, list[float]] = {f"{m}_{r}": [] for m in ("dice", "hd95") for r in REGIONS}
    count_keys = ("dense_macs", "effective_macs", "effective_acs", "membrane_updates")
    nlls, latencies, totals = [], [], dict.fromkeys(count_keys, 0.0)
    per_view_counts: dict[str, dict[str, float]] = {}
    per_view: dict[str, list[float]] = {}
    for case, image, space in cases:
        times, probs = [], []
        for view in cfg.bundle.views:
            c = view_operations(cfg.bundle.view(view), run_view(counters[view], cfg.bundle.view(view), image, view))
            agg = per_view_counts.setdefault(view, dict.fromkeys(count_keys + ("slices",), 0.0))
            for k in agg:
                agg[k] += c[k]
        for _ in range(repeats):
            t = 0.0
            probs = []
            for view in cfg.bundle.views:
                res = run_view(engines[view], cfg.bundle.view(view), image, view)
                t += res.seconds
                probs.append(res.prob)
            times.append(t)
        latencies.append(statistics.median(times))
        prob = to_native_space(fuse(probs), space)
        ref = labels_to_regions(case.label, case.files.convention)
        if len(probs) > 1:  # each view alone, as in the paper's Tables 1-2
            for view, p in zip(cfg.bundle.views, probs):
                p = to_native_space(p, space)
                per_view.setdefault(f"nll_{view}", []).append(nll(p, ref))
                per_view.setdefault(f"dice_WT_{view}", []).append(dice(p[2] >= 0.5, ref[2]))
        for k, v in region_scores(prob, ref, case.spacing).items():
            scores[k].append(v)
        nlls.append(nll(prob, ref))
    n = len(cases)
    counts = {v: {k: val / n for k, val in c.items()} for v, c in per_view_counts.items()}
    for c in counts.values():
        for k in totals:
            totals[k] += c[k]
    latency = statistics.median(latencies)
    row = {"config": cfg.label, "architecture": cfg.bundle.architecture, "backend": cfg.backend,
           "precision": cfg.precision, "compute_precision": next(iter(engines.values())).compute_precision,
           **{k: float(np.nanmean(v)) for k, v in scores.items()},
           "undefined_regions": undefined_regions(scores),
           "nll": float(np.mean(nlls)), **{k: float(np.nanmean(v)) for k, v in per_view.items()},
           "latency_s": latency, "peak_rss_mb": peak_rss_mb(),
           **totals}
    energy = energy_table(counts, {v: cfg.bundle.view(v) for v in counts},
                          "int8" if cfg.precision == "int8" else "fp32")
    for name, e in energy.items():
        row[f"energy_j_{name}"] = e["joules_per_case"]
    return row, {f"dice_{r}": scores[f"dice_{r}"] for r in REGIONS}


def median_peaks(probes: list[dict[str, Any]]) -> dict[str, float | None]:
    """The median FP32 and INT8 peaks over probes taken in one run (``measure_conv_peaks``); a
    precision some probe could not measure is None."""
    return {k: statistics.median(p[k] for p in probes) if all(p[k] for p in probes) else None
            for k in ("fp32", "int8")}


def peak_shares(dense_macs: float, seconds: float, precision: str, peaks: dict[str, Any]) -> dict[str, float | None]:
    """Achieved GOP/s, its share of the measured FP32 and INT8 peaks, and the ops/peak lower
    bound for the case at the row's precision (torch and FP32 rows against the FP32 peak)."""
    gops = 2 * dense_macs / seconds / 1e9
    peak = peaks.get("int8") if precision == "int8" else peaks.get("fp32")
    bound = dense_macs / peak if peak else None
    return {"gops": gops,
            "pct_fp32_peak": 100 * gops * 1e9 / (2 * peaks["fp32"]) if peaks.get("fp32") else None,
            "pct_int8_peak": 100 * gops * 1e9 / (2 * peaks["int8"]) if peaks.get("int8") else None,
            "bound_s": bound, "x_bound": seconds / bound if bound else None}


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def to_markdown(rows: list[dict[str, Any]], peaks: dict[str, Any], threads: int, n_cases: int) -> str:
    cols = ["config", "dice_ET", "dice_TC", "dice_WT", "hd95_WT", "nll", "latency_s", "x_vs_torch",
            "gops", "pct_fp32_peak", "pct_int8_peak", "bound_s", "x_bound", "peak_rss_mb", "dense_macs",
            "effective_acs", "membrane_updates", "energy_j_asic-45nm", "energy_j_rpi4-cortex-a72", "energy_j_loihi"]
    int8 = f"{2 * peaks['int8'] / 1e9:.0f}" if peaks.get("int8") else "not measured"
    fp32 = f"{2 * peaks['fp32'] / 1e9:.0f}" if peaks.get("fp32") else "not measured"
    head = (f"{n_cases} held-out cases, {threads} threads. This CPU's peaks, measured in this run (a 3x3 conv "
            f"through OpenVINO at {threads} threads): FP32 {fp32} GOP/s, INT8 {int8} GOP/s "
            f"(kernel {peaks.get('int8_kernel') or '-'}). latency = inference per case (all views, median of "
            f"repeats); x_vs_torch = torch FP32 latency of the same architecture / this latency; gops = 2 x dense "
            f"MACs / latency; pct_*_peak = gops as a share of each peak; bound_s = dense MACs / the peak of the "
            f"row's precision, the fastest this case could run; x_bound = latency / bound_s.\n\n")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    return head + "\n".join(lines) + "\n"


def per_view_markdown(rows: list[dict[str, Any]]) -> str:
    """Each view alone vs the ensemble (the paper's Tables 1 and 2): WT Dice and NLL."""
    views = list(dict.fromkeys(k[len("nll_"):] for r in rows for k in r if k.startswith("nll_")))
    if not views:
        return ""
    lines = ["", "Each view alone vs the three-view ensemble (WT Dice / NLL):", "",
             "| config | " + " | ".join(views) + " | ensemble |", "|" + "---|" * (len(views) + 2)]
    for r in rows:
        if f"nll_{views[0]}" not in r:  # a volume model has no views
            continue
        cells = [f"{r[f'dice_WT_{v}']:.3f} / {r[f'nll_{v}']:.4f}" for v in views]
        lines.append(f"| {r['config']} | " + " | ".join(cells) + f" | {r['dice_WT']:.3f} / {r['nll']:.4f} |")
    return "\n".join(lines) + "\n"


def twin_gap_markdown(rows: list[dict[str, Any]], per_case: dict[str, dict[str, list[float]]]) -> str:
    """Every other model against the twin (``useg``) on the same backend, precision and cases:
    is the demo's gap larger than the choice of its few cases would move it?"""
    twins = {(r["backend"], r["precision"]): r["config"] for r in rows if r["architecture"] == "useg"}
    others = [r for r in rows if r["architecture"] != "useg" and (r["backend"], r["precision"]) in twins]
    if not others:
        return ""
    header = ("Gap to the twin (useg) on the same backend and precision (twin minus model, Dice points; "
              "95 % paired bootstrap interval over the cases; cases where the model is behind):")
    pairs = [(r["config"], per_case[twins[(r["backend"], r["precision"])]], per_case[r["config"]]) for r in others]
    return "\n".join(["", header, "", *gap_rows(pairs, REGIONS, label="config")]) + "\n"


def plots(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    names = [k[len("energy_j_"):] for k in rows[0] if k.startswith("energy_j_")]
    names = [n for n in names if any(r.get(f"energy_j_{n}") for r in rows)]
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        for r in rows:
            e = r.get(f"energy_j_{name}")
            if e:
                ax.scatter(e, r["dice_WT"], label=r["config"])
        ax.set_xscale("log")
        ax.set_title(name)
        ax.set_xlabel("energy per case (J)")
        ax.set_ylabel("WT Dice")
    axes[0][-1].legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    p = out / "accuracy_vs_energy.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    written.append(p)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.barh([r["config"] for r in rows], [r["latency_s"] for r in rows])
    ax.set_xlabel("inference seconds per case (median)")
    fig.tight_layout()
    p = out / "latency.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    written.append(p)
    return written


def _preprocess_key(bundle: Bundle) -> str:
    return json.dumps(bundle.preprocess.to_dict(), sort_keys=True)


def run_bench(data: Path, bundle_paths: list[Path], out: Path, threads: int = 2, repeats: int = 1,
              max_cases: int | None = None, training: str | None = None, overwrite: bool = False,
              log=print, backends: tuple[str, ...] = BACKENDS) -> list[dict[str, Any]]:
    from spikeseg.runtime.errors import InputError

    if (out / "results.csv").exists() and not overwrite:
        raise InputError(out, "results exist; pass --overwrite to replace them")
    out.mkdir(parents=True, exist_ok=True)
    bundles = [load_bundle(b) for b in bundle_paths]
    case_dirs = find_cases(data)[:max_cases]
    log(f"loading {len(case_dirs)} cases")
    prepared: dict[str, list] = {}  # one preprocessing of the cases per distinct preprocessing record
    for b in bundles:
        key = _preprocess_key(b)
        if key in prepared:
            continue
        prepared[key] = []
        for d in case_dirs:
            m = load_model_space(d, b.preprocess, label="required")
            prepared[key].append((m.case, m.image, m.space))
    configs = []
    for b in bundles:
        if "torch" in backends and _torch_available(b):
            configs.append(Config(b, "torch", "fp32"))
        for backend in (x for x in ("onnxruntime", "openvino") if x in backends):
            for precision in ("fp32", "int8"):
                try:
                    b.model_file(b.views[0], "onnx" if backend == "onnxruntime" else "openvino", precision)
                except InputError:
                    continue
                configs.append(Config(b, backend, precision))
    rows, per_case = [], {}
    for cfg in configs:
        t0 = time.perf_counter()
        row, per_case[cfg.label] = evaluate_config(cfg, prepared[_preprocess_key(cfg.bundle)], threads, repeats)
        rows.append(row)
        log(f"{cfg.label:<34} WT Dice {row['dice_WT']:.3f}  {row['latency_s']:.2f} s/case  "
            f"peak {row['peak_rss_mb']:.0f} MB  ({time.perf_counter() - t0:.0f} s)")
    peaks = measure_conv_peaks(threads)
    for r in rows:
        base = [x for x in rows if x["architecture"] == r["architecture"] and x["backend"] == "torch"]
        r["x_vs_torch"] = base[0]["latency_s"] / r["latency_s"] if base else None
        r.update(peak_shares(r["dense_macs"], r["latency_s"], r["precision"], peaks))
    md = to_markdown(rows, peaks, threads, len(case_dirs)) + per_view_markdown(rows) + twin_gap_markdown(rows, per_case)
    if training:
        from spikeseg.benchmarks.train_memory import markdown, run as run_train
        slices = [int(s) for s in training.split(",")]
        trows = run_train(slices, log=log)
        md += "\n" + markdown(trows, 4, 80, 96, 1, "tiny")
    write_text(out / "results.csv", rows_to_csv(rows))
    write_text(out / "results.md", md)
    plots(rows, out)
    log(md)
    return rows
