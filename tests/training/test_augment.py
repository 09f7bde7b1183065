"""Training-time augmentation (TorchIO): seeded and deterministic, image and labels moved by one
transform, the background left 0 and the intensities normalised as the runtime would, the
global random stream untouched, and one transform per volume in the slice trainer (so every
window of an SNN's sequence is consistent)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spikeseg.runtime.labels import BRATS2021, labels_to_regions
from spikeseg.runtime.preprocess import PreprocessParams, regions_to_model_space, to_model_space
from spikeseg.training.augment import Augmenter
from spikeseg.training.phantoms import make_case

PARAMS = PreprocessParams(spacing_mm=(4.0, 4.0, 4.0))


@pytest.fixture(scope="module")
def volume() -> tuple[np.ndarray, np.ndarray]:
    image, labels, _ = make_case(7, "small", 0.8)
    model, space = to_model_space(image, (2.0, 2.0, 2.0), PARAMS)
    return model, regions_to_model_space(labels_to_regions(labels, BRATS2021), space)


@pytest.mark.parametrize("level", ["default", "light"])
def test_the_same_seed_gives_the_same_volume_and_other_seeds_differ(volume, level: str) -> None:
    aug = Augmenter(level, PARAMS.spacing_mm, "minmax")
    a, b = aug(*volume, seed=11), aug(*volume, seed=11)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    others = [aug(*volume, seed=s)[0] for s in range(8)]
    changed = [o for o in others if not np.array_equal(o, volume[0])]
    assert len(changed) >= 5 and len({o.tobytes() for o in changed}) >= 4  # most draws change it, differently


def test_the_global_random_stream_is_left_as_it_was(volume) -> None:
    aug = Augmenter("default", PARAMS.spacing_mm, "minmax")
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    aug(*volume, seed=5)
    assert torch.equal(torch.rand(4), expected)


def test_image_and_labels_move_together_background_stays_zero_and_range_is_the_runtimes(volume) -> None:
    """An image whose first channel is the whole-tumour mask: after any draw, that channel above
    0.5 and the moved WT label still coincide (one transform for both)."""
    image, regions = volume
    probe = image.copy()
    probe[0] = np.where(np.any(image != 0, axis=0), 0.2 + 0.8 * regions[2], 0.0)
    aug = Augmenter("default", PARAMS.spacing_mm, "minmax")
    moved_any = 0
    for seed in range(12):
        img, reg = aug(probe, regions, seed)
        assert img.dtype == np.float32 and reg.dtype == bool and img.shape == image.shape
        brain = np.any(img != 0, axis=0)
        assert img.min() >= 0 and np.allclose(img.reshape(4, -1).max(axis=1), 1.0)  # min-max, as at inference
        assert not reg[2][~brain].any() or reg[2][~brain].mean() < 0.05
        wt = img[0] > 0.6
        if reg[2].any():
            dice = 2 * (wt & reg[2]).sum() / (wt.sum() + reg[2].sum())
            assert dice > 0.8, (seed, dice)
        moved_any += not np.array_equal(reg, regions)
    assert moved_any >= 3


def test_none_returns_the_data_as_it_is(volume) -> None:
    aug = Augmenter("none", PARAMS.spacing_mm, "minmax")
    img, reg = aug(*volume, seed=1)
    assert img is volume[0] and reg is volume[1]
    with pytest.raises(ValueError, match="augment must be one of"):
        Augmenter("heavy", PARAMS.spacing_mm, "minmax")


def test_a_patch_keeps_its_volumes_scale(volume) -> None:
    """Patches of z-scored volumes are not normalised again (their own statistics are not the
    volume's); class maps come back as classes."""
    image, regions = volume
    patch = image[:, :16, :16, :16] * 3.0 - 1.0
    classes = (regions[2, :16, :16, :16].astype(np.int64) + regions[0, :16, :16, :16])
    aug = Augmenter("default", PARAMS.spacing_mm, "zscore", renormalise=False)
    img, cls = aug(patch, classes[None], seed=2)
    assert cls.dtype == np.int64 and set(np.unique(cls)) <= {0, 1, 2}
    assert img.min() < 0  # a z-scored patch keeps its negative values


def test_the_slice_trainer_augments_once_per_volume_not_per_window(phantom5, tmp_path, monkeypatch) -> None:
    """Every window of a sequence comes from one transformed volume: the augmenter is called once
    per training volume per epoch, whatever the window and sampling."""
    import spikeseg.training.augment as augment
    from tests.helpers import REPO  # noqa: F401 - the package resolves from the checkout

    calls = []
    real = augment.Augmenter.__call__

    def counting(self, image, labels, seed):
        calls.append(seed)
        return real(self, image, labels, seed)
    monkeypatch.setattr(augment.Augmenter, "__call__", counting)
    from spikeseg.training.config import TrainConfig
    from spikeseg.training.trainer import train

    cfg = TrainConfig.of(data=str(phantom5), out=str(tmp_path / "run"), arch="spiking-useg", view="axial",
                         preset="tiny", spacing_mm=6.0, batch_size=2, epochs=2, window=2,
                         window_sampling="sequential", augment="default", progress=False)
    train(cfg)
    assert len(calls) == 2 * 4  # 2 epochs x the fold's 4 training volumes
    assert len(set(calls)) == len(calls)  # a fresh draw each time
