"""``spikeseg segment``: a case folder (or a cohort) in; segmentation, uncertainty, report out.

Per case, in ``OUT/<case>/`` (assembled in a hidden temporary folder and renamed into place,
so a failed case leaves nothing behind):

- ``<case>_pred.nii.gz``: uint8 labels in the input's convention and exact geometry (never
  ``_seg``, the name of a BraTS reference label map);
- ``<case>_uncertainty.nii.gz``: per voxel the largest standard deviation across the
  ensemble's members (the view models; with ``--projections N`` every view's N spherical
  projections; for a volume model its mirrored copies) of the ET/TC/WT probabilities
  (0 = they agree; at most 0.5), stored as uint16 with a NIfTI scale factor (viewers show the
  values; steps of 7.6e-6). Only with 2+ members;
- ``<case>_prob.nii.gz`` (``--save-prob``): float32 ET/TC/WT fused probabilities, 4D;
- ``<case>_report.json``: timings per stage, peak memory, dense MACs (with ``--count-ops``:
  synaptic operations, spike rates and membrane updates, counted in the graph), volumes; with
  ``--refine BUNDLE3D`` the cubes refined, the share of the brain they cover and the 3D
  compute saved against running the 3D model everywhere (:mod:`spikeseg.runtime.guide`);
- ``<case>_quicklook.png`` (``--png``).
"""

from __future__ import annotations

import contextlib
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from spikeseg.runtime import __version__
from spikeseg.runtime.atomic import atomic_dir, write_json
from spikeseg.runtime.bundle import Bundle, load_bundle
from spikeseg.runtime.case_io import Case, load_case, save_like
from spikeseg.runtime.cohort import (SUMMARY, CohortCase, DiskFull, case_lock, check_output_apart, check_writable,
                                     discover, is_disk_full, parse_shard, prediction_name, record_outcome, report_name,
                                     report_qc, shard_of, summary_rows, write_summary)
from spikeseg.runtime.energy import energy_table
from spikeseg.runtime.errors import InputError
from spikeseg.runtime.guide import GuideResult, Refined, Refiner, fitted_refinement, guide_steps, run_guide
from spikeseg.runtime.guide import refine as refine_case
from spikeseg.runtime.inference import open_engine
from spikeseg.runtime.labels import REGIONS, labels_to_regions, regions_to_labels, relabel_small_et
from spikeseg.runtime.opcount import view_operations
from spikeseg.runtime.preprocess import model_space, parse_views
from spikeseg.runtime.projections import CAP_DEGREES
from spikeseg.runtime.qc import QCResult, measure_case, unchecked
from spikeseg.runtime.refine import GUIDE_MODES
from spikeseg.runtime.system import cpu_model, machine, peak_rss_mb, reset_peak_rss


#: The uncertainty map's storage step: uint16 with this NIfTI scale factor covers 0..0.5 (the
#: largest possible spread) in steps of 7.6e-6. Float32 noise in the mantissas made the map
#: compress 2:1 and cost 0.8 s to write for a 240x240x155 case; as uint16 it is 0.1 s and 10:1.
UNCERTAINTY_STEP = 0.5 / 65535
#: The exit status of ``--qc-strict`` when a case this process segmented needs review (no case failed).
EXIT_REVIEW = 3
#: A case's status when the output's disk filled up while it was written: the run stops there.
DISK_FULL_STATUS = "disk full"


