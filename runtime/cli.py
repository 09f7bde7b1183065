"""The ``spikeseg`` command. Subcommands import their implementation lazily, so that
``spikeseg --help``, ``segment``, ``evaluate``, ``phantoms`` and ``profile`` never import torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from runtime.errors import InputError

Handler = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, Handler] = {}


def _command(name: str):
    def register(fn: Handler) -> Handler:
        _COMMANDS[name] = fn
        return fn
    return register


@_command("phantoms")
def _phantoms(args: argparse.Namespace) -> int:
    from runtime.phantoms import generate, parse_difficulty

    written = generate(args.out, args.cases, args.seed, args.size, parse_difficulty(args.difficulty),
                       overwrite=args.overwrite, progress=not args.quiet)
    print(f"wrote {len(written)} phantom cases to {args.out}")
    return 0


@_command("evaluate")
def _evaluate(args: argparse.Namespace) -> int:
    from runtime.atomic import write_text
    from runtime.evaluate import evaluate_dirs, format_table, summarise
    from runtime.tables import rows_to_csv

    rows, failures = evaluate_dirs(args.pred, args.ref)
    for case, msg in failures:
        print(f"FAILED {case}: {msg}", file=sys.stderr)
    if not rows:
        raise InputError(args.ref, "no case could be evaluated")
    table = rows + summarise(rows)
    print(format_table(table))
    if args.out:
        if Path(args.out).exists() and not args.overwrite:
            raise InputError(args.out, "exists; pass --overwrite to replace it")
        write_text(args.out, rows_to_csv(table))
        print(f"metrics written to {args.out}")
    return 1 if failures else 0


@_command("train")
def _train(args: argparse.Namespace) -> int:
    from training.trainer import TrainConfig, train

    cfg = TrainConfig(data=str(args.data), out=str(args.out), arch=args.arch, view=args.view,
                      trainer=args.trainer, preset=args.preset, fold=args.fold, folds=args.folds,
                      epochs=args.epochs, batch_size=args.batch_size, window=args.window, alpha=args.alpha,
                      lr=args.lr, seed=args.seed, device=args.device, amp=not args.no_amp,
                      spacing_mm=args.spacing, eval_average=args.eval_average, state_reset=args.state_reset,
                      tau_min=args.tau_min, norm_gain=args.norm_gain, learn_threshold=args.learn_threshold,
                      surrogate_width=args.surrogate_width, neuron=args.neuron,
                      readout_lr_scale=args.readout_lr_scale, readout_input=args.readout_input, window_sampling=args.window_sampling, burn_in=args.burn_in, tumour_share=args.tumour_share,
                      init_from=str(args.init_from) if args.init_from else None,
                      empty_keep=args.empty_keep, max_minutes=args.max_minutes,
                      progress=not args.quiet)
    train(cfg, resume=args.resume, overwrite=args.overwrite)
    return 0


@_command("export")
def _export(args: argparse.Namespace) -> int:
    from export.build import build_bundle

    out = build_bundle(args.runs, args.out, int8=args.int8, calib=args.calib, overwrite=args.overwrite,
                       allow_accuracy_drop=args.allow_accuracy_drop, budget=args.budget / 100.0,
                       threads=args.threads, calib_items=args.calib_items)
    print(f"bundle written to {out}")
    return 0


@_command("segment")
def _segment(args: argparse.Namespace) -> int:
    from runtime.segment import segment

    return segment(args.bundle, args.input, args.out, backend=args.backend, precision=args.precision,
                   views=args.views, threads=args.threads, png=args.png, save_prob=args.save_prob,
                   overwrite=args.overwrite, et_min_voxels=args.et_min_voxels, progress=not args.quiet,
                   shard=args.shard)


@_command("profile")
def _profile(args: argparse.Namespace) -> int:
    from runtime.profile import run_profile

    print(run_profile(args.bundle, args.case, args.twin, args.hardware, args.backend, args.precision, args.threads))
    return 0


@_command("bench")
def _bench(args: argparse.Namespace) -> int:
    from benchmarks.bench import run_bench

    run_bench(args.data, args.bundles, args.out, args.threads, args.repeats, args.max_cases, args.training,
              args.overwrite)
    return 0


@_command("package")
def _package(args: argparse.Namespace) -> int:
    from export.package import build_package

    out = build_package(args.bundle, args.target, args.out, python=args.python, tar=args.tar,
                        wheels_from=args.wheels, overwrite=args.overwrite, backend=args.backend)
    print(f"package written to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spikeseg",
        description="Brain-tumour segmentation with spiking and quantised networks: make phantom "
                    "data, train, export, segment on a CPU, evaluate, count operations and energy.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ph = sub.add_parser("phantoms", help="write phantom BraTS 2021-layout cases (MNI152 anatomy)",
                        description="Write phantom cases in the BraTS 2021 folder layout, built on "
                                    "the MNI152 template nilearn ships. Deterministic for a seed.")
    ph.add_argument("out", type=Path, help="folder to write case folders into")
    ph.add_argument("--cases", type=int, default=3, help="number of cases (default 3)")
    ph.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ph.add_argument("--size", choices=["full", "small"], default="small",
                    help="full: 240x240x155 at 1 mm; small: 120x120x78 at 2 mm (default)")
    ph.add_argument("--difficulty", default="medium",
                    help="easy, medium (default), hard, or a number 0..1: tumour contrast, "
                         "texture, patchy enhancement, foci, bias field and noise")
    ph.add_argument("--overwrite", action="store_true", help="replace existing case folders")
    ph.add_argument("--quiet", action="store_true", help="no progress bar")

    ev = sub.add_parser("evaluate", help="Dice, HD95, sensitivity, specificity per ET/TC/WT",
                        description="Score predicted label maps against reference case folders. "
                                    "Both-empty regions count as undefined (NaN, left out of the "
                                    "mean, counted in the n_undefined row); one empty: Dice 0, "
                                    "HD95 373.13 mm.")
    ev.add_argument("pred", type=Path, help="predictions: OUT/<case>/<case>_pred.nii.gz (what segment writes), or flat <case>_pred.nii.gz / <case>.nii.gz files")
    ev.add_argument("ref", type=Path, help="reference label maps (<id>_seg / <id>-seg .nii.gz): a folder of them, "
                    "a case folder, or a folder of case folders (images beside them are not needed)")
    ev.add_argument("--out", type=Path, help="write the table as CSV here")
    ev.add_argument("--overwrite", action="store_true", help="replace an existing --out file")

    tr = sub.add_parser("train", help="train a view model (Spiking U-Seg-Net or a twin)",
                        description="Train one model per view on a folder of BraTS cases. FPTT "
                                    "updates every --window slices with the membrane state detached "
                                    "between windows, so memory does not grow with the slice count. "
                                    "Uses CUDA when present (mixed precision); run under torchrun for "
                                    "several GPUs (DistributedDataParallel).")
    tr.add_argument("--data", type=Path, required=True, help="folder of labelled case folders")
    tr.add_argument("--out", type=Path, required=True, help="run folder (RUN/<view>/ with --view all)")
    tr.add_argument("--arch", choices=["spiking-useg", "useg", "useg-clstm"], default="spiking-useg")
    tr.add_argument("--view", default="axial", help="sagittal, coronal, axial or all (default axial)")
    tr.add_argument("--trainer", choices=["fptt", "tbptt", "bptt", "standard"],
                    help="default: fptt for spiking-useg, standard for useg, tbptt for useg-clstm")
    tr.add_argument("--preset", choices=["tiny", "small", "paper"], default="tiny",
                    help="model size: tiny (CPU tests, demo), small, paper (the paper's scale, for a GPU)")
    tr.add_argument("--fold", type=int, default=0, help="validation fold of --folds (default 0 of 5)")
    tr.add_argument("--folds", type=int, default=5)
    tr.add_argument("--epochs", type=int, default=30)
    tr.add_argument("--batch-size", type=int, default=4, help="sequences (volumes) per batch")
    tr.add_argument("--window", type=int, default=4, help="slices per update K (fptt, tbptt; default 4)")
    tr.add_argument("--alpha", type=float, default=0.1, help="FPTT regularisation strength (default 0.1)")
    tr.add_argument("--lr", type=float, default=1e-3)
    tr.add_argument("--spacing", type=float, default=2.0,
                    help="model voxel spacing in mm (default 2: 80x96x76 grid; the paper used 1)")
    tr.add_argument("--tau-min", type=float, default=1.0, help="floor under PLIF tau (default 1: none)")
    tr.add_argument("--readout-input", choices=["spikes", "membrane"], default="spikes",
                    help="spiking-useg: the readout integrator reads the last layer's spikes (binary) or its "
                         "membrane potential (analog; the 3-channel readout then costs MACs)")
    tr.add_argument("--readout-lr-scale", type=float,
                    help="learning rate of the readout conv relative to --lr (default: 10 for spiking-useg, "
                         "the SNN recipe; 1 for the twins)")
    tr.add_argument("--window-sampling", choices=["sequential", "random"], default="sequential",
                    help="fptt/tbptt: windows front to back through each volume, or each update at a random "
                         "(tumour-biased) position after --burn-in slices without gradient")
    tr.add_argument("--burn-in", type=int, default=8,
                    help="random windows: slices run without gradient before each window (default 8)")
    tr.add_argument("--tumour-share", type=float, default=0.5,
                    help="random windows: share of windows placed on tumour slices (default 0.5)")
    tr.add_argument("--neuron", choices=["plif", "snntorch-leaky"], default="plif",
                    help="spiking-useg: PLIF (the paper's; learnable tau, input divided by tau, hard reset) "
                         "or snnTorch's Leaky (learnable beta, reset to zero one step late)")
    tr.add_argument("--norm-gain", type=float, default=1.0,
                    help="spiking-useg: initial GroupNorm scale before each PLIF layer; 2 = tdBN's "
                         "threshold-matched scale for tau 2 (default 1)")
    tr.add_argument("--learn-threshold", action="store_true",
                    help="spiking-useg: a learnable firing threshold per layer (DIET-SNN)")
    tr.add_argument("--surrogate-width", type=float, default=1.0,
                    help="spiking-useg: width w of the arctan surrogate 1/(1+(pi x/w)^2); 1 = the paper's")
    tr.add_argument("--init-from", type=Path, metavar="TWIN_RUN",
                    help="spiking-useg: start from a trained useg run's weights (same preset), then train")
    tr.add_argument("--empty-keep", type=float, default=1.0,
                    help="fptt/tbptt: share of tumour-free windows that get an update (the rest only "
                         "advance the state); default 1 = all")
    tr.add_argument("--eval-average", action="store_true",
                    help="validate and keep best weights using FPTT's running mean wbar")
    tr.add_argument("--state-reset", action="store_true",
                    help="ablation: reset the state every slice (no inter-slice context)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    tr.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    tr.add_argument("--max-minutes", type=float, help="stop after the epoch that passes this budget")
    tr.add_argument("--resume", action="store_true", help="continue from RUN/checkpoints/last.pt")
    tr.add_argument("--overwrite", action="store_true", help="start again in an existing run folder")
    tr.add_argument("--quiet", action="store_true")

    ex = sub.add_parser("export", help="trained runs -> ONNX / OpenVINO (FP32, INT8) bundle",
                        description="Export view models to ONNX and OpenVINO IR (FP32; with --int8 also "
                                    "NNCF INT8 IR and ONNX Runtime QDQ INT8) as a bundle folder with a "
                                    "manifest.json holding every file's sha256.")
    ex.add_argument("runs", type=Path, nargs="+", help="run folders (one per view), e.g. RUN/sagittal RUN/axial")
    ex.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    ex.add_argument("--int8", action="store_true", help="also write INT8 models (needs --calib)")
    ex.add_argument("--calib", type=Path, help="cases whose real slices calibrate INT8")
    ex.add_argument("--calib-items", type=int, default=300, help="calibration steps kept (default 300)")
    ex.add_argument("--budget", type=float, default=1.0,
                    help="largest WT Dice drop of INT8 vs FP32 allowed, in points (default 1)")
    ex.add_argument("--allow-accuracy-drop", action="store_true", help="write the bundle even over budget")
    ex.add_argument("--threads", type=int, default=2)
    ex.add_argument("--overwrite", action="store_true", help="replace an existing bundle")

    sg = sub.add_parser("segment", help="segment a case or a cohort on the CPU (no torch)",
                        description="Segment BraTS case folders with a bundle: labels in the input's "
                                    "exact geometry, a voxel-wise uncertainty map (spread across views), "
                                    "and a JSON report (timings, peak memory, operations, spike rates).")
    sg.add_argument("bundle", type=Path)
    sg.add_argument("input", type=Path, help="a case folder or a folder of case folders")
    sg.add_argument("out", type=Path, help="output folder (OUT/<case>/...)")
    sg.add_argument("--backend", choices=["openvino", "onnxruntime"], default="openvino")
    sg.add_argument("--precision", choices=["fp32", "int8"], default="fp32",
                    help="model weights/activations; OpenVINO computes the rest in f32 (stated in the report)")
    sg.add_argument("--views", default="all", help="all, or a comma list such as axial,coronal")
    sg.add_argument("--threads", type=int, default=2, help="inference threads for either backend")
    sg.add_argument("--png", action="store_true", help="write a quick-look PNG per case")
    sg.add_argument("--save-prob", action="store_true", help="also write the ET/TC/WT probabilities")
    sg.add_argument("--et-min-voxels", type=int, default=0,
                    help="post-processing: ET components smaller than this become NCR (default off)")
    sg.add_argument("--overwrite", action="store_true", help="redo cases whose output exists")
    sg.add_argument("--shard", metavar="I/N",
                    help="run only shard I of N (1-based) of the sorted cohort, e.g. a job array's task; "
                         "shards never overlap, and each writes a summary of the whole cohort from disk")
    sg.add_argument("--quiet", action="store_true", help="no progress bar")

    pr = sub.add_parser("profile", help="operations, spike rates and energy per hardware profile",
                        description="Per view and for the ensemble: dense MACs (from the exported graph), "
                                    "effective MACs and ACs and spike rates (running --case), and energy per "
                                    "hardware profile; with --twin, the SNN-vs-twin reduction (paper Table 3).")
    pr.add_argument("bundle", type=Path)
    pr.add_argument("--case", type=Path, help="a case folder to measure spike rates on")
    pr.add_argument("--twin", type=Path, help="a bundle of the non-spiking twin, for the reduction")
    pr.add_argument("--hardware", default="all",
                    help="all, or a comma list of: asic-45nm, rpi4-cortex-a72, jetson-orin-nano-cpu, "
                         "intel-i7-1185G7, loihi, host")
    pr.add_argument("--backend", choices=["openvino", "onnxruntime"], default="openvino")
    pr.add_argument("--precision", choices=["fp32", "int8"], default="fp32")
    pr.add_argument("--threads", type=int, default=2)

    be = sub.add_parser("bench", help="FP32 vs INT8 vs SNN: accuracy, speed, memory, operations, energy",
                        description="Benchmark bundles on the same held-out cases in one run: torch FP32 (when "
                                    "the training runs are reachable), ONNX Runtime and OpenVINO in FP32 and "
                                    "INT8. Writes results.csv, results.md and PNG plots.")
    be.add_argument("--data", type=Path, required=True, help="held-out labelled cases")
    be.add_argument("--bundles", type=Path, nargs="+", required=True)
    be.add_argument("--out", type=Path, required=True)
    be.add_argument("--threads", type=int, default=2)
    be.add_argument("--repeats", type=int, default=3, help="timing repeats per case (median; default 3)")
    be.add_argument("--max-cases", type=int, help="use only the first N cases")
    be.add_argument("--training", metavar="SLICES",
                    help="also measure FPTT vs BPTT training memory and time, e.g. 8,32,76,152")
    be.add_argument("--overwrite", action="store_true", help="replace existing results")

    pk = sub.add_parser("package", help="a self-contained runtime package for an embedded board",
                        description="Cross-build a folder (or tarball) to copy to a board: the torch-free "
                                    "runtime, the bundle, the target's pinned wheels, install.sh (no network "
                                    "on the board), a spikeseg-run launcher and a checksummed package.json.")
    pk.add_argument("bundle", type=Path)
    pk.add_argument("--target", default="linux-aarch64", help="target platform (default linux-aarch64)")
    pk.add_argument("--python", default="3.11", help="the board's Python version (default 3.11)")
    pk.add_argument("--out", type=Path, required=True)
    pk.add_argument("--tar", action="store_true", help="also write OUT.tar.gz")
    pk.add_argument("--wheels", type=Path, help="use wheels from this folder instead of downloading them")
    pk.add_argument("--backend", choices=["onnxruntime", "openvino"], default="onnxruntime",
                    help="backend the launcher uses (default onnxruntime)")
    pk.add_argument("--overwrite", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except InputError as exc:
        print(f"spikeseg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
