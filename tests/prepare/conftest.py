"""The scanner-style case and prepare's result on it, shared by the prepare tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import shared


def _scanner_and_prepared(root: Path):
    from spikeseg.prepare import prepare
    from spikeseg.training.scanner import write_scanner_case

    scanner = write_scanner_case(root / "study", seed=3)
    lines: list[str] = []
    return scanner, (prepare(scanner.folder, root / "prepared" / "P001", log=lines.append), lines)


@pytest.fixture(scope="session")
def _both(tmp_path_factory: pytest.TempPathFactory):
    """The scanner case, and prepare's result on it: made once per session, for every worker."""
    return shared(tmp_path_factory, "scanner", _scanner_and_prepared)


@pytest.fixture(scope="session")
def scanner(_both):
    return _both[0]


@pytest.fixture(scope="session")
def prepared(_both):
    return _both[1]
