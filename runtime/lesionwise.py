"""BraTS 2023 lesion-wise Dice and HD95 (numpy/scipy only).

The rules of the official BraTS 2023 evaluation (Saluja et al., github.com/rachitsaluja/
BraTS-2023-Metrics, ``eval.py``), which rank the 2023+ challenges:

1. Connected components (26-connectivity) of the reference and of the prediction, per region.
2. Reference lesions closer than the dilation are one lesion: the reference is dilated
   (``dilation`` iterations of the 18-connected structure), and each reference voxel takes the
   label of the dilated component it lies in. The reference itself does not grow.
3. Each reference lesion is matched to every predicted component that touches the lesion
   dilated the same way; its Dice and HD95 are computed against the union of those components
   (none: Dice 0, HD95 374 mm).
4. Lesions of at most ``min_volume_mm3`` are left out of the scores (a match with them still
   keeps a prediction from counting as false positive). Predicted components matched to no
   lesion are false positives: Dice 0, HD95 374 mm each.
5. Lesion-wise score = sum over scored lesions / (scored lesions + false positives); with
   neither, Dice 1 and HD95 0.

Challenge settings: dilation 3 and 50 mm^3 for glioma (GLI), SSA and PED; dilation 1 for MEN;
dilation 1 and 2 mm^3 for MET. One difference, stated: a lesion's HD95 here is
:func:`spikeseg.runtime.metrics.hd95` (pooled surface distances), where the official code takes
the larger of the two directed, surfel-weighted 95th percentiles; the two agree on exact and
missed lesions and differ by a fraction of a voxel otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
from scipy import ndimage

from spikeseg.runtime.metrics import dice, hd95

LESION_HD95_PENALTY_MM = 374.0
CHALLENGES: dict[str, tuple[int, float]] = {  # dilation iterations, minimum lesion volume (mm^3)
    "BraTS-GLI": (3, 50.0), "BraTS-SSA": (3, 50.0), "BraTS-PED": (3, 50.0),
    "BraTS-MEN": (1, 50.0), "BraTS-MET": (1, 2.0),
}
_CONNECT_26 = ndimage.generate_binary_structure(3, 3)
_DILATE_18 = ndimage.generate_binary_structure(3, 2)


@dataclass(frozen=True)
class LesionScores:
    dice: float
    hd95: float
    true_positives: int   # scored reference lesions with at least one matched component
    false_negatives: int  # scored reference lesions with none
    false_positives: int  # predicted components matched to no reference lesion


def _dilate(mask: np.ndarray, iterations: int) -> np.ndarray:
    return ndimage.binary_dilation(mask, structure=_DILATE_18, iterations=iterations)


def reference_lesions(ref: np.ndarray, dilation: int) -> tuple[np.ndarray, int]:
    """Reference voxels labelled by the dilated component they lie in (rule 2)."""
    dilated, n = ndimage.label(_dilate(ref, dilation), structure=_CONNECT_26)
    return np.where(ref, dilated, 0), int(n)


def lesion_wise(pred: np.ndarray, ref: np.ndarray, spacing: Iterable[float], dilation: int = 3,
                min_volume_mm3: float = 50.0) -> LesionScores:
    """Lesion-wise Dice and HD95 of one region's binary masks (rules in the module docstring)."""
    spacing = tuple(float(s) for s in spacing)
    pred, ref = pred.astype(bool), ref.astype(bool)
    voxel_mm3 = float(np.prod(spacing))
    lesions, _ = reference_lesions(ref, dilation)
    components, n_components = ndimage.label(pred, structure=_CONNECT_26)
    matched: set[int] = set()
    dices, hds, tp, fn = [], [], 0, 0
    for lesion_id, box in enumerate(ndimage.find_objects(lesions), start=1):
        if box is None:
            continue
        # the lesion dilated touches only a box grown by the dilation: work there
        grown = tuple(slice(max(s.start - dilation, 0), min(s.stop + dilation, n))
                      for s, n in zip(box, lesions.shape))
        lesion_box = lesions[grown] == lesion_id
        hits = np.unique(components[grown][_dilate(lesion_box, dilation)])
        hits = hits[hits != 0]
        matched.update(int(h) for h in hits)
        if lesion_box.sum() * voxel_mm3 <= min_volume_mm3:
            continue
        lesion = lesions == lesion_id
        found = np.isin(components, hits) if hits.size else np.zeros_like(pred)
        dices.append(dice(found, lesion))
        hds.append(hd95(found, lesion, spacing) if hits.size else LESION_HD95_PENALTY_MM)
        tp, fn = (tp + 1, fn) if hits.size else (tp, fn + 1)
    fp = n_components - len(matched)
    denominator = len(dices) + fp
    if denominator == 0:
        return LesionScores(1.0, 0.0, tp, fn, fp)
    return LesionScores(float(sum(dices)) / denominator,
                        (float(sum(hds)) + fp * LESION_HD95_PENALTY_MM) / denominator, tp, fn, fp)
