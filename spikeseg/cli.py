"""The ``spikeseg`` command: a dispatcher over the stages that are installed.

Each stage registers its own subcommands next to its code (``<stage>/commands.py``). A stage
that is not installed (a board package carries only ``spikeseg.runtime``) offers none, so a
board's ``spikeseg --help`` lists only what can run there. Registration imports no torch;
a command imports its implementation when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path

from spikeseg import __version__
from spikeseg.runtime.console import configure, verbosity
from spikeseg.runtime.errors import InputError

STAGES = ("spikeseg.prepare", "spikeseg.training", "spikeseg.export", "spikeseg.runtime", "spikeseg.benchmarks")


TRAIN_EXTRA = "pip install 'spikeseg[train]'"


def add_command(sub: argparse._SubParsersAction, name: str, needs: tuple[str, ...] = (),
                extra: str = TRAIN_EXTRA, **kwargs: object) -> argparse.ArgumentParser:
    """A subcommand that says what it needs: with a module of ``needs`` missing (a runtime-only
    install has no torch), it is listed as such and answers with how to install it (``extra``)."""
    missing = [m for m in needs if not _importable(m)]
    if missing:
        kwargs["help"] = f"{kwargs.get('help', '')} [not installed here: {extra}]"
    parser = sub.add_parser(name, **kwargs)
    parser.set_defaults(missing=missing, extra=extra)
    talk = parser.add_mutually_exclusive_group()
    talk.add_argument("-q", "--quiet", action="store_true",
                      help="errors, warnings and results only: no progress bars or step lines")
    talk.add_argument("-v", "--verbose", action="count", default=0,
                      help="also say the settings each step resolved (device, precision, threads, files)")
    return parser


def add_threads_argument(parser: argparse.ArgumentParser, purpose: str) -> None:
    """``--threads``, defaulting to the physical cores this process may use (read once), refused
    outside 1 to the logical cores."""
    from spikeseg.runtime.system import logical_cores, physical_cores

    cores = physical_cores()
    parser.add_argument("--threads", type=_threads, default=cores,
                        help=f"{purpose} (default: the physical cores, {cores} here; at most {logical_cores()})")


def _threads(text: str) -> int:
    from spikeseg.runtime.system import check_threads

    try:
        return check_threads(int(text))
    except (ValueError, InputError) as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--threads ") if isinstance(exc, InputError)
                                         else f"{text!r} is not a whole number") from None


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or an import hook refusing it
        return False


def installed_stages() -> list[str]:
    """The stages whose package is present (all of them in a checkout, the runtime on a board)."""
    return [s for s in STAGES if _importable(s)]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spikeseg",
        description="Brain-tumour segmentation with spiking and quantised networks: prepare scanner "
                    "data, make phantom data, train, export, segment on a CPU, evaluate, count "
                    "operations and energy.")
    p.add_argument("--version", action="version", version=f"spikeseg {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for stage in installed_stages():
        importlib.import_module(f"{stage}.commands").register(sub)
    return p


def config_file_defaults(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """A command that reads ``--config FILE`` (its parser has ``config_defaults``) takes the file's
    settings as its defaults before parsing, so the options given on the command line win; an
    option the file sets is no longer required."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    command = sub.choices.get(argv[0]) if argv else None
    loader = getattr(command, "config_defaults", None)
    if loader is None:
        return
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        else:
            continue
        defaults = loader(Path(path))
        command.set_defaults(**defaults)
        for action in command._actions:
            if action.dest in defaults:
                action.required = False


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        config_file_defaults(parser, argv)
    except InputError as exc:
        print(f"spikeseg {argv[0]}: error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    configure(verbosity(args.quiet, args.verbose))
    if args.missing:
        print(f"spikeseg {args.command}: error: needs {', '.join(args.missing)}, which this install lacks; "
              f"{args.extra}", file=sys.stderr)
        return 2
    try:
        return args.handler(args)
    except InputError as exc:
        print(f"spikeseg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
