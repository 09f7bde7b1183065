"""The runtime's subcommands: segment, evaluate, profile. Torch-free, like everything under
``spikeseg.runtime``: these are the commands a point-of-care or board install has.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spikeseg.runtime.errors import InputError


def _evaluate(args: argparse.Namespace) -> int:
    from spikeseg.runtime.atomic import write_text
    from spikeseg.runtime.evaluate import (evaluate_dirs, format_table, is_metrics_csv, qc_line, status_table,
                                           unreferenced_predictions)
    from spikeseg.runtime.outputs import check_apart, check_replaceable
    from spikeseg.runtime.tables import rows_to_csv

    if args.out:  # refused before any scoring: never inside the inputs, never someone else's file
        check_apart(args.out, [args.pred, args.ref])
        check_replaceable(args.out, args.overwrite, is_metrics_csv, "metrics CSV")
    rows, failures = evaluate_dirs(args.pred, args.ref, args.lesion_rules)
    orphans = unreferenced_predictions(Path(args.pred), {str(r["case"]) for r in rows} | {c for c, _ in failures})
    for case, msg in failures:
        print(f"FAILED {case}: {msg}", file=sys.stderr)
    for case, path in orphans:
        print(f"NO REFERENCE {case}: {path} not scored", file=sys.stderr)
    if not rows:
        raise InputError(args.ref, "no case could be evaluated")
    table = status_table(rows, failures, orphans)
    print(format_table([r for r in table if r["status"] == "ok" or r["case"] in ("mean", "median")]))
    print(next(r["status"] for r in table if r["case"] == "mean"))
    if (line := qc_line(rows)) is not None:
        print(line)
    if args.out:
        write_text(args.out, rows_to_csv(table))
        print(f"metrics written to {args.out}")
    return 1 if failures else 0  # a prediction without a reference is listed, not an error


def _segment(args: argparse.Namespace) -> int:
    from spikeseg.runtime.options import SegmentOptions
    from spikeseg.runtime.preprocess import parse_views
    from spikeseg.runtime.segment import segment

    options = SegmentOptions(backend=args.backend, precision=args.precision,
                             views=None if args.views == "all" else tuple(parse_views(args.views)),
                             threads=args.threads, et_min_voxels=args.et_min_voxels, count_ops=args.count_ops,
                             projections=args.projections, refine=args.refine, guide_mode=args.guide, png=args.png,
                             save_prob=args.save_prob, progress=not args.quiet)
    return segment(args.bundle, args.input, args.out, options, overwrite=args.overwrite, shard=args.shard,
                   dask=args.dask, qc_strict=args.qc_strict)


def _profile(args: argparse.Namespace) -> int:
    from spikeseg.runtime.profile import run_profile

    print(run_profile(args.bundle, args.case, args.twin, args.hardware, args.backend, args.precision, args.threads,
                      args.profiles, args.json, args.iterations))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands to the ``spikeseg`` dispatcher (which imports this module,
    hence the import here)."""
    from spikeseg.cli import add_command, add_threads_argument

    sg = add_command(sub, "segment", help="segment a case or a cohort on the CPU (no torch)",
                     description="Segment BraTS case folders with a bundle: labels in the input's "
                                 "exact geometry, a voxel-wise uncertainty map (spread across views), "
                                 "a QC verdict (ok, or review with the reasons: the case unlike the "
                                 "bundle's training data, the models unsure, an implausible result), "
                                 "and a JSON report (timings, peak memory, operations, spike rates). "
                                 "Exit status: 0 done, 1 a case of a cohort failed, 2 bad input, "
                                 "3 with --qc-strict a case needs review.")
    sg.add_argument("bundle", type=Path, help="a bundle folder written by spikeseg export")
    sg.add_argument("input", type=Path, help="a case folder or a folder of case folders")
    sg.add_argument("out", type=Path, help="output folder (OUT/<case>/...)")
    sg.add_argument("--backend", choices=["openvino", "onnxruntime"], default="openvino",
                    help="inference engine (default openvino; onnxruntime also runs on boards without OpenVINO)")
    sg.add_argument("--precision", choices=["fp32", "int8"], default="fp32",
                    help="model weights/activations; OpenVINO computes the rest in f32 (stated in the report)")
    sg.add_argument("--views", default="all", help="all, or a comma list such as axial,coronal")
    add_threads_argument(sg, "inference threads for either backend")
    sg.add_argument("--projections", type=int, default=0, metavar="N",
                    help="run each view over N spherical projections of its slices (test-time ensemble after "
                         "Yang et al.; the uncertainty map is their spread); default 0: as it is")
    sg.add_argument("--refine", type=Path, metavar="BUNDLE3D",
                    help="a 3D bundle exported with --refine-guide BUNDLE: run it only on the cubes where this "
                         "bundle is most unsure and fuse the two there (views and projections come from the fit)")
    sg.add_argument("--guide", choices=["views", "projections"],
                    help="with --refine, which fit to use when the 3D bundle holds both for this bundle")
    sg.add_argument("--png", action="store_true", help="write a quick-look PNG per case")
    sg.add_argument("--save-prob", action="store_true", help="also write the ET/TC/WT probabilities")
    sg.add_argument("--et-min-voxels", type=int, default=0,
                    help="post-processing: ET components smaller than this become NCR (default off)")
    sg.add_argument("--count-ops", action="store_true",
                    help="count synaptic operations, spikes and membrane updates in the graph for the report "
                         "and the event-driven energy estimates (off by default: the counters slow every case)")
    sg.add_argument("--qc-strict", action="store_true",
                    help="exit with status 3 when a segmented case's QC verdict is review (and none failed); "
                         "by default a review case exits 0, but its console line, report, summary.csv and "
                         "quick-look PNG say review and why")
    sg.add_argument("--overwrite", action="store_true", help="redo cases whose output exists")
    sg.add_argument("--shard", metavar="I/N",
                    help="run only shard I of N (1-based) of the sorted cohort, e.g. a job array's task; "
                         "shards never overlap, and each writes a summary of the whole cohort from disk")
    sg.add_argument("--dask", metavar="local|ADDRESS",
                    help="run the cohort's cases as tasks on a Dask cluster: 'local' (one worker per --threads "
                         "cores on this machine) or a scheduler address such as tcp://host:8786; needs "
                         "pip install 'spikeseg[cluster]'")
    sg.set_defaults(handler=_segment)

    ev = add_command(sub, "evaluate", help="Dice, HD95, sensitivity, specificity, lesion-wise Dice/HD95 per ET/TC/WT",
                     description="Score predicted label maps against reference label maps. Voxel-wise: "
                                 "both-empty regions count as undefined (NaN, left out of the mean, counted "
                                 "in the n_undefined row); one empty: Dice 0, HD95 373.13 mm. Lesion-wise "
                                 "(lw_ columns): the BraTS 2023 challenge rules (matching through a dilated "
                                 "reference, small lesions left out, misses and false positives scored 0 / "
                                 "374 mm; both empty: 1 / 0).")
    ev.add_argument("pred", type=Path,
                    help="predictions: OUT/<case>/<case>_pred.nii.gz (what segment writes), or flat "
                         "<case>_pred.nii.gz / <case>.nii.gz files")
    ev.add_argument("ref", type=Path, help="reference label maps (<id>_seg / <id>-seg .nii.gz): a folder of them, "
                    "a case folder, or a folder of case folders (images beside them are not needed)")
    ev.add_argument("--lesion-rules", choices=["BraTS-GLI", "BraTS-SSA", "BraTS-PED", "BraTS-MEN", "BraTS-MET"],
                    default="BraTS-GLI", help="the 2023 challenge whose lesion-wise rules (dilation, minimum lesion "
                                              "volume) the lw_ columns follow (default BraTS-GLI: 3, 50 mm^3)")
    ev.add_argument("--out", type=Path, help="write the table as CSV here")
    ev.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    ev.set_defaults(handler=_evaluate)

    pr = add_command(sub, "profile", help="operations, spike rates, latency and energy per hardware profile",
                     description="Per view and for the ensemble: dense MACs (from the exported graph), "
                                 "effective MACs and ACs and spike rates (running --case), the deployed "
                                 "graph's latency per step on this machine, and energy per hardware profile; "
                                 "with --twin, the SNN-vs-twin reduction (paper Table 3).")
    pr.add_argument("bundle", type=Path, help="a bundle folder written by spikeseg export")
    pr.add_argument("--case", type=Path, help="a case folder to measure spike rates on")
    pr.add_argument("--twin", type=Path, help="a bundle of the non-spiking twin, for the reduction")
    pr.add_argument("--hardware", default="all",
                    help="all, or a comma list of: asic-45nm, rpi4-cortex-a72, jetson-orin-nano-cpu, "
                         "intel-i7-1185G7, loihi, host")
    pr.add_argument("--backend", choices=["openvino", "onnxruntime"], default="openvino",
                    help="inference engine (default openvino; onnxruntime also runs on boards without OpenVINO)")
    pr.add_argument("--precision", choices=["fp32", "int8"], default="fp32", help="model precision (default fp32)")
    pr.add_argument("--profiles", type=Path, metavar="FILE",
                    help="add hardware profiles from a JSON file in the built-in file's schema (runtime/"
                         "hardware_profiles.json: execution, energy_pj per precision, sources); checked, "
                         "never replacing a built-in name")
    pr.add_argument("--json", action="store_true", help="print the counts, latencies, energies and ratios as JSON")
    pr.add_argument("--iterations", type=int, default=20, metavar="N",
                    help="steps timed per view after 2 warm-up steps, as OpenVINO's benchmark_app: median, "
                         "min, max, steps per second and a case's seconds (default 20; 0: no latency)")
    add_threads_argument(pr, "inference threads")
    pr.set_defaults(handler=_profile)