class Segmenter:
    """Engines compiled once, then any number of cases."""

    def __init__(self, bundle: Bundle, backend: str, precision: str, views: list[str] | None, threads: int,
                 et_min_voxels: int = 0, progress: bool = False, count_ops: bool = False,
                 projections: int = 0, refine: Bundle | None = None, guide_mode: str | None = None) -> None:
        """``views`` None: the bundle's (or, with ``refine``, those the fusion was fitted with);
        ``projections``: run each view over that many spherical projections (0: as it is);
        ``refine``: a 3D bundle holding a fusion fitted for this bundle (``guide_mode`` picks
        between its fits: views or projections), which then also fixes views and projections."""
        self.refiner = None
        if refine is not None:
            self.refiner = Refiner(refine, bundle, backend, precision, threads, guide_mode, views, projections)
            views, projections = list(self.refiner.spec.views), self.refiner.spec.projections
        self.cap_degrees = self.refiner.spec.cap_degrees if self.refiner else CAP_DEGREES
        self.bundle, self.backend, self.precision = bundle, backend, precision
        self.views = bundle.views if views is None else views
        self.projections = projections
        self.threads, self.et_min_voxels, self.count_ops = threads, et_min_voxels, count_ops
        self.progress = progress and sys.stderr.isatty()  # a bar only where someone watches
        self.params = bundle.preprocess
        self.qc_reference = bundle.qc
        t0 = time.perf_counter()
        self.engines = {v: open_engine(bundle, v, backend, precision, threads, counting=count_ops) for v in self.views}
        self.compile_seconds = time.perf_counter() - t0 + (self.refiner.compile_seconds if self.refiner else 0.0)

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
        prepared = model_space(case, self.params)
        image, space = prepared.image, prepared.space
        times["preprocess"] = time.perf_counter() - t
        steps = guide_steps(self.bundle, self.views, image, self.projections)
        unit = "patch" if self.bundle.view(self.views[0]).window else "slice"
        with tqdm(total=steps, desc=f"{case.case_id} ({len(self.views)} {'views' if unit == 'slice' else 'model'})",
                  unit=unit, leave=False, disable=not self.progress) as bar:
            guide = run_guide(self.engines, self.bundle, self.views, image, self.projections, bar.update,
                              entropy=self.refiner is not None, cap_degrees=self.cap_degrees)
            operations = {v: view_operations(self.bundle.view(v), res) for v, res in guide.results.items()}
            times.update({f"view_{v}": res.seconds for v, res in guide.results.items()})
            refined = None
            if self.refiner is not None:
                refined = self._refine(case, guide, image, times, bar)
                operations["refiner"] = view_operations(self.refiner.view_spec, refined.result)
        t = time.perf_counter()
        prob, unc = guide.native(space, refined.prob if refined is not None else None)
        conv = case.files.convention
        labels = regions_to_labels(prob >= 0.5, conv)
        relabelled = 0
        if self.et_min_voxels:
            labels, relabelled = relabel_small_et(labels, conv, self.et_min_voxels)
        times["fuse"] = time.perf_counter() - t
        report = self._report(case, times, operations, labels, unc, relabelled, guide)
        qc = self.check(case, image, prob, unc)
        report["qc"] = qc.to_dict()
        if refined is not None:
            report["refinement"] = self._refinement_report(refined, image)
        with atomic_dir(out_root / case.case_id) as tmp:
            t = time.perf_counter()
            self._write_images(case, tmp, labels, prob, unc, png, save_prob, qc.verdict)
            times["write"] = time.perf_counter() - t
            times["total"] = time.perf_counter() - t_all
            report["peak_rss_mb"] = peak_rss_mb()
            write_json(tmp / report_name(case.case_id), report)
        return report

    def check(self, case: Case, image: np.ndarray, prob: np.ndarray, unc: np.ndarray | None) -> QCResult:
        """The case's QC verdict against the bundle's reference (:mod:`spikeseg.runtime.qc`)."""
        if self.qc_reference is None:
            return unchecked("the bundle carries no QC reference (exported before spikeseg 0.3): re-export it")
        return self.qc_reference.verdict(measure_case(case.image, case.spacing, image, prob, unc))

    def _refine(self, case: Case, guide: GuideResult, image: np.ndarray, times: dict[str, float], bar) -> Refined:
        """The 3D model on the guide's most uncertain cubes; the case is normalised the 3D
        bundle's way when that differs from the guide's (same grid: checked on opening)."""
        ref = self.refiner
        assert ref is not None
        t = time.perf_counter()
        image3d = image if ref.params == self.params else model_space(case, ref.params).image
        times["preprocess_refiner"] = time.perf_counter() - t
        bar.set_postfix_str("refine")
        refined = refine_case(guide, ref.engine, ref.view_spec, image3d, ref.spec, self.params.spacing_mm,
                               advance=bar.update, plan=lambda n: setattr(bar, "total", bar.total + n))
        times["refine"] = refined.result.seconds
        return refined

    def _refinement_report(self, refined: Refined, image: np.ndarray) -> dict[str, Any]:
        ref = self.refiner
        assert ref is not None
        per_patch = float(ref.view_spec.dense_macs_per_slice)
        run, full = refined.result.slices, refined.full_steps
        return {"refiner_bundle": {"path": str(ref.bundle.root), "sha256": ref.bundle.checksum,
                                   "architecture": ref.bundle.architecture},
                "guide": {"mode": ref.spec.mode, "views": list(ref.spec.views), "projections": ref.spec.projections,
                          "projection_cap_degrees": ref.spec.cap_degrees if ref.spec.projections else None},
                **refined.cubes.summary(np.any(image != 0, axis=0)),
                "refiner_patches_run": run, "refiner_patches_everywhere": full,
                "refiner_dense_macs": per_patch * run, "refiner_dense_macs_everywhere": per_patch * full,
                "compute_saved": 1.0 - run / full if full else 0.0,
                "fusion": {r: vars(f) for r, f in ref.spec.fusion.items()}}

    def _report(self, case: Case, times, operations, labels, unc, relabelled, guide: GuideResult) -> dict[str, Any]:
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
            "cpu": cpu_model(), "machine": machine(),
            "views": self.views,
            "uncertainty": (f"max over ET/TC/WT of the std across {guide.members} {guide.kind}" if unc is not None
                            else "not available: a single view gives no ensemble spread"),
            "mean_uncertainty_in_wt": float(unc[wt].mean()) if unc is not None and wt.any() else None,
            "volumes_ml": volumes, "label_convention": conv.name,
            "postprocessing": ({"et_min_voxels": self.et_min_voxels, "relabelled_voxels": relabelled}
                               if self.et_min_voxels else None),
            "seconds": times, "engine_compile_seconds": self.compile_seconds,
            "operations_counted": (
                "yes: synaptic operations, spikes and membrane updates counted in the graph (--count-ops)"
                if self.count_ops else "dense MACs only (static); --count-ops counts synaptic operations"),
            "operations": operations,
            "energy": energy_table(operations, self._specs(operations), self.precision, names="builtin"),
        }

    def _specs(self, operations: dict[str, Any]) -> dict[str, Any]:
        return {v: self.refiner.view_spec if v == "refiner" and self.refiner else self.bundle.view(v)
                for v in operations}

    @staticmethod
    def _write_images(case: Case, folder: Path, labels, prob, unc, png: bool, save_prob: bool, verdict: str) -> None:
        """The NIfTI files are compressed side by side (zlib releases the GIL)."""
        g = case.geometry
        with ThreadPoolExecutor(max_workers=3) as pool:
            jobs = [pool.submit(save_like, labels, g, folder / prediction_name(case.case_id), np.uint8)]
            if unc is not None:
                jobs.append(pool.submit(save_like, unc, g, folder / f"{case.case_id}_uncertainty.nii.gz", np.uint16,
                                        slope=UNCERTAINTY_STEP))
            if save_prob:
                jobs.append(pool.submit(save_like, prob, g, folder / f"{case.case_id}_prob.nii.gz", np.float32))
            for job in jobs:
                job.result()
        if png:
            from spikeseg.runtime.quicklook import quicklook
            quicklook(folder / f"{case.case_id}_quicklook.png", case.image[3], labels,
                      unc if unc is not None else np.zeros(labels.shape, np.float32), case.files.convention, verdict)


