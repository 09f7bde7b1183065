"""Multi-view fusion and voxel-wise uncertainty (paper section 3.3), numpy only.

The view models' region probabilities, each already aligned to the same grid, are averaged
voxel-wise. Uncertainty is reported two ways:

- ``spread``: per region, the standard deviation of the views' probabilities (0 when they
  agree; at most 0.5). The saved uncertainty map is the largest spread over ET/TC/WT: the
  disagreement between views, i.e. the deep-ensemble estimate of epistemic uncertainty.
- ``entropy``: the binary predictive entropy of the fused probability, summed over regions
  (bits); high where the ensemble is unsure whatever the reason.

A single view gives no spread; callers say so rather than writing zeros.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logits to probabilities as float32; scipy's ``expit`` because ``1 / (1 + exp(-x))`` overflows
    (and warns on the console) for the large negative logits of air and background."""
    return expit(np.asarray(x, dtype=np.float32)).astype(np.float32, copy=False)


def fuse(view_probs: list[np.ndarray]) -> np.ndarray:
    """Mean of (3, X, Y, Z) probability maps; float32."""
    if not view_probs:
        raise ValueError("no view probabilities to fuse")
    acc = np.zeros_like(view_probs[0], dtype=np.float32)
    for p in view_probs:
        acc += p
    return acc / np.float32(len(view_probs))


def spread(view_probs: list[np.ndarray], mean: np.ndarray | None = None) -> np.ndarray:
    """(3, X, Y, Z) standard deviation across views, per region (``np.std``'s, ddof 0), one view
    at a time: stacking the views first held three more copies of them (0.5 GB at 1 mm).
    ``mean``: :func:`fuse` of the same maps, when the caller has it."""
    mean = fuse(view_probs) if mean is None else mean
    acc = np.zeros_like(mean, dtype=np.float32)
    for p in view_probs:
        d = np.subtract(p, mean, dtype=np.float32)
        np.square(d, out=d)
        acc += d
    acc /= np.float32(len(view_probs))
    return np.sqrt(acc, out=acc)
