"""``spikeseg prepare`` against scanner-style phantoms whose truth is known: DICOM series written
with pydicom, each moved by a known rigid transform and sampled on its own grid, skull and scalp
added, a localiser to ignore (:mod:`spikeseg.training.scanner`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("SimpleITK")
pytest.importorskip("pydicom")

from spikeseg.prepare.register import displacement_mm, ras  # noqa: E402
from spikeseg.prepare.series import Series, choose, discover, guess  # noqa: E402
from spikeseg.runtime.case_io import Geometry, MODALITIES  # noqa: E402
from spikeseg.runtime.errors import InputError  # noqa: E402
from spikeseg.runtime.prepared import FOLDER, RECORD, NativeGrid, read_record  # noqa: E402
from tests.helpers import run_cli  # noqa: E402

def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def _native(scanner, prepared, name: str, labels: bool) -> np.ndarray:
    """A prepared volume put back on the native T1ce grid by the runtime (disk order)."""
    folder = prepared[0].folder
    img = nib.load(folder / name)
    g = Geometry.of(img)
    grid = NativeGrid.open(folder, read_record(folder))
    return grid.geometry.from_canonical(grid.resample(g.to_canonical(np.asarray(img.dataobj)), g, labels))


def test_each_series_is_named_from_its_tags_and_the_localiser_is_skipped(scanner, prepared) -> None:
    record = read_record(prepared[0].folder)
    folders = {m: Path(record.provenance["inputs"][m]["path"]).name for m in MODALITIES}
    assert folders == {"t1": "02_t1_mprage_sag_p2_iso", "t1ce": "03_t1_mprage_tra_p2_iso", "t2": "04_t2_tse_tra",
                       "flair": "05_t2_tirm_tra_dark-fluid"}
    assert "contrast agent tag 'Gadovist'" in record.provenance["inputs"]["t1ce"]["chosen_because"]
    assert any("localizer" in i["series"] for i in record.provenance["ignored"])
    assert all(len(record.provenance["inputs"][m]["sha256"]) == 64 for m in MODALITIES)
    assert [line.split()[0] for line in prepared[1]] == ["series", "read", "co-register", "template", "resample",
                                                         "brain", "write"]


def test_co_registration_error_is_under_1_mm_against_the_known_motion(scanner, prepared) -> None:
    """Each modality's estimated map from T1ce to it, against the truth (the patient's known
    movement between series), over the brain's points."""
    record = read_record(prepared[0].folder)
    maps = {m: np.array(record.provenance["transforms_lps"][m]) for m in MODALITIES}
    pts = np.argwhere(scanner.brain_t1ce)[::20]
    pts = (np.c_[pts, np.ones(len(pts))] @ scanner.t1ce_affine.T)[:, :3]
    for m in ("t1", "t2", "flair"):
        estimated = ras(maps[m] @ np.linalg.inv(maps["t1ce"]))
        truth = scanner.motion[m] @ np.linalg.inv(scanner.motion["t1ce"])
        assert displacement_mm(estimated, truth, pts) < 1.0, m
        assert displacement_mm(np.eye(4), truth, pts) > 3.0  # the motion was there to be found


def test_the_brain_mask_matches_the_phantoms_brain(scanner, prepared) -> None:
    mask = _native(scanner, prepared, f"{FOLDER}/brain_mask.nii.gz", labels=True)
    assert mask.shape == scanner.brain_t1ce.shape
    assert _dice(mask, scanner.brain_t1ce) >= 0.95
    # the prepared modalities are zero outside it (skull-stripped, as BraTS cases are)
    case = prepared[0].folder
    t1ce = np.asarray(nib.load(case / "P001_t1ce.nii.gz").dataobj)
    inside = np.asarray(nib.load(case / FOLDER / "brain_mask.nii.gz").dataobj) > 0
    assert (t1ce[~inside] == 0).all() and (t1ce[inside] > 0).mean() > 0.99


