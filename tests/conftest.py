"""Shared fixtures: small phantom cases written once per test session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from spikeseg.training.phantoms import make_case, write_case
from tests.helpers import shared


def _phantoms(root: Path, seeds: range) -> Path:
    """Small (2 mm) medium-difficulty phantoms in BraTS 2021 layout, one per seed."""
    for seed in seeds:
        image, labels, affine = make_case(seed, "small", 0.5)
        write_case(root, f"BraTS2021_{seed:05d}", image, labels, affine)
    return root


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small (2 mm) phantom cases in BraTS 2021 layout; read-only for tests."""
    return _phantoms(tmp_path_factory.mktemp("phantoms"), range(100, 103))


@pytest.fixture()
def case_copy(phantom_root: Path, tmp_path: Path) -> Path:
    """A writable copy of one phantom case folder, for tests that damage it."""
    src = sorted(phantom_root.iterdir())[0]
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="session")
def phantom5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five small labelled phantoms: enough for a 5-fold split (4 train, 1 validation)."""
    return _phantoms(tmp_path_factory.mktemp("phantom5"), range(200, 205))


#: the shared bundles' training: no augmentation, so their 2-epoch models find the phantoms'
#: tumours as the export and runtime tests expect (augmentation has its own tests)
TRAIN = ["--preset", "tiny", "--spacing", "6", "--batch-size", "2", "--epochs", "2", "--augment", "none", "--quiet"]


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A spiking and a twin bundle (axial + coronal), FP32 and INT8, from 2-epoch runs, trained on
    their own five phantoms and calibrated on three (built once per session, for every worker)."""
    return shared(tmp_path_factory, "bundles", _build_bundles)


def _build_bundles(root: Path) -> dict[str, Path]:
    from spikeseg.cli import main as cli  # in this process: six CLI start-ups (torch imports) saved

    phantom5 = _phantoms(root / "phantom5", range(200, 205))
    calib = _phantoms(root / "calib", range(100, 103))
    out = {}
    for arch in ("spiking-useg", "useg"):
        for view in ("axial", "coronal"):
            args = ["train", "--data", phantom5, "--out", root / arch / view, "--arch", arch, "--view", view, *TRAIN]
            assert cli([str(a) for a in args]) == 0, args
        args = ["export", root / arch / "axial", root / arch / "coronal", "--out", root / f"{arch}.bundle",
                "--int8", "--calib", calib, "--calib-items", "60", "--allow-accuracy-drop"]
        assert cli([str(a) for a in args]) == 0, args
        out[arch] = root / f"{arch}.bundle"
    out["runs"] = root
    return out


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that need trained and exported bundles are ``slow``: ``pytest -m "not slow"`` runs
    the rest while editing, without the session's export fixture (about 90 s of setup here).
    Under ``pytest -n 2`` the fixture is built once and shared (:func:`tests.helpers.shared`)."""
    for item in items:
        if "bundles" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
