"""What the commands say while they work, through :mod:`logging` (the ``spikeseg`` logger).

Why one place: every command takes ``-q`` (errors, warnings and results only) and ``-v`` (also
the settings each step resolved), and a notebook user silences or redirects the same messages
with ``logging.getLogger("spikeseg")``. A command's results (tables, the per-case line, where an
output was written) are printed to stdout, not logged: ``-q`` keeps them.
"""

from __future__ import annotations

import logging
import sys

LOGGER = "spikeseg"
QUIET, NORMAL, VERBOSE = -1, 0, 1
_LEVELS = {QUIET: logging.WARNING, NORMAL: logging.INFO, VERBOSE: logging.DEBUG}

log = logging.getLogger(LOGGER)


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now (a test's capture, a redirected notebook cell),
    not to the stream the handler was made with."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201 (a text stream)
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:  # noqa: ANN001 (StreamHandler.__init__ sets it)
        pass


def configure(verbosity: int) -> None:
    """Route the ``spikeseg`` logger to stderr at the level ``verbosity`` asks (``QUIET``,
    ``NORMAL``, ``VERBOSE`` or more); calling it again replaces, never adds, its handler."""
    level = _LEVELS[max(QUIET, min(VERBOSE, verbosity))]
    for handler in [h for h in log.handlers if isinstance(h, _CurrentStderr)]:
        log.removeHandler(handler)
    handler = _CurrentStderr()
    detail = "%(message)s" if level > logging.DEBUG else "%(levelname)s %(name)s: %(message)s"
    handler.setFormatter(logging.Formatter(detail))
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False  # the command owns stderr; a root handler would print each line twice


def verbosity(quiet: bool, verbose: int) -> int:
    """The level ``-q`` / ``-v`` ask for; both at once is a contradiction the parser refuses."""
    return QUIET if quiet else min(VERBOSE, verbose)


def shows_progress() -> bool:
    """Whether progress bars belong on stderr now (not under ``-q``)."""
    return log.isEnabledFor(logging.INFO)