def test_the_runtime_maps_the_prepared_case_back_onto_the_scan(scanner, prepared) -> None:
    """The runtime's numpy inverse (runtime/prepared.py) against SimpleITK's forward resampling:
    the prepared T1ce, put back on the native grid, is the native T1ce inside the brain."""
    back = _native(scanner, prepared, "P001_t1ce.nii.gz", labels=False)
    native = np.asarray(nib.load(prepared[0].folder / FOLDER / "native_t1ce.nii.gz").dataobj)
    brain = scanner.brain_t1ce & (back > 0)
    assert np.corrcoef(back[brain], native[brain])[0, 1] > 0.95
    img = nib.load(prepared[0].folder / FOLDER / "native_t1ce.nii.gz")
    assert img.shape == scanner.t1ce_shape and np.allclose(img.affine, scanner.t1ce_affine, atol=1e-3)


def test_the_way_back_costs_a_perfect_segmentation_less_than_nearest_neighbour(scanner, prepared) -> None:
    """The phantom's own labels, put on the prepared case's grid through prepare's estimated
    transform and back onto the scan by the runtime, against the same labels carried there by the
    known motion: what prepare and the way back cost a segmentation that is perfect on the
    prepared grid. Per-label interpolation loses less of it than nearest neighbour, in every
    region; what is left is the two grids' own resampling (a boundary moves by up to half a
    voxel each time)."""
    folder = prepared[0].folder
    img = nib.load(folder / "P001_t1ce.nii.gz")
    g = Geometry.of(img)
    _, labels, affine = scanner.phantom
    record = read_record(folder)
    m = np.linalg.inv(affine) @ np.linalg.inv(scanner.motion["t1ce"]) @ record.template_to_native @ g.canonical_affine
    from scipy import ndimage

    perfect = ndimage.affine_transform(labels, m[:3, :3], m[:3, 3], output_shape=g.canonical_shape, order=0)
    grid = NativeGrid.open(folder, record)
    back = grid.geometry.from_canonical(grid.resample(perfect, g, labels=True))
    m = np.linalg.inv(g.canonical_affine) @ np.linalg.inv(record.template_to_native) @ grid.geometry.canonical_affine
    nearest = grid.geometry.from_canonical(ndimage.affine_transform(
        perfect, m[:3, :3], m[:3, 3], output_shape=grid.geometry.canonical_shape, order=0))
    assert set(np.unique(back)) <= set(np.unique(labels))
    truth = scanner.labels_t1ce
    wt = (_dice(back > 0, truth > 0), _dice(nearest > 0, truth > 0))
    print(f"WT Dice after the way back: per label {wt[0]:.4f}, nearest neighbour {wt[1]:.4f}")
    assert wt[0] > wt[1] and wt[0] >= 0.96
    for value in (1, 2, 4):  # each sub-region, not only the whole tumour
        assert _dice(back == value, truth == value) >= _dice(nearest == value, truth == value), value


def test_the_oracle_brings_the_series_back_onto_the_phantom_by_the_known_motion(scanner) -> None:
    """prepare_check's perfect-prepare column: each written series, moved back by its known motion,
    lies on the phantom (T1ce, 1.2 mm isotropic, correlates above 0.95 inside the brain) and
    nothing is left outside the brain; moved back by the wrong motion it does not."""
    import dataclasses

    image, _, _ = scanner.phantom
    brain = image.any(axis=0)
    oracle = scanner.oracle()
    assert oracle.shape == image.shape and not oracle[:, ~brain].any()
    c = list(MODALITIES).index("t1ce")

    def r(a: np.ndarray) -> float:
        return float(np.corrcoef(a[c][brain], image[c][brain])[0, 1])

    assert r(oracle) > 0.95
    unmoved = dataclasses.replace(scanner, motion={m: np.eye(4) for m in MODALITIES})
    assert r(unmoved.oracle()) < r(oracle) - 0.1


