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
from pathlib import Path

from tqdm import tqdm

from spikeseg.runtime.bundle import Bundle, load_bundle
from spikeseg.runtime.cohort import (SUMMARY, CohortCase, DiskFull, case_lock, check_output_apart, check_writable,
                                     discover, is_disk_full, parse_shard, record_outcome, report_qc, shard_of,
                                     summary_rows, write_summary)
from spikeseg.runtime.console import log
from spikeseg.runtime.errors import InputError
from spikeseg.runtime.guide import fitted_refinement
from spikeseg.runtime.options import SegmentOptions
from spikeseg.runtime.predictor import Predictor

#: The exit status of ``--qc-strict`` when a case this process segmented needs review (no case failed).
EXIT_REVIEW = 3
#: A case's status when the output's disk filled up while it was written: the run stops there.
DISK_FULL_STATUS = "disk full"


def segment(bundle_path: Path, input_path: Path, out: Path, options: SegmentOptions | None = None, *,
            overwrite: bool = False, shard: str | None = None, dask: str | None = None,
            qc_strict: bool = False) -> int:
    """Segment one case or a cohort; returns the exit status: 1 if a case this process ran
    failed, else :data:`EXIT_REVIEW` with ``qc_strict`` if one needs review, else 0.
    ``dask``: run the cohort's cases as tasks on a Dask cluster ("local" or a scheduler address).

    Everything that can be refused is refused before the engines are compiled: the bundle, an
    output folder that overlaps the input, an output folder that cannot be written."""
    options = (options or SegmentOptions()).resolved()
    bundle = load_bundle(bundle_path)
    refiner = load_bundle(options.refine) if options.refine is not None else None  # read and verified once
    if refiner is not None:
        fitted_refinement(refiner, bundle, options.guide_mode, list(options.views) if options.views else None,
                          options.projections)
    input_path, out = Path(input_path), Path(out)
    cases = discover(input_path)
    single = len(cases) == 1 and cases[0].folder == input_path
    check_output_apart(out, input_path, cases)
    if single and cases[0].error:
        raise InputError(None, cases[0].error)
    if single and not overwrite and (out / cases[0].case_id).exists():
        # as a cohort does: what is there is kept and said, not redone and not refused
        print(f"{cases[0].case_id}: done earlier ({out / cases[0].case_id} exists; --overwrite to redo)")
        return EXIT_REVIEW if qc_strict and report_qc(out, cases[0].case_id) == "review" else 0
    mine = shard_of(cases, parse_shard(shard))
    views = ",".join(options.views) if options.views else "as the bundle says"
    log.debug(f"{bundle_path}: {options.backend} {options.precision}, {options.threads} threads, views {views}; "
              f"{len(mine)} of {len(cases)} cases -> {out}")
    made_out = not out.exists()
    check_writable(out)
    try:
        status = _run_cases(bundle, refiner, options, cases, mine, single, out, overwrite, dask)
    except BaseException:
        if single and made_out:  # a refused single case leaves no empty output folder behind
            with contextlib.suppress(OSError):
                out.rmdir()  # only ever empty: rmdir refuses a folder with anything in it
        raise
    if status == 0 and qc_strict and any(report_qc(out, c.case_id) == "review" for c in mine if c.case_id):
        return EXIT_REVIEW
    return status


def _run_cases(bundle: Bundle, refiner: Bundle | None, options: SegmentOptions, cases: list[CohortCase],
               mine: list[CohortCase], single: bool, out: Path, overwrite: bool, dask: str | None) -> int:
    """The cases of this process, then (for a cohort) the summary; see :func:`segment`."""
    outcomes: dict[Path, tuple[str, str]] = {}
    if dask and not single:
        from spikeseg.runtime.cluster import run_on_dask
        done = run_on_dask(dask, str(bundle.root.resolve()), options, mine, out, overwrite)
    else:
        predictor = Predictor(bundle, options, refiner)
        done = ((case, run_case(predictor, case, out, overwrite, single)) for case in mine)
    full: DiskFull | None = None
    for case, status in tqdm(done, total=len(mine), desc="segment", unit="case",
                             disable=not options.progress or single):
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


def run_case(predictor: Predictor, case: CohortCase, out: Path, overwrite: bool, single: bool) -> tuple[str, str]:
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
            rep = predictor.run(case.folder, out)
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
