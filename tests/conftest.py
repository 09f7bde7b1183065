"""Shared fixtures: small phantom cases written once per test session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from runtime.phantoms import make_case, write_case


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small (2 mm) phantom cases in BraTS 2021 layout; read-only for tests."""
    root = tmp_path_factory.mktemp("phantoms")
    for i in range(3):
        image, labels, affine = make_case(100 + i, "small", 0.5)
        write_case(root, f"BraTS2021_{100 + i:05d}", image, labels, affine)
    return root


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
    root = tmp_path_factory.mktemp("phantom5")
    for i in range(5):
        image, labels, affine = make_case(200 + i, "small", 0.5)
        write_case(root, f"BraTS2021_{200 + i:05d}", image, labels, affine)
    return root