def segment(bundle_path: Path, input_path: Path, out: Path, backend: str = "openvino", precision: str = "fp32",
            views: str = "all", threads: int = 2, png: bool = False, save_prob: bool = False,
            overwrite: bool = False, et_min_voxels: int = 0, progress: bool = True,
            shard: str | None = None, dask: str | None = None, count_ops: bool = False,
            projections: int = 0, refine: Path | None = None, guide_mode: str | None = None,
            qc_strict: bool = False) -> int:
    """Segment one case or a cohort; returns the exit status: 1 if a case this process ran
    failed, else :data:`EXIT_REVIEW` with ``qc_strict`` if one needs review, else 0.
    ``dask``: run the cohort's cases as tasks on a Dask cluster ("local" or a scheduler address).
    ``projections``, ``refine``, ``guide_mode``: see :class:`Segmenter`.

    Everything that can be refused is refused before the engines are compiled: the bundle, an
    output folder that overlaps the input, an output folder that cannot be written."""
    bundle = load_bundle(bundle_path)
    chosen = None if views == "all" else parse_views(views)
    if projections < 0:
        raise InputError(None, f"--projections {projections}: a count of spherical projections, 0 for none")
    if guide_mode is not None and guide_mode not in GUIDE_MODES:
        raise InputError(None, f"unknown guide {guide_mode!r}; choose from {GUIDE_MODES}")
    refiner = load_bundle(refine) if refine is not None else None  # read and verified once
    if refiner is not None:
        fitted_refinement(refiner, bundle, guide_mode, chosen, projections)
    input_path, out = Path(input_path), Path(out)
    cases = discover(input_path)
    single = len(cases) == 1 and cases[0].folder == input_path
    check_output_apart(out, input_path, cases)
    if single and cases[0].error:
        raise InputError(None, cases[0].error)
    if single and not overwrite and (out / cases[0].case_id).exists():
        raise InputError(out / cases[0].case_id, "output exists; pass --overwrite to replace it")
    mine = shard_of(cases, parse_shard(shard))
    made_out = not out.exists()
    check_writable(out)
    try:
        status = _run_cases(bundle, cases, mine, single, input_path, out, backend, precision, chosen, threads,
                            png, save_prob, overwrite, et_min_voxels, progress, dask, count_ops, projections,
                            refine, refiner, guide_mode)
    except BaseException:
        if single and made_out:  # a refused single case leaves no empty output folder behind
            with contextlib.suppress(OSError):
                out.rmdir()  # only ever empty: rmdir refuses a folder with anything in it
        raise
    if status == 0 and qc_strict and any(report_qc(out, c.case_id) == "review" for c in mine if c.case_id):
        return EXIT_REVIEW
    return status


