"""The cascaded multi-encoder U-Net (and its ablations) through the pipeline: the multi-encoder's
modalities kept apart until the max fusion, the fusion against numpy, the cascade's stages at
x4/x2/x1 with the context entering where resolutions match, the loss and channel-out against
their definitions, the paper's preprocessing against its formula, dense MACs of grouped convs
against OpenVINO's own count, torch vs ONNX Runtime vs OpenVINO, and train -> export -> segment."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from spikeseg.export.graphs import export_volume_onnx
from spikeseg.runtime.bundle_spec import VOLUME, WindowSpec
from spikeseg.runtime.opcount import static_counts
from spikeseg.runtime.preprocess import PreprocessParams, load_model_space, normalise
from spikeseg.snn.cascade import ARCHS, STAGE_SCALES, CascadeConfig, CascadeUnet, MaxFusion
from spikeseg.training.losses import deep_mean_dice_loss
from spikeseg.training.patches import channel_out
from tests.helpers import exported_sliding_logits, run_cli


def _model(arch: str, widths: tuple[int, ...] = (2, 4, 8)) -> CascadeUnet:
    torch.manual_seed(0)
    return CascadeUnet(CascadeConfig(arch=arch, widths=widths)).eval()


def test_each_modality_has_its_own_encoder_until_the_fusion() -> None:
    """Changing one modality changes only its own group of first-level encoder features in
    me-unet; in the plain U-Net every feature reads every modality."""
    x = torch.randn(1, 4, 8, 8, 8)
    x2 = x.clone()
    x2[:, 2] += 1.0
    for arch, only_group in (("me-unet", True), ("unet3d", False)):
        enc = _model(arch).stages[0].enc[0]
        with torch.no_grad():
            diff = (enc(x2) - enc(x)).abs().flatten(2).amax(2)[0]  # per channel
        changed = diff > 1e-6
        if only_group:
            per = changed.numel() // 4
            assert changed[2 * per:3 * per].all() and not changed[:2 * per].any() and not changed[3 * per:].any()
        else:
            assert changed.all()


def test_max_fusion_is_the_maximum_over_modalities_then_a_pointwise_conv() -> None:
    fusion = MaxFusion(4, 3)
    x = torch.randn(2, 12, 4, 5, 6)
    with torch.no_grad():
        got = fusion(x).numpy()
    fused = x.numpy().reshape(2, 4, 3, 4, 5, 6).max(1)
    w = fusion.conv.weight.detach().numpy()[:, :, 0, 0, 0]
    ref = np.einsum("oc,bcxyz->boxyz", w, fused) + fusion.conv.bias.detach().numpy()[None, :, None, None, None]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_cascade_stages_work_at_x4_x2_x1_and_each_feeds_the_next() -> None:
    model = _model("cascade-me-unet")
    x = torch.randn(1, 4, 32, 32, 32)
    outs = model(x, stages=True)
    assert [tuple(o.shape[2:]) for o in outs] == [(32 // s,) * 3 for s in STAGE_SCALES]
    assert torch.equal(model(x), outs[-1])
    # the finest stage's output depends on the coarsest stage (context and probabilities reach it)
    coarse = model.stages[0].head.bias  # one class's bias: the softmax passed on changes
    with torch.no_grad():
        coarse[1] += 3.0
        moved = model(x)
        coarse[1] -= 3.0
    assert (moved - outs[-1]).abs().max() > 1e-4
    # the patch must be a multiple of what the coarsest stage pools, and big enough for its bottleneck
    cfg = model.cfg
    assert cfg.multiple == 16 and cfg.min_patch == 32
    assert CascadeConfig(arch="me-unet", widths=(2, 4, 8)).multiple == 4


def test_the_torch_free_list_of_volume_architectures_names_every_volume_model() -> None:
    from spikeseg.snn.unet3d import ARCH
    from spikeseg.training.config import VOLUME_ARCHS

    assert VOLUME_ARCHS == (ARCH, *ARCHS)


def test_deep_mean_dice_loss_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 4, size=(2, 8, 8, 8))
    logits = [torch.from_numpy(rng.normal(size=(2, 4, n, n, n)).astype(np.float32)) for n in (2, 4, 8)]
    got = float(deep_mean_dice_loss(logits, torch.from_numpy(classes)))
    onehot = np.eye(4)[classes].transpose(0, 4, 1, 2, 3)
    want = 0.0
    for lg in logits:
        s = 8 // lg.shape[-1]
        target = onehot.reshape(2, 4, 8 // s, s, 8 // s, s, 8 // s, s).mean(axis=(3, 5, 7))
        p = np.exp(lg.numpy()) / np.exp(lg.numpy()).sum(1, keepdims=True)
        dims = (0, 2, 3, 4)
        dice = (2 * (p * target).sum(dims) + 1e-5) / (p.sum(dims) + target.sum(dims) + 1e-5)
        want += float(np.mean(1 - dice))
    assert got == pytest.approx(want, rel=1e-5)


def test_channel_out_replaces_modalities_with_noise_of_their_brain_statistics() -> None:
    rng = np.random.default_rng(0)
    image = np.zeros((4, 16, 16, 16), np.float32)
    image[:, 4:12, 4:12, 4:12] = rng.normal(5.0, 2.0, size=(4, 8, 8, 8)) + np.arange(4)[:, None, None, None]
    assert np.array_equal(channel_out(image, 0.0, rng), image)
    out = channel_out(image, 1.0, rng)
    brain = image[0] != 0
    for c in range(4):
        assert not np.array_equal(out[c], image[c])
        assert np.all(out[c][~brain] == 0)
        assert out[c][brain].mean() == pytest.approx(image[c][brain].mean(), abs=0.3)
        assert out[c][brain].std() == pytest.approx(image[c][brain].std(), rel=0.15)
    replaced = [int(np.sum([not np.array_equal(o, i) for o, i in zip(channel_out(image, 0.1, rng), image)]))
                for _ in range(400)]
    assert np.mean(replaced) / 4 == pytest.approx(0.1, abs=0.03)


def test_paper_preprocessing_is_clipped_brain_zscore_shifted_to_0_10() -> None:
    rng = np.random.default_rng(0)
    image = np.zeros((4, 10, 10, 10), np.float32)
    image[:, 2:8, 2:8, 2:8] = rng.lognormal(3.0, 1.0, size=(4, 6, 6, 6))
    out = normalise(image, "zscore-clip")
    for c in range(4):
        brain = image[c] != 0
        z = (image[c][brain] - image[c][brain].mean()) / image[c][brain].std()
        np.testing.assert_allclose(out[c][brain], np.clip(z, -5, 5) + 5, rtol=1e-5, atol=1e-5)
        assert np.all(out[c][~brain] == 0)
    assert out.min() >= 0 and out.max() <= 10 and out.max() == pytest.approx(10)  # a lognormal tail is clipped


@pytest.mark.parametrize("arch", ARCHS)
def test_dense_macs_of_grouped_convs_match_openvinos_count(arch: str, tmp_path: Path) -> None:
    model = _model(arch)
    window = WindowSpec((32, 32, 32))
    spec = export_volume_onnx(model, window, (40, 48, 38), tmp_path / "m.onnx")
    ours = sum(layer.dense_macs_per_slice for layer in spec.layers)
    theirs = static_counts(tmp_path / "m.onnx")["macs_per_slice"]
    assert ours == pytest.approx(theirs, rel=1e-3)
    assert any(layer.groups == 4 for layer in spec.layers) == (arch != "unet3d")


def test_torch_onnxruntime_openvino_agree_on_a_cascade_sliding_window_prediction(phantom_root: Path,
                                                                                tmp_path: Path) -> None:
    params = PreprocessParams(spacing_mm=(4.0, 4.0, 4.0), normalisation="zscore-clip")
    image = load_model_space(sorted(phantom_root.iterdir())[0], params).image  # (4, 40, 48, 38)
    ref, exported = exported_sliding_logits(_model("cascade-me-unet"), WindowSpec((32, 32, 32)), image, tmp_path)
    for backend, got in exported.items():
        # 1e-4 of the logits' scale: with Kaiming weights and inputs in [0, 10] they reach ~7 here,
        # and float32 sums in another order differ by up to 5e-4 in absolute terms (OpenVINO)
        assert np.abs(got - ref).max() < 1e-4 * np.abs(ref).max(), backend
        assert (got.argmax(0) == ref.argmax(0)).mean() > 0.9999, backend


def test_trained_cascade_exports_and_segments_without_torch(phantom5: Path, phantom_root: Path,
                                                            tmp_path: Path) -> None:
    r = run_cli("train", "--data", phantom5, "--out", tmp_path / "run", "--arch", "cascade-me-unet",
                "--preset", "tiny", "--spacing", "6", "--patch", "32", "--patches-per-case", "1",
                "--epochs", "1", "--quiet")
    assert r.returncode == 0, r.stderr
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (cfg["trainer"], cfg["lr"], cfg["momentum"], cfg["lr_decay"], cfg["batch_size"], cfg["channel_out"],
            cfg["normalisation"]) == ("patches", 0.1, 0.9, 0.01, 4, 0.1, "zscore-clip")
    assert json.loads((tmp_path / "run" / "preprocess.json").read_text())["normalisation"] == "zscore-clip"
    bundle = tmp_path / "bundle"
    r = run_cli("export", tmp_path / "run", "--out", bundle, "--int8", "--calib", phantom_root,
                "--allow-accuracy-drop")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["architecture"] == "cascade-me-unet" and manifest["preprocess"]["normalisation"] == "zscore-clip"
    case = sorted(phantom_root.iterdir())[0]
    for precision in ("fp32", "int8"):
        out = tmp_path / f"seg-{precision}"
        r = run_cli("segment", bundle, case, out, "--precision", precision, "--quiet", block_torch=True)
        assert r.returncode == 0, r.stderr
        report = json.loads((out / case.name / f"{case.name}_report.json").read_text())
        spec = manifest["views"][VOLUME]
        assert report["operations"][VOLUME]["dense_macs"] == spec["dense_macs_per_slice"] * spec["slices_per_case"]
    r = run_cli("train", "--data", phantom5, "--out", tmp_path / "bad", "--arch", "cascade-me-unet",
                "--patch", "24", "--quiet")
    assert r.returncode == 2 and "multiples of 16" in r.stderr
