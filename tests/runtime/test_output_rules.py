"""The rules that protect a user's data when a command writes, each with a test that fails when
the rule is removed: outputs never touch inputs, ``--overwrite`` replaces only what the command
made and redoes what it is asked to, one bad case or a full disk never crashes a cohort.

The cohort tests run ``segment`` in-process with a stand-in segmenter (it writes a report as the
real one does, in seconds and without a bundle), so they test the bookkeeping, not the models."""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import spikeseg.runtime.segment as segment_module
from spikeseg.runtime.atomic import atomic_dir, write_json
from spikeseg.runtime.cohort import FAILURES, SUMMARY, CohortCase, check_output_apart, discover, record_outcome
from spikeseg.runtime.errors import InputError
from tests.helpers import run_cli

MODS = ("t1", "t1ce", "t2", "flair")


def _cohort(root: Path, ids: list[str]) -> Path:
    """Case folders with files of the right names (the stand-in segmenter reads none of them)."""
    for cid in ids:
        (root / cid).mkdir(parents=True)
        for m in MODS:
            (root / cid / f"{cid}_{m}.nii.gz").write_bytes(b"")
    return root


class StubSegmenter:
    """Writes ``OUT/<case>/<case>_report.json`` through the real atomic folder writer; fails on
    the case ids in ``fail`` with the exception given there."""

    runs: list[str] = []
    fail: dict[str, BaseException] = {}

    def __init__(self, *args, **kwargs) -> None:
        pass

    def run(self, case_dir: Path, out_root: Path) -> dict:
        cid = case_dir.name
        StubSegmenter.runs.append(cid)
        if cid in self.fail:
            raise self.fail[cid]
        report = {"case": cid, "volumes_ml": {"ET": 1.0, "TC": 2.0, "WT": 3.0}, "seconds": {"total": 0.1},
                  "peak_rss_mb": 10.0, "run": len(StubSegmenter.runs), "qc": {"verdict": "ok", "reasons": []}}
        with atomic_dir(out_root / cid) as tmp:
            write_json(tmp / f"{cid}_report.json", report)
        return report


@pytest.fixture()
def stub(monkeypatch: pytest.MonkeyPatch):
    StubSegmenter.runs, StubSegmenter.fail = [], {}
    monkeypatch.setattr(segment_module, "Predictor", StubSegmenter)
    monkeypatch.setattr(segment_module, "load_bundle", lambda path: object())
    return StubSegmenter


def _segment(inp: Path, out: Path, **kw) -> int:
    return segment_module.segment(Path("bundle"), inp, out, **kw)


def _summary(out: Path) -> dict[str, dict[str, str]]:
    with open(out / SUMMARY) as f:
        return {row["case"]: row for row in csv.DictReader(f)}


def test_a_cohort_rerun_leaves_cases_alone_without_overwrite_and_redoes_them_with_it(stub, tmp_path: Path) -> None:
    inp, out = _cohort(tmp_path / "in", ["A", "B"]), tmp_path / "out"
    assert _segment(inp, out) == 0 and stub.runs == ["A", "B"]
    first = (out / "A" / "A_report.json").read_text()
    assert _segment(inp, out) == 0 and stub.runs == ["A", "B"]  # nothing redone
    assert (out / "A" / "A_report.json").read_text() == first
    assert {r["message"] for r in _summary(out).values()} == {"done earlier"}
    assert _segment(inp, out, overwrite=True) == 0 and stub.runs == ["A", "B", "A", "B"]
    assert json.loads((out / "A" / "A_report.json").read_text())["run"] == 3


def test_one_failing_case_of_any_kind_is_recorded_and_the_rest_go_on(stub, tmp_path: Path) -> None:
    """A symlinked ``OUT/<case>`` with --overwrite once raised ValueError out of the cohort, and
    an unexpected exception in one case aborted the run with no summary."""
    inp, out = _cohort(tmp_path / "in", ["A", "B", "C", "D"]), tmp_path / "out"
    out.mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", out / "B")
    stub.fail = {"C": RuntimeError("a bug in one case"), "D": MemoryError()}
    assert _segment(inp, out, overwrite=True) == 1
    rows = _summary(out)
    assert rows["A"]["status"] == "ok"
    assert rows["B"]["status"] == "failed" and "symbolic link" in rows["B"]["message"]
    assert rows["C"]["status"] == "failed" and "RuntimeError" in rows["C"]["message"]
    assert rows["D"]["status"] == "failed" and "MemoryError" in rows["D"]["message"]
    assert (out / "B").is_symlink() and not any((tmp_path / "elsewhere").iterdir())


