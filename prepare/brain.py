"""Brain extraction that needs no download: the template's brain mask (the case is on the
template grid after registration), refined by intensity near its edge, then checked.

Near the template mask's edge (a few mm either side, where registration error and anatomy
differ) a voxel stays brain unless it looks like what surrounds a brain: empty (background, or
an input that was already skull-stripped), dark in T1 and T2 alike (bone; CSF is bright in T2),
or brighter in T1 than the brain's own brightest tissue (scalp fat, marrow).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from spikeseg.runtime.errors import InputError

#: Refinement reaches this far either side of the template mask's edge (mm).
EDGE_MM = 4.0
#: A brain mask outside this volume (mL) is refused: the template's is about 1,870 mL (brain and CSF).
VOLUME_RANGE_ML = (900.0, 2600.0)
#: The refined mask must overlap the template's this much (Dice); less means a failed registration.
MIN_TEMPLATE_DICE = 0.85


@dataclass(frozen=True)
class BrainMask:
    mask: np.ndarray
    volume_ml: float
    template_dice: float
    removed_ml: float


def _ball(radius_vox: int) -> np.ndarray:
    r = np.arange(-radius_vox, radius_vox + 1)
    return (r[:, None, None] ** 2 + r[None, :, None] ** 2 + r[None, None, :] ** 2) <= radius_vox ** 2


def extract(template_mask: np.ndarray, t1: np.ndarray, t2: np.ndarray, spacing_mm: float) -> BrainMask:
    """The brain mask on the template grid, from the registered T1 and T2 (RAS arrays)."""
    edge = max(1, int(round(EDGE_MM / spacing_mm)))
    ball = _ball(edge)
    mask0 = template_mask.astype(bool)
    core = ndimage.binary_erosion(mask0, ball)
    if core.sum() < 1000:
        raise InputError(None, "the template brain mask has almost no interior: the template is broken")
    band = mask0 & ~core
    t1_hi = float(np.percentile(t1[core], 99.5))
    t2_med = float(np.median(t2[core]))
    t1_med = float(np.median(t1[core]))
    empty = (t1 <= 0.02 * t1_med) & (t2 <= 0.02 * t2_med)
    bone = (t1 < 0.5 * t1_med) & (t2 < 0.5 * t2_med)
    fat = t1 > 1.05 * t1_hi
    brain = core | (band & ~(empty | bone | fat))
    brain = ndimage.binary_opening(brain, _ball(1))
    labels, n = ndimage.label(brain)
    if n > 1:  # the brain is one piece: keep the largest
        sizes = ndimage.sum_labels(brain, labels, index=np.arange(1, n + 1))
        brain = labels == (1 + int(np.argmax(sizes)))
    return checked(ndimage.binary_fill_holes(brain), mask0, spacing_mm)


def checked(brain: np.ndarray, template_mask: np.ndarray, spacing_mm: float) -> BrainMask:
    """A brain mask (the atlas's, or a tool's: :mod:`.strip`) measured against the registered
    template's and refused by :func:`check` if it covers too little, too much, or elsewhere."""
    brain, mask0 = brain.astype(bool), template_mask.astype(bool)
    voxel_ml = spacing_mm ** 3 / 1000.0
    volume = float(brain.sum()) * voxel_ml
    dice = 2.0 * float((brain & mask0).sum()) / max(float(brain.sum() + mask0.sum()), 1.0)
    result = BrainMask(brain, volume, dice, float((mask0 & ~brain).sum()) * voxel_ml)
    check(result)
    return result


def check(result: BrainMask) -> None:
    lo, hi = VOLUME_RANGE_ML
    if not lo <= result.volume_ml <= hi:
        raise InputError(None, f"brain mask of {result.volume_ml:.0f} mL, outside {lo:.0f}-{hi:.0f} mL: it "
                               f"covers too {'little' if result.volume_ml < lo else 'much'} (registration to the "
                               "template failed, or the scan does not show a whole adult head)")
    if result.template_dice < MIN_TEMPLATE_DICE:
        raise InputError(None, f"brain mask overlaps the registered template's by Dice {result.template_dice:.2f} "
                               f"(< {MIN_TEMPLATE_DICE}): the registration to the template probably failed")