def test_the_case_reads_as_brats_and_the_record_is_checked(prepared, tmp_path: Path) -> None:
    from spikeseg.runtime.case_io import load_case

    case = load_case(prepared[0].folder, with_label=False)
    assert case.image.shape == (4, 240, 240, 155) and case.spacing == (1.0, 1.0, 1.0)
    assert case.prepared is not None and case.prepared.case_id == "P001"
    copy = tmp_path / "P001"
    shutil.copytree(prepared[0].folder, copy)
    record = json.loads((copy / FOLDER / RECORD).read_text())
    (copy / FOLDER / RECORD).write_text(json.dumps({**record, "version": 99}))
    with pytest.raises(InputError, match="version 99"):
        read_record(copy)
    (copy / FOLDER / RECORD).write_text(json.dumps(record))
    with open(copy / FOLDER / "native_t1ce.nii.gz", "ab") as f:
        f.write(b"\0")
    with pytest.raises(InputError, match="sha256"):
        NativeGrid.open(copy, read_record(copy))


def test_an_existing_output_or_one_inside_the_input_is_refused(scanner, prepared) -> None:
    before = sorted(p.name for p in prepared[0].folder.rglob("*"))
    r = run_cli("prepare", scanner.folder, prepared[0].folder, "--quiet")
    assert r.returncode == 2 and "--overwrite" in r.stderr
    r = run_cli("prepare", scanner.folder, scanner.folder / "P002", "--quiet")
    assert r.returncode == 2 and not (scanner.folder / "P002").exists()
    assert sorted(p.name for p in prepared[0].folder.rglob("*")) == before
    theirs = prepared[0].folder.parent / "someone-elses"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("keep")
    r = run_cli("prepare", scanner.folder, theirs, "--overwrite", "--quiet")
    assert r.returncode == 2 and (theirs / "notes.txt").read_text() == "keep"


def _copy_study(scanner, dest: Path, skip: tuple[str, ...] = ()) -> Path:
    shutil.copytree(scanner.folder, dest, ignore=lambda d, names: [n for n in names if n.startswith(skip)] if skip else [])
    return dest


def test_a_missing_modality_lists_the_series_found_and_writes_nothing(scanner, tmp_path: Path) -> None:
    study = _copy_study(scanner, tmp_path / "study", skip=("05_",))
    r = run_cli("prepare", study, tmp_path / "out", "--quiet")
    assert r.returncode == 2
    assert "no series for flair" in r.stderr and "t2_tse_tra" in r.stderr and "a localiser" in r.stderr
    assert not (tmp_path / "out").exists()


def test_two_candidates_are_an_error_and_an_explicit_choice_wins(scanner, tmp_path: Path) -> None:
    import pydicom

    study = _copy_study(scanner, tmp_path / "study")
    twin = tmp_path / "study" / "06_t2_tse_tra_repeat"
    shutil.copytree(study / "04_t2_tse_tra", twin)
    for f in twin.iterdir():  # a repeated acquisition: a series of its own
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID, ds.SeriesNumber = ds.SeriesInstanceUID + ".2", 6
        ds.save_as(f)
    found = discover(study)
    with pytest.raises(InputError, match="2 series look like t2") as err:
        choose(found, {})
    assert "06_t2_tse_tra_repeat" in str(err.value) and "--t2 PATH" in str(err.value)
    chosen = choose(found, {"t2": twin / "IM0001.dcm"})
    assert [c.series.path.name for c in chosen if c.modality == "t2"] == ["06_t2_tse_tra_repeat"]


@pytest.mark.parametrize("text, expected", [
    ("t1_mprage_sag_p2_iso", "t1"), ("T1 MPRAGE POST", "t1ce"), ("AX T1 POST GD", "t1ce"), ("3D T1 BRAVO +C", "t1ce"),
    ("sT1W_3D_TFE", "t1"), ("AX T2 FSE", "t2"), ("T2W_TSE", "t2"), ("AX T2 FLAIR", "flair"),
    ("t2_tirm_tra_dark-fluid", "flair"), ("T2*", None), ("ep2d_diff DWI", None), ("SWI_Images", None),
    ("BraTS-GLI-00000-000-t1n", "t1"), ("BraTS-GLI-00000-000-t1c", "t1ce"), ("BraTS-GLI-00000-000-t2w", "t2"),
    ("BraTS-GLI-00000-000-t2f", "flair"), ("BraTS2021_00000_t1ce", "t1ce"), ("T1", "t1"), ("flair", "flair"),
    ("T1_pre", "t1"),
])
def test_modalities_are_named_from_descriptions_and_file_names(text: str, expected: str | None) -> None:
    assert guess(Series(text, "nifti", [Path(text)], description=text.lower()))[0] == expected


