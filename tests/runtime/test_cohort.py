"""Cohort runs never lose data: hostile ids, output = input, re-runs, concurrent runs, stale partials.

Each test reproduces a defect found by trying the runtime as a careless user or an attacker
would (issues "Hardening the runtime" and "Cohorts that never lose data")."""

from __future__ import annotations

import csv
import gzip
import hashlib
import os
import shutil
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from spikeseg.runtime.atomic import atomic_dir
from spikeseg.runtime.errors import InputError
from spikeseg.runtime.options import SegmentOptions
from tests.helpers import REPO, run_cli

FAST = ("--views", "axial", "--quiet")


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its sha256: inputs must come out byte-identical."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def summary(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "summary.csv") as f:
        return {row["case"]: row for row in csv.DictReader(f)}


def rename_case(folder: Path, new_id: str, dest: Path) -> Path:
    """Copy a case folder to ``dest`` with its files renamed to ``new_id``."""
    dest.mkdir(parents=True)
    for f in folder.iterdir():
        key = f.name[len(folder.name):]
        shutil.copy(f, dest / f"{new_id}{key}")
    return dest


@pytest.fixture()
def cohort(phantom_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "cohort"
    shutil.copytree(phantom_root, root)
    return root


def test_hostile_case_ids_touch_nothing_outside_their_folder(bundles, cohort: Path, tmp_path: Path) -> None:
    """Files named ``.._t1.nii.gz`` or ``._t1.nii.gz`` once made ``--overwrite`` delete the parent
    of the output folder, or every other case's output."""
    out = tmp_path / "work" / "out"
    sentinel = tmp_path / "work" / "keep.txt"
    out.mkdir(parents=True)
    sentinel.write_text("mine")
    good = sorted(cohort.iterdir())[0]
    for hostile in ("..", ".", "bad id"):
        rename_case(good, hostile, cohort / f"z{len(hostile)}{hostile.replace(' ', '')}-case")
    before = tree_digest(cohort)
    first = run_cli("segment", bundles["useg"], cohort, out, *FAST)
    assert first.returncode == 1, first.stderr
    done = {p.name for p in out.iterdir() if not p.name.startswith(".")} - {"summary.csv"}
    assert len(done) == 3
    again = run_cli("segment", bundles["useg"], cohort, out, "--overwrite", *FAST)
    assert again.returncode == 1
    assert sentinel.read_text() == "mine"
    assert {p.name for p in out.iterdir() if not p.name.startswith(".")} - {"summary.csv"} == done
    text = again.stdout + again.stderr
    assert "'bad id'" in text and "not a safe folder name" in text
    rows = summary(out)  # folders of hidden files only (".._t1", "._t1") are no case folders
    assert sum(r["status"] == "ok" for r in rows.values()) == 3
    assert [r["status"] for r in rows.values()].count("failed") == 1 and len(rows) == 4
    assert tree_digest(cohort) == before


def test_two_folders_with_one_case_id_both_fail(bundles, cohort: Path, tmp_path: Path) -> None:
    first = sorted(cohort.iterdir())[0]
    shutil.copytree(first, cohort / "zz-copy-of-first")
    out = tmp_path / "out"
    r = run_cli("segment", bundles["useg"], cohort, out, *FAST)
    assert r.returncode == 1
    assert "ids must be unique" in r.stdout + r.stderr and "zz-copy-of-first" in r.stdout + r.stderr
    assert not (out / first.name).exists()
    assert sum(row["status"] == "ok" for row in summary(out).values()) == 2


@pytest.mark.parametrize("where", ["same", "inside-case", "holds-cohort", "inside-single-case"])
def test_output_overlapping_the_input_is_refused_before_anything(bundles, cohort: Path, where: str) -> None:
    """Output = input with --overwrite once deleted every case's images and replaced the
    reference ``_seg`` with the prediction."""
    case = sorted(cohort.iterdir())[0]
    src, out = {"same": (cohort, cohort), "inside-case": (cohort, case / "out"),
                "holds-cohort": (cohort, cohort.parent), "inside-single-case": (case, case / "out")}[where]
    before = tree_digest(cohort)
    r = run_cli("segment", bundles["useg"], src, out, "--overwrite", *FAST, block_torch=True)
    assert r.returncode == 2, r.stderr
    assert "outside the input data" in r.stderr and "Traceback" not in r.stderr
    assert tree_digest(cohort) == before
    assert not (case / "out").exists()


def test_output_beside_the_cases_in_the_cohort_root_is_allowed(bundles, cohort: Path) -> None:
    r = run_cli("segment", bundles["useg"], cohort, cohort / "results", *FAST)
    assert r.returncode == 0, r.stderr
    again = run_cli("segment", bundles["useg"], cohort, cohort / "results", *FAST)
    assert again.returncode == 0, again.stderr  # "results" is not mistaken for a case


def test_rerun_with_folder_names_unlike_ids_keeps_a_complete_summary(bundles, cohort: Path, tmp_path: Path) -> None:
    """A re-run used to report every finished case as FAILED (skip check by folder name) and
    to rewrite the summary with rows that had no volumes."""
    renamed = tmp_path / "renamed"
    for i, case in enumerate(sorted(cohort.iterdir())):
        shutil.copytree(case, renamed / f"patient-{i}")
    out = tmp_path / "out"
    first = run_cli("segment", bundles["useg"], renamed, out, *FAST)
    assert first.returncode == 0, first.stderr
    rows1 = summary(out)
    again = run_cli("segment", bundles["useg"], renamed, out, *FAST)
    assert again.returncode == 0, again.stderr
    assert "FAILED" not in again.stdout + again.stderr
    rows2 = summary(out)
    assert set(rows2) == set(rows1) == {c.name for c in sorted(cohort.iterdir())}
    for case, row in rows2.items():
        assert row["status"] == "ok" and row["message"] == "done earlier"
        assert row["WT_ml"] == rows1[case]["WT_ml"] and float(row["WT_ml"]) >= 0


def test_prediction_never_takes_a_reference_label_name(bundles, cohort: Path, tmp_path: Path) -> None:
    case = sorted(cohort.iterdir())[0]
    out = tmp_path / "out"
    assert run_cli("segment", bundles["useg"], case, out, *FAST).returncode == 0
    names = {p.name for p in (out / case.name).iterdir()}
    assert f"{case.name}_pred.nii.gz" in names and f"{case.name}_seg.nii.gz" not in names
    r = run_cli("evaluate", out, cohort)  # finds C/C_pred; the two unsegmented cases fail
    assert r.returncode == 1 and case.name in r.stdout


def test_a_case_locked_by_another_process_is_left_to_it(bundles, cohort: Path, tmp_path: Path) -> None:
    fcntl = pytest.importorskip("fcntl")
    out = tmp_path / "out"
    busy = sorted(cohort.iterdir())[1].name
    (out / ".locks").mkdir(parents=True)
    fd = os.open(out / ".locks" / f"{busy}.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        r = run_cli("segment", bundles["useg"], cohort, out, *FAST)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    assert r.returncode == 0, r.stderr
    assert not (out / busy).exists() and summary(out)[busy]["status"] == "busy"
    again = run_cli("segment", bundles["useg"], cohort, out, *FAST)
    assert again.returncode == 0 and (out / busy).is_dir()
    assert all(row["status"] == "ok" for row in summary(out).values())


def test_stale_partial_folders_are_swept_and_outputs_follow_the_umask(bundles, cohort: Path, tmp_path: Path) -> None:
    case = sorted(cohort.iterdir())[0]
    out = tmp_path / "out"
    stale = out / f".{case.name}.partial-deadbeef"
    stale.mkdir(parents=True)
    (stale / "half.nii.gz").write_bytes(b"half")
    r = run_cli("segment", bundles["useg"], cohort, out, *FAST)
    assert r.returncode == 0, r.stderr
    assert not stale.exists()
    folder = out / case.name
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~0o022  # the test runner's umask is 022
    for f in folder.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f


def test_unwritable_output_is_found_before_inference(bundles, cohort: Path, tmp_path: Path) -> None:
    case = sorted(cohort.iterdir())[0]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run_cli("segment", bundles["useg"], case, blocker, *FAST)
    assert r.returncode == 2 and "not a folder" in r.stderr and "Traceback" not in r.stderr


def test_atomic_dir_replaces_only_its_own_folder(tmp_path: Path) -> None:
    for bad in ("..", ".hidden"):  # (OUT / "." is OUT itself to pathlib: case ids refuse ".")
        with pytest.raises(InputError, match="not a plain folder name"):
            with atomic_dir(tmp_path / "out" / bad):
                pass
    dest = tmp_path / "out" / "case"
    (tmp_path / "out" / "other").mkdir(parents=True)
    with atomic_dir(dest) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(dest) as tmp:
            (tmp / "a").write_text("2")
            raise RuntimeError("a view model failed mid-case")
    assert (dest / "a").read_text() == "1"  # the failed attempt left the old result whole
    with atomic_dir(dest) as tmp:
        (tmp / "b").write_text("3")
    assert sorted(p.name for p in dest.iterdir()) == ["b"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["case", "other"]


def _nifti(path: Path, shape=(120, 120, 78), dtype=np.float32, codes=(1, 1)) -> None:
    img = nib.Nifti1Image(np.ones(shape, dtype=dtype), None)
    img.header.set_zooms((2.0, 2.0, 2.0))
    img.header.set_qform(np.diag([2.0, 2.0, 2.0, 1.0]) if codes[0] else None, code=codes[0])
    img.header.set_sform(np.diag([2.0, 2.0, 2.0, 1.0]) if codes[1] else None, code=codes[1])
    nib.save(img, str(path))


@pytest.mark.parametrize("damage,message", [
    ("huge-claim", "over the limit"), ("short-claim", "truncated or corrupt"),
    ("complex", "complex data"), ("tiny", "too small"), ("no-geometry", "no orientation"),
    ("singular", "singular"), ("nan-affine", "not finite"),
])
def test_hostile_headers_fail_fast_with_the_file_named(bundles, cohort: Path, tmp_path: Path,
                                                       damage: str, message: str) -> None:
    """A 93-byte header claiming 1200^3 float32 once took 6.9 GB before failing."""
    case = sorted(cohort.iterdir())[0]
    path = case / f"{case.name}_t2.nii.gz"
    if damage in ("huge-claim", "short-claim"):
        hdr = nib.load(str(path)).header.copy()
        hdr.set_data_shape((1200, 1200, 1200) if damage == "huge-claim" else (240, 240, 155))
        raw = hdr.binaryblock + b"\0" * 4
        import gzip
        path.write_bytes(gzip.compress(raw))
    elif damage == "complex":
        _nifti(path, dtype=np.complex64)
    elif damage == "tiny":
        _nifti(path, shape=(1, 1, 1))
    elif damage == "no-geometry":
        _nifti(path, codes=(0, 0))
    else:
        aff = np.eye(4)
        aff[2, 2] = 0.0 if damage == "singular" else np.nan
        img = nib.Nifti1Image(np.ones((120, 120, 78), np.float32), None)
        img.header.set_sform(aff, code=1)
        img.header.set_qform(None, code=0)
        nib.save(img, str(path))
    out = tmp_path / "out"
    r = run_cli("segment", bundles["useg"], case, out, *FAST, block_torch=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and path.name in r.stderr and "Traceback" not in r.stderr
    assert not out.exists() or not [p for p in out.iterdir() if not p.name.startswith(".")]
    # in a cohort the same case is reported and the rest go on
    r = run_cli("segment", bundles["useg"], cohort, tmp_path / "cohort-out", *FAST, timeout=120)
    assert r.returncode == 1 and message in r.stdout + r.stderr
    assert sum(row["status"] == "ok" for row in summary(tmp_path / "cohort-out").values()) == 2


def test_shards_split_the_cohort_and_each_summary_is_complete(bundles, cohort: Path, tmp_path: Path) -> None:
    bad = sorted(cohort.iterdir())[1]
    (bad / f"{bad.name}_flair.nii.gz").unlink()
    before = tree_digest(cohort)
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    assert run_cli("segment", bundles["useg"], cohort, single, *FAST).returncode == 1
    first = run_cli("segment", bundles["useg"], cohort, sharded, "--shard", "1/2", *FAST)
    assert first.returncode == 0, first.stderr  # shard 1 holds cases 0 and 2: both fine
    assert summary(sharded)[bad.name]["status"] == "pending"
    second = run_cli("segment", bundles["useg"], cohort, sharded, "--shard", "2/2", *FAST)
    assert second.returncode == 1
    rows = summary(sharded)
    assert [r["status"] for r in rows.values()].count("ok") == 2 and rows[bad.name]["status"] == "failed"
    assert "missing modality flair" in rows[bad.name]["message"]
    for case in (c.name for c in sorted(cohort.iterdir()) if c.name != bad.name):
        a = nib.load(str(single / case / f"{case}_pred.nii.gz"))
        b = nib.load(str(sharded / case / f"{case}_pred.nii.gz"))
        assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
    again = run_cli("segment", bundles["useg"], cohort, sharded, "--shard", "1/2", *FAST)
    assert again.returncode == 0  # its own cases are fine; the summary still shows shard 2's failure
    assert _outcomes(summary(sharded)) == _outcomes(summary(single))  # one complete summary
    assert tree_digest(cohort) == before
    r = run_cli("segment", bundles["useg"], cohort, sharded, "--shard", "3/2", *FAST)
    assert r.returncode == 2 and "1 <= I <= N" in r.stderr


def test_kill_in_the_middle_then_rerun_leaves_no_partial_and_redoes_nothing(bundles, cohort: Path,
                                                                            tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    for i in range(3):  # six cases, so the kill lands mid-cohort
        shutil.copytree(sorted(cohort.iterdir())[i], cohort / f"zz{i}", dirs_exist_ok=False)
        for f in (cohort / f"zz{i}").iterdir():
            f.rename(f.with_name(f.name.replace(sorted(cohort.iterdir())[i].name, f"Extra_{i:05d}")))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "spikeseg.cli", "segment", str(bundles["useg"]), str(cohort),
                             str(out), "--views", "axial,coronal", "--quiet"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len([p for p in out.glob("*/*_report.json")]) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {p.parent.name for p in out.glob("*/*_report.json")}
    assert 2 <= len(done) < 6
    for folder in (p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")):
        assert (folder / f"{folder.name}_report.json").is_file()  # no partial case in view
    mtimes = {c: (out / c / f"{c}_pred.nii.gz").stat().st_mtime_ns for c in done}
    r = run_cli("segment", bundles["useg"], cohort, out, "--views", "axial,coronal", "--quiet")
    assert r.returncode == 0, r.stderr
    assert f"{len(done)} done earlier" in r.stdout
    assert {c: (out / c / f"{c}_pred.nii.gz").stat().st_mtime_ns for c in done} == mtimes
    assert not [p for p in out.iterdir() if ".partial-" in p.name or ".old-" in p.name]
    assert all(row["status"] == "ok" for row in summary(out).values()) and len(summary(out)) == 6


def test_evaluate_against_label_maps_only(bundles, cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_cli("segment", bundles["useg"], cohort, out, *FAST).returncode == 0
    labels = tmp_path / "labels"
    labels.mkdir()
    for case in sorted(cohort.iterdir()):
        shutil.copy(case / f"{case.name}_seg.nii.gz", labels)
    full = run_cli("evaluate", out, cohort, "--out", tmp_path / "a.csv")
    only = run_cli("evaluate", out, labels, "--out", tmp_path / "b.csv", block_torch=True)
    assert full.returncode == only.returncode == 0, only.stderr
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()


def _outcomes(rows: dict[str, dict[str, str]]) -> dict[str, tuple[str, ...]]:
    """What a summary says of each case, less timings and "done earlier" notes."""
    return {c: (r["status"], r["ET_ml"], r["TC_ml"], r["WT_ml"], r["message"] if r["status"] == "failed" else "")
            for c, r in rows.items()}


def test_a_dask_cluster_gives_the_single_process_outputs_and_summary(bundles, cohort: Path, tmp_path: Path) -> None:
    """A LocalCluster of worker processes: the same segmentations as one process, one complete
    summary with the bad case failed, exit 1, the inputs byte-identical."""
    pytest.importorskip("distributed")
    bad = sorted(cohort.iterdir())[1]
    (bad / f"{bad.name}_flair.nii.gz").unlink()
    before = tree_digest(cohort)
    single, clustered = tmp_path / "single", tmp_path / "dask"
    assert run_cli("segment", bundles["useg"], cohort, single, *FAST).returncode == 1
    r = run_cli("segment", bundles["useg"], cohort, clustered, "--dask", "local", "--threads", "1", *FAST,
                isolated=True)  # the cluster's worker processes belong to a process of their own
    assert r.returncode == 1, r.stderr
    again = run_cli("segment", bundles["useg"], cohort, clustered, "--dask", "local", "--threads", "1", *FAST,
                    isolated=True)
    assert again.returncode == 1, again.stderr  # run twice: the bad case fails again, nothing is redone
    rows = summary(clustered)
    assert _outcomes(rows) == _outcomes(summary(single))
    assert rows[bad.name]["status"] == "failed" and "missing modality flair" in rows[bad.name]["message"]
    for case in (c.name for c in sorted(cohort.iterdir()) if c.name != bad.name):
        a, b = (gzip.decompress((o / case / f"{case}_pred.nii.gz").read_bytes()) for o in (single, clustered))
        assert a == b, case
    assert tree_digest(cohort) == before
    assert not list(clustered.glob(".*partial*"))


def test_a_killed_dask_worker_has_its_case_run_elsewhere(bundles, cohort: Path, tmp_path: Path) -> None:
    """A worker process that dies in the middle of a case (kill -9, OOM killer) costs a retry,
    not the case: the scheduler reruns it on a live worker and the output is the single-process one."""
    pytest.importorskip("distributed")
    from spikeseg.runtime.bundle import load_bundle
    from spikeseg.runtime.cluster import _segment_task, run_on_dask
    from spikeseg.runtime.cohort import case_lock, discover

    victim = sorted(cohort.iterdir())[0].name
    marker = tmp_path / "killed-once"

    def dies_once(bundle, options, case, out, *args):  # local: cloudpickle ships it to the workers by value
        if case.name == victim and not marker.exists():
            marker.touch()
            with case_lock(out, case.case_id):  # dies holding the case's lock
                os._exit(9)
        return _segment_task(bundle, options, case, out, *args)

    single, clustered = tmp_path / "single", tmp_path / "dask"
    assert run_cli("segment", bundles["useg"], cohort, single, *FAST).returncode == 0
    clustered.mkdir()
    options = SegmentOptions(views=("axial",), threads=1)
    outcomes = {c.name: s for c, s in run_on_dask("local", str(load_bundle(bundles["useg"]).root.resolve()), options,
                                                  discover(cohort), clustered, False, task=dies_once)}
    assert marker.exists()  # the worker really died
    assert all(s[0] == "ok" for s in outcomes.values()), outcomes
    for case in outcomes:
        a, b = (gzip.decompress((o / case / f"{case}_pred.nii.gz").read_bytes()) for o in (single, clustered))
        assert a == b, case


def test_a_write_failure_mid_case_leaves_nothing_of_that_case(bundles, cohort: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills up after a case's first output file is written: that case is reported
    failed with the reason, nothing of it is left (no folder, no partial, no lock), the run stops
    there with one message (every later case would fail the same way; they stay pending for the
    next run), the summary is written, and the inputs are untouched."""
    import threading

    import spikeseg.runtime.predictor as predictor_module
    import spikeseg.runtime.segment as segment_module

    victim = sorted(cohort.iterdir())[0].name
    real, written = predictor_module.save_like, []
    label_written = threading.Event()  # the files are written side by side: fail after the first

    def fills_up(data, geometry, path, dtype, **kw):
        if path.name.startswith(victim) and "_uncertainty" in path.name:
            label_written.wait(30)
            raise OSError(28, "No space left on device")
        real(data, geometry, path, dtype, **kw)
        if path.name.startswith(victim):
            written.append(path)
            label_written.set()

    monkeypatch.setattr(predictor_module, "save_like", fills_up)
    before = tree_digest(cohort)
    out = tmp_path / "out"
    with pytest.raises(InputError, match="disk full, run stopped"):
        segment_module.segment(bundles["useg"], cohort, out)
    assert written  # the first file of the case was written before the failure
    rows = summary(out)
    assert rows[victim]["status"] == "failed" and "No space left" in rows[victim]["message"]
    assert not (out / victim).exists() and not list(out.glob(".*partial*")) and not (out / ".locks").exists()
    assert all(rows[c]["status"] == "pending" for c in rows if c != victim)
    assert tree_digest(cohort) == before
