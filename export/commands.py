"""The export stage's subcommands: export (ONNX / OpenVINO bundles, INT8) and package (boards).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _budget(text: str) -> float:
    """A WT Dice drop in points: 0 (no loss allowed) to 100."""
    value = float(text)
    if not 0.0 <= value <= 100.0:
        raise argparse.ArgumentTypeError(f"{text} is not a Dice drop in points (0 to 100)")
    return value


def _export(args: argparse.Namespace) -> int:
    from spikeseg.export.build import build_bundle

    out = build_bundle(args.runs, args.out, int8=args.int8, calib=args.calib, overwrite=args.overwrite,
                       allow_accuracy_drop=args.allow_accuracy_drop, budget=args.budget / 100.0,
                       threads=args.threads, calib_items=args.calib_items, refine_guides=args.refine_guide,
                       projections=args.projections, refine_stop=args.refine_stop,
                       refine_max_kernels=args.refine_max_kernels, projection_cap=args.projection_cap,
                       both_ways=not args.one_way, qc_cases=args.qc_cases)
    print(f"bundle written to {out}")
    return 0


def _package(args: argparse.Namespace) -> int:
    from spikeseg.export.package import build_package

    out = build_package(args.bundle, args.target, args.out, python=args.python, tar=args.tar,
                        wheels_from=args.wheels, overwrite=args.overwrite, backend=args.backend)
    print(f"package written to {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands to the ``spikeseg`` dispatcher (which imports this module,
    hence the import here)."""
    from spikeseg.cli import add_command, add_threads_argument

    ex = add_command(sub, "export", needs=("torch", "onnx", "nncf"), help="trained runs -> ONNX / OpenVINO (FP32, INT8) bundle",
                     description="Export view models to ONNX and OpenVINO IR (FP32; with --int8 also "
                                 "NNCF INT8 IR and ONNX Runtime QDQ INT8) as a bundle folder with a "
                                 "manifest.json holding every file's sha256.")
    ex.add_argument("runs", type=Path, nargs="+", help="run folders (one per view), e.g. RUN/sagittal RUN/axial")
    ex.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    ex.add_argument("--int8", action="store_true", help="also write INT8 models (needs --calib)")
    ex.add_argument("--calib", type=Path, help="cases whose real slices calibrate INT8")
    ex.add_argument("--qc-cases", type=Path, metavar="DIR",
                    help="labelled cases held out from training (the training data's kind) that the QC limits on "
                         "the model's outputs are fitted on (default: the runs' validation split)")
    ex.add_argument("--calib-items", type=int, default=300, help="calibration steps kept (default 300)")
    ex.add_argument("--budget", type=_budget, default=1.0,
                    help="largest WT Dice drop of INT8 vs FP32 allowed, in points (default 1)")
    ex.add_argument("--allow-accuracy-drop", action="store_true", help="write the bundle even over budget")
    ex.add_argument("--refine-guide", action="append", metavar="BUNDLE[:views|:projections]",
                    help="(3D models) fit the uncertainty-guided refinement for this guide bundle and store it: "
                         "the guide's view ensemble (views, the default for several views) or its axial view "
                         "over spherical projections; fitted by particle swarm on the 3D run's validation cases. "
                         "Repeatable; then `spikeseg segment GUIDE CASES OUT --refine THIS_BUNDLE`")
    ex.add_argument("--projections", type=int, default=16,
                    help="spherical projections of a projections guide (default 16; the paper used 1024)")
    ex.add_argument("--projection-cap", type=float, default=30.0, metavar="DEGREES",
                    help="the spherical projections' cap angle, 90 = the hemisphere (default 30; larger "
                         "magnifies more and costs a 2D model trained without projections accuracy)")
    ex.add_argument("--refine-stop", type=float, default=0.1, metavar="SHARE",
                    help="refine a cube while its mean voxel entropy is at least SHARE of the largest possible "
                         "(default 0.1); higher refines less")
    ex.add_argument("--refine-max-kernels", type=int, default=4, metavar="N",
                    help="at most N cubes per region (ET, TC, WT; default 4)")
    add_threads_argument(ex, "threads for the INT8 accuracy check")
    ex.add_argument("--one-way", action="store_true",
                    help="stateful models (Spiking U-Seg-Net, ConvLSTM twin) run their slices front to back only, "
                         "as the paper does: half the steps and operations of the default, which also runs them "
                         "back to front and averages the two passes (1.1-1.5 WT Dice points better on the hard "
                         "phantoms)")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    ex.set_defaults(handler=_export)

    pk = add_command(sub, "package", help="a self-contained runtime package for an embedded board",
                     description="Cross-build a folder (or tarball) to copy to a board: the torch-free "
                                 "runtime, the bundle, the target's pinned wheels, install.sh (no network "
                                 "on the board), a spikeseg-run launcher and a checksummed package.json.")
    pk.add_argument("bundle", type=Path, help="a bundle folder written by spikeseg export")
    pk.add_argument("--target", default="linux-aarch64", help="target platform (default linux-aarch64)")
    pk.add_argument("--python", default="3.11", help="the board's Python version (default 3.11)")
    pk.add_argument("--out", type=Path, required=True, help="package folder to write")
    pk.add_argument("--tar", action="store_true", help="also write OUT.tar.gz")
    pk.add_argument("--wheels", type=Path, help="use wheels from this folder instead of downloading them")
    pk.add_argument("--backend", choices=["onnxruntime", "openvino"], default="onnxruntime",
                    help="backend the launcher uses (default onnxruntime)")
    pk.add_argument("--overwrite", action="store_true", help="replace an existing package")
    pk.set_defaults(handler=_package)
