"""``make gpu-check`` on a machine without CUDA: the dry run of the same script (CPU, tiny preset,
seconds of budget), so the check cannot rot between the sessions that are lent a GPU; and the
wheel list ``make gpu-wheels`` downloads (no download here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from spikeseg.benchmarks.gpu_wheels import drop_stale, pins, requirements
from tests.helpers import REPO

CONSTRAINTS = REPO / "requirements" / "constraints.txt"


def test_the_dry_run_runs_every_step_and_writes_its_summary(phantom5: Path, phantom_root: Path,
                                                           tmp_path: Path) -> None:
    out = tmp_path / "gpu-check"
    r = subprocess.run([sys.executable, "-m", "spikeseg.benchmarks.gpu_check", "--dry-run", "--out", str(out),
                        "--train", str(phantom5), "--test", str(phantom_root)],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    status = {s["name"]: s["status"] for s in summary["steps"]}
    assert status == {"tests": "ok", "phantoms": "skipped", "speed": "ok", "fidelity": "ok"}
    steps = {s["name"]: s for s in summary["steps"]}
    assert steps["tests"]["figures"]["skipped"] >= 9 and steps["tests"]["figures"]["failed"] == 0
    speed = steps["speed"]["figures"]["speed"]
    assert {(s["model"], s["preset"]) for s in speed} == {("twin", "tiny"), ("snn-fptt", "tiny")}
    assert all(s["slices_per_s"] > 0 and s["device"] == "cpu" for s in speed)
    assert set(steps["fidelity"]["figures"]["ensemble"]) == {"twin", "snn-warm"}
    assert (out / "fidelity" / "results.md").is_file() and (out / "pytest.xml").is_file()
    md = (out / "summary.md").read_text()
    assert "| tests | ok |" in md and "no GPU (dry run on the CPU)" in md and md in r.stdout
    assert summary["machine"]["torch"] and summary["plan"]["device"] == "cpu"


def test_without_cuda_the_real_check_refuses_and_says_how(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "spikeseg.benchmarks.gpu_check", "--out", str(tmp_path / "o")],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no CUDA GPU visible" in r.stderr and "--dry-run" in r.stderr


def test_the_gpu_wheels_are_the_pinned_versions_and_never_torch(tmp_path: Path) -> None:
    reqs = requirements(CONSTRAINTS)
    pinned = pins(CONSTRAINTS)
    assert reqs[:2] == [pinned["nibabel"], pinned["nilearn"]] and all("==" in r for r in reqs)
    with pytest.raises(SystemExit, match="never carries torch"):
        requirements(CONSTRAINTS, ("nibabel", "torch"))
    with pytest.raises(SystemExit, match="no pin"):
        requirements(CONSTRAINTS, ("not-a-package",))
    version = pinned["nibabel"].split("==")[1]
    for name in (f"nibabel-{version}-py3-none-any.whl", "nibabel-0.1-py3-none-any.whl", "other-1.0-py3-none-any.whl"):
        (tmp_path / name).write_bytes(b"")
    drop_stale(tmp_path, reqs)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"nibabel-{version}-py3-none-any.whl",
                                                          "other-1.0-py3-none-any.whl"]
