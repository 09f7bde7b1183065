"""The lite 3D U-Net through the whole pipeline: sliding-window bookkeeping against fields whose
answer is known, the loss against numpy, torch vs ONNX Runtime vs OpenVINO on a full
sliding-window prediction, and train -> export -> segment (torch-free) -> profile."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from spikeseg.export.graphs import volume_spec
from spikeseg.runtime.bundle_spec import INPUT, LOGITS, VOLUME, ViewSpec, WindowSpec
from spikeseg.runtime.errors import InputError
from spikeseg.runtime.preprocess import PreprocessParams, load_model_space
from spikeseg.runtime.sliding import (blended_logits, classes_to_regions, mirrored_predictions, softmax,
                                      steps_per_case, window_starts)
from spikeseg.snn.unet3d import LiteUnet3d, Unet3dConfig
from spikeseg.training.losses import ce_dice_loss
from spikeseg.training.patches import regions_to_classes
from tests.helpers import exported_sliding_logits, run_cli


def test_window_starts_span_the_axis_with_at_least_the_overlap() -> None:
    assert window_starts(80, 64, 0.5) == [0, 16]
    assert window_starts(64, 64, 0.5) == [0] and window_starts(40, 64, 0.5) == [0]
    assert window_starts(200, 64, 0.5) == [0, 27, 54, 82, 109, 136]
    for size, patch, overlap in ((97, 16, 0.5), (155, 48, 0.25), (33, 32, 0.0)):
        s = window_starts(size, patch, overlap)
        assert s[0] == 0 and s[-1] == size - patch
        assert max(np.diff(s)) <= patch * (1 - overlap)


def _echo(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A model whose logits are its input: translation- and mirror-equivariant."""
    return {LOGITS: feeds[INPUT].copy()}


@pytest.mark.parametrize("shape", [(20, 17, 23), (9, 30, 12)])  # the second is thinner than a patch
def test_blending_returns_the_field_the_patches_agree_on(shape: tuple[int, int, int]) -> None:
    """Every patch sees the same field, so any weighted blend of them is that field: wrong boxes,
    weights or padding would show."""
    image = np.random.default_rng(0).normal(size=(4, *shape)).astype(np.float32)
    window = WindowSpec((12, 12, 12))
    calls = []
    out = blended_logits(_echo, window, image, advance=calls.append)
    np.testing.assert_allclose(out, image, rtol=0, atol=1e-5)
    assert sum(calls) * len(window.flips) == steps_per_case(shape, window)


def test_mirrored_copies_agree_for_a_symmetric_model_and_not_otherwise() -> None:
    image = np.random.default_rng(1).normal(size=(4, 16, 16, 16)).astype(np.float32)
    window = WindowSpec((8, 8, 8), flips=((), (0,), (1,), (2,)))
    members = mirrored_predictions(_echo, window, image)
    assert len(members) == 4
    for m in members[1:]:
        np.testing.assert_allclose(m, members[0], atol=1e-6)
    np.testing.assert_allclose(members[0], classes_to_regions(softmax(image)), atol=1e-6)
    ramp = np.linspace(-3, 3, 8, dtype=np.float32)[:, None, None]

    def lopsided(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:  # favours ET along axis 0
        out = feeds[INPUT].copy()
        out[:, 3] += ramp
        return {LOGITS: out}

    members = mirrored_predictions(lopsided, window, image)
    assert not np.allclose(members[0], members[1], atol=1e-3)  # the copy mirrored along axis 0
    np.testing.assert_allclose(members[0], members[2], atol=1e-6)  # mirrored along 1: the ramp is unmoved


def test_classes_and_regions_round_trip() -> None:
    """Training's classes from the nested regions, and the runtime's regions from class
    probabilities, are inverses on one-hot probabilities."""
    rng = np.random.default_rng(2)
    wt = rng.random((6, 7, 8)) < 0.5
    tc = wt & (rng.random(wt.shape) < 0.5)
    et = tc & (rng.random(wt.shape) < 0.5)
    regions = np.stack([et, tc, wt])
    classes = regions_to_classes(regions)
    onehot = np.moveaxis(np.eye(4, dtype=np.float32)[classes], -1, 0)
    np.testing.assert_array_equal(classes_to_regions(onehot) > 0.5, regions)


def test_ce_dice_loss_matches_numpy() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(2, 4, 3, 4, 5)).astype(np.float32)
    classes = rng.integers(0, 3, size=(2, 3, 4, 5))  # class 3 absent: left out of the Dice mean
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    onehot = np.moveaxis(np.eye(4)[classes], -1, 1)
    ce = -np.mean(np.log(np.take_along_axis(p, classes[:, None], 1)))
    inter, sp, sr = (p * onehot).sum((0, 2, 3, 4)), p.sum((0, 2, 3, 4)), onehot.sum((0, 2, 3, 4))
    dice = 1 - (2 * inter + 1e-5) / (sp + sr + 1e-5)
    want = 0.3 * ce + 0.7 * dice[sr > 0].mean()
    got = ce_dice_loss(torch.from_numpy(logits), torch.from_numpy(classes))
    assert abs(float(got) - want) < 1e-5


