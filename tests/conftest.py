"""Shared fixtures: small phantom cases written once per test session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

# Before torch is imported (here, in every xdist worker and in every CLI subprocess, which inherit
# it): OpenMP's threads sleep between parallel regions instead of spinning. With two workers, the
# shared bundles' build and CLI subprocesses on two cores, the spinning threads took the CPU from
# the ones with work: the training tests took 6.5 minutes with it, 2.5 without.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402

from spikeseg.training.phantoms import make_case, write_case
from tests.helpers import REPO, build_shared, shared, shared_root


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


@pytest.fixture(scope="session")
def untrained_bundle(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A twin bundle (axial + coronal, FP32) of seeded, untrained weights, exported as ``spikeseg
    export`` exports a trained one, and its two run folders: for the tests of a bundle's files,
    paths and refusals, which need no trained model (seconds, and no wait for :func:`bundles`)."""
    return shared(tmp_path_factory, "untrained", _build_untrained)


def _build_untrained(root: Path) -> dict[str, Path]:
    from spikeseg.export.build import build_bundle
    from spikeseg.training.run_folder import write_untrained_run

    runs = [write_untrained_run(root / "runs" / view, "useg", view, "tiny", 6.0,
                                why="untrained: a test fixture").path for view in ("axial", "coronal")]
    bundle = build_bundle(runs, root / "useg.bundle", check_accuracy=False, log=lambda _: None)
    return {"useg": bundle, "runs": root / "runs"}


def prebuild_bundles(root: str) -> None:
    """The bundles fixture's build, in a process of its own (see :func:`pytest_configure`)."""
    build_shared(Path(root), _build_bundles)


_PREBUILD: list[subprocess.Popen] = []


@pytest.hookimpl(trylast=True)  # after the tmp_path plugin has set the session's base folder
def pytest_configure(config: pytest.Config) -> None:
    """Under ``pytest -n N`` the controller starts building the shared bundles at once, in a
    process of its own, while the workers run the tests that need none (ordered first below);
    otherwise a worker sat idle while the other built them. Not when the run selects by marker or
    keyword (it may need no bundles)."""
    if os.environ.get("PYTEST_XDIST_WORKER") or not getattr(config.option, "numprocesses", None):
        return
    if config.option.markexpr or config.option.keyword or config.option.collectonly:
        return
    root = shared_root(config._tmp_path_factory.getbasetemp(), "bundles")
    code = "import sys; from tests.conftest import prebuild_bundles; prebuild_bundles(sys.argv[1])"
    _PREBUILD.append(subprocess.Popen([sys.executable, "-c", code, str(root)], cwd=REPO,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))


def pytest_unconfigure(config: pytest.Config) -> None:
    """A session that ended before the bundles were needed (``-x``, Ctrl-C) stops their build."""
    for proc in _PREBUILD:
        if proc.poll() is None:
            proc.terminate()
            proc.wait()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that need trained and exported bundles are ``slow``: ``pytest -m "not slow"`` runs
    the rest while editing, without the session's export fixture (about 90 s of setup here).
    Under ``pytest -n 2`` the fixture is built once and shared (:func:`tests.helpers.shared`),
    and those tests run last, so the workers have the rest to do while it is built."""
    for item in items:
        if "bundles" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: "bundles" in getattr(item, "fixturenames", ()))  # stable: same order on every worker
