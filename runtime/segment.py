"""``spikeseg segment``: a case folder (or a cohort) in; segmentation, uncertainty, report out.

Per case, in ``OUT/<case>/`` (assembled in a hidden temporary folder and renamed into place,
so a failed case leaves nothing behind):

- ``<case>_pred.nii.gz``: uint8 labels in the input's convention and exact geometry (never
  ``_seg``, the name of a BraTS reference label map);
- ``<case>_uncertainty.nii.gz``: float32, per voxel the largest standard deviation across the
  view models of the ET/TC/WT probabilities (0 = views agree; at most 0.5). Only with 2+ views;
- ``<case>_prob.nii.gz`` (``--save-prob``): float32 ET/TC/WT fused probabilities, 4D;
- ``<case>_report.json``: timings per stage, peak memory, operations, spike rates, volumes;
- ``<case>_quicklook.png`` (``--png``).
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from runtime import __version__
from runtime.atomic import atomic_dir, write_json
from runtime.bundle import Bundle, load_bundle
from runtime.case_io import Case, load_case, save_like
from runtime.cohort import (SUMMARY, CohortCase, case_lock, check_output_apart, check_writable, discover,
                            parse_shard, prediction_name, record_outcome, report_name, shard_of, write_summary)
from runtime.energy import energy_table
from runtime.ensemble import fuse, uncertainty_map
from runtime.errors import InputError
from runtime.inference import ViewResult, open_engine, run_view
from runtime.labels import REGIONS, labels_to_regions, regions_to_labels, relabel_small_et
from runtime.preprocess import parse_views, to_model_space, to_native_space


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM, so each case gets its own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    try:
        import resource  # POSIX only: the runtime must still start on Windows
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    except ImportError:
        import psutil
        info = psutil.Process().memory_info()
        return getattr(info, "peak_wset", info.rss) / 2**20


def view_operations(info: dict[str, Any], res: ViewResult) -> dict[str, Any]:
    """Per-view counts for one case: dense MACs, effective MACs (analog input), ACs (spikes),
    membrane updates (NeuroBench's count, and the dense count a clocked chip pays)."""
    layers = {l["name"]: l for l in info["layers"]}
    eff_macs = sum(v for n, v in res.ops.items() if not layers[n]["spike_input"])
    acs = sum(v for n, v in res.ops.items() if layers[n]["spike_input"])
    numel = {n: float(np.prod(s)) * res.slices for n, s in info["activation_shapes"].items()}
    rates = {n: res.acts[n] / numel[n] for n in res.acts}
    total_act = sum(res.acts.values())
    return {"slices": res.slices, "dense_macs": float(info["dense_macs_per_slice"] * res.slices),
            "membrane_updates": sum(res.mems.values()),
            "membrane_updates_dense": sum(numel[n] for n in res.mems),
            "effective_macs": float(eff_macs), "effective_acs": float(acs),
            "activation_rates": rates,
            "activation_sparsity": 1.0 - total_act / sum(numel.values()) if numel else None,
            "per_layer_ops": res.ops, "per_layer_membrane_updates": res.mems}


class Segmenter:
    """Engines compiled once, then any number of cases."""

    def __init__(self, bundle: Bundle, backend: str, precision: str, views: list[str], threads: int,
                 et_min_voxels: int = 0) -> None:
        self.bundle, self.backend, self.precision, self.views = bundle, backend, precision, views
        self.threads, self.et_min_voxels = threads, et_min_voxels
        self.params = bundle.preprocess
        t0 = time.perf_counter()
        self.engines = {v: open_engine(bundle, v, backend, precision, threads) for v in views}
        self.compile_seconds = time.perf_counter() - t0

    def run(self, case_dir: Path, out_root: Path, png: bool, save_prob: bool) -> dict[str, Any]:
        """Segment one case into ``out_root/<case id>/``, replacing what is there (the caller
        decides whether that is allowed and holds the case's lock)."""
        reset_peak_rss()
        times: dict[str, float] = {}
        t_all = time.perf_counter()
        t = time.perf_counter()
        case = load_case(case_dir, with_label=False)
        times["load"] = time.perf_counter() - t
        t = time.perf_counter()
        image, space = to_model_space(case.image, case.spacing, self.params)
        times["preprocess"] = time.perf_counter() - t
        view_probs, operations = [], {}
        for view in self.views:
            res = run_view(self.engines[view], self.bundle.view_info(view), image, view)
            times[f"view_{view}"] = res.seconds
            view_probs.append(res.prob)
            operations[view] = view_operations(self.bundle.view_info(view), res)
        t = time.perf_counter()
        fused = fuse(view_probs)
        prob = to_native_space(fused, space)
        unc = to_native_space(uncertainty_map(view_probs)[None], space)[0] if len(view_probs) > 1 else None
        conv = case.files.convention
        labels = regions_to_labels(prob >= 0.5, conv)
        relabelled = 0
        if self.et_min_voxels:
            labels, relabelled = relabel_small_et(labels, conv, self.et_min_voxels)
        times["fuse"] = time.perf_counter() - t
        report = self._report(case, times, operations, labels, unc, relabelled)
        with atomic_dir(out_root / case.case_id) as tmp:
            t = time.perf_counter()
            self._write_images(case, tmp, labels, prob, unc, png, save_prob)
            times["write"] = time.perf_counter() - t
            times["total"] = time.perf_counter() - t_all
            report["peak_rss_mb"] = peak_rss_mb()
            write_json(tmp / report_name(case.case_id), report)
        return report

    def _report(self, case: Case, times, operations, labels, unc, relabelled) -> dict[str, Any]:
        conv = case.files.convention
        voxel_ml = float(np.prod(case.spacing)) / 1000.0
        regions = labels_to_regions(labels, conv)
        volumes = {r: float(regions[i].sum()) * voxel_ml for i, r in enumerate(REGIONS)}
        wt = regions[2]
        engine = next(iter(self.engines.values()))
        return {
            "case": case.case_id, "spikeseg_version": __version__,
            "bundle": {"path": str(self.bundle.root), "sha256": self.bundle.checksum,
                       "architecture": self.bundle.architecture},
            "backend": self.backend, "precision": self.precision,
            "compute_precision": engine.compute_precision, "threads": self.threads,
            "cpu": cpu_model(), "machine": platform.machine(),
            "views": self.views,
            "uncertainty": ("max over ET/TC/WT of the std across views" if unc is not None
                            else "not available: a single view gives no ensemble spread"),
            "mean_uncertainty_in_wt": float(unc[wt].mean()) if unc is not None and wt.any() else None,
            "volumes_ml": volumes, "label_convention": conv.name,
            "postprocessing": ({"et_min_voxels": self.et_min_voxels, "relabelled_voxels": relabelled}
                               if self.et_min_voxels else None),
            "seconds": times, "engine_compile_seconds": self.compile_seconds,
            "operations": operations,
            "energy": energy_table(operations, {v: self.bundle.view_info(v) for v in operations}, self.precision),
        }

    @staticmethod
    def _write_images(case: Case, folder: Path, labels, prob, unc, png: bool, save_prob: bool) -> None:
        g = case.geometry
        save_like(labels, g, folder / prediction_name(case.case_id), np.uint8)
        if unc is not None:
            save_like(unc, g, folder / f"{case.case_id}_uncertainty.nii.gz", np.float32)
        if save_prob:
            save_like(prob, g, folder / f"{case.case_id}_prob.nii.gz", np.float32)
        if png:
            from runtime.quicklook import quicklook
            quicklook(folder / f"{case.case_id}_quicklook.png", case.image[3], labels,
                      unc if unc is not None else np.zeros(labels.shape, np.float32), case.files.convention)


def segment(bundle_path: Path, input_path: Path, out: Path, backend: str = "openvino", precision: str = "fp32",
            views: str = "all", threads: int = 2, png: bool = False, save_prob: bool = False,
            overwrite: bool = False, et_min_voxels: int = 0, progress: bool = True,
            shard: str | None = None) -> int:
    """Segment one case or a cohort; returns the exit status (1 if a case this process ran failed).

    Everything that can be refused is refused before the engines are compiled: the bundle, an
    output folder that overlaps the input, an output folder that cannot be written."""
    from tqdm import tqdm

    bundle = load_bundle(bundle_path)
    chosen = bundle.views if views == "all" else parse_views(views)
    input_path, out = Path(input_path), Path(out)
    cases = discover(input_path)
    single = len(cases) == 1 and cases[0].folder == input_path
    check_output_apart(out, input_path, cases)
    if single and cases[0].error:
        raise InputError(None, cases[0].error)
    if single and not overwrite and (out / cases[0].case_id).exists():
        raise InputError(out / cases[0].case_id, "output exists; pass --overwrite to replace it")
    mine = shard_of(cases, parse_shard(shard))
    check_writable(out)
    seg = Segmenter(bundle, backend, precision, chosen, threads, et_min_voxels)
    outcomes: dict[Path, tuple[str, str]] = {}
    for case in tqdm(mine, desc="segment", unit="case", disable=not progress or single):
        outcomes[case.folder] = status = _run_case(seg, case, out, overwrite, png, save_prob, single)
        if not single:
            record_outcome(out, case, *status)
        if status[0] in ("failed", "busy"):
            tqdm.write(f"{case.name}: {'FAILED' if status[0] == 'failed' else 'busy'}: {status[1]}")
    if single:
        return 0
    rows = write_summary(out, cases, outcomes)
    counts = {k: sum(1 for r in rows if r["status"] == k) for k in ("ok", "failed", "busy", "pending")}
    fresh = sum(1 for st, _ in outcomes.values() if st == "ok")
    print(f"{fresh} segmented, {counts['ok'] - fresh} done earlier, {counts['busy']} in progress elsewhere, "
          f"{counts['pending']} pending, {counts['failed']} failed; summary: {out / SUMMARY}")
    return 1 if any(st == "failed" for st, _ in outcomes.values()) else 0  # this process's own cases


def _run_case(seg: Segmenter, case: CohortCase, out: Path, overwrite: bool, png: bool, save_prob: bool,
              single: bool) -> tuple[str, str]:
    """(status, message) of one case; a bad case raises only when it is the whole input."""
    if case.error:
        return "failed", case.error
    with case_lock(out, case.case_id) as mine:
        if not mine:
            return "busy", "another process is segmenting it"
        if (out / case.case_id).exists() and not overwrite:
            return "done", "output exists; --overwrite to redo"
        try:
            rep = seg.run(case.folder, out, png, save_prob)
        except InputError as exc:
            if single:
                raise
            return "failed", str(exc)
    v = rep["volumes_ml"]
    line = (f"{rep['case']}: ok {rep['seconds']['total']:.1f}s peak {rep['peak_rss_mb']:.0f} MB "
            f"WT {v['WT']:.1f} mL TC {v['TC']:.1f} mL ET {v['ET']:.1f} mL")
    if single:
        print(line)
    else:
        from tqdm import tqdm
        tqdm.write(line)
    return "ok", ""