def _small_model(seed: int = 0) -> LiteUnet3d:
    torch.manual_seed(seed)
    return LiteUnet3d(Unet3dConfig(widths=(4, 8, 16))).eval()


def test_spec_round_trips_and_bad_windows_are_refused(tmp_path: Path) -> None:
    window = WindowSpec((16, 16, 16), flips=((), (0,)))
    spec = volume_spec(_small_model(), window, (27, 32, 25))
    assert spec.slices_per_case == 27 * 2 and spec.dense_macs_per_slice > 0
    d = json.loads(json.dumps({**spec.to_dict(), "models": [
        {"file": "a.onnx", "sha256": "0" * 64, "format": "onnx", "precision": "fp32"}]}))
    back = ViewSpec.parse(d, VOLUME, None)
    assert back.window == window and back.layers == spec.layers and back.slice_shape == (16, 16, 16)
    for bad, problem in (({k: v for k, v in d.items() if k != "window"}, "window"),
                         ({**d, "window": {**d["window"], "classes": ["bg", "tumour"]}}, "classes"),
                         ({**d, "window": {**d["window"], "overlap": 1.0}}, "overlap"),
                         ({**d, "slice_shape": [16, 16]}, "slice_shape")):
        with pytest.raises(InputError, match=problem):
            ViewSpec.parse(bad, VOLUME, None)


def test_torch_onnxruntime_openvino_agree_on_a_full_sliding_window_prediction(phantom_root: Path,
                                                                               tmp_path: Path) -> None:
    params = PreprocessParams(spacing_mm=(4.0, 4.0, 4.0), normalisation="zscore")
    image = load_model_space(sorted(phantom_root.iterdir())[0], params).image  # (4, 40, 48, 38)
    ref, exported = exported_sliding_logits(_small_model(), WindowSpec((16, 16, 16)), image, tmp_path)
    for backend, got in exported.items():
        assert np.abs(got - ref).max() < 1e-4, backend


def test_trained_volume_model_exports_segments_without_torch_and_is_profiled(phantom5: Path, phantom_root: Path,
                                                                            tmp_path: Path) -> None:
    fast = ["--arch", "unet3d-lite", "--preset", "tiny", "--spacing", "6", "--patch", "16",
            "--patches-per-case", "2", "--quiet"]
    r = run_cli("train", "--data", phantom5, "--out", tmp_path / "run", "--epochs", "2", *fast)
    assert r.returncode == 0, r.stderr
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (cfg["trainer"], cfg["lr"], cfg["weight_decay"], cfg["min_lr"], cfg["plateau_patience"],
            cfg["normalisation"], cfg["view"]) == ("patches", 5e-4, 5e-4, 1e-6, 2, "zscore", VOLUME)
    # resuming a 1-epoch run to 2 epochs gives the 2-epoch run exactly
    r = run_cli("train", "--data", phantom5, "--out", tmp_path / "r1", "--epochs", "1", *fast)
    assert r.returncode == 0, r.stderr
    r = run_cli("train", "--data", phantom5, "--out", tmp_path / "r1", "--epochs", "2", "--resume", *fast)
    assert r.returncode == 0, r.stderr
    a = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "r1" / "checkpoints" / "last.pt", weights_only=True)
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0)

    bundle = tmp_path / "bundle"
    r = run_cli("export", tmp_path / "run", "--out", bundle, "--int8", "--calib", phantom_root,
                "--allow-accuracy-drop")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert list(manifest["views"]) == [VOLUME] and manifest["architecture"] == "unet3d-lite"
    case = sorted(phantom_root.iterdir())[0]
    for precision in ("fp32", "int8"):
        out = tmp_path / f"seg-{precision}"
        r = run_cli("segment", bundle, case, out, "--precision", precision, "--quiet", block_torch=True)
        assert r.returncode == 0, r.stderr
        report = json.loads((out / case.name / f"{case.name}_report.json").read_text())
        assert "mirrored copies" in report["uncertainty"]
        unc = nib.load(out / case.name / f"{case.name}_uncertainty.nii.gz")
        pred = nib.load(out / case.name / f"{case.name}_pred.nii.gz")
        assert unc.shape == pred.shape and np.allclose(unc.affine, pred.affine)
        assert 0 < float(np.asarray(unc.dataobj).max()) <= 0.5
        spec = manifest["views"][VOLUME]
        assert report["operations"][VOLUME]["dense_macs"] == spec["dense_macs_per_slice"] * spec["slices_per_case"]
    r = run_cli("train", "--data", phantom5, "--out", tmp_path / "views", "--view", "axial", *fast)
    assert r.returncode == 2 and "no views" in r.stderr
    r = run_cli("profile", bundle, "--case", case)
    assert r.returncode == 0, r.stderr
    assert "dense MACs per case" in r.stdout and VOLUME in r.stdout
