"""The refinement's fusion weights, fitted at export by particle swarm optimisation.

Yang et al. fit sigmoid(w2D p2D + w3D p3D + b) per region by PSO (population 20, 50 iterations)
to maximise Dice on training data, with w2D, w3D >= 0. Here the same, on the 3D run's validation
cases (held out from the 3D model's training; its training cases would flatter it), with two
additions, both stated in the manifest: the swarm starts with two known points, "the guide
alone" (w3D = 0) and "the plain average", so the fit is never worse than either on the fit
cases; and Dice at 0.5 only fixes the boundary w2D p2D + w3D p3D + b = 0, not the scale, so a
small cross-entropy term (``NLL_WEIGHT``) picks the calibrated scale along that boundary.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from spikeseg.runtime.bundle import Bundle
from spikeseg.runtime.bundle_spec import ViewSpec
from spikeseg.runtime.errors import InputError
from spikeseg.runtime.guide import check_guide, refine, run_guide
from spikeseg.runtime.inference import Engine, OvEngine
from spikeseg.runtime.labels import REGIONS
from spikeseg.runtime.preprocess import PreprocessParams, load_model_space, model_space
from spikeseg.runtime.projections import CAP_DEGREES
from spikeseg.runtime.refine import GUIDE_MODES, MAX_KERNELS, STOP_SHARE, Fusion, RefinementSpec

PARTICLES, ITERATIONS = 20, 50
#: Clerc and Kennedy's constriction coefficients (inertia, cognitive, social)
INERTIA, COGNITIVE, SOCIAL = 0.7298, 1.49618, 1.49618
BOUNDS = np.array([[0.0, 20.0], [0.0, 20.0], [-20.0, 20.0]])  # w2D, w3D, b
NLL_WEIGHT = 1e-3
#: the view a projection guide runs (the paper projects axial slices)
PROJECTION_VIEW = "axial"
DEFAULT_PROJECTIONS = 16


def pso(objective: Callable[[np.ndarray], float], bounds: np.ndarray, seed: int, particles: int = PARTICLES,
        iterations: int = ITERATIONS, start: list[np.ndarray] | None = None) -> tuple[np.ndarray, float]:
    """Global-best particle swarm minimising ``objective`` inside ``bounds`` ((D, 2): low, high);
    ``start``: particles placed first (the rest uniform at random). Seeded: the same inputs give
    the same answer. Returns (best position, its value)."""
    rng = np.random.default_rng(seed)
    lo, hi = bounds[:, 0], bounds[:, 1]
    x = rng.uniform(lo, hi, size=(particles, len(lo)))
    for i, p in enumerate(start or []):
        x[i] = np.clip(p, lo, hi)
    v = rng.uniform(-(hi - lo), hi - lo, size=x.shape) * 0.1
    f = np.array([objective(p) for p in x])
    best_x, best_f = x.copy(), f.copy()
    g = int(np.argmin(f))
    for _ in range(iterations):
        r1, r2 = rng.random(x.shape), rng.random(x.shape)
        v = INERTIA * v + COGNITIVE * r1 * (best_x - x) + SOCIAL * r2 * (best_x[g] - x)
        v = np.clip(v, -(hi - lo) * 0.2, (hi - lo) * 0.2)
        x = np.clip(x + v, lo, hi)
        f = np.array([objective(p) for p in x])
        better = f < best_f
        best_x[better], best_f[better] = x[better], f[better]
        g = int(np.argmin(best_f))
    return best_x[g].copy(), float(best_f[g])


@dataclass
class RegionSamples:
    """One region on the fit cases: per case the voxels inside the region's cubes (p2D, p3D,
    target) and the true positives, predicted and reference voxels outside them (fixed by p2D)."""

    inside: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
    outside: list[tuple[float, float, float]]

    def dice(self, fusion: Fusion | None) -> float:
        """Mean Dice over the cases (a case with no tumour and no prediction scores 1);
        ``fusion`` None: p2D everywhere."""
        scores = []
        for (p2, p3, t), (tp, pred, ref) in zip(self.inside, self.outside):
            y = (fusion(p2, p3) if fusion is not None else p2) >= 0.5
            a, b, c = tp + float((y & t).sum()), pred + float(y.sum()), ref + float(t.sum())
            scores.append(1.0 if b + c == 0 else 2 * a / (b + c))
        return float(np.mean(scores))

    def nll(self, fusion: Fusion) -> float:
        """Mean binary cross-entropy of the fused probabilities inside the cubes, over the cases."""
        vals = []
        for p2, p3, t in self.inside:
            if t.size:
                q = np.clip(fusion(p2, p3), 1e-6, 1 - 1e-6)
                vals.append(float(-np.where(t, np.log(q), np.log(1 - q)).mean()))
        return float(np.mean(vals)) if vals else 0.0


def region_samples(cases: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], r: int) -> RegionSamples:
    """From per case (p2D (3, ...), p3D (3, ...), cube masks (3, ...), targets (3, ...) bool)."""
    inside, outside = [], []
    for p2d, p3d, masks, target in cases:
        m = masks[r]
        inside.append((p2d[r][m], p3d[r][m], target[r][m]))
        out_pred, out_ref = (p2d[r] >= 0.5) & ~m, target[r] & ~m
        outside.append((float((out_pred & out_ref).sum()), float(out_pred.sum()), float(out_ref.sum())))
    return RegionSamples(inside, outside)


def fit_fusion(samples: RegionSamples, seed: int) -> tuple[Fusion, dict[str, float]]:
    """PSO of (w2D, w3D, b) for one region; the record of what it found."""
    def loss(p: np.ndarray) -> float:
        fusion = Fusion(*map(float, p))
        return -samples.dice(fusion) + NLL_WEIGHT * samples.nll(fusion)

    guide_alone, average = np.array([12.0, 0.0, -6.0]), np.array([6.0, 6.0, -6.0])
    best, _ = pso(loss, BOUNDS, seed, start=[guide_alone, average])
    fusion = Fusion(*map(float, best))
    return fusion, {"dice_guide": samples.dice(None), "dice_average": samples.dice(Fusion(*average)),
                    "dice_fused": samples.dice(fusion)}


def fit_all(cases: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], seed: int
            ) -> tuple[dict[str, Fusion], dict[str, dict[str, float]]]:
    fusions, record = {}, {}
    for r, name in enumerate(REGIONS):
        fusions[name], record[name] = fit_fusion(region_samples(cases, r), seed + r)
    return fusions, record


def parse_guide(text: str) -> tuple[Path, str]:
    """``BUNDLE`` or ``BUNDLE:views`` / ``BUNDLE:projections`` (the default: views for a bundle
    of several views, projections for one)."""
    path, _, mode = text.rpartition(":") if text.rsplit(":", 1)[-1] in GUIDE_MODES else (text, "", "")
    return Path(path), mode


def fit_refinement(guide: Bundle, mode: str, projections: int, engine3d: Engine, spec3d: ViewSpec,
                   params3d: PreprocessParams, case_dirs: list[Path], source: str, threads: int, seed: int,
                   log: Callable[[str], object] = print, stop_share: float = STOP_SHARE,
                   max_kernels: int = MAX_KERNELS, cap_degrees: float = CAP_DEGREES) -> RefinementSpec:
    """Run guide and refiner on labelled cases exactly as ``spikeseg segment --refine`` does, and
    fit the fusion per region on what they give. ``stop_share``, ``max_kernels``: the kernel
    search's stop (:mod:`spikeseg.runtime.refine`), stored with the fit."""
    guide_path = guide.root
    check_guide(guide, params3d, guide_path)
    g = guide.preprocess
    mode = mode or ("views" if len(guide.views) > 1 else "projections")
    if mode == "views" and len(guide.views) < 2:
        raise InputError(guide_path, f"holds one view ({guide.views[0]}): a views guide needs two or more to "
                                     f"disagree; use {guide_path}:projections")
    views = guide.views if mode == "views" else [PROJECTION_VIEW if PROJECTION_VIEW in guide.views else guide.views[0]]
    count = projections if mode == "projections" else 0
    engines = {v: OvEngine(guide.model_file(v, "openvino", "fp32"), "fp32", threads) for v in views}
    provisional = RefinementSpec(guide.checksum, guide.architecture, mode, tuple(views), count,
                                 fusion={r: Fusion(6.0, 6.0, -6.0) for r in REGIONS}, cap_degrees=cap_degrees,
                                 stop_share=stop_share, max_kernels=max_kernels)
    samples, fractions, saved = [], [], []
    for d in case_dirs:
        prepared = load_model_space(d, g, label="required")
        image3d = prepared.image if params3d == g else model_space(prepared.case, params3d).image
        result = run_guide(engines, guide, views, prepared.image, count, entropy=True, cap_degrees=cap_degrees)
        refined = refine(result, engine3d, spec3d, image3d, provisional, g.spacing_mm)
        samples.append((result.prob, refined.result.prob, refined.cubes.masks, prepared.regions))
        fractions.append(refined.cubes.summary(np.any(prepared.image != 0, axis=0))["fraction_of_brain_refined"])
        saved.append(1.0 - refined.result.slices / refined.full_steps)
    fusions, record = fit_all(samples, seed)
    log(f"  refinement fit for {guide.architecture} ({mode}{f', {count} projections' if count else ''}) on "
        f"{len(case_dirs)} cases: " + ", ".join(f"{r} {100 * record[r]['dice_guide']:.1f} -> "
                                                  f"{100 * record[r]['dice_fused']:.1f}" for r in REGIONS)
        + f" Dice; {100 * np.mean(fractions):.0f} % of the brain refined")
    fit = {"cases": [Path(d).name for d in case_dirs], "source": source,
           "pso": {"particles": PARTICLES, "iterations": ITERATIONS, "seed": seed, "bounds": BOUNDS.tolist(),
                   "nll_weight": NLL_WEIGHT, "start": ["guide alone (12, 0, -6)", "average (6, 6, -6)"]},
           "dice": record, "mean_fraction_of_brain_refined": float(np.mean(fractions)),
           "mean_compute_saved": float(np.mean(saved)), "guide_path_at_fit": str(guide_path)}
    return replace(provisional, fusion=fusions, fit=fit)
