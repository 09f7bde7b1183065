"""The Python API: ``spikeseg.segment`` and the ``Predictor`` give the CLI's outputs, from a case
folder, four files with any names, nibabel images or arrays with an affine; every option lives in
``SegmentOptions``; bad input is one clear error."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import spikeseg
from spikeseg.runtime.case_io import MODALITIES, find_case
from spikeseg.runtime.errors import InputError
from spikeseg.runtime.options import SegmentOptions
from tests.helpers import REPO, run_cli

OPTS = {"views": ("axial", "coronal"), "threads": 1}


def _labels(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


@pytest.fixture(scope="module")
def case(phantom_root: Path) -> Path:
    return sorted(phantom_root.iterdir())[0]


@pytest.fixture(scope="module")
def predictor(bundles):
    """Built once for the module, as a notebook would."""
    return spikeseg.Predictor(bundles["useg"], SegmentOptions(**OPTS))


def test_the_one_liner_and_the_predictor_give_what_the_cli_gives(bundles, case: Path, predictor,
                                                                  tmp_path: Path) -> None:
    cli = tmp_path / "cli"
    r = run_cli("segment", bundles["useg"], case, cli, "--views", "axial,coronal", "--threads", "1",
                      "--quiet")
    assert r.returncode == 0, r.stderr
    cli_out = cli / case.name
    result = spikeseg.segment(bundles["useg"], case, tmp_path / "api", **OPTS)
    ours = tmp_path / "api" / case.name
    for name in (f"{case.name}_pred.nii.gz", f"{case.name}_uncertainty.nii.gz"):
        assert gzip.decompress((ours / name).read_bytes()) == gzip.decompress((cli_out / name).read_bytes()), name
    theirs = json.loads((cli_out / f"{case.name}_report.json").read_text())
    assert result.report["volumes_ml"] == theirs["volumes_ml"] and result.qc.verdict == theirs["qc"]["verdict"]
    with pytest.raises(InputError, match="output exists"):  # never replaced unasked
        spikeseg.segment(bundles["useg"], case, tmp_path / "api", **OPTS)
    with pytest.raises(InputError, match="input"):  # never written into the input
        spikeseg.segment(bundles["useg"], case, case.parent, overwrite=True, **OPTS)
    # the other inputs give the same labels
    expected = _labels(cli_out / f"{case.name}_pred.nii.gz")
    _predict_every_way(predictor, case, expected, tmp_path)


def _predict_every_way(predictor, case: Path, expected: np.ndarray, tmp_path: Path) -> None:
    """Four files with any names, nibabel images and an array with its affine: the CLI's labels."""
    files = find_case(case).modalities
    renamed = {}
    for m in MODALITIES:  # a clinic's names: T1.nii.gz, flair.nii.gz, ...
        renamed[m] = tmp_path / f"{m.upper()}.nii.gz"
        shutil.copy(files[m], renamed[m])
    images = {m: nib.load(str(files[m])) for m in MODALITIES}
    stacked = np.stack([np.asarray(images[m].dataobj, dtype=np.float32) for m in MODALITIES])
    inputs = [({m: str(p) for m, p in renamed.items()}, {}), (images, {}),
              (stacked, {"affine": images["t1"].affine})]
    for given, kw in inputs:
        result = predictor.predict(given, **kw)
        assert np.array_equal(np.asarray(result.label_image().dataobj), expected), type(given)
        assert result.case_id == "case" and result.report["qc"]["verdict"] == result.qc.verdict
    saved = result.save(tmp_path / "out")
    assert np.array_equal(_labels(saved / "case_pred.nii.gz"), expected)
    assert np.allclose(nib.load(str(saved / "case_pred.nii.gz")).affine, images["t1"].affine)


def test_bad_input_and_options_are_one_clear_error(bundles, case: Path, predictor) -> None:
    img = nib.load(str(find_case(case).modalities["t1"]))
    with pytest.raises(InputError, match=r"missing \['flair'\]"):
        predictor.predict({m: img for m in MODALITIES[:3]})
    with pytest.raises(InputError, match="affine="):
        predictor.predict(np.zeros((4, 16, 16, 16), np.float32))
    nan = np.zeros((4, 16, 16, 16), np.float32)
    nan[3, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match=r"<flair image>: 1 voxels are NaN"):
        predictor.predict(nan, affine=np.eye(4))
    with pytest.raises(InputError, match="cannot segment a int"):
        predictor.predict(3)  # type: ignore[arg-type]
    for bad, message in [({"backend": "tensorrt"}, "unknown backend"), ({"precision": "fp8"}, "unknown precision"),
                         ({"views": ("oblique",)}, "unknown view"), ({"projections": -1}, "projections"),
                         ({"threads": 0}, "threads"), ({"guide_mode": "x"}, "unknown guide")]:
        with pytest.raises(InputError, match=message):
            SegmentOptions(**bad)
    with pytest.raises(TypeError):
        spikeseg.segment(bundles["useg"], case, colour="red")


def test_import_spikeseg_is_light_and_torch_free() -> None:
    """The API loads on first use: ``import spikeseg`` pulls in neither torch nor the engines."""
    code = ("import sys, spikeseg; assert 'numpy' not in sys.modules; spikeseg.Predictor; "
            "assert 'torch' not in sys.modules and 'openvino' not in sys.modules; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    r = subprocess.run([sys.executable, "-m", "spikeseg", "--version"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and r.stdout.strip() == f"spikeseg {spikeseg.__version__}", r.stderr
