"""The ARM packager: file list, wheel-tag checks, manifest, install-script syntax (no download here)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from spikeseg.export.package import TARGETS, check_wheels, runtime_requirements, wheel_glibc
from spikeseg.runtime.bundle import sha256_file
from spikeseg.runtime.errors import InputError
from tests.helpers import run_cli

AARCH64_WHEELS = ["numpy-2.2.6-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl",
                  "openvino-2026.4.1-20000-cp311-cp311-manylinux_2_35_aarch64.whl",
                  "tqdm-4.70.1-py3-none-any.whl"]


def _fake_wheels(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"PK\x03\x04 not a real wheel")
    return folder


def test_wheel_tags() -> None:
    assert wheel_glibc("manylinux_2_17_aarch64.manylinux2014_aarch64", "aarch64") == (2, 17)
    assert wheel_glibc("manylinux2014_aarch64", "aarch64") == (2, 17)
    assert wheel_glibc("manylinux_2_35_aarch64", "aarch64") == (2, 35)
    assert wheel_glibc("any", "aarch64") == (0, 0)
    assert wheel_glibc("manylinux_2_17_x86_64", "aarch64") is None
    target = TARGETS["linux-aarch64"]
    fit = check_wheels([Path(n) for n in AARCH64_WHEELS], target, "3.11")
    assert fit == {"min_glibc": "2.35", "python": "3.11"}
    for bad, why in [("numpy-2.2.6-cp311-cp311-manylinux_2_17_x86_64.whl", "does not run on linux-aarch64"),
                     ("numpy-2.2.6-cp312-cp312-manylinux_2_17_aarch64.whl", "not Python 3.11"),
                     ("numpy-2.2.6-cp311-cp311-manylinux_2_39_aarch64.whl", "newer than the target")]:
        with pytest.raises(InputError, match=why):
            check_wheels([Path(bad)], target, "3.11")


def test_package_contents_manifest_and_scripts(bundles, tmp_path: Path) -> None:
    wheels = _fake_wheels(tmp_path / "w", AARCH64_WHEELS)
    out = tmp_path / "pkg"
    r = run_cli("package", bundles["useg"], "--target", "linux-aarch64", "--out", out, "--wheels", wheels, "--tar",
                block_torch=True)
    assert r.returncode == 0, r.stderr
    meta = json.loads((out / "package.json").read_text())
    assert meta["target"] == "linux-aarch64" and meta["min_glibc"] == "2.35" and meta["python"] == "3.11"
    assert meta["requirements"] == runtime_requirements() and not any("torch" in q for q in meta["requirements"])
    listed = {f["path"]: f["sha256"] for f in meta["files"]}
    for must in ("install.sh", "spikeseg-run", "requirements.txt", "README.board.md", "hardware_profile.json",
                 "bundle/manifest.json", "app/spikeseg/__init__.py", "app/spikeseg/cli.py", "app/spikeseg/runtime/commands.py",
                 "app/spikeseg/runtime/segment.py",
                 "wheels/tqdm-4.70.1-py3-none-any.whl"):
        assert must in listed, must
        assert sha256_file(out / must) == listed[must]
    app = [p for p in listed if p.startswith("app/")]
    assert all(p in ("app/spikeseg/__init__.py", "app/spikeseg/cli.py") or p.startswith("app/spikeseg/runtime/")
               for p in app), app
    assert not any("torch" in p or "phantoms" in p for p in listed)
    # the board's own `spikeseg --help` (no site-packages: only the package's code) lists only
    # what can run there
    board = subprocess.run([sys.executable, "-S", "-c", "import sys; from spikeseg.cli import main; main(['--help'])"],
                           cwd=out / "app", capture_output=True, text=True)
    assert board.returncode == 0, board.stderr
    offered = set(re.findall(r"^    ([a-z-]+) ", board.stdout, flags=re.M))
    assert offered == {"segment", "evaluate", "profile"}, board.stdout
    for script in ("install.sh", "spikeseg-run"):
        assert subprocess.run(["sh", "-n", str(out / script)]).returncode == 0
        assert (out / script).stat().st_mode & 0o111
    assert "--no-index" in (out / "install.sh").read_text()
    with tarfile.open(tmp_path / "pkg.tar.gz") as t:
        assert "pkg/package.json" in t.getnames()


def test_package_refuses_wheels_for_another_machine(bundles, tmp_path: Path) -> None:
    wheels = _fake_wheels(tmp_path / "w", ["numpy-2.2.6-cp311-cp311-manylinux_2_17_x86_64.whl"])
    r = run_cli("package", bundles["useg"], "--out", tmp_path / "pkg", "--wheels", wheels)
    assert r.returncode == 2 and "does not run on linux-aarch64" in r.stderr and "x86_64" in r.stderr
    assert not (tmp_path / "pkg").exists() and not list(tmp_path.glob(".pkg.partial-*"))


def test_board_pins_are_exactly_the_versions_tested() -> None:
    """setup.cfg holds ranges; the board package pins each runtime dependency at the version this
    environment was installed with from requirements/constraints.txt."""
    from importlib.metadata import version

    reqs = runtime_requirements()
    assert reqs and all(r.count("==") == 1 for r in reqs)
    for req in reqs:
        name, ver = req.split("==")
        assert version(name) == ver, req
