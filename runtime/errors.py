"""One exception type for bad input, so the CLI can print it and exit non-zero without a traceback."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad input a user can fix: the message names the file and what is wrong with it."""

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)
