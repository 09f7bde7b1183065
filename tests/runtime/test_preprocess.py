"""Preprocessing: exact inverses (crop, views, space maps), resampling, the parameters record;
and the spread across views that the uncertainty map is made of."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spikeseg.runtime.case_io import load_case
from spikeseg.runtime.errors import InputError
from spikeseg.runtime.preprocess import (PreprocessParams, crop, crop_box, from_view, load_model_space, normalise,
                                         parse_views, regions_to_model_space, resample, to_model_space,
                                         to_native_space, to_view, uncrop)


def test_paper_crop_box_on_brats_grid() -> None:
    start, size = crop_box((240, 240, 155), (1.0, 1.0, 1.0), (160, 192, 152))
    assert size == (160, 192, 152) and start == (40, 24, 1)
    assert PreprocessParams().model_shape == (80, 96, 76)
    assert PreprocessParams(spacing_mm=(1.0, 1.0, 1.0)).model_shape == (160, 192, 152)


def test_crop_uncrop_inverse_including_padding() -> None:
    vol = np.random.default_rng(0).random((2, 10, 12, 7)).astype(np.float32)
    for start, size in [((2, 3, 1), (6, 6, 5)), ((-2, -1, -3), (14, 14, 13))]:
        box = crop(vol, start, size)
        assert box.shape == (2,) + size
        back = uncrop(box, start, vol.shape[1:])
        inside = uncrop(crop(np.ones_like(vol), start, size), start, vol.shape[1:]) > 0
        np.testing.assert_array_equal(back[inside], vol[inside])
        assert not back[~inside].any()


@pytest.mark.parametrize("method", ["minmax", "zscore"])
@pytest.mark.parametrize("crop_mm", [(6.0, 8.0, 4.0), (14.0, 16.0, 12.0)])  # inside; past every edge
def test_model_space_cuts_then_normalises_as_if_normalised_first(method: str, crop_mm) -> None:
    """The model grid is computed on the box only, with the whole volume's statistics; the
    reference is the plain order (normalise everything, then cut with zero padding)."""
    rng = np.random.default_rng(5)
    image = np.zeros((4, 10, 12, 7), np.float32)
    image[:, 2:9, 1:11, 1:6] = rng.uniform(50, 400, (4, 7, 10, 5))
    params = PreprocessParams(crop_mm=crop_mm, spacing_mm=(2.0, 2.0, 2.0), normalisation=method)
    got, space = to_model_space(image, (1.0, 1.0, 1.0), params)
    plain = np.zeros((4,) + space.size, np.float32)
    normed = normalise(image, method)
    for c in range(4):
        plain[c] = uncrop(normed[c][None], tuple(-s for s in space.start), space.size)[0]
    np.testing.assert_allclose(got, resample(plain, params.model_shape), atol=1e-6)


@pytest.mark.parametrize("view,axis", [("sagittal", 0), ("coronal", 1), ("axial", 2)])
def test_views_slice_along_the_right_axis_and_reassemble(view: str, axis: int) -> None:
    vol = np.random.default_rng(1).random((4, 5, 6, 7))
    seq = to_view(vol, view)
    assert seq.shape[0] == vol.shape[1 + axis] and seq.shape[1] == 4
    np.testing.assert_array_equal(seq[2], np.take(vol, 2, axis=1 + axis))
    np.testing.assert_array_equal(from_view(seq, view), vol)


def test_resample_factor_two_is_block_mean() -> None:
    vol = np.random.default_rng(2).random((8, 6, 4))
    down = resample(vol, (4, 3, 2))
    expect = vol.reshape(4, 2, 3, 2, 2, 2).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(down, expect, atol=1e-6)


@pytest.mark.parametrize("src,dst", [((40, 48, 38), (160, 192, 152)), ((160, 192, 152), (40, 48, 38)),
                                     ((7, 13, 5), (13, 7, 5)), ((3, 1, 9), (6, 4, 2))])
def test_resample_matches_scipy_linear_zoom(src: tuple[int, ...], dst: tuple[int, ...]) -> None:
    """The separable resampler against scipy's order-1 zoom (grid mode, edges repeated), the
    reference it replaces, up, down, mixed and from a single voxel, with a leading channel axis."""
    from scipy import ndimage

    vol = np.random.default_rng(4).random((2,) + src, dtype=np.float32)
    zoom = [d / s for d, s in zip(dst, src)]
    expect = np.stack([ndimage.zoom(v, zoom, order=1, mode="nearest", grid_mode=True) for v in vol])
    got = resample(vol, dst)
    assert got.shape == expect.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expect, atol=1e-6)


def test_normalisation_minmax_and_zscore() -> None:
    vol = np.zeros((1, 6, 6, 6), np.float32)
    vol[0, 1:5, 1:5, 1:5] = np.random.default_rng(3).uniform(100, 200, (4, 4, 4))
    mm = normalise(vol, "minmax")
    assert mm.min() == 0.0 and mm.max() == pytest.approx(1.0)
    z = normalise(vol, "zscore")
    brain = vol[0] != 0
    assert z[0][brain].mean() == pytest.approx(0.0, abs=1e-5)
    assert z[0][brain].std() == pytest.approx(1.0, abs=1e-4)
    assert not z[0][~brain].any()


def test_params_record_round_trip_and_version_check(tmp_path: Path) -> None:
    p = PreprocessParams(spacing_mm=(1.0, 1.0, 1.0), normalisation="zscore")
    p.save(tmp_path / "pre.json")
    assert PreprocessParams.load(tmp_path / "pre.json") == p
    d = p.to_dict()
    d["version"] = 99
    with pytest.raises(InputError, match="version 99"):
        PreprocessParams.from_dict(d, "x.json")


def test_model_space_round_trip_on_a_1mm_like_case(phantom_root: Path) -> None:
    """A 2 mm model on a case: region maps go there and back onto the native grid."""
    case = load_case(sorted(phantom_root.iterdir())[0])
    params = PreprocessParams(spacing_mm=(4.0, 4.0, 4.0))  # coarser than the 2 mm phantom
    model, space = to_model_space(case.image, case.spacing, params)
    assert model.shape == (4,) + params.model_shape
    assert 0.0 <= model.min() and model.max() <= 1.0
    from spikeseg.runtime.labels import labels_to_regions
    regions = labels_to_regions(case.label, case.files.convention)
    target = regions_to_model_space(regions, space)
    back = to_native_space(target.astype(np.float32), space) >= 0.5
    assert back.shape == regions.shape
    wt, wt_back = regions[2], back[2]
    overlap = 2 * (wt & wt_back).sum() / (wt.sum() + wt_back.sum())
    assert overlap > 0.8  # what 2x coarser resampling of a blob costs, no more


def test_parse_views() -> None:
    assert parse_views("all") == ["sagittal", "coronal", "axial"]
    assert parse_views("axial, coronal") == ["axial", "coronal"]
    with pytest.raises(InputError, match="unknown view"):
        parse_views("transverse")


def test_load_model_space_label_modes(case_copy: Path) -> None:
    """One loader for every stage: it matches the step-by-step path, reads the label only when
    asked, and names the folder when a stage that needs a label gets a case without one."""
    params = PreprocessParams(spacing_mm=(4.0, 4.0, 4.0))
    case = load_case(case_copy)
    image, _ = to_model_space(case.image, case.spacing, params)
    from spikeseg.runtime.labels import labels_to_regions
    got = load_model_space(case_copy, params, label="required")
    np.testing.assert_array_equal(got.image, image)
    np.testing.assert_array_equal(got.regions, regions_to_model_space(
        labels_to_regions(case.label, case.files.convention), got.space))
    assert load_model_space(case_copy, params).regions is None  # segmentation never reads it
    next(case_copy.glob("*_seg.nii*")).unlink()
    assert load_model_space(case_copy, params, label="optional").regions is None
    with pytest.raises(InputError, match=case_copy.name):
        load_model_space(case_copy, params, label="required")


def test_view_spread_is_numpys_std_across_views() -> None:
    """The uncertainty map's spread, computed one view at a time, is ``np.std`` over the stacked
    views (ddof 0) per region, with or without the mean handed in."""
    from spikeseg.runtime.ensemble import fuse, spread
    rng = np.random.default_rng(0)
    views = [rng.random((3, 7, 6, 5), dtype=np.float32) for _ in range(3)]
    ref = np.std(np.stack(views), axis=0)
    np.testing.assert_allclose(spread(views), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(spread(views, fuse(views)), ref, rtol=1e-5, atol=1e-6)
    assert spread(views).dtype == np.float32


def test_sigmoid_is_torchs_and_quiet_on_extreme_logits() -> None:
    """The runtime's logits-to-probabilities is torch's sigmoid (the trained models' own), float32,
    and raises no overflow warning on the large negative logits of air (the console stays clean)."""
    import warnings

    import torch

    from spikeseg.runtime.ensemble import sigmoid
    x = np.array([-1e4, -120.0, -3.5, 0.0, 2.25, 90.0, 1e4], dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = sigmoid(x)
    assert p.dtype == np.float32
    np.testing.assert_allclose(p, torch.sigmoid(torch.from_numpy(x)).numpy(), rtol=1e-6, atol=0)
