"""Uncertainty-guided refinement: the kernel search on hand-built uncertainty maps, the binned
entropy against scipy, the particle swarm and the fusion fit on toy problems with known optima,
the spherical projections' geometry, the cube-centred 3D patches, and the whole chain from
``spikeseg export --refine-guide`` to ``spikeseg segment --refine`` without torch."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.stats import entropy as scipy_entropy

from spikeseg.export.fusion_fit import BOUNDS, fit_fusion, pso, region_samples
from spikeseg.runtime.bundle_spec import INPUT, LOGITS, WindowSpec
from spikeseg.runtime.projections import SphericalProjection, projection_origins, radial_map
from spikeseg.runtime.labels import BRATS2021, regions_to_labels
from spikeseg.runtime.refine import (Fusion, binned_entropy, box_sums, cubes_mask, fuse_refined, search_kernels,
                                     to_bins)
from spikeseg.runtime.sliding import centred_box, classes_to_regions, cube_predictions, cube_steps, softmax, tiles
from tests.conftest import TRAIN
from tests.helpers import run_cli


def test_binned_entropy_matches_scipy_on_the_histogram_of_each_voxel() -> None:
    rng = np.random.default_rng(0)
    for k in (1, 3, 16):
        probs = rng.beta(0.5, 0.5, size=(k, 7, 5)).astype(np.float32)
        probs[:, 0, 0] = 0.42  # all members agree: 0
        got = binned_entropy(np.stack([to_bins(p) for p in probs]))
        bins = to_bins(probs)
        for i in range(7):
            for j in range(5):
                ref = scipy_entropy(np.bincount(bins[:, i, j], minlength=100), base=2)
                assert got[i, j] == pytest.approx(ref, abs=1e-5)
        assert got[0, 0] == 0.0
    assert to_bins(np.array([0.0, 0.0099, 0.01, 0.5, 0.999, 1.0])).tolist() == [0, 0, 1, 50, 99, 99]


def test_box_sums_are_the_sums_of_every_box() -> None:
    vol = np.random.default_rng(1).random((6, 5, 7))
    sums = box_sums(vol, (2, 3, 4))
    assert sums.shape == (5, 3, 4)
    for i, j, k in np.ndindex(sums.shape):
        assert sums[i, j, k] == pytest.approx(vol[i:i + 2, j:j + 3, k:k + 4].sum())


def _blob(shape, start, size, value) -> np.ndarray:
    out = np.zeros(shape, np.float32)
    out[tuple(slice(s, s + k) for s, k in zip(start, size))] = value
    return out


def test_kernel_search_finds_the_hot_cubes_best_first_and_stops() -> None:
    shape, size = (40, 40, 40), (8, 8, 8)
    # sums 1024, 512 and 460.8; a cube overlapping a chosen one by <= 40 % holds at most 409.6
    unc = (_blob(shape, (2, 3, 4), size, 1.0) + _blob(shape, (25, 20, 28), size, 2.0)
           + _blob(shape, (5, 30, 20), size, 0.9))
    assert search_kernels(unc, size, stop_sum=0.0, max_kernels=8)[:3] == [(25, 20, 28), (2, 3, 4), (5, 30, 20)]
    assert search_kernels(unc, size, stop_sum=470.0) == [(25, 20, 28), (2, 3, 4)]  # the weak one is under the stop
    assert search_kernels(unc, size, stop_sum=0.0, max_kernels=1) == [(25, 20, 28)]
    assert search_kernels(np.zeros(shape, np.float32), size) == []


def test_kernel_search_respects_the_overlap_cap() -> None:
    """Two hot slabs side by side: the best cube covers the first; the next best overlaps it by
    exactly 50 % of a cube's volume, which a 40 % cap refuses and a 60 % cap allows."""
    shape, size = (30, 8, 8), (8, 8, 8)
    unc = _blob(shape, (4, 0, 0), (8, 8, 8), 2.0) + _blob(shape, (12, 0, 0), (4, 8, 8), 1.0)
    first = search_kernels(unc, size, overlap_cap=0.4, max_kernels=1)
    assert first == [(4, 0, 0)]
    with_cap = search_kernels(unc, size, overlap_cap=0.4, max_kernels=2)
    assert with_cap[1][0] >= 4 + 8 - int(0.4 * 8)  # overlap <= 40 %: at least 5 voxels further along
    loose = search_kernels(unc, size, overlap_cap=0.6, max_kernels=2)
    assert loose[1] == (8, 0, 0)  # 50 % overlap, the most uncertainty left
    for a in with_cap:  # no chosen pair overlaps by more than the cap
        for b in with_cap:
            if a != b:
                ov = np.prod([max(0, 8 - abs(x - y)) for x, y in zip(a, b)])
                assert ov <= 0.4 * 512
    mask = cubes_mask(shape, with_cap, size)
    assert mask.sum() == 512 * 2 - np.prod([max(0, 8 - abs(x - y)) for x, y in zip(*with_cap)])


