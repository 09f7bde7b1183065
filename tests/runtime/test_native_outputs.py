"""A case folder that carries a prepare record: ``segment`` also writes its outputs on the scan's
native grid, through the runtime's numpy inverse, checked against nibabel's own resampling."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.processing import resample_from_to

from spikeseg.runtime.cohort import native_name, prediction_name, uncertainty_name
from spikeseg.runtime.bundle import sha256_file
from spikeseg.runtime.prepared import FOLDER, NATIVE_REFERENCE, PrepareRecord
from tests.helpers import run_cli


def _prepared_copy(phantom_root: Path, dest: Path) -> tuple[Path, np.ndarray]:
    """A phantom case with a hand-written record: the scan is the case turned 12 degrees about
    the feet-head axis and moved, on an oblique-free 1.5 mm LPS grid."""
    src = sorted(p for p in phantom_root.iterdir() if p.is_dir())[0]
    case = dest / src.name
    shutil.copytree(src, case)
    a = np.deg2rad(12.0)
    move = np.array([[np.cos(a), -np.sin(a), 0, 7.0], [np.sin(a), np.cos(a), 0, -5.0], [0, 0, 1, 3.0], [0, 0, 0, 1]])
    native = np.diag([-1.5, -1.5, 1.5, 1.0])
    native[:3, 3] = [110.0, 120.0, -80.0]
    t1ce = nib.load(case / f"{src.name}_t1ce.nii.gz")
    seen = resample_from_to(nib.Nifti1Image(np.asarray(t1ce.dataobj, np.float32), move @ t1ce.affine),
                            ((150, 160, 110), native), order=1)
    (case / FOLDER).mkdir()
    seen.set_qform(native, code=1)
    seen.set_sform(native, code=1)
    nib.save(seen, case / FOLDER / NATIVE_REFERENCE)
    PrepareRecord(src.name, move, NATIVE_REFERENCE, sha256_file(case / FOLDER / NATIVE_REFERENCE),
                  {"note": "written by a test"}).write(case)
    return case, move


def test_segment_writes_labels_and_uncertainty_on_the_native_grid(bundles, phantom_root: Path,
                                                                  tmp_path: Path) -> None:
    case, move = _prepared_copy(phantom_root, tmp_path / "in")
    r = run_cli("segment", bundles["useg"], case, tmp_path / "out", "--threads", "1", "--quiet")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out" / case.name
    ref = nib.load(case / FOLDER / NATIVE_REFERENCE)
    pred = nib.load(out / prediction_name(case.name))
    native = nib.load(out / native_name(prediction_name(case.name)))
    assert native.shape == ref.shape and np.allclose(native.affine, ref.affine)
    assert native.get_data_dtype() == np.uint8
    # nibabel's resampling of the prediction, moved into the scan's world, is the reference
    expected = np.asarray(resample_from_to(nib.Nifti1Image(np.asarray(pred.dataobj), move @ pred.affine),
                                           (ref.shape, ref.affine), order=0).dataobj)
    got = np.asarray(native.dataobj)
    assert (got > 0).sum() > 100 and set(np.unique(got)) <= {0, 1, 2, 4}
    assert (got == expected).mean() > 0.999
    unc = nib.load(out / native_name(uncertainty_name(case.name)))
    assert unc.shape == ref.shape and float(np.asarray(unc.dataobj).max()) <= 0.5 + 1e-6
    report = json.loads(next(out.glob("*_report.json")).read_text())
    assert report["native"]["reference"].endswith(f"{FOLDER}/{NATIVE_REFERENCE}")


def test_a_changed_native_reference_is_refused_before_anything_is_written(bundles, phantom_root: Path,
                                                                          tmp_path: Path) -> None:
    case, _ = _prepared_copy(phantom_root, tmp_path / "in")
    with open(case / FOLDER / NATIVE_REFERENCE, "ab") as f:
        f.write(b"\0")
    r = run_cli("segment", bundles["useg"], case, tmp_path / "out", "--threads", "1", "--quiet")
    assert r.returncode != 0 and "sha256" in r.stderr
    assert not (tmp_path / "out" / case.name).exists()
