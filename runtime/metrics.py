"""Segmentation and calibration metrics (numpy/scipy only), checked against BraTS_evaluation.

Empty-mask rule (documented choice, counted in every table): when reference and prediction
are both empty for a region, Dice and HD95 are NaN ("not defined") and the case is left out of
that region's mean, as the current official BraTS package does; the number of such cases is
reported beside the mean. When exactly one of them is empty, Dice is 0 and HD95 is the
penalty 373.13 mm (the diagonal of the 240x240x155 mm BraTS cube).

HD95 is the 95th percentile of the pooled symmetric surface distances (both directions in one
list), in mm, using the voxel spacing; surfaces are the mask voxels with a 6-connected
background neighbour, as in panoptica and medpy.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
from scipy import ndimage

from spikeseg.runtime.labels import REGIONS

HD95_PENALTY_MM = float(math.sqrt(240**2 + 240**2 + 155**2))  # 373.13


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    p, r = pred.astype(bool), ref.astype(bool)
    denom = int(p.sum()) + int(r.sum())
    if denom == 0:
        return math.nan
    return 2.0 * int(np.logical_and(p, r).sum()) / denom


def _surface(mask: np.ndarray) -> np.ndarray:
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: Iterable[float]) -> np.ndarray:
    """Distances (mm) from every surface voxel of ``a`` to the nearest surface voxel of ``b``."""
    spacing = tuple(float(s) for s in spacing)
    sa, sb = _surface(a), _surface(b)
    # Work in the bounding box of both masks plus a margin: exact, and far cheaper than full volume.
    both = np.argwhere(a | b)
    lo = np.maximum(both.min(0) - 1, 0)
    hi = np.minimum(both.max(0) + 2, a.shape)
    box = tuple(slice(int(l), int(h)) for l, h in zip(lo, hi))
    dist = ndimage.distance_transform_edt(~sb[box], sampling=spacing)
    return dist[sa[box]]


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Iterable[float]) -> float:
    p, r = pred.astype(bool), ref.astype(bool)
    np_, nr = bool(p.any()), bool(r.any())
    if not np_ and not nr:
        return math.nan
    if np_ != nr:
        return HD95_PENALTY_MM
    d = np.concatenate([surface_distances(p, r, spacing), surface_distances(r, p, spacing)])
    return float(np.percentile(d, 95))


def region_dice(prob: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Dice per nested region of (3, ...) probabilities thresholded at 0.5 against (3, ...) masks,
    a region empty in both counting as 1 (correctly empty): the convention of model selection
    and of the INT8 accuracy check, where a NaN would drop the case the model got right."""
    scores = {}
    for i, region in enumerate(REGIONS):
        d = dice(prob[i] >= 0.5, target[i])
        scores[region] = 1.0 if math.isnan(d) else d
    return scores


def region_scores(prob: np.ndarray, ref: np.ndarray, spacing: Iterable[float]) -> dict[str, float]:
    """``dice_<region>`` and ``hd95_<region>`` of (3, ...) probabilities thresholded at 0.5 against
    (3, ...) masks, NaN where a region is empty in both (the official rule, unlike
    :func:`region_dice`): what the benchmarks score every case by."""
    scores = {}
    for i, region in enumerate(REGIONS):
        pred = prob[i] >= 0.5
        scores[f"dice_{region}"] = dice(pred, ref[i])
        scores[f"hd95_{region}"] = hd95(pred, ref[i], spacing)
    return scores


def undefined_regions(per_case: dict[str, list[float]]) -> int:
    """Region-case pairs left out of the means (Dice NaN: the region empty in both masks)."""
    return int(sum(math.isnan(x) for region in REGIONS for x in per_case[f"dice_{region}"]))


def sensitivity(pred: np.ndarray, ref: np.ndarray) -> float:
    r = ref.astype(bool)
    n = int(r.sum())
    return math.nan if n == 0 else int(np.logical_and(pred.astype(bool), r).sum()) / n


def specificity(pred: np.ndarray, ref: np.ndarray) -> float:
    neg = ~ref.astype(bool)
    n = int(neg.sum())
    return math.nan if n == 0 else int(np.logical_and(~pred.astype(bool), neg).sum()) / n


def region_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Iterable[float]) -> dict[str, float]:
    return {"dice": dice(pred, ref), "hd95": hd95(pred, ref, spacing),
            "sensitivity": sensitivity(pred, ref), "specificity": specificity(pred, ref)}


_EPS = 1e-7


def nll(prob: np.ndarray, target: np.ndarray) -> float:
    """Mean binary negative log-likelihood over all voxels and regions (the paper's NLL)."""
    p = np.clip(prob.astype(np.float64), _EPS, 1 - _EPS)
    t = target.astype(bool)
    return float(-np.mean(np.where(t, np.log(p), np.log1p(-p))))


def brier(prob: np.ndarray, target: np.ndarray) -> float:
    return float(np.mean((prob.astype(np.float64) - target.astype(np.float64)) ** 2))


def ece(prob: np.ndarray, target: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error of binary probabilities, equal-width bins over [0, 1]."""
    p = prob.astype(np.float64).ravel()
    t = target.astype(np.float64).ravel()
    idx = np.minimum((p * bins).astype(np.int64), bins - 1)
    count = np.bincount(idx, minlength=bins)
    conf = np.bincount(idx, weights=p, minlength=bins)
    acc = np.bincount(idx, weights=t, minlength=bins)
    nz = count > 0
    return float(np.sum(np.abs(conf[nz] - acc[nz])) / p.size)
