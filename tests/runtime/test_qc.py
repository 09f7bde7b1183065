"""The QC verdict: the bundle's reference written at export and read back by its one owner
(``QCReference``), and verdicts on hand-made cases: a skull and background noise, intensities
scaled x0.01 and x100, a FLAIR file holding the T1 image, an empty brain."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from spikeseg.export.qc_fit import AGREEMENT_MARGIN, UNCERTAINTY_MARGIN, fit_reference, good_predictions
from spikeseg.runtime.bundle import MANIFEST, load_bundle
from spikeseg.runtime.case_io import load_case
from spikeseg.runtime.errors import InputError
from spikeseg.runtime.labels import labels_to_regions
from spikeseg.runtime.preprocess import PreprocessParams, to_model_space
from spikeseg.runtime.qc import (PAIRS, SAME_IMAGE_CORRELATION, Limit, QCReference, measure_case, member_agreement,
                                 modality_correlation)
from tests.helpers import run_cli

PARAMS = PreprocessParams(spacing_mm=(4.0, 4.0, 4.0))


def _measure(image: np.ndarray, case, with_prediction: bool = True):
    """Measures of ``image`` (a variant of ``case``'s), the reference label standing in for a prediction."""
    model, _ = to_model_space(image, case.spacing, PARAMS)
    prob = labels_to_regions(case.label, case.files.convention).astype(np.float32) if with_prediction else None
    unc = np.where(prob[2] > 0, 0.05, 0.0).astype(np.float32) if with_prediction else None
    return measure_case(image, case.spacing, model, prob, unc)


@pytest.fixture(scope="module")
def reference(phantom_root: Path):
    cases = [load_case(c) for c in sorted(phantom_root.iterdir())]
    images = [_measure(c.image, c) for c in cases]
    wt = [float(labels_to_regions(c.label, c.files.convention)[2].sum()) * float(np.prod(c.spacing)) / 1000 for c in cases]
    return cases, fit_reference(images, wt, images, "three phantoms")


def test_every_reference_case_passes_its_own_reference(reference) -> None:
    cases, qc = reference
    for case in cases:
        result = qc.verdict(_measure(case.image, case))
        assert result.verdict == "ok", result.reasons


@pytest.mark.parametrize("scale", [0.01, 100.0])
def test_scaled_intensities_are_harmless_under_min_max_and_pass(reference, scale: float) -> None:
    cases, qc = reference
    result = qc.verdict(_measure(cases[0].image * np.float32(scale), cases[0]))
    assert result.verdict == "ok", result.reasons


def test_a_skull_and_background_noise_are_flagged(reference) -> None:
    """Not skull-stripped: a bright ring around the brain and noise everywhere else."""
    cases, qc = reference
    case = cases[0]
    brain = np.any(case.image != 0, axis=0)
    ring = ndimage.binary_dilation(brain, iterations=4) & ~brain
    rng = np.random.default_rng(0)
    image = case.image.copy()
    for c in range(4):
        top = float(image[c].max())
        image[c][ring] = 0.9 * top
        outside = ~brain & ~ring
        image[c][outside] = np.abs(rng.normal(0, 0.05 * top, int(outside.sum())))
    result = qc.verdict(_measure(image, case))
    assert result.verdict == "review"
    text = " ".join(result.reasons)
    assert "not skull-stripped" in text and "outer shell" in text and "brain volume" in text


def test_a_flair_file_holding_the_t1_image_is_flagged(reference) -> None:
    cases, qc = reference
    image = cases[0].image.copy()
    image[3] = image[0]
    result = qc.verdict(_measure(image, cases[0]))
    assert result.verdict == "review" and any(r.startswith("flair intensities unlike") for r in result.reasons)
    assert any(r.startswith("t1 and flair correlate at 1.00") for r in result.reasons)


def test_the_same_image_in_two_files_is_flagged_even_where_the_pair_correlates_highly(reference) -> None:
    """T1 and T1ce correlate highly in healthy tissue (up to 0.98 in the wide phantom family), so the
    range check alone could let a T1ce file holding the T1 image pass; the same-image cap does not."""
    cases, qc = reference
    loose = dataclasses.replace(qc, modality_correlation={**qc.modality_correlation, "t1-t1ce": Limit(-1.0, 1.5)})
    image = cases[0].image.copy()
    image[1] = image[0] * np.float32(3.0)
    assert qc.modality_correlation["t1-t1ce"].high == SAME_IMAGE_CORRELATION
    result = qc.verdict(_measure(image, cases[0]))
    assert result.verdict == "review" and any("the same image in two files" in r for r in result.reasons)
    assert not any(r.startswith("t1 and t1ce") for r in loose.verdict(_measure(image, cases[0])).reasons)


def test_a_pair_less_alike_than_in_training_is_not_called_the_same_image(reference) -> None:
    """T1 and T2 anticorrelate; a weaker anticorrelation lies above the accepted range, and is a
    modality or protocol question, not two files holding one image."""
    cases, qc = reference
    r = modality_correlation(to_model_space(cases[0].image, cases[0].spacing, PARAMS)[0])["t1-t2"]
    tight = dataclasses.replace(qc, modality_correlation={**qc.modality_correlation, "t1-t2": Limit(-1.0, r - 0.05)})
    reasons = tight.verdict(_measure(cases[0].image, cases[0])).reasons
    (reason,) = [x for x in reasons if x.startswith("t1 and t2 correlate")]
    assert "another modality, or another protocol" in reason and "same image" not in reason


def test_modality_correlations_match_numpy(reference) -> None:
    cases, _ = reference
    model, _ = to_model_space(cases[1].image, cases[1].spacing, PARAMS)
    brain = np.any(model != 0, axis=0)
    expected = np.corrcoef(model[:, brain])
    got = modality_correlation(model)
    for pair, (i, j) in zip(PAIRS, itertools.combinations(range(4), 2)):
        assert got[pair] == pytest.approx(expected[i, j], abs=1e-9)
    assert all(math.isnan(v) for v in modality_correlation(np.zeros_like(model)).values())


def test_an_empty_brain_is_flagged(reference) -> None:
    cases, qc = reference
    result = qc.verdict(_measure(np.zeros_like(cases[0].image), cases[0], with_prediction=False))
    assert result.verdict == "review"
    assert "t1: no brain voxels" in result.reasons and any("empty or cut-off brain" in r for r in result.reasons)


def test_an_implausible_result_is_flagged(reference) -> None:
    """ET outside the tumour core, and a whole tumour far beyond any reference case's."""
    cases, qc = reference
    case = cases[0]
    model, _ = to_model_space(case.image, case.spacing, PARAMS)
    prob = np.zeros((3, *case.image.shape[1:]), np.float32)
    prob[0] = np.any(case.image != 0, axis=0)  # "ET" over the whole brain, no TC
    prob[2] = prob[0]
    result = qc.verdict(measure_case(case.image, case.spacing, model, prob, None))
    text = " ".join(result.reasons)
    assert result.verdict == "review" and "outside the tumour core" in text and "whole tumour" in text


def test_the_reference_round_trips_through_its_owner_and_refuses_damage(reference) -> None:
    _, qc = reference
    raw = json.loads(json.dumps(qc.to_dict()))
    assert QCReference.parse(raw, "m.json") == qc
    for damage, message in [(lambda d: d.update(version=99), "version 99"),
                            (lambda d: d["brain_ml"].update(high="big"), "finite number"),
                            (lambda d: d["intensity_reference"].pop("t2"), "intensity_reference"),
                            (lambda d: d.update(cases=0), "count of reference cases")]:
        bad = json.loads(json.dumps(raw))
        damage(bad)
        with pytest.raises(InputError, match=message):
            QCReference.parse(bad, "m.json")


def test_a_version_1_record_is_read_without_the_correlation_check(reference) -> None:
    """Bundles exported before the correlation check keep working: their record is read, the
    check skipped, and it is written back as version 1."""
    cases, qc = reference
    old = json.loads(json.dumps(qc.to_dict()))
    old.pop("modality_correlation")
    old.pop("member_agreement")
    old["version"] = 1
    parsed = QCReference.parse(old, "m.json")
    assert parsed.version == 1 and parsed.modality_correlation == {}
    assert parsed.to_dict() == old
    image = cases[0].image.copy()
    image[3] = image[0]
    assert not any("correlate" in r for r in parsed.verdict(_measure(image, cases[0])).reasons)
    v2 = json.loads(json.dumps(qc.to_dict()))
    v2.pop("modality_correlation")
    with pytest.raises(InputError, match="modality_correlation"):
        QCReference.parse(v2, "m.json")


def test_member_agreement_is_the_mean_pairwise_whole_tumour_dice() -> None:
    """Against scipy's Dice dissimilarity on the members' WT masks (probability >= 0.5)."""
    from scipy.spatial.distance import dice as dissimilarity

    rng = np.random.default_rng(3)
    members = [rng.random((3, 6, 7, 5)).astype(np.float32) for _ in range(3)]
    masks = [m[2].ravel() >= 0.5 for m in members]
    expected = np.mean([1 - dissimilarity(a, b) for a, b in itertools.combinations(masks, 2)])
    assert member_agreement(members) == pytest.approx(expected)
    empty = np.zeros((3, 4, 4, 4), np.float32)
    assert member_agreement([empty, empty]) == 1.0  # both find nothing: they agree
    assert member_agreement([empty, empty + 1]) == 0.0
    assert member_agreement(members[:1]) is None


def _with_outputs(case, uncertainty: float, agreement: float | None):
    base = _measure(case.image, case)
    return dataclasses.replace(base, mean_uncertainty_in_wt=uncertainty, member_agreement=agreement)


def test_output_limits_come_from_the_held_out_cases_segmented_well(reference) -> None:
    """A held-out case the model fails on (WT Dice 0.3, high uncertainty, members apart) does not
    widen the limits; a new case like it is then flagged, with both reasons."""
    cases, _ = reference
    images = [_measure(c.image, c) for c in cases]
    wt = [m.wt_ml for m in images]
    predicted = [_with_outputs(cases[0], 0.10, 0.90), _with_outputs(cases[1], 0.12, 0.85),
                 _with_outputs(cases[2], 0.40, 0.30)]
    good = good_predictions(predicted, [0.9, 0.8, 0.3])
    assert good == predicted[:2]
    qc = fit_reference(images, wt, good, "three phantoms")
    assert qc.mean_uncertainty_in_wt.high == pytest.approx(UNCERTAINTY_MARGIN * 0.12)
    assert qc.member_agreement.low == pytest.approx(0.85 - AGREEMENT_MARGIN)
    result = qc.verdict(_with_outputs(cases[2], 0.40, 0.30))
    text = " ".join(result.reasons)
    assert result.verdict == "review" and "members agree on the whole tumour at Dice 0.30" in text
    assert "uncertainty inside the tumour" in text
    assert qc.verdict(_with_outputs(cases[0], 0.11, 0.88)).verdict == "ok"
    # fitted on every held-out case, the failure's values would have passed
    assert fit_reference(images, wt, predicted, "all").verdict(_with_outputs(cases[2], 0.40, 0.30)).verdict == "ok"
    logged: list[str] = []
    assert good_predictions(predicted, [0.1, 0.2, 0.3], logged.append) == predicted and "failures included" in logged[0]
    assert good_predictions(predicted, [math.nan, 0.1, 0.1]) == predicted[:1]  # no label: taken as good


def test_a_version_2_record_is_read_without_the_agreement_check(reference) -> None:
    cases, qc = reference
    old = json.loads(json.dumps(qc.to_dict()))
    old.pop("member_agreement")
    old["version"] = 2
    parsed = QCReference.parse(old, "m.json")
    assert parsed.version == 2 and parsed.member_agreement == Limit() and parsed.to_dict() == old
    assert parsed.verdict(_with_outputs(cases[0], 0.0, 0.0)).reasons == qc.verdict(_measure(cases[0].image,
                                                                                            cases[0])).reasons
    v3 = json.loads(json.dumps(qc.to_dict()))
    v3.pop("member_agreement")
    with pytest.raises(InputError, match="member_agreement"):
        QCReference.parse(v3, "m.json")


# -- with exported bundles -----------------------------------------------------------------------

def _not_skull_stripped(case: Path, dest: Path) -> Path:
    """A copy of a phantom case with a skull ring and background noise in every modality."""
    shutil.copytree(case, dest)
    rng = np.random.default_rng(1)
    for f in dest.glob("*.nii.gz"):
        if f.name.endswith("_seg.nii.gz"):
            continue
        img = nib.load(str(f))
        data = np.asarray(img.dataobj).astype(np.int16)
        brain = data != 0
        ring = ndimage.binary_dilation(brain, iterations=3) & ~brain
        data[ring] = int(0.9 * data.max())
        data[~brain & ~ring] = rng.integers(1, max(2, int(0.05 * data.max())), int((~brain & ~ring).sum()))
        nib.save(nib.Nifti1Image(data, img.affine, img.header), str(f))
    return dest


def test_export_writes_the_reference_and_segment_reports_the_verdict(bundles, phantom_root: Path,
                                                                    tmp_path: Path) -> None:
    manifest = json.loads((bundles["useg"] / MANIFEST).read_text())
    qc = load_bundle(bundles["useg"]).qc
    assert qc is not None and QCReference.parse(manifest["qc"], "m") == qc and qc.cases == 5
    cohort = tmp_path / "in"
    good = sorted(phantom_root.iterdir())[0]
    shutil.copytree(good, cohort / good.name)
    bad = _not_skull_stripped(sorted(phantom_root.iterdir())[1], cohort / "Skull_1")
    for f in bad.iterdir():
        f.rename(f.with_name(f.name.replace(sorted(phantom_root.iterdir())[1].name, "Skull_1")))
    out = tmp_path / "out"
    r = run_cli("segment", bundles["useg"], cohort, out, "--threads", "1", "--png", block_torch=True)
    assert r.returncode == 0, r.stderr
    rows = {row["case"]: row for row in csv.DictReader((out / "summary.csv").open())}
    assert rows["Skull_1"]["qc"] == "review" and "not skull-stripped" in rows["Skull_1"]["qc_reasons"]
    assert rows[good.name]["qc"] in ("ok", "review")
    rep = json.loads((out / "Skull_1" / "Skull_1_report.json").read_text())
    assert rep["qc"]["verdict"] == "review" and rep["qc"]["measures"]["brain_ml"] > qc.brain_ml.high
    assert "Skull_1: segmented" in r.stderr + r.stdout and "QC REVIEW" in r.stderr + r.stdout
    import zlib  # the banner: the PNG's first rows are the review colour
    raw = (out / "Skull_1" / "Skull_1_quicklook.png").read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    idat = raw[raw.index(b"IDAT") + 4:raw.index(b"IEND") - 8]
    first_pixel = zlib.decompress(idat)[1:4]
    assert tuple(first_pixel) == (230, 140, 0)
    strict = run_cli("segment", bundles["useg"], cohort / "Skull_1", tmp_path / "strict", "--threads", "1",
                     "--qc-strict", block_torch=True)
    assert strict.returncode == 3 and "QC REVIEW" in strict.stdout
