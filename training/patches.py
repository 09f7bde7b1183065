"""Patch training of a volume model (``--arch unet3d-lite``, ``cascade-me-unet`` and its ablations
``unet3d``, ``me-unet``): random patches biased towards tumour, each paper's loss and optimiser,
validation by the runtime's own sliding window.

Why patches: a whole 240x240x155 case does not fit a GPU's memory with a 3D network's
activations, and most of a volume is healthy tissue: a share of the patches (by default a third, as nnU-Net
forces onto foreground; Isensee et al. 2021) centred on tumour voxels show the network the rare
classes often enough. Mirroring along each axis with probability 0.5 is
the augmentation (the paper also rotates). Everything else, resume, AMP, DDP, time budget,
metrics.csv, TensorBoard, comes from the shared loop (:class:`~spikeseg.training.loop.Trainer`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from spikeseg.snn.graphs import TorchEngine
from spikeseg.runtime.bundle_spec import WindowSpec
from spikeseg.runtime.errors import InputError
from spikeseg.runtime.sliding import mirrored_predictions, pad_to_patch
from spikeseg.snn.cascade import CascadeConfig, CascadeUnet
from spikeseg.snn.unet3d import MULTIPLE, LiteUnet3d, Unet3dConfig
from spikeseg.training.config import CASCADE_ARCHS
from spikeseg.training.devices import seed_everything
from spikeseg.training.losses import ce_dice_loss, deep_mean_dice_loss
from spikeseg.training.loop import Trainer, validation_scores


def regions_to_classes(regions: np.ndarray) -> np.ndarray:
    """(3, …) nested ET/TC/WT masks to one class per voxel: 0 background, 1 NCR (TC without
    ET), 2 edema (WT without TC), 3 ET: the order of ``VOLUME_CLASSES``."""
    et, tc, wt = (np.asarray(regions[i], dtype=bool) for i in range(3))
    out = np.zeros(et.shape, np.int64)
    out[wt] = 2
    out[tc] = 1
    out[et] = 3
    return out


def patch_targets(regions: np.ndarray, patch: int) -> tuple[np.ndarray, np.ndarray]:
    """A training case's classes padded to at least the patch, and its tumour voxels (flat
    indices into them): computed once per case, not once per patch."""
    classes = pad_to_patch(regions_to_classes(regions).astype(np.uint8)[None], (patch,) * 3)[0]
    return classes, np.flatnonzero(classes)


def sample_patch(image: np.ndarray, classes: np.ndarray, tumour: np.ndarray, patch: int,
                 rng: np.random.Generator, tumour_share: float) -> tuple[np.ndarray, np.ndarray]:
    """One (C, p, p, p) image patch and its (p, p, p) classes, mirrored at random, from
    :func:`patch_targets`' ``classes`` and ``tumour``. With probability ``tumour_share`` the
    patch is centred on a random tumour voxel (when the case has one), else placed uniformly."""
    image = pad_to_patch(np.asarray(image), (patch,) * 3)
    shape = classes.shape
    if rng.random() >= tumour_share:
        tumour = tumour[:0]
    if tumour.size:
        centre = np.unravel_index(int(rng.choice(tumour)), shape)
        start = [min(max(c - patch // 2, 0), n - patch) for c, n in zip(centre, shape)]
    else:
        start = [int(rng.integers(n - patch + 1)) for n in shape]
    box = tuple(slice(s, s + patch) for s in start)
    img, cls = image[(slice(None),) + box], classes[box]
    for axis in range(3):
        if rng.random() < 0.5:
            img, cls = np.flip(img, axis + 1), np.flip(cls, axis)
    return np.ascontiguousarray(img, dtype=np.float32), np.ascontiguousarray(cls)


def channel_out(image: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """Each modality of a (C, ...) patch replaced, with probability ``p``, by Gaussian noise of
    that modality's brain mean and spread (background left 0): the cascade paper's channel-out
    augmentation, so the network cannot lean on one modality. A modality with no brain voxels
    in the patch is left as it is."""
    out = image.copy()
    brain = np.any(image != 0, axis=0)
    for c in range(image.shape[0]):
        if rng.random() < p and brain.any():
            vals = image[c][brain]
            out[c][brain] = rng.normal(float(vals.mean()), float(vals.std()), int(brain.sum()))
    return out


class PatchTrainer(Trainer):
    """``patches``: a volume model, AdamW (or SGD with ``--momentum``), patch batches and
    sliding-window validation."""

    #: each patch is augmented on its own, keeping its volume's intensity scale
    WHOLE_VOLUMES = False

    #: the paper halves the learning rate when the validation loss stalls (here the NLL)
    PLATEAU = ("val_nll", "min")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.device.type == "cpu":
            # Subnormal floats (gradients of a network still near its start, SGD's momentum) run
            # through the CPU's slow path: a tiny cascade's epoch took 94 s instead of 3.5 s.
            # Process-wide: later training in the same process also flushes them to zero.
            torch.set_flush_denormal(True)
        self._targets: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def targets(self, case_id: str, regions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:func:`patch_targets` of a training case, kept (uint8: 0.6 MB a case at 2 mm)."""
        if case_id not in self._targets:
            self._targets[case_id] = patch_targets(regions, self.cfg.volume.patch)
        return self._targets[case_id]

    def build_model(self) -> tuple[Unet3dConfig | CascadeConfig, torch.nn.Module]:
        cfg = self.cfg
        if cfg.slices.init_from or cfg.slices.distill:
            raise InputError(None, "--init-from and --distill are for the slice models")
        model_cfg: Unet3dConfig | CascadeConfig
        if cfg.arch in CASCADE_ARCHS:
            model_cfg = CascadeConfig.preset(cfg.arch, cfg.preset)
            model: torch.nn.Module = CascadeUnet(model_cfg)
            multiple, smallest = model_cfg.multiple, model_cfg.min_patch
        else:
            model_cfg, multiple, smallest = Unet3dConfig.preset(cfg.preset), MULTIPLE, MULTIPLE
            model = LiteUnet3d(model_cfg)
        if cfg.volume.patch % multiple or cfg.volume.patch < smallest:
            raise InputError(None, f"--patch {cfg.volume.patch}: {cfg.arch} needs patch sides that are "
                                   f"multiples of {multiple} (its pooling), at least {smallest}")
        return model_cfg, model

    def optimiser(self) -> torch.optim.Optimizer:
        cfg = self.cfg
        if cfg.momentum:
            return torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay)
        return torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The lite U-Net's CE + Dice on its output; the cascade's mean Dice on every stage."""
        if isinstance(self.model, CascadeUnet):
            return deep_mean_dice_loss(self.net(x, stages=True), y)  # through DDP's forward
        return ce_dice_loss(self.net(x), y)

    @property
    def window(self) -> WindowSpec:
        """Validation's sliding window: the runtime's patches without overlap or mirrored copies
        (at 2 mm with 32^3 patches, 36 calls a case instead of 320): choosing the best epoch
        needs a ranking, and every second spent here is one not spent training."""
        return WindowSpec((self.cfg.volume.patch,) * 3, overlap=0.0)

    def train_epoch(self) -> float:
        cfg = self.cfg
        rng = seed_everything(cfg.seed * 100003 + self.epoch + 1)
        self.net.train()
        draws = [c for c in self.train_cases for _ in range(cfg.volume.patches_per_case)]
        order = [draws[i] for i in rng.permutation(len(draws))]
        steps = len(order) // (cfg.batch_size * self.world) or 1  # equal step counts on every rank
        losses = []
        bar = tqdm(range(steps), desc=f"volume epoch {self.epoch + 1}/{cfg.epochs}", unit="batch", leave=False,
                   disable=not cfg.progress or self.rank != 0)
        for k in bar:
            batch = order[(k * self.world + self.rank) * cfg.batch_size:][:cfg.batch_size] or order[:cfg.batch_size]
            pairs = []
            for case in batch:
                image, regions = case.stored()  # sample_patch casts the patch, not the case
                img, cls = sample_patch(image, *self.targets(case.case_id, regions), cfg.volume.patch, rng,
                                        cfg.volume.patch_tumour_share)
                img, cls = self.augmenter(img, cls[None], seed=int(rng.integers(2**31)))
                cls = cls[0]
                noise = cfg.volume.channel_out
                pairs.append((channel_out(img, noise, rng) if noise else img, cls))
            x = torch.from_numpy(np.stack([p[0] for p in pairs])).to(self.device)
            y = torch.from_numpy(np.stack([p[1] for p in pairs]).astype(np.int64)).to(self.device)
            with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                loss = self.loss(x, y)
            self.descend(loss)
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        return float(np.mean(losses)) if losses else math.nan

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        self.model.eval()
        engine = TorchEngine(self.model, device=self.device)

        def predicted():
            for case in self.val_cases:
                image, regions = case.load()
                yield mirrored_predictions(engine, self.window, np.asarray(image))[0], regions

        return validation_scores(predicted())
