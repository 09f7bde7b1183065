"""Metrics against the official BraTS_evaluation package (panoptica) with 2021 label groups."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from spikeseg.runtime.labels import BRATS2021
from spikeseg.runtime.metrics import brier, dice, ece, hd95, nll, sensitivity, specificity
from tests.helpers import DATA

CONFIG = DATA / "panoptica_brats2021.yaml"


@pytest.fixture(scope="module")
def evaluator():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from panoptica import Panoptica_Evaluator
        return Panoptica_Evaluator.load_from_config(str(CONFIG))


def _blob_labels(rng: np.random.Generator, shape=(24, 26, 20)) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    c = rng.integers(6, np.array(shape) - 6)
    r = rng.integers(2, 6, 3)
    g = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    d = np.sqrt((((g - c) / r) ** 2).sum(-1))
    lab[d < 1.6] = 2
    lab[d < 1.0] = 1
    lab[(d < 1.0) & (d > 0.6)] = 4
    noise = rng.random(shape) < 0.02
    lab[noise] = rng.choice([1, 2, 4], noise.sum())
    return lab


def _official(evaluator, tmp_path: Path, pred: np.ndarray, ref: np.ndarray) -> dict:
    from brats_evaluation import evaluate_single_exam
    nib.save(nib.Nifti1Image(pred, np.eye(4)), str(tmp_path / "p.nii.gz"))
    nib.save(nib.Nifti1Image(ref, np.eye(4)), str(tmp_path / "r.nii.gz"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = evaluate_single_exam(str(tmp_path / "p.nii.gz"), str(tmp_path / "r.nii.gz"), "x", evaluator)
    assert "error" not in out, out
    return out


def _ours(pred: np.ndarray, ref: np.ndarray) -> dict:
    out = {}
    for name, group in BRATS2021.region_labels().items():
        p, r = np.isin(pred, group), np.isin(ref, group)
        out[name.lower()] = (dice(p, r), hd95(p, r, (1.0, 1.0, 1.0)))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_dice_hd95_match_official_package_on_random_pairs(evaluator, tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    ref, pred = _blob_labels(rng), _blob_labels(rng)
    if seed % 2:  # overlapping pairs too, not only disjoint blobs
        pred = ref.copy()
        pred[rng.random(ref.shape) < 0.05] = 2
    official = _official(evaluator, tmp_path, pred, ref)
    for region, (d, h) in _ours(pred, ref).items():
        assert d == pytest.approx(float(official[region]["global_bin_dsc"]), abs=1e-9), region
        assert h == pytest.approx(float(official[region]["global_bin_hd95"]), abs=1e-9), region


def test_edge_cases_empty_masks(evaluator, tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    ref = _blob_labels(rng)
    ref[ref == 4] = 1  # reference without ET
    pred = ref.copy()
    pred[pred == 4] = 1
    official = _official(evaluator, tmp_path, pred, ref)
    ours = _ours(pred, ref)
    # both empty: NaN in both (the current official rule, our documented choice)
    assert math.isnan(ours["et"][0]) and math.isnan(float(official["et"]["global_bin_dsc"]))
    assert math.isnan(ours["et"][1])
    # one empty: Dice 0 in both; HD95 is our finite penalty where panoptica says inf
    pred2 = pred.copy()
    pred2[ref == 1] = 4
    official2 = _official(evaluator, tmp_path, pred2, ref)
    d, h = _ours(pred2, ref)["et"]
    assert d == 0.0 == float(official2["et"]["global_bin_dsc"])
    assert math.isinf(float(official2["et"]["global_bin_hd95"])) and h == pytest.approx(373.13, abs=0.005)  # the BraTS cube's diagonal, pinned


def test_hd95_with_anisotropic_spacing_matches_panoptica_function() -> None:
    from panoptica.metrics.hausdorff_distance import _compute_hausdorff_distance95
    rng = np.random.default_rng(11)
    for _ in range(3):
        a = _blob_labels(rng) > 0
        b = _blob_labels(rng) > 0
        spacing = (1.0, 1.5, 2.0)
        assert hd95(a, b, spacing) == pytest.approx(
            float(_compute_hausdorff_distance95(b, a, voxelspacing=spacing)), abs=1e-9)


def test_sensitivity_specificity_and_calibration_by_hand() -> None:
    ref = np.array([1, 1, 0, 0, 0], bool)
    pred = np.array([1, 0, 1, 0, 0], bool)
    assert sensitivity(pred, ref) == 0.5 and specificity(pred, ref) == pytest.approx(2 / 3)
    p = np.array([0.9, 0.2, 0.5, 0.1])
    t = np.array([1, 0, 1, 0])
    assert nll(p, t) == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.5, 0.9])))
    assert brier(p, t) == pytest.approx(np.mean([0.01, 0.04, 0.25, 0.01]))
    # ECE, 2 bins: bin [0,.5): p .2,.1 -> conf .15 acc 0 ; bin [.5,1]: p .9,.5 -> conf .7 acc 1
    assert ece(p, t, bins=2) == pytest.approx((2 * 0.15 + 2 * 0.3) / 4)
