"""The ARM packager: file list, wheel-tag checks, manifest, install-script syntax (no download here)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from spikeseg.export.package import TARGETS, check_wheels, checkout_pins, runtime_requirements, wheel_glibc
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


def board_wheels(folder: Path) -> Path:
    """A wheel for every pinned runtime requirement: the three above with their real aarch64
    tags, the rest as pure-Python stand-ins of the pinned versions."""
    have = {n.split("-")[0].lower() for n in AARCH64_WHEELS}
    rest = [f"{r.split('==')[0].replace('-', '_')}-{r.split('==')[1]}-py3-none-any.whl"
            for r in runtime_requirements() if r.split("==")[0].lower() not in have]
    return _fake_wheels(folder, AARCH64_WHEELS + rest)


def test_the_shipped_pins_match_the_checkout() -> None:
    """runtime/runtime_pins.txt (package data, read by ``spikeseg package`` from the install) is
    what setup.cfg and the constraints give (tests/project/test_layers.py installs the wheel and reads it)."""
    assert runtime_requirements() == checkout_pins(), "runtime/runtime_pins.txt is stale: run make pins"


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
    wheels = board_wheels(tmp_path / "w")
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
    assert all(p in ("app/spikeseg/__init__.py", "app/spikeseg/__main__.py", "app/spikeseg/cli.py") or p.startswith("app/spikeseg/runtime/")
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


# -- what package may write, read and run (issue "Hardening, round 3") ---------------------------

def _bundles_dir(bundles, tmp_path: Path) -> Path:
    """A folder of bundles as a user keeps them: twin/ and a sibling with the user's notes."""
    import shutil

    root = tmp_path / "bundles"
    shutil.copytree(bundles["useg"], root / "twin")
    (root / "other").mkdir()
    (root / "other" / "keep.txt").write_text("a sibling bundle")
    return root


def test_package_never_replaces_its_input_or_what_it_did_not_make(bundles, tmp_path: Path) -> None:
    """``--out bundles/ --overwrite`` for ``bundles/twin`` once deleted every sibling bundle, and
    ``--out`` inside the bundle copied the bundle into itself."""
    root = _bundles_dir(bundles, tmp_path)
    wheels = board_wheels(tmp_path / "w")
    for out, why in [(root, "holds the input"), (root / "twin", "is the input"), (root / "twin" / "pkg", "is inside"),
                     (wheels, "is the input")]:
        r = run_cli("package", root / "twin", "--out", out, "--wheels", wheels, "--overwrite")
        assert r.returncode == 2 and why in r.stderr and "Traceback" not in r.stderr, (out, r.stderr)
    assert (root / "other" / "keep.txt").read_text() == "a sibling bundle" and not (root / "twin" / "pkg").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "package.json").write_text('{"name": "an npm project"}')
    r = run_cli("package", root / "twin", "--out", mine, "--wheels", wheels, "--overwrite")
    assert r.returncode == 2 and "not a package folder made by spikeseg" in r.stderr
    assert (mine / "package.json").read_text() == '{"name": "an npm project"}'
    pkg = tmp_path / "pkg"
    assert run_cli("package", root / "twin", "--out", pkg, "--wheels", wheels).returncode == 0
    r = run_cli("package", root / "twin", "--out", pkg, "--wheels", wheels)
    assert r.returncode == 2 and "--overwrite" in r.stderr
    r = run_cli("package", root / "twin", "--out", pkg, "--wheels", wheels, "--overwrite")
    assert r.returncode == 0, r.stderr  # its own package: replaced


def test_package_ships_only_listed_verified_files_and_no_links(bundles, tmp_path: Path) -> None:
    """An unlisted ``notes.txt -> secret`` once shipped the secret; a link to /etc tried to copy /etc."""
    import os
    import shutil

    bundle = tmp_path / "b"
    shutil.copytree(bundles["useg"], bundle)
    (tmp_path / "secret").write_text("password")
    os.symlink(tmp_path / "secret", bundle / "notes.txt")
    os.symlink("/etc", bundle / "etc")
    (bundle / "scratch.txt").write_text("unlisted")
    out = tmp_path / "pkg"
    r = run_cli("package", bundle, "--out", out, "--wheels", board_wheels(tmp_path / "w"))
    assert r.returncode == 0, r.stderr
    shipped = sorted(p.relative_to(out / "bundle").as_posix() for p in (out / "bundle").rglob("*"))
    manifest = json.loads((bundle / "manifest.json").read_text())
    listed = {m["file"] for v in manifest["views"].values() for m in v["models"]}
    listed |= {m["weights"]["file"] for v in manifest["views"].values() for m in v["models"] if "weights" in m}
    assert set(shipped) == listed | {"manifest.json"}
    assert not any(p.is_symlink() for p in out.rglob("*"))
    assert sha256_file(out / "bundle" / "manifest.json") == sha256_file(bundle / "manifest.json")


def test_package_refuses_a_python_version_that_is_not_one(bundles, tmp_path: Path) -> None:
    r = run_cli("package", bundles["useg"], "--out", tmp_path / "pkg", "--python", '3.11"; touch X; echo "',
                "--wheels", board_wheels(tmp_path / "w"))
    assert r.returncode == 2 and "--python" in r.stderr and not (tmp_path / "pkg").exists()
    from spikeseg.export.package import check_script_values

    for bad in ("3.11 ", "3", "3.11.2", "$(id)", "3.1a"):
        with pytest.raises(InputError, match="--python"):
            check_script_values(bad, "onnxruntime")
    check_script_values("3.12", "openvino")


def test_package_refuses_a_wheels_folder_missing_a_runtime_requirement(bundles, tmp_path: Path) -> None:
    """An empty or partial wheels folder made a package that failed only on the board."""
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_cli("package", bundles["useg"], "--out", tmp_path / "pkg", "--wheels", empty)
    assert r.returncode == 2 and "no target wheel for numpy==" in r.stderr and not (tmp_path / "pkg").exists()
    partial = board_wheels(tmp_path / "partial")
    next(partial.glob("scipy-*.whl")).unlink()
    r = run_cli("package", bundles["useg"], "--out", tmp_path / "pkg", "--wheels", partial)
    assert r.returncode == 2 and "scipy==" in r.stderr and "numpy" not in r.stderr.split("no target wheel for")[1]