def test_a_full_disk_stops_the_run_with_one_message_and_keeps_what_finished(stub, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    inp, out = _cohort(tmp_path / "in", ["A", "B", "C"]), tmp_path / "out"
    stub.fail = {"B": OSError(errno.ENOSPC, "No space left on device")}
    with pytest.raises(InputError, match="disk full, run stopped") as err:
        _segment(inp, out)
    assert "No space left on device" in str(err.value)
    assert stub.runs == ["A", "B"] and (out / "A" / "A_report.json").is_file() and not (out / "B").exists()
    rows = _summary(out)
    assert rows["A"]["status"] == "ok" and rows["C"]["status"] == "pending"
    assert rows["B"]["status"] == "failed" and "No space left" in rows["B"]["message"]
    # the disk fills while the outcome or the summary is written: the same one message
    stub.runs, stub.fail = [], {}
    import spikeseg.runtime.cohort as cohort

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(cohort, "write_text", full)
    stub.fail = {"C": InputError(inp / "C", "a bad case")}
    with pytest.raises(InputError, match="disk full"):
        _segment(inp, out)


def test_a_failing_case_with_a_folder_name_near_name_max_is_recorded(tmp_path: Path) -> None:
    """A 245-character folder name made ``.failures/<name>.txt``'s temporary name too long:
    traceback, whole cohort aborted, no summary."""
    out = tmp_path / "out"
    out.mkdir()
    case = CohortCase(tmp_path / ("x" * 245), None, "unreadable")
    record_outcome(out, case, "failed", "unreadable")
    kept = list((out / FAILURES).iterdir())
    assert len(kept) == 1 and kept[0].read_text() == "unreadable" and len(kept[0].name) < 200
    record_outcome(out, CohortCase(tmp_path / ("x" * 244 + "y"), None, "other"), "failed", "other")
    assert len(list((out / FAILURES).iterdir())) == 2  # names that share a start stay apart


def test_a_refused_single_case_leaves_no_empty_output_folder(stub, tmp_path: Path) -> None:
    inp = _cohort(tmp_path / "in", ["A"]) / "A"
    stub.fail = {"A": InputError(inp, "100 voxels are NaN or infinite")}
    with pytest.raises(InputError, match="NaN"):
        _segment(inp, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (tmp_path / "mine").mkdir()  # a folder the user made is never removed, even empty
    with pytest.raises(InputError):
        _segment(inp, tmp_path / "mine")
    assert (tmp_path / "mine").is_dir()


@pytest.mark.parametrize("where", ["same", "inside", "holds"])
def test_segment_output_may_not_touch_the_input_case(tmp_path: Path, where: str) -> None:
    case = _cohort(tmp_path / "in", ["A"]) / "A"
    out = {"same": case, "inside": case / "out", "holds": case.parent}[where]
    with pytest.raises(InputError, match="output folder (is inside|holds)"):
        check_output_apart(out, case, discover(case))


# -- evaluate --out ------------------------------------------------------------------------------

def _predictions(phantom_root: Path, dest: Path, skip: int | None = None) -> Path:
    """The reference label maps copied as ``<id>_pred`` predictions (a perfect segmenter)."""
    for k, case in enumerate(sorted(phantom_root.iterdir())):
        if k != skip:
            (dest / case.name).mkdir(parents=True)
            shutil.copy(case / f"{case.name}_seg.nii.gz", dest / case.name / f"{case.name}_pred.nii.gz")
    return dest


def test_evaluate_never_writes_over_an_input_or_a_file_it_did_not_make(phantom_root: Path, tmp_path: Path) -> None:
    """``evaluate --out REF_seg.nii.gz --overwrite`` once replaced a reference with CSV text."""
    refs = tmp_path / "refs"
    shutil.copytree(phantom_root, refs)
    preds = _predictions(phantom_root, tmp_path / "preds")
    target = next(refs.iterdir())
    label = target / f"{target.name}_seg.nii.gz"
    before = label.read_bytes()
    for out in (label, preds / "metrics.csv"):
        r = run_cli("evaluate", preds, refs, "--out", out, "--overwrite")
        assert r.returncode == 2 and "inside the input" in r.stderr, r.stderr
    assert label.read_bytes() == before and not (preds / "metrics.csv").exists()
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    r = run_cli("evaluate", preds, refs, "--out", notes, "--overwrite")
    assert r.returncode == 2 and "not a metrics CSV made by spikeseg" in r.stderr and notes.read_text() == "my notes"
    out = tmp_path / "m.csv"
    assert run_cli("evaluate", preds, refs, "--out", out).returncode == 0
    r = run_cli("evaluate", preds, refs, "--out", out, "--overwrite")
    assert r.returncode == 0, r.stderr


def test_evaluate_lists_every_case_with_its_status_and_counts_them(phantom_root: Path, tmp_path: Path) -> None:
    """A reference with no prediction was FAILED on the console only, and a prediction with no
    reference silently ignored: the CSV now says both, and the summary rows count them."""
    refs = tmp_path / "refs"
    shutil.copytree(phantom_root, refs)
    preds = _predictions(phantom_root, tmp_path / "preds", skip=0)
    (preds / "Extra_1").mkdir()
    shutil.copy(next(preds.rglob("*_pred.nii.gz")), preds / "Extra_1" / "Extra_1_pred.nii.gz")
    out = tmp_path / "m.csv"
    r = run_cli("evaluate", preds, refs, "--out", out)
    assert r.returncode == 1 and "NO REFERENCE Extra_1" in r.stderr
    rows = {row["case"]: row for row in csv.DictReader(out.open())}
    missing = sorted(phantom_root.iterdir())[0].name
    assert rows[missing]["status"] == "failed" and "no prediction" in rows[missing]["message"]
    assert rows["Extra_1"]["status"] == "no reference"
    scored = [c for c, row in rows.items() if row["status"] == "ok"]
    assert len(scored) == 2 and all(float(rows[c]["WT_dice"]) == 1.0 for c in scored)
    assert rows["mean"]["status"] == "2 scored, 1 failed, 1 without reference"


@pytest.mark.slow
def test_export_never_replaces_a_folder_it_did_not_make(untrained_bundle, tmp_path: Path) -> None:
    run = untrained_bundle["runs"] / "axial"
    user = tmp_path / "bundles"
    (user / "other").mkdir(parents=True)
    (user / "other" / "keep.txt").write_text("x")
    for out, why in [(user, "not a bundle made by spikeseg"), (run, "is the input"), (run.parent, "holds the input")]:
        r = run_cli("export", run, "--out", out, "--overwrite")
        assert r.returncode == 2 and why in r.stderr, r.stderr
    assert (user / "other" / "keep.txt").read_text() == "x" and (run / "config.json").exists()


def test_evaluate_shows_each_case_s_qc_verdict_against_its_score(phantom_root: Path, tmp_path: Path) -> None:
    """The verdict ``segment`` wrote in a case's report is a column of the table and the CSV, and
    one line counts the flagged cases and the failures (WT Dice < 0.7) among them."""
    preds = _predictions(phantom_root, tmp_path / "preds")
    cases = sorted(p.name for p in preds.iterdir())
    bad = cases[0]  # a wrong answer: an empty label map, flagged review
    pred = preds / bad / f"{bad}_pred.nii.gz"
    img = nib.load(str(pred))
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine, img.header), str(pred))
    for cid in cases[:2]:
        (preds / cid / f"{cid}_report.json").write_text(
            json.dumps({"qc": {"verdict": "review" if cid == bad else "ok", "reasons": []}}))
    out = tmp_path / "m.csv"
    r = run_cli("evaluate", preds, phantom_root, "--out", out)
    assert r.returncode == 0, r.stderr
    rows = {row["case"]: row for row in csv.DictReader(out.open())}
    assert rows[bad]["qc"] == "review" and rows[cases[1]]["qc"] == "ok"
    assert all(rows[c]["qc"] == "" for c in cases[2:])  # no report beside the prediction
    assert "QC: 1 of 2 cases flagged review; 1 with WT Dice under 0.7, 1 of them flagged" in r.stdout
    assert any(line.startswith(bad) and line.rstrip().endswith("review") for line in r.stdout.splitlines())