def _run_cases(bundle: Bundle, cases: list[CohortCase], mine: list[CohortCase], single: bool, input_path: Path,
               out: Path, backend: str, precision: str, chosen: list[str] | None, threads: int, png: bool,
               save_prob: bool, overwrite: bool, et_min_voxels: int, progress: bool, dask: str | None,
               count_ops: bool, projections: int, refine: Path | None, refiner: Bundle | None,
               guide_mode: str | None) -> int:
    """The cases of this process, then (for a cohort) the summary; see :func:`segment`."""
    outcomes: dict[Path, tuple[str, str]] = {}
    if dask and not single:
        from spikeseg.runtime.cluster import run_on_dask
        key = (str(bundle.root.resolve()), backend, precision, tuple(chosen) if chosen else None, threads,
               et_min_voxels, count_ops, projections, str(Path(refine).resolve()) if refine else None, guide_mode)
        done = run_on_dask(dask, key, mine, out, overwrite, png, save_prob)
    else:
        seg = Segmenter(bundle, backend, precision, chosen, threads, et_min_voxels, progress, count_ops,
                        projections, refiner, guide_mode)
        done = ((case, run_case(seg, case, out, overwrite, png, save_prob, single)) for case in mine)
    full: DiskFull | None = None
    for case, status in tqdm(done, total=len(mine), desc="segment", unit="case", disable=not progress or single):
        if status[0] == DISK_FULL_STATUS:  # every later case would fail the same way: stop here
            status, full = ("failed", status[1]), DiskFull(status[1])
        outcomes[case.folder] = status
        if status[0] in ("failed", "busy"):
            tqdm.write(f"{case.name}: {'FAILED' if status[0] == 'failed' else 'busy'}: {status[1]}")
        if not single:
            try:
                record_outcome(out, case, *status)
            except DiskFull as exc:
                full = full or exc
        if full is not None:
            break
    if single:
        return 0
    summary = f"summary: {out / SUMMARY}"
    try:
        rows = write_summary(out, cases, outcomes)
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        full, summary = full or DiskFull(f"{out}: {exc.strerror or exc}"), "summary not written"
        rows = summary_rows(out, cases, outcomes)
    counts = {k: sum(1 for r in rows if r["status"] == k) for k in ("ok", "failed", "busy", "pending")}
    fresh = sum(1 for st, _ in outcomes.values() if st == "ok")
    review = sum(1 for r in rows if r.get("qc") == "review")
    line = (f"{fresh} segmented, {counts['ok'] - fresh} done earlier, {counts['busy']} in progress elsewhere, "
            f"{counts['pending']} pending, {counts['failed']} failed; QC: {review} of {counts['ok']} need review")
    if full is not None:  # one clear message; what finished is on disk and listed here
        print(f"{line}; {summary}", file=sys.stderr)
        raise InputError(None, f"disk full, run stopped: {full}; free space and run the same command again "
                               "(finished cases are kept and skipped)")
    print(f"{line}; {summary}")
    return 1 if any(st == "failed" for st, _ in outcomes.values()) else 0  # this process's own cases


def run_case(seg: Segmenter, case: CohortCase, out: Path, overwrite: bool, png: bool, save_prob: bool,
              single: bool) -> tuple[str, str]:
    """(status, message) of one case; a bad case raises only when it is the whole input. In a
    cohort any failure of one case (bad input, an unexpected error) is that case's, and the rest
    go on; a full disk is :data:`DISK_FULL_STATUS`, on which the run stops."""
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
        except OSError as exc:  # a disk that fills up mid-case: nothing of the case is left
            message = f"{out / case.case_id}: could not be written: {exc.strerror or exc}"
            if single:
                raise InputError(None, message) from exc
            return (DISK_FULL_STATUS if is_disk_full(exc) else "failed"), message
        except Exception as exc:  # noqa: BLE001 - one case's bug or exhaustion must not end a cohort
            if single:
                raise
            return "failed", f"{case.folder}: unexpected {type(exc).__name__}: {exc}"
    v, qc = rep["volumes_ml"], rep["qc"]
    line = (f"{rep['case']}: segmented {rep['seconds']['total']:.1f}s peak {rep['peak_rss_mb']:.0f} MB "
            f"WT {v['WT']:.1f} mL TC {v['TC']:.1f} mL ET {v['ET']:.1f} mL | QC {qc['verdict'].upper()}"
            + (f": {'; '.join(qc['reasons'])}" if qc["reasons"] else ""))
    if single:
        print(line)
    else:
        tqdm.write(line)
    return "ok", ""