def test_pso_finds_a_known_minimum_and_is_seeded() -> None:
    target = np.array([3.0, -2.0, 0.5])

    def f(p: np.ndarray) -> float:  # Rosenbrock-like valley plus a bowl: minimum at target, value 0
        d = p - target
        return float(d @ d + 10 * (d[1] - d[0] ** 2) ** 2)

    bounds = np.array([[-5.0, 5.0]] * 3)
    best, value = pso(f, bounds, seed=0, particles=30, iterations=200)
    assert np.allclose(best, target, atol=1e-2) and value < 1e-3
    assert np.array_equal(pso(f, bounds, seed=3)[0], pso(f, bounds, seed=3)[0])


def test_fusion_fit_recovers_a_known_boundary() -> None:
    """Inside the cubes the target is exactly 2 p2D + 6 p3D - 4 >= 0, outside them p2D >= 0.5:
    the fit must reach Dice 1 with weights on that boundary (w3D / w2D = 3, b / w2D = -2),
    where the guide alone does not."""
    rng = np.random.default_rng(0)
    cases = []
    for _ in range(3):
        p2d, p3d = rng.random((3, 20, 20, 20)).astype(np.float32), rng.random((3, 20, 20, 20)).astype(np.float32)
        masks = np.zeros(p2d.shape, bool)
        masks[:, 4:16, 4:16, 4:16] = True
        target = np.where(masks, 2 * p2d + 6 * p3d - 4 >= 0, p2d >= 0.5)
        cases.append((p2d, p3d, masks, target))
    samples = region_samples(cases, 2)
    fusion, record = fit_fusion(samples, seed=0)
    assert record["dice_fused"] > 0.99 > record["dice_guide"] + 0.05
    assert fusion.w3d / fusion.w2d == pytest.approx(3.0, rel=0.1)
    assert fusion.b / fusion.w2d == pytest.approx(-2.0, rel=0.1)
    assert all(lo <= v <= hi for v, (lo, hi) in zip((fusion.w2d, fusion.w3d, fusion.b), BOUNDS))
    # outside the cubes the guide stands: voxels there are scored from p2D
    p2d, p3d, masks, target = cases[0]
    out_pred = (p2d[2] >= 0.5) & ~masks[2]
    assert samples.outside[0][1] == out_pred.sum()


def test_fusion_is_the_papers_sigmoid() -> None:
    f = Fusion(0.6, 0.4, -0.5)
    assert f(np.float32(0.9), np.float32(0.2)) == pytest.approx(1 / (1 + np.exp(-(0.6 * 0.9 + 0.4 * 0.2 - 0.5))))


