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
    from runtime.evaluate import evaluate_dirs, format_table, summarise, to_csv

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
        write_text(args.out, to_csv(table))
        print(f"metrics written to {args.out}")
    return 1 if failures else 0


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
    ev.add_argument("pred", type=Path, help="predictions: OUT/<case>/<case>_seg.nii.gz or flat files")
    ev.add_argument("ref", type=Path, help="reference: a case folder or a folder of case folders")
    ev.add_argument("--out", type=Path, help="write the table as CSV here")
    ev.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
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
