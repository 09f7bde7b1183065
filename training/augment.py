"""Training-time augmentation through TorchIO (Perez-Garcia et al., CMPB 2021): nnU-Net v2's
default set (``nnUNetTrainer.get_training_transforms``) adapted to these trainers, plus the MRI
artefacts TorchIO is made for.

Why TorchIO and not nnU-Net's batchgeneratorsv2: it works on one 3D volume with its label map
and its voxel spacing (what both trainers hold), its spatial transforms resample image and
labels in one call (nearest neighbour for the labels), it has the MRI-specific transforms the
phantoms' failures call for (bias field, anisotropic low resolution), and it installs from
PyPI with light dependencies; batchgeneratorsv2 pulls batchgenerators and its unmaintained
``unittest2``.

One spatial transform per volume: a slice model's whole sequence (every window an SNN or the
ConvLSTM twin trains on) comes from one transformed volume, so consecutive slices stay
consistent. After the intensity transforms the background is set back to 0 (the inputs are
skull-stripped) and each modality is normalised again as the runtime would normalise it, so a
global brightness change (undone by min-max normalisation) is not among the transforms.

Values (nnU-Net v2's, on z-scored data, rescaled where the unit differs): rotation up to 30
degrees (p 0.2), isotropic scaling 0.7-1.4 (p 0.2), mirroring on every axis; Gaussian noise
(p 0.1; standard deviation up to 0.05 of the normalised range), Gaussian blur 0.5-1 voxel
(p 0.2), gamma 0.7-1.5 (p 0.3), simulated low resolution (one axis downsampled up to 2x,
p 0.25, TorchIO's ``RandomAnisotropy``), a smooth MRI bias field (p 0.3). ``light`` keeps the
mirroring, mild rotation and scaling, and gamma.
"""

from __future__ import annotations

import math

import numpy as np

from spikeseg.runtime.preprocess import normalise

LEVELS = ("default", "light", "none")


def _transform(level: str, spacing_mm: tuple[float, ...]):  # noqa: ANN202 - a torchio.Compose
    import torchio as tio

    flips = tio.RandomFlip(axes=(0, 1, 2), flip_probability=0.5)
    if level == "light":
        return tio.Compose([flips, tio.RandomAffine(scales=(0.85, 1.15), degrees=10, isotropic=True,
                                                    default_pad_value=0, p=0.2),
                            tio.RandomGamma(log_gamma=(math.log(0.8), math.log(1.25)), p=0.3)])
    voxel = float(np.mean(spacing_mm))
    return tio.Compose([
        flips,
        tio.RandomAffine(scales=0, degrees=30, default_pad_value=0, p=0.2),
        tio.RandomAffine(scales=(0.7, 1.4), degrees=0, isotropic=True, default_pad_value=0, p=0.2),
        tio.RandomAnisotropy(axes=(0, 1, 2), downsampling=(1.0, 2.0), p=0.25),
        tio.RandomBiasField(coefficients=0.5, order=3, p=0.3),
        tio.RandomBlur(std=(0.5 * voxel, 1.0 * voxel), p=0.2),
        tio.RandomGamma(log_gamma=(math.log(0.7), math.log(1.5)), p=0.3),
        tio.RandomNoise(std=(0.0, 0.05), p=0.1),
    ])


class Augmenter:
    """``augmenter(image, labels, seed)``: one volume or patch (C, X, Y, Z) on the model grid and
    its label maps (K, X, Y, Z: region masks, or a patch's classes), transformed together and
    returned in their dtypes; the same seed gives the same result, and the global torch random
    stream (dropout, sampling) is left as it was."""

    def __init__(self, level: str, spacing_mm: tuple[float, ...], normalisation: str, renormalise: bool = True) -> None:
        """``renormalise``: normalise the result again as the runtime normalises a case (whole
        volumes); a patch keeps its volume's scale (its own statistics are not the volume's)."""
        if level not in LEVELS:
            raise ValueError(f"augment must be one of {LEVELS}, not {level!r}")
        self.level, self.spacing, self.normalisation = level, tuple(float(s) for s in spacing_mm), normalisation
        self.renormalise = renormalise
        self.transform = None if level == "none" else _transform(level, self.spacing)

    def __call__(self, image: np.ndarray, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        if self.transform is None:
            return image, labels
        import torch
        import torchio as tio

        affine = np.diag([*self.spacing, 1.0])
        image = np.array(image, dtype=np.float32)  # a writable copy (training volumes are read-only maps)
        labels = np.asarray(labels)

        def label_map(array: np.ndarray):  # noqa: ANN202 - a torchio.LabelMap
            return tio.LabelMap(tensor=torch.from_numpy(array.astype(np.uint8)), affine=affine)

        # the brain mask travels as a label map: spatial transforms move it, intensity ones do not
        subject = tio.Subject(image=tio.ScalarImage(tensor=torch.from_numpy(image), affine=affine),
                              labels=label_map(labels), brain=label_map(np.any(image != 0, axis=0)[None]))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            out = self.transform(subject)
        moved = out["image"].data.numpy().astype(np.float32)
        if self.normalisation == "minmax":
            moved = np.maximum(moved, 0.0)  # min-max inputs have no negative values
        moved = np.where(out["brain"].data.numpy().astype(bool), moved, 0.0).astype(np.float32)
        if self.renormalise:
            moved = normalise(moved, self.normalisation)
        return moved, out["labels"].data.numpy().astype(labels.dtype)