def test_radial_map_inverts_keeps_the_rim_and_magnifies_the_origin() -> None:
    d = np.linspace(0.0, 30.0, 301)
    for cap in (10.0, 30.0, 90.0):
        s = radial_map(d, 20.0, cap)
        assert np.allclose(radial_map(s, 20.0, cap, inverse=True), d, atol=1e-9)
        assert np.all(np.diff(s) > 0) and np.all(s <= d + 1e-12)
        assert np.allclose(s[d >= 20.0], d[d >= 20.0])  # outside the disc nothing moves
        c = np.deg2rad(cap)
        assert (s[1] - s[0]) / (d[1] - d[0]) == pytest.approx(np.sin(c) / c, rel=1e-3)  # 1 / magnification


def test_projection_round_trip_is_the_identity_on_a_smooth_image() -> None:
    """Forward then backward resamples twice: exact on a linear image wherever no sample was
    clamped at the border."""
    rows, cols = np.meshgrid(np.arange(60.0), np.arange(80.0), indexing="ij")
    image = (2 * rows + 3 * cols)[None].astype(np.float32)
    p = SphericalProjection.at((30.0, 40.0), (60, 80), 25.0, 30.0)
    back = p.backward(p.forward(image))[0]
    assert np.abs(back - image[0]).max() < 0.05
    fwd = p.forward(image)[0]
    assert fwd[30, 40] == pytest.approx(image[0, 30, 40]) and not np.allclose(fwd, image[0])


def test_origins_lie_in_the_footprint_and_are_deterministic() -> None:
    mask = np.zeros((50, 60), bool)
    mask[10:40, 15:50] = True
    for n in (1, 16, 100):
        origins = projection_origins(mask, n)
        assert len(origins) == n and all(mask[int(r), int(c)] for r, c in origins)
        assert origins == projection_origins(mask, n)


