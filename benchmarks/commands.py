"""The benchmark stage's subcommand: bench.
"""

from __future__ import annotations

import argparse
from pathlib import Path

#: what ``bench`` can measure: the training framework and the two deployment runtimes (here, not in
#: bench.py, so that building the CLI imports nothing heavy)
BACKENDS = ("torch", "onnxruntime", "openvino")


def _bench(args: argparse.Namespace) -> int:
    from spikeseg.benchmarks.bench import run_bench

    run_bench(args.data, args.bundles, args.out, args.threads, args.repeats, args.max_cases, args.training,
              args.overwrite, backends=tuple(args.backends))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands to the ``spikeseg`` dispatcher (which imports this module,
    hence the import here)."""
    from spikeseg.cli import add_command, add_threads_argument

    be = add_command(sub, "bench", needs=("matplotlib",), help="FP32 vs INT8 vs SNN: accuracy, speed, memory, operations, energy",
                     description="Benchmark bundles on the same held-out cases in one run: torch FP32 (when "
                                 "the training runs are reachable), ONNX Runtime and OpenVINO in FP32 and "
                                 "INT8. Writes results.csv, results.md and PNG plots.")
    be.add_argument("--data", type=Path, required=True, help="held-out labelled cases")
    be.add_argument("--bundles", type=Path, nargs="+", required=True, help="bundle folders to compare")
    be.add_argument("--out", type=Path, required=True, help="folder for results.csv, results.md and plots")
    add_threads_argument(be, "inference threads for every engine")
    be.add_argument("--repeats", type=int, default=3, help="timing repeats per case (median; default 3)")
    be.add_argument("--max-cases", type=int, help="use only the first N cases")
    be.add_argument("--training", metavar="SLICES",
                    help="also measure FPTT vs BPTT training memory and time, e.g. 8,32,76,152")
    be.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS),
                    help="the backends to measure (default: all; torch only where the training runs are "
                         "reachable). The torch rows give the x_vs_torch column")
    be.add_argument("--overwrite", action="store_true", help="replace existing results")
    be.set_defaults(handler=_bench)