def test_tags_name_a_series_whose_description_says_nothing() -> None:
    def series(**tags):
        return Series("1.2", "dicom", [Path("x")] * 20, description="series 7", **tags)

    assert guess(series(tr=9000.0, te=90.0, ti=2500.0))[0] == "flair"
    assert guess(series(tr=5000.0, te=100.0))[0] == "t2"
    assert guess(series(tr=600.0, te=10.0))[0] == "t1"
    assert guess(series(tr=600.0, te=10.0, contrast="Gadovist"))[0] == "t1ce"
    assert guess(series(tr=3000.0, te=40.0))[0] is None


def test_nifti_files_with_any_names_and_a_map_file(scanner, tmp_path: Path) -> None:
    from spikeseg.prepare.series import read_map

    image, _, affine = scanner.phantom
    names = {"t1": "T1.nii.gz", "t1ce": "T1_post_Gd.nii.gz", "t2": "T2.nii.gz", "flair": "Flair.nii"}
    for i, m in enumerate(MODALITIES):
        nib.save(nib.Nifti1Image(image[i], affine), tmp_path / names[m])
    assert {c.modality: c.series.path.name for c in choose(discover(tmp_path), {})} == names
    (tmp_path / "map.json").write_text(json.dumps({"t1ce": "T1.nii.gz", "t1": "T1_post_Gd.nii.gz"}))
    chosen = {c.modality: c.series.path.name for c in choose(discover(tmp_path), read_map(tmp_path / "map.json"))}
    assert chosen["t1ce"] == "T1.nii.gz" and chosen["t1"] == "T1_post_Gd.nii.gz"


def test_a_series_with_a_missing_slice_is_refused(scanner, tmp_path: Path) -> None:
    from spikeseg.prepare.volumes import read_series

    study = _copy_study(scanner, tmp_path / "study")
    (study / "04_t2_tse_tra" / "IM0030.dcm").unlink()
    (t2,) = [s for s in discover(study) if s.path.name == "04_t2_tse_tra"]
    with pytest.raises(InputError, match="slice spacing is not regular"):
        read_series(t2)


def test_a_registration_that_does_not_converge_is_refused(scanner, tmp_path: Path) -> None:
    """A 'T1' that is noise: the mutual-information floor stops it, exit 2, nothing written."""
    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image(rng.random((96, 96, 64)).astype(np.float32) * 1000, np.diag([2.0, 2.0, 2.0, 1.0])),
             tmp_path / "noise.nii.gz")
    r = run_cli("prepare", scanner.folder, tmp_path / "out", "--t1", tmp_path / "noise.nii.gz", "--quiet")
    assert r.returncode == 2 and "co-registration of t1 to t1ce did not converge" in r.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_n4_flattens_a_bias_field() -> None:
    from spikeseg.prepare.volumes import from_array, n4, to_array

    x, y, z = np.meshgrid(*[np.linspace(-1, 1, 48)] * 3, indexing="ij")
    head = (x ** 2 + y ** 2 + z ** 2) < 0.8
    tissue = np.where(head, 100.0, 0.0) * np.exp(0.4 * x)  # a smooth 2x multiplicative field
    corrected, _ = to_array(n4(from_array(tissue.astype(np.float32), np.diag([3.0, 3.0, 3.0, 1.0]))))
    inner = (x ** 2 + y ** 2 + z ** 2) < 0.5

    def cov(v: np.ndarray) -> float:
        return float(v[inner].std() / v[inner].mean())

    assert cov(corrected) < 0.5 * cov(tissue)


def test_the_shipped_template_is_what_the_builder_makes(tmp_path: Path) -> None:
    from spikeseg.prepare.template import MASK, T1, template_dir
    from spikeseg.training.phantoms import write_prepare_template

    write_prepare_template(tmp_path)
    for name in (T1, MASK):
        shipped, fresh = nib.load(template_dir() / name), nib.load(tmp_path / name)
        assert np.array_equal(shipped.affine, fresh.affine)
        assert np.array_equal(np.asarray(shipped.dataobj), np.asarray(fresh.dataobj)), name