def _linear(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Logits that depend on where the patch is (its input), mirror-equivariant per voxel."""
    x = feeds[INPUT]
    return {LOGITS: np.concatenate([x[:, :1] * k for k in (1.0, -1.0, 0.5, 2.0)], axis=1)}


def test_cube_predictions_are_the_centred_patchs_output() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((1, 30, 28, 26)).astype(np.float32)
    window = WindowSpec((16, 16, 16), flips=((), (0,)))
    cubes = [((3, 4, 5), (6, 6, 6)), ((3, 4, 5), (6, 6, 6)), ((20, 20, 18), (8, 8, 8))]
    calls = []
    p3d, count, made = cube_predictions(_linear, window, image, cubes, advance=calls.append)
    assert made == 2 * 2 == sum(calls) == cube_steps(image.shape[1:], window, cubes)  # the shared patch runs once
    expect = classes_to_regions(softmax(_linear({INPUT: image[None]})[LOGITS][0]))  # voxel-wise model
    for start, size in cubes:
        cube = tuple(slice(s, s + k) for s, k in zip(start, size))
        assert np.allclose(p3d[(slice(None),) + cube], expect[(slice(None),) + cube], atol=1e-6)
    assert count[4, 5, 6] == 2 and count[0, 0, 0] == 0 and p3d[:, 0, 0, 0].sum() == 0
    box = centred_box((20, 20, 18), (8, 8, 8), (16, 16, 16), (30, 28, 26))
    assert [b.start for b in box] == [14, 12, 10]  # centred, then moved inside the grid
    assert sum(np.prod(sz) for _, sz in tiles([((0, 0, 0), (40, 16, 20))], (16, 16, 16))) == 40 * 16 * 20


def test_export_fits_the_refinement_and_segment_refines_without_torch(bundles: dict[str, Path], phantom5: Path,
                                                                       phantom_root: Path, tmp_path: Path) -> None:
    run3d = tmp_path / "run3d"
    r = run_cli("train", "--data", phantom5, "--out", run3d, "--arch", "unet3d-lite", "--patch", "16",
                "--patches-per-case", "2", *TRAIN)
    assert r.returncode == 0, r.stderr
    snn, twin = bundles["spiking-useg"], bundles["useg"]
    refiner = tmp_path / "refiner"
    r = run_cli("export", run3d, "--out", refiner, "--calib", phantom_root, "--refine-guide", f"{snn}:views",
                "--refine-guide", f"{twin}:projections", "--projections", "3", "--refine-max-kernels", "2")
    assert r.returncode == 0, r.stderr
    fits = json.loads((refiner / "manifest.json").read_text())["refinement"]
    assert [(f["guide"]["mode"], f["guide"]["projections"]) for f in fits] == [("views", 0), ("projections", 3)]
    assert all(f["fit"]["source"] == "calibration cases" and len(f["fit"]["cases"]) == 3 for f in fits)

    case = sorted(phantom_root.iterdir())[0]
    preds = []
    for i in range(2):
        out = tmp_path / f"seg{i}"
        r = run_cli("segment", snn, case, out, "--refine", refiner, "--quiet", block_torch=True)
        assert r.returncode == 0, r.stderr
        preds.append(np.asarray(nib.load(out / case.name / f"{case.name}_pred.nii.gz").dataobj))
        rep = json.loads((out / case.name / f"{case.name}_report.json").read_text())["refinement"]
    assert np.array_equal(*preds)  # same input, same bundles, same output
    assert rep["guide"]["mode"] == "views" and 0 < rep["kernels"]["WT"] <= 2
    assert 0 < rep["fraction_of_brain_refined"] <= 1
    assert rep["compute_saved"] == pytest.approx(1 - rep["refiner_patches_run"] / rep["refiner_patches_everywhere"])
    assert rep["refiner_dense_macs"] < rep["refiner_dense_macs_everywhere"]

    r = run_cli("segment", twin, case, tmp_path / "seg-proj", "--refine", refiner, "--quiet", block_torch=True)
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "seg-proj" / case.name / f"{case.name}_report.json").read_text())
    assert rep["refinement"]["guide"]["projections"] == 3 and "3 spherical projections" in rep["uncertainty"]
    # a fit the bundle does not hold, a refiner that is not 3D, views the fit did not use: refused by name
    for args, words in (((twin, case, tmp_path / "e1", "--refine", refiner, "--guide", "views"), "no fusion fitted"),
                        ((twin, case, tmp_path / "e2", "--refine", snn), "3D (volume) bundle"),
                        ((snn, case, tmp_path / "e3", "--refine", refiner, "--views", "axial"), "fitted on views")):
        r = run_cli("segment", *args, "--quiet")
        assert r.returncode == 2 and words in r.stderr, r.stderr
        assert not args[2].exists()


def test_fused_probabilities_stay_nested_and_the_label_map_is_unchanged() -> None:
    """Fusing each region's cubes on its own can put ET above TC; the output is nested again,
    which leaves the label map (ET wins) exactly as it was."""
    rng = np.random.default_rng(0)
    p2d = rng.random((3, 6, 6, 6)).astype(np.float32)
    p2d[1] = np.maximum(p2d[1], p2d[0])
    p2d[2] = np.maximum(p2d[2], p2d[1])
    p3d = rng.random((3, 6, 6, 6)).astype(np.float32)
    masks = np.zeros((3, 6, 6, 6), bool)
    masks[:, :3] = True
    fusion = {"ET": Fusion(0.0, 8.0, -2.0), "TC": Fusion(0.0, -8.0, 2.0), "WT": Fusion(1.0, 1.0, 0.0)}
    raw = p2d.copy()
    for r, name in enumerate(("ET", "TC", "WT")):
        raw[r][masks[r]] = fusion[name](p2d[r][masks[r]], p3d[r][masks[r]])
    assert (raw[0] > raw[1]).any()  # the per-region fusion did break the nesting here
    out = fuse_refined(p2d, p3d, masks, fusion)
    assert (out[1] >= out[0]).all() and (out[2] >= out[1]).all()
    np.testing.assert_array_equal(out[0], raw[0])
    np.testing.assert_array_equal(regions_to_labels(out >= 0.5, BRATS2021), regions_to_labels(raw >= 0.5, BRATS2021))
