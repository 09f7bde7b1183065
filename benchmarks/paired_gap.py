"""How sure is a Dice gap between two models scored on the same few held-out cases?

A benchmark on 4 held-out cases gives a mean gap whose case-to-case spread can be as large as
the gap itself (ET in particular: a small region, scored per case). The gap is reported with a
paired percentile bootstrap interval over the cases (Efron & Tibshirani, *An Introduction to the
Bootstrap*, 1993, ch. 13): the cases are resampled with replacement, each model's score of a
case stays paired with the other's, and the interval is the 2.5th-97.5th percentile of the
resampled mean differences. With 4 cases there are only 35 distinct resamples, so the interval
is coarse; it says whether the gap is outside what the choice of cases alone would move.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np


@dataclass(frozen=True)
class Gap:
    mean: float  #: mean of reference - model over the cases
    low: float  #: lower end of the bootstrap interval
    high: float  #: upper end
    behind: int  #: cases where the model scores below the reference
    cases: int  #: cases where both scores are defined


def paired_gap(reference: Sequence[float], model: Sequence[float], level: float = 0.95,
               resamples: int = 10000, seed: int = 0) -> Gap:
    """``reference - model`` per case, its mean and a paired percentile bootstrap interval;
    deterministic for a seed. A case whose score is undefined (NaN: reference and prediction
    both empty, the official BraTS rule) for either model is left out, as the mean leaves it out."""
    ref, mod = np.asarray(reference, dtype=float), np.asarray(model, dtype=float)
    if ref.shape != mod.shape or ref.ndim != 1 or ref.size == 0:
        raise ValueError(f"paired scores need the same non-empty list of cases, got {ref.shape} and {mod.shape}")
    diff = (ref - mod)[~(np.isnan(ref) | np.isnan(mod))]
    if diff.size == 0:
        nan = float("nan")
        return Gap(nan, nan, nan, 0, 0)
    draws = np.random.default_rng(seed).integers(0, diff.size, size=(resamples, diff.size))
    means = diff[draws].mean(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return Gap(float(diff.mean()), float(low), float(high), int((diff > 0).sum()), int(diff.size))


def points(gap: Gap) -> str:
    """A gap as the tables print it: mean [interval] in Dice points, and cases behind / cases."""
    if gap.cases == 0:
        return "undefined"
    return f"{100 * gap.mean:.1f} [{100 * gap.low:.1f}, {100 * gap.high:.1f}] ({gap.behind}/{gap.cases})"


def gap_rows(pairs: Sequence[tuple[str, Mapping[str, Sequence[float]], Mapping[str, Sequence[float]]]],
             regions: Sequence[str], label: str = "model") -> list[str]:
    """Markdown table lines, one row per (label, reference scores, model scores), one gap cell per
    region, the scores per case under ``dice_<region>``: what every "Gap to the twin" prints."""
    lines = [f"| {label} | " + " | ".join(f"gap {r}" for r in regions) + " |", "|---|" + "---|" * len(regions)]
    for name, reference, model in pairs:
        cells = [points(paired_gap(reference[f"dice_{r}"], model[f"dice_{r}"])) for r in regions]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines
