"""The dependency direction, checked on the source: the runtime builds on nothing above it."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

from tests.helpers import REPO

UPPER = ("spikeseg.snn", "spikeseg.training", "spikeseg.export", "spikeseg.benchmarks", "torch", "snntorch",
         "spikingjelly", "nncf", "onnx.", "nilearn")


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function (lazy imports count too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_runtime_and_dispatcher_import_nothing_above_the_runtime() -> None:
    files = sorted((REPO / "runtime").glob("*.py")) + [REPO / "spikeseg" / "cli.py", REPO / "spikeseg" / "__init__.py"]
    offending = {f"{p.relative_to(REPO)}: {m}" for p in files for m in imported_modules(p)
                 if (m + ".").startswith(UPPER)}
    assert offending == set()


def test_prepare_builds_on_the_runtime_only() -> None:
    """``spikeseg prepare`` is a point-of-care extra: SimpleITK and pydicom beside the runtime, no
    torch, no training code (the template's builder lives in training and imports it, not back)."""
    offending = {f"{p.relative_to(REPO)}: {m}" for p in sorted((REPO / "prepare").glob("*.py"))
                 for m in imported_modules(p) if (m + ".").startswith(UPPER)}
    assert offending == set()


def test_training_and_the_models_build_below_export() -> None:
    """Layers point one way: snn (the models) < training < export < benchmarks. Training once
    imported export's graphs (a cycle); the torch wrappers behind the exported graphs live in snn."""
    def offending(folder: str, above: tuple[str, ...]) -> set[str]:
        return {f"{p.relative_to(REPO)}: {m}" for p in sorted((REPO / folder).glob("*.py"))
                for m in imported_modules(p) if (m + ".").startswith(above)}

    assert offending("snn", ("spikeseg.training.", "spikeseg.export.", "spikeseg.benchmarks.")) == set()
    assert offending("training", ("spikeseg.export.", "spikeseg.benchmarks.")) == set()


def test_every_first_party_import_goes_through_the_spikeseg_namespace() -> None:
    """No file imports a bare ``runtime`` / ``training`` / ...: installed, only ``spikeseg`` exists."""
    bare = ("runtime", "snn", "training", "export", "benchmarks", "prepare")
    files = [p for d in (*bare, "spikeseg", "tests") for p in (REPO / d).glob("*.py")]
    offending = {f"{p.relative_to(REPO)}: {m}" for p in files for m in imported_modules(p) if m.split(".")[0] in bare}
    assert offending == set()


def test_the_wheel_installs_one_import_package(tmp_path: Path) -> None:
    """A wheel built from the checkout holds ``spikeseg`` and its dist-info, nothing with a
    generic top-level name, and ships the hardware profiles the runtime reads."""
    import subprocess
    import sys
    import zipfile

    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(REPO),
                        "-w", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    import spikeseg

    (wheel,) = tmp_path.glob(f"spikeseg-{spikeseg.__version__}-*.whl")  # the version --version prints
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"spikeseg", f"{wheel.name.split('-py')[0]}.dist-info"}
    assert "spikeseg/runtime/hardware_profiles.json" in names and "spikeseg/cli.py" in names
    assert {"spikeseg/prepare/template/t1.nii.gz", "spikeseg/prepare/template/NOTICE.txt",
            "spikeseg/training/recipes.json"} <= set(names)
    entry = zipfile.ZipFile(wheel).read(f"{wheel.name.split('-py')[0]}.dist-info/entry_points.txt").decode()
    assert "spikeseg = spikeseg.cli:main" in entry
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names)
    # installed from the wheel, away from the checkout, ``spikeseg package`` finds its pins (it once
    # crashed reading setup.cfg, which an install does not have)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--disable-pip-version-check",
                    "--target", str(site), str(wheel)], check=True)
    code = "import json, spikeseg.export.package as p; print(p.__file__); print(json.dumps(p.runtime_requirements()))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(site), "PYTHONSAFEPATH": "1"})
    assert r.returncode == 0, r.stderr
    where, pins = r.stdout.splitlines()
    from spikeseg.export.package import runtime_requirements

    assert where.startswith(str(site)) and json.loads(pins) == runtime_requirements()


def test_the_sdist_carries_the_licence_changelog_citation_constraints_and_docs(tmp_path: Path) -> None:
    import subprocess
    import sys
    import tarfile

    code = f"from setuptools import build_meta as b; print(b.build_sdist({str(tmp_path)!r}))"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    names = tarfile.open(tmp_path / r.stdout.strip().splitlines()[-1]).getnames()
    for must in ("README.md", "LICENSE", "CHANGELOG.md", "CITATION.cff", "requirements/constraints.txt",
                 "docs/index.md", "runtime/runtime_pins.txt", "runtime/predictor.py"):
        assert any(n.split("/", 1)[-1] == must for n in names), must

