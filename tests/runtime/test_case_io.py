"""Case folders: naming schemes, orientation round trips, scaling, and every bad input."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from spikeseg.runtime.case_io import find_case, find_cases, load_case, load_label_file, save_like
from spikeseg.runtime.errors import InputError
from spikeseg.runtime.labels import BRATS2021, BRATS2023, labels_to_regions, regions_to_labels

SHAPE = (12, 14, 10)


def _write_case(folder: Path, case_id: str, scheme: str, ext: str = ".nii.gz",
                affine: np.ndarray | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """A synthetic case with distinct random content per modality, in the given scheme."""
    rng = np.random.default_rng(seed)
    affine = np.diag([1.0, 1.0, 1.0, 1.0]) if affine is None else affine
    keys = {"brats2021": ("_", ["t1", "t1ce", "t2", "flair"], 4),
            "brats2023": ("-", ["t1n", "t1c", "t2w", "t2f"], 3)}[scheme]
    sep, names, et = keys
    folder.mkdir(parents=True, exist_ok=True)
    data = {}
    for name in names:
        vol = rng.integers(0, 3000, SHAPE).astype(np.int16)
        nib.save(nib.Nifti1Image(vol, affine), str(folder / f"{case_id}{sep}{name}{ext}"))
        data[name] = vol
    seg = rng.choice(np.array([0, 1, 2, et], np.uint8), SHAPE)
    nib.save(nib.Nifti1Image(seg, affine), str(folder / f"{case_id}{sep}seg{ext}"))
    data["seg"] = seg
    return data


@pytest.mark.parametrize("scheme,case_id", [("brats2021", "BraTS2021_00042"),
                                            ("brats2023", "BraTS-GLI-00042-000")])
@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_both_naming_schemes_and_extensions(tmp_path: Path, scheme: str, case_id: str, ext: str) -> None:
    data = _write_case(tmp_path / case_id, case_id, scheme, ext)
    case = load_case(tmp_path / case_id)
    assert case.case_id == case_id and case.files.scheme == scheme
    first = "t1" if scheme == "brats2021" else "t1n"
    flair = "flair" if scheme == "brats2021" else "t2f"
    np.testing.assert_array_equal(case.image[0], data[first].astype(np.float32))
    np.testing.assert_array_equal(case.image[3], data[flair].astype(np.float32))
    np.testing.assert_array_equal(case.label, data["seg"])
    assert case.files.convention is (BRATS2021 if scheme == "brats2021" else BRATS2023)


def _affine(codes: str) -> np.ndarray:
    """An affine with the given axis codes, anisotropic spacing and an offset."""
    ornt = nib.orientations.axcodes2ornt(tuple(codes))
    aff = nib.orientations.inv_ornt_aff(ornt, SHAPE)  # any orientation matrix for these codes
    aff = aff @ np.diag([1.0, 1.2, 2.0, 1.0])
    aff[:3, 3] += [-90.0, 120.0, -60.0]
    return aff


@pytest.mark.parametrize("codes", ["RAS", "LPS", "LPI", "RAI", "PLI", "SAR"])
def test_orientation_round_trip_is_exact(tmp_path: Path, codes: str) -> None:
    aff = _affine(codes)
    assert "".join(nib.aff2axcodes(aff)) == codes
    data = _write_case(tmp_path / "c", "BraTS2021_00001", "brats2021", affine=aff)
    case = load_case(tmp_path / "c")
    # canonical data really is RAS: compare with nibabel's own reorientation
    ras = nib.as_closest_canonical(nib.load(str(tmp_path / "c" / "BraTS2021_00001_t2.nii.gz")))
    np.testing.assert_array_equal(case.image[2], ras.get_fdata(dtype=np.float32))
    out = tmp_path / "out_seg.nii.gz"
    save_like(case.label, case.geometry, out, np.uint8)
    back = nib.load(str(out))
    src = nib.load(str(tmp_path / "c" / "BraTS2021_00001_seg.nii.gz"))
    np.testing.assert_array_equal(np.asarray(back.dataobj), data["seg"])
    assert back.shape == src.shape and back.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(back.affine, src.affine)
    assert int(back.header["qform_code"]) == int(src.header["qform_code"])
    assert int(back.header["sform_code"]) == int(src.header["sform_code"])
    np.testing.assert_allclose(back.header.get_zooms(), src.header.get_zooms())


def test_scaled_int16_is_read_with_its_scaling(tmp_path: Path) -> None:
    data = _write_case(tmp_path / "c", "BraTS2021_00002", "brats2021")
    path = tmp_path / "c" / "BraTS2021_00002_t1ce.nii.gz"
    img = nib.Nifti1Image(data["t1ce"], np.eye(4))
    img.header.set_slope_inter(0.5, 10.0)
    nib.save(img, str(path))
    case = load_case(tmp_path / "c")
    np.testing.assert_allclose(case.image[1], data["t1ce"] * 0.5 + 10.0)


def test_float_probabilities_round_trip_as_4d(tmp_path: Path) -> None:
    _write_case(tmp_path / "c", "BraTS2021_00003", "brats2021", affine=_affine("LPS"))
    case = load_case(tmp_path / "c")
    prob = np.random.default_rng(1).random((3,) + case.image.shape[1:]).astype(np.float32)
    save_like(prob, case.geometry, tmp_path / "p.nii.gz", np.float32)
    back = nib.load(str(tmp_path / "p.nii.gz"))
    assert back.shape == SHAPE + (3,)
    np.testing.assert_array_equal(case.geometry.to_canonical(np.moveaxis(np.asarray(back.dataobj), -1, 0)), prob)


def test_find_cases_accepts_one_case_or_a_cohort(phantom_root: Path) -> None:
    cohort = find_cases(phantom_root)
    assert len(cohort) == 3
    assert find_cases(cohort[0]) == [cohort[0]]


def test_save_refuses_to_overwrite(tmp_path: Path) -> None:
    _write_case(tmp_path / "c", "BraTS2021_00004", "brats2021")
    case = load_case(tmp_path / "c")
    save_like(case.label, case.geometry, tmp_path / "s.nii.gz", np.uint8)
    with pytest.raises(InputError, match="exists"):
        save_like(case.label, case.geometry, tmp_path / "s.nii.gz", np.uint8)


# ---- bad input: each error names the file and the problem -------------------------------

def test_missing_modality(case_copy: Path) -> None:
    (case_copy / f"{case_copy.name}_t2.nii.gz").unlink()
    with pytest.raises(InputError, match="missing modality t2") as e:
        load_case(case_copy)
    assert e.value.path == str(case_copy)


def test_mismatched_shape(case_copy: Path) -> None:
    path = case_copy / f"{case_copy.name}_flair.nii.gz"
    img = nib.load(str(path))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:-1], img.affine, img.header), str(path))
    with pytest.raises(InputError, match="shape .* differs") as e:
        load_case(case_copy)
    assert e.value.path == str(path)


def test_mismatched_affine(case_copy: Path) -> None:
    path = case_copy / f"{case_copy.name}_t1ce.nii.gz"
    img = nib.load(str(path))
    aff = img.affine.copy()
    aff[0, 3] += 5.0
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), aff), str(path))
    with pytest.raises(InputError, match="affine differs") as e:
        load_case(case_copy)
    assert e.value.path == str(path)


def test_nan_voxels(case_copy: Path) -> None:
    path = case_copy / f"{case_copy.name}_t2.nii.gz"
    img = nib.load(str(path))
    data = img.get_fdata(dtype=np.float32)
    data[10, 10, 10] = np.nan
    data[11, 10, 10] = np.inf
    nib.save(nib.Nifti1Image(data, img.affine), str(path))
    with pytest.raises(InputError, match="2 voxels are NaN or infinite") as e:
        load_case(case_copy)
    assert e.value.path == str(path)


def test_truncated_gzip(case_copy: Path) -> None:
    path = case_copy / f"{case_copy.name}_t1.nii.gz"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="cannot read NIfTI") as e:
        load_case(case_copy)
    assert e.value.path == str(path)


def test_empty_file(case_copy: Path) -> None:
    path = case_copy / f"{case_copy.name}_t1.nii.gz"
    path.write_bytes(b"")
    with pytest.raises(InputError, match="empty file"):
        load_case(case_copy)


def test_4d_volume(case_copy: Path) -> None:
    path = case_copy / f"{case_copy.name}_t1.nii.gz"
    img = nib.load(str(path))
    data = np.stack([np.asarray(img.dataobj)] * 2, -1)
    nib.save(nib.Nifti1Image(data, img.affine), str(path))
    with pytest.raises(InputError, match="expected a 3D volume"):
        load_case(case_copy)


def test_implausible_spacing(case_copy: Path) -> None:
    for key in ("t1", "t1ce", "t2", "flair"):
        path = case_copy / f"{case_copy.name}_{key}.nii.gz"
        img = nib.load(str(path))
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), np.diag([50.0, 1, 1, 1])), str(path))
    with pytest.raises(InputError, match="implausible voxel spacing"):
        load_case(case_copy)


def test_unknown_label_values(case_copy: Path) -> None:
    path = case_copy / f"{case_copy.name}_seg.nii.gz"
    img = nib.load(str(path))
    data = np.asarray(img.dataobj).copy()
    data[0, 0, 0] = 3  # a 2023 ET label in a 2021-named case
    nib.save(nib.Nifti1Image(data, img.affine, img.header), str(path))
    with pytest.raises(InputError, match=r"label values \[3\]"):
        load_case(case_copy)


def test_not_a_case_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="no BraTS modality files"):
        find_case(tmp_path)


def test_label_regions_round_trip_both_conventions() -> None:
    for conv in (BRATS2021, BRATS2023):
        lab = np.random.default_rng(0).choice(np.array(conv.allowed, np.uint8), (30, 30))
        regions = labels_to_regions(lab, conv)
        assert regions.shape == (3, 30, 30)
        np.testing.assert_array_equal(regions[0], lab == conv.et)
        np.testing.assert_array_equal(regions[2], lab > 0)
        np.testing.assert_array_equal(regions_to_labels(regions, conv), lab)


def test_prediction_on_another_grid_is_refused(phantom_root: Path, tmp_path: Path) -> None:
    case = load_case(sorted(phantom_root.iterdir())[0])
    bad = tmp_path / "pred.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.uint8), np.eye(4)), str(bad))
    with pytest.raises(InputError, match="shape"):
        load_label_file(bad, BRATS2021, like=case.geometry)
