"""Phantom generation and the torch-free commands, run as a user runs them."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from spikeseg.training.phantoms import make_case
from tests.helpers import run_cli


def test_phantoms_are_deterministic_and_labelled() -> None:
    a_img, a_lab, _ = make_case(5, "small", 0.5)
    b_img, b_lab, _ = make_case(5, "small", 0.5)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    assert set(np.unique(a_lab)) <= {0, 1, 2, 4} and {2, 4} <= set(np.unique(a_lab))
    c_img, _, _ = make_case(6, "small", 0.5)
    assert not np.array_equal(a_img, c_img)


def test_difficulty_reduces_tumour_contrast() -> None:
    """Hard phantoms put the tumour closer to normal tissue: FLAIR edema vs WM contrast shrinks."""
    contrasts = []
    for d in (0.0, 1.0):
        img, lab, _ = make_case(8, "small", d)
        flair = img[3]
        wm_like = flair[(lab == 0) & (flair > 0)]
        contrasts.append((np.median(flair[lab == 2]) - np.median(wm_like)) / np.std(wm_like))
    assert contrasts[1] < 0.6 * contrasts[0]


def test_phantoms_command_writes_readable_cases_without_torch(tmp_path: Path) -> None:
    out = tmp_path / "p"
    r = run_cli("phantoms", out, "--cases", "2", "--seed", "1", "--quiet", block_torch=True, allow=("nilearn",))
    assert r.returncode == 0, r.stderr
    cases = sorted(out.iterdir())
    assert [c.name for c in cases] == ["BraTS2021_01000", "BraTS2021_01001"]
    for c in cases:
        for key in ("t1", "t1ce", "t2", "flair", "seg"):
            img = nib.load(str(c / f"{c.name}_{key}.nii.gz"))
            assert img.shape == (120, 120, 78)
            assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
    again = run_cli("phantoms", out, "--cases", "2", "--seed", "1", "--quiet")
    assert again.returncode == 2 and "--overwrite" in again.stderr


def _predictions(phantom_root: Path, pred: Path) -> Path:
    """Flat ``<case>_pred.nii.gz`` files: the references themselves, except the last case's,
    which is empty (known answer: Dice 0 and HD95 373.13 mm wherever the reference has tumour)."""
    pred.mkdir()
    cases = sorted(phantom_root.iterdir())
    for case in cases:
        shutil.copy(case / f"{case.name}_seg.nii.gz", pred / f"{case.name}_pred.nii.gz")
    last = cases[-1]
    img = nib.load(str(last / f"{last.name}_seg.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine, img.header), str(pred / f"{last.name}_pred.nii.gz"))
    return pred


def test_evaluate_known_answers_without_torch(phantom_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.csv"
    pred = _predictions(phantom_root, tmp_path / "pred")
    r = run_cli("evaluate", pred, phantom_root, "--out", out, block_torch=True)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(out.open()))
    assert [row["case"] for row in rows][-3:] == ["mean", "median", "n_undefined"]
    for row in rows[:2]:
        for region in ("ET", "TC", "WT"):
            assert float(row[f"{region}_dice"]) == 1.0 and float(row[f"{region}_hd95"]) == 0.0
            assert (float(row[f"{region}_lw_dice"]), float(row[f"{region}_lw_hd95"]), float(row[f"{region}_lw_fp"])) \
                == (1.0, 0.0, 0.0)
    for region in ("ET", "TC", "WT"):
        assert float(rows[2][f"{region}_dice"]) == 0.0 and float(rows[2][f"{region}_hd95"]) == pytest.approx(373.13, abs=0.01)
        assert (float(rows[2][f"{region}_lw_dice"]), float(rows[2][f"{region}_lw_hd95"])) == (0.0, 374.0)
        assert float(rows[2][f"{region}_lw_fn"]) >= 1 and float(rows[2][f"{region}_lw_tp"]) == 0
        assert float(rows[3][f"{region}_dice"]) == pytest.approx(2 / 3)  # the mean
    r2 = run_cli("evaluate", pred, phantom_root, "--out", out)
    assert r2.returncode == 2 and str(out) in r2.stderr and "exists" in r2.stderr


def test_evaluate_never_takes_a_reference_for_a_prediction(phantom_root: Path) -> None:
    r = run_cli("evaluate", phantom_root, phantom_root)
    assert r.returncode == 2 and "no case could be evaluated" in r.stderr


def test_evaluate_reports_a_bad_case_and_goes_on(phantom_root: Path, tmp_path: Path) -> None:
    pred = _predictions(phantom_root, tmp_path / "pred")
    victim = sorted(phantom_root.iterdir())[1]
    (pred / f"{victim.name}_pred.nii.gz").write_bytes(b"not a nifti")
    r = run_cli("evaluate", pred, phantom_root)
    assert r.returncode == 1
    assert f"FAILED {victim.name}" in r.stderr and "cannot read NIfTI" in r.stderr
    assert r.stdout.count("BraTS2021_") == 2


def test_help_and_import_without_torch() -> None:
    r = run_cli("--help", block_torch=True)
    assert r.returncode == 0 and "phantoms" in r.stdout and "evaluate" in r.stdout


def test_version_and_every_option_explained_without_torch() -> None:
    """`spikeseg --version` names the installed version; every option of every command has help
    text, so `spikeseg COMMAND --help` explains everything a user can pass."""
    import argparse

    import spikeseg
    from spikeseg.cli import build_parser

    r = run_cli("--version", block_torch=True)
    assert r.returncode == 0 and r.stdout.strip() == f"spikeseg {spikeseg.__version__}"
    unexplained = []
    for name, sub in build_parser()._subparsers._group_actions[0].choices.items():
        unexplained += [f"{name} {a.dest}" for a in sub._actions
                        if not isinstance(a, argparse._HelpAction) and not a.help]
    assert unexplained == []


def test_a_command_whose_stage_is_not_installed_says_how_to_install_it() -> None:
    """Without torch (a runtime-only install), `train` is listed as not installed and refuses
    with the install command, exit 2, no traceback; the runtime's commands still run."""
    r = run_cli("--help", block_torch=True)
    listing = " ".join(r.stdout.split())
    assert "train train a view model (Spiking U-Seg-Net or a twin) [not installed here" in listing
    assert "segment segment a case or a cohort on the CPU (no torch) evaluate" in listing
    r = run_cli("train", "--data", "x", "--out", "y", block_torch=True)
    assert r.returncode == 2 and "needs torch" in r.stderr and "spikeseg[train]" in r.stderr
    assert "Traceback" not in r.stderr
    assert "prepare turn scanner data (DICOM series or NIfTI files) into a case segment can read [not installed " \
           "here: pip install 'spikeseg[prepare]']" in listing
    r = run_cli("prepare", "in", "out", block_torch=True)
    assert r.returncode == 2 and "needs SimpleITK, pydicom" in r.stderr and "spikeseg[prepare]" in r.stderr
