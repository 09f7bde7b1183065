"""-q / -v on every command, through the ``spikeseg`` logger."""

from __future__ import annotations

import argparse
import logging

import pytest

from spikeseg.cli import build_parser
from spikeseg.runtime.console import NORMAL, QUIET, VERBOSE, configure, log, shows_progress, verbosity


def _commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_command_takes_quiet_and_verbose_but_not_both() -> None:
    commands = _commands()
    assert {"segment", "evaluate", "profile", "train", "export", "prepare"} <= set(commands)
    for name, parser in commands.items():
        options = {s for a in parser._actions for s in a.option_strings}
        assert {"-q", "--quiet", "-v", "--verbose"} <= options, name
    with pytest.raises(SystemExit) as refused:
        build_parser().parse_args(["evaluate", "a", "b", "-q", "-v"])
    assert refused.value.code == 2


def test_levels_follow_the_flags_and_reconfiguring_adds_no_handler(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        configure(verbosity(quiet=True, verbose=0))
        log.info("step line")
        log.warning("a warning")
        assert not shows_progress()
        configure(verbosity(quiet=False, verbose=0))
        log.info("info line")
        log.debug("debug line")
        assert shows_progress()
        configure(verbosity(quiet=False, verbose=3))
        log.debug("resolved settings")
        err = capsys.readouterr().err
        assert "step line" not in err and "a warning" in err
        assert "info line" in err and "debug line" not in err and "resolved settings" in err
        ours = [h for h in log.handlers if type(h).__name__ == "_CurrentStderr"]  # pytest may add its own
        assert len(ours) == 1 and not log.propagate
    finally:
        configure(NORMAL)
    assert (verbosity(True, 0), verbosity(False, 0), verbosity(False, 2)) == (QUIET, NORMAL, VERBOSE)
    assert log.level == logging.INFO
