"""Inputs that once gave a wrong answer with exit 0, or ran away with time or memory, now refused
by name before anything large is read or allocated (issue "Hardening, round 3")."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from spikeseg.runtime.bundle import MANIFEST, load_bundle
from spikeseg.runtime.bundle_spec import FileEntry
from spikeseg.runtime.case_io import MAX_HEADER_BYTES, check_case_id, find_case, load_case
from spikeseg.runtime.errors import InputError
from spikeseg.runtime.preprocess import MAX_BOX_VOXELS, PreprocessParams, load_model_space
from spikeseg.runtime.system import check_threads, logical_cores
from spikeseg.runtime.tables import rows_to_csv
from tests.helpers import run_cli

MODS = ("t1", "t1ce", "t2", "flair")


def _case(folder: Path, affine: np.ndarray, shape=(16, 16, 16), dtype=np.int16, cid: str = "C1") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for m in MODS:
        nib.save(nib.Nifti1Image(rng.integers(0, 100, shape).astype(dtype), affine), str(folder / f"{cid}_{m}.nii.gz"))
    return folder


def _rewrite(path: Path, edit) -> None:
    """Load a NIfTI file, let ``edit`` change its header, write it back as it is (no fixing)."""
    img = nib.load(str(path))
    data, header = np.asarray(img.dataobj), img.header.copy()
    edit(header)
    nib.save(nib.Nifti1Image(data, None, header), str(path))


# -- geometry: one source, the affine -----------------------------------------------------------

def test_spacing_comes_from_the_affine_and_a_disagreeing_pixdim_is_refused(tmp_path: Path) -> None:
    """A case whose sform said 2 mm but whose pixdim said 1 mm segmented with WT 2.9 mL instead
    of 54.3: the volume took pixdim, the geometry the affine."""
    two = np.diag([2.0, 2.0, 2.0, 1.0])
    case = load_case(_case(tmp_path / "good", two))
    assert case.spacing == (2.0, 2.0, 2.0)
    folder = _case(tmp_path / "bad", two)

    def pixdim_one(h: nib.Nifti1Header) -> None:
        h.set_sform(two, code=1)
        h["pixdim"][1:4] = 1.0
    _rewrite(folder / "C1_t2.nii.gz", pixdim_one)
    assert nib.load(str(folder / "C1_t2.nii.gz")).header.get_zooms()[:3] == (1.0, 1.0, 1.0)
    with pytest.raises(InputError, match="disagrees with the affine") as err:
        load_case(folder)
    assert "C1_t2.nii.gz" in str(err.value)


def test_a_zero_pixdim_is_refused_not_turned_into_1mm(tmp_path: Path) -> None:
    folder = _case(tmp_path / "c", np.diag([2.0, 2.0, 2.0, 1.0]))
    path = folder / "C1_flair.nii.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    struct.pack_into("<f", raw, 76 + 4 * 2, 0.0)  # pixdim[2]
    path.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(InputError, match="pixdim.*is 0") as err:
        load_case(folder)
    assert "C1_flair" in str(err.value)


# -- bounded memory and time --------------------------------------------------------------------

def _with_extension(path: Path, esize: int, vox_offset: float) -> None:
    """A .nii.gz whose header says an extension of ``esize`` bytes follows (none does)."""
    raw = bytearray(gzip.decompress(path.read_bytes()))
    struct.pack_into("<f", raw, 108, vox_offset)
    raw[348:352] = b"\x01\x00\x00\x00"
    raw[352:360] = struct.pack("<ii", esize, 6)
    path.write_bytes(gzip.compress(bytes(raw)))


@pytest.mark.parametrize("esize,vox_offset,message", [
    (2**31 - 16, 352 + 2**31 - 16, "data starts at byte"),  # vox_offset itself too large
    (2**31 - 16, 4096, "extension claims"),                  # vox_offset fine, the extension not
])
def test_a_header_extension_claiming_gigabytes_is_refused_at_once(tmp_path: Path, esize: int, vox_offset: float,
                                                                  message: str) -> None:
    """A 4.5 MB gzip whose extension claimed gigabytes reached 4.3 GB RSS in 20 s before an
    error: the raw header is now walked with bounded reads first."""
    folder = _case(tmp_path / "c", np.eye(4))
    _with_extension(folder / "C1_t1.nii.gz", esize, vox_offset)
    start = time.perf_counter()
    with pytest.raises(InputError, match=message) as err:
        load_case(folder)
    assert "C1_t1.nii.gz" in str(err.value) and time.perf_counter() - start < 5
    assert vox_offset > MAX_HEADER_BYTES or message == "extension claims"


def test_a_volume_over_the_voxel_limit_is_refused_from_its_header(tmp_path: Path) -> None:
    """Four 1 MB gzips of 512^3 float64 peaked at 8.3 GB; the header alone now refuses them."""
    folder = _case(tmp_path / "c", np.eye(4))
    path = folder / "C1_t2.nii"
    (folder / "C1_t2.nii.gz").unlink()
    header = nib.Nifti1Header()
    header.set_data_shape((512, 512, 512))
    header.set_data_dtype(np.float64)
    header.set_sform(np.eye(4), code=1)
    header.set_qform(np.eye(4), code=1)
    header["vox_offset"] = 352
    with open(path, "wb") as f:
        f.write(header.binaryblock + b"\x00" * 4)
        f.truncate(352 + 512**3 * 8)  # sparse: claims and has 1 GiB, costs no disk
    with pytest.raises(InputError, match="over the limit") as err:
        load_case(folder)
    assert "C1_t2.nii" in str(err.value)


def test_a_fine_grid_whose_box_would_need_gigabytes_is_refused_before_allocating(tmp_path: Path) -> None:
    """A 36 KB case of 16^3 voxels at 0.2 mm made the 160x192x152 mm box 800x960x760 voxels
    (8.7 GiB, twice), then a traceback."""
    folder = _case(tmp_path / "c", np.diag([0.2, 0.2, 0.2, 1.0]))
    with pytest.raises(InputError, match="over the limit") as err:
        load_model_space(folder, PreprocessParams())
    assert str(folder) in str(err.value) and f"{MAX_BOX_VOXELS:,}" in str(err.value)


@pytest.mark.parametrize("bad", ["0", "-1", "10000"])
def test_threads_outside_one_to_the_logical_cores_are_refused(bad: str) -> None:
    with pytest.raises(InputError, match="expected 1 to"):
        check_threads(int(bad))
    assert check_threads(logical_cores()) == logical_cores()
    r = run_cli("segment", "B", "C", "O", "--threads", bad)
    assert r.returncode == 2 and "--threads" in r.stderr and "Traceback" not in r.stderr


# -- the manifest's preprocessing record --------------------------------------------------------

@pytest.mark.parametrize("field,value,message", [
    ("crop_mm", [-160, 192, 152], "crop_mm must be three numbers"),
    ("crop_mm", ["160", "192", "152"], "crop_mm must be three numbers"),
    ("spacing_mm", [0, 2, 2], "spacing_mm must be three numbers"),
    ("spacing_mm", [2, 2], "spacing_mm must be three numbers"),
    ("spacing_mm", [float("nan"), 2, 2], "spacing_mm must be three numbers"),
    ("normalisation", ["minmax"], "normalisation"),
    ("version", True, "version"),
    ("extra", 1, "unexpected keyword"),
])
def test_every_preprocessing_field_is_validated(field: str, value, message: str) -> None:
    """A negative crop gave an empty segmentation with exit 0, spacing 0 a division by zero,
    string crops a TypeError."""
    record = PreprocessParams().to_dict()
    record[field] = value
    with pytest.raises(InputError, match=message) as err:
        PreprocessParams.from_dict(record, "bundle/manifest.json")
    assert "bundle/manifest.json" in str(err.value)


def _manifest(folder: Path, text: str) -> Path:
    folder.mkdir()
    (folder / MANIFEST).write_text(text)
    return folder


def test_manifest_with_a_huge_integer_or_an_unknown_view_is_one_clear_error(tmp_path: Path) -> None:
    huge = _manifest(tmp_path / "a", '{"schema_version": 3, "n": ' + "9" * 5000 + "}")
    with pytest.raises(InputError, match="unreadable manifest"):
        load_bundle(huge)
    foo = _manifest(tmp_path / "b", json.dumps({"schema_version": 3, "architecture": "useg", "views": {"foo": {}},
                                                "preprocess": PreprocessParams().to_dict()}))
    with pytest.raises(InputError, match="unknown view 'foo'"):
        load_bundle(foo)
    r = run_cli("segment", foo, tmp_path, tmp_path / "out")
    assert r.returncode == 2 and "unknown view" in r.stderr and "Traceback" not in r.stderr


def test_an_upper_case_sha256_is_the_same_digest() -> None:
    digest = "AB" * 32
    assert FileEntry.parse({"file": "m.onnx", "sha256": digest}, "view", None).sha256 == digest.lower()
    with pytest.raises(InputError, match="not 64 hexadecimal"):
        FileEntry.parse({"file": "m.onnx", "sha256": "xyz"}, "view", None)


# -- file names and kinds -----------------------------------------------------------------------

def _named_case(tmp_path: Path) -> Path:
    return _case(tmp_path / "C1", np.eye(4))


def test_a_name_ending_in_a_newline_is_no_modality(tmp_path: Path) -> None:
    folder = _named_case(tmp_path)
    os.rename(folder / "C1_flair.nii.gz", folder / "C1_flair.nii.gz\n")
    with pytest.raises(InputError, match="missing modality flair"):
        find_case(folder)


@pytest.mark.parametrize("kind,message", [("fifo", "named pipe"), ("dangling", "dangling symbolic link"),
                                          ("folder", "is a folder")])
def test_a_non_file_named_like_a_modality_says_what_it_is(tmp_path: Path, kind: str, message: str) -> None:
    folder = _named_case(tmp_path)
    path = folder / "C1_t2.nii.gz"
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dangling":
        os.symlink(tmp_path / "nowhere.nii.gz", path)
    else:
        path.mkdir()
    with pytest.raises(InputError, match=message) as err:
        find_case(folder)
    assert "C1_t2.nii.gz" in str(err.value)


@pytest.mark.parametrize("good", ["BraTS2021_00000", "BraTS-GLI-00000-000", "a", "x.y+z_1-2", "A" * 200])
def test_check_case_id_accepts_plain_ids(good: str) -> None:
    assert check_case_id(good, Path("f")) == good


@pytest.mark.parametrize("bad", ["..", ".", ".hidden", "-rf", "a/b", "a\\b", "a b", "A" * 201, "x\n", "", "é"])
def test_check_case_id_refuses_what_is_not_one_plain_folder_name(bad: str) -> None:
    with pytest.raises(InputError, match="not a safe folder name"):
        check_case_id(bad, Path("f"))


def test_csv_cells_that_a_spreadsheet_would_run_are_escaped() -> None:
    text = rows_to_csv([{"case": "=HYPERLINK(\"x\")", "message": "+1+cmd", "other": "@SUM(A1)", "n": "-3.5",
                         "m": "-rf"}])
    import csv
    import io

    row = next(csv.DictReader(io.StringIO(text)))
    assert row == {"case": "'=HYPERLINK(\"x\")", "message": "'+1+cmd", "other": "'@SUM(A1)", "n": "-3.5", "m": "'-rf"}


def test_a_fifo_label_map_is_never_opened(tmp_path: Path) -> None:
    """A FIFO is never opened: finding it takes no time, where opening it would block forever."""
    folder = _named_case(tmp_path)
    (folder / "C1_seg.nii.gz").unlink(missing_ok=True)
    os.mkfifo(folder / "C1_seg.nii.gz")
    start = time.perf_counter()
    with pytest.raises(InputError, match="named pipe"):
        load_case(folder)
    assert time.perf_counter() - start < 5
    shutil.rmtree(folder)
