"""Uncertainty-guided refinement: a cheap model everywhere, an expensive 3D model only where the
cheap one is unsure, numpy only.

After Z. Yang et al., "A voxel-wise uncertainty-guided framework for glioma segmentation using
spherical projection-based U-Net and localized refinement" (the seed of this stage), per region
(ET, TC, WT) on the model grid:

1. the guide (a 2D model's spherical-projection ensemble, or a bundle's view ensemble) gives a
   probability p2D and its members; the uncertainty is the Shannon entropy of the members'
   probabilities binned into 100 bins (:func:`binned_entropy`);
2. a kernel search (:func:`search_kernels`) picks the cubes of highest summed uncertainty: cubes
   of 32 mm for ET and TC and 64 mm for WT (the paper's sizes, from median tumour extents),
   best first, a cube dropped when it overlaps one already chosen by more than 40 % of its
   volume, until no cube left holds enough uncertainty (the stop threshold, here a share of the
   largest possible entropy per voxel) or ``max_kernels`` are chosen;
3. the 3D model runs only on one patch centred on each chosen cube (a cube larger than the patch
   is tiled), with its mirrored copies; where cubes overlap their predictions are averaged, as
   in the paper (:func:`spikeseg.runtime.sliding.cube_predictions`);
4. inside a region's cubes the two are fused as sigmoid(w2D p2D + w3D p3D + b), with weights
   fitted at export by particle swarm optimisation (``spikeseg export --refine-guide``) and
   stored in the 3D bundle; elsewhere p2D stands.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spikeseg.runtime.ensemble import sigmoid
from spikeseg.runtime.errors import InputError
from spikeseg.runtime.labels import REGIONS

BINS = 100
KERNEL_MM: dict[str, float] = {"ET": 32.0, "TC": 32.0, "WT": 64.0}
OVERLAP_CAP = 0.4
#: a cube is refined while its mean voxel entropy is at least this share of the largest possible
#: (log2 of the member count), and at most MAX_KERNELS per region. The paper stops when the
#: remaining cubes' uncertainty "approached a predefined minimum threshold" without giving it.
#: Chosen on the demo's fit (validation) cases: these kept the fused Dice of a lower stop and
#: more kernels on less of the brain (docs/results/2026-12-06-lab-record.md).
STOP_SHARE = 0.1
MAX_KERNELS = 4
GUIDE_MODES = ("views", "projections")
REFINEMENT_VERSION = 1


def to_bins(prob: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] to their bin (0..99) of 100 equal bins, as uint8."""
    return np.minimum((np.asarray(prob, np.float32) * BINS).astype(np.int16), BINS - 1).astype(np.uint8)


def binned_entropy(bins: np.ndarray) -> np.ndarray:
    """Shannon entropy (bits) over the first axis of (K, ...) bin indices: per voxel, of the
    frequencies of the bins its K members fall in. 0 when all agree; at most log2(min(K, 100)).
    By sorting, so the cost is K log K per voxel whatever the bin count."""
    k = bins.shape[0]
    s = np.sort(bins, axis=0)
    new = np.ones(s.shape, bool)
    new[1:] = s[1:] != s[:-1]
    idx = np.arange(k).reshape((k,) + (1,) * (s.ndim - 1))
    start = np.maximum.accumulate(np.where(new, idx, 0), axis=0)
    last = np.ones(s.shape, bool)
    last[:-1] = new[1:]
    end = np.flip(np.minimum.accumulate(np.flip(np.where(last, idx, k - 1), 0), axis=0), 0)
    run = (end - start + 1).astype(np.float32) / k  # each member's bin frequency
    return (-np.log2(run).sum(axis=0) / k).astype(np.float32)


def box_sums(volume: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    """Sum of ``volume`` in every position of a box of ``size`` (an integral volume): shape
    ``volume.shape - size + 1``; the sum of the box starting at (i, j, k) is at (i, j, k)."""
    c = np.zeros(tuple(n + 1 for n in volume.shape), np.float64)
    c[1:, 1:, 1:] = volume.astype(np.float64).cumsum(0).cumsum(1).cumsum(2)
    a, b, d = size
    return (c[a:, b:, d:] - c[:-a, b:, d:] - c[a:, :-b, d:] - c[a:, b:, :-d]
            + c[:-a, :-b, d:] + c[:-a, b:, :-d] + c[a:, :-b, :-d] - c[:-a, :-b, :-d])


def search_kernels(uncertainty: np.ndarray, size: tuple[int, int, int], overlap_cap: float = OVERLAP_CAP,
                   stop_sum: float = 0.0, max_kernels: int = MAX_KERNELS) -> list[tuple[int, int, int]]:
    """Starts of the chosen cubes, best first: the position of the largest summed uncertainty,
    then the next largest among positions whose cube overlaps no chosen cube by more than
    ``overlap_cap`` of its volume, while the sum is above ``stop_sum`` (and positive)."""
    size = tuple(min(s, n) for s, n in zip(size, uncertainty.shape))
    sums = box_sums(uncertainty, size)
    limit = overlap_cap * float(np.prod(size))
    chosen: list[tuple[int, int, int]] = []
    while len(chosen) < max_kernels:
        flat = int(np.argmax(sums))
        best = float(sums.flat[flat])
        if not best > max(stop_sum, 0.0):
            break
        at = np.unravel_index(flat, sums.shape)
        chosen.append(tuple(int(i) for i in at))
        # every position whose cube overlaps this one by more than the cap is out
        lo = [max(i - s + 1, 0) for i, s in zip(at, size)]
        hi = [min(i + s, n) for i, s, n in zip(at, size, sums.shape)]
        per_axis = [np.maximum(s - np.abs(np.arange(l, h) - i), 0) for l, h, i, s in zip(lo, hi, at, size)]
        overlap = per_axis[0][:, None, None] * per_axis[1][None, :, None] * per_axis[2][None, None, :]
        window = sums[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        window[overlap > limit] = -np.inf
    return chosen


def cubes_mask(shape: tuple[int, ...], starts: list[tuple[int, int, int]], size: tuple[int, int, int]) -> np.ndarray:
    """The union of the cubes as a bool mask of ``shape``."""
    mask = np.zeros(shape, bool)
    for st in starts:
        mask[tuple(slice(s, s + k) for s, k in zip(st, size))] = True
    return mask


def kernel_voxels(spacing_mm: tuple[float, ...], kernel_mm: float) -> tuple[int, int, int]:
    """A cube of ``kernel_mm`` on a grid of ``spacing_mm``, in voxels (at least 1)."""
    return tuple(max(int(round(kernel_mm / s)), 1) for s in spacing_mm)


@dataclass(frozen=True)
class Fusion:
    """sigmoid(w2d p2D + w3d p3D + b) for one region."""

    w2d: float
    w3d: float
    b: float

    def __call__(self, p2d: np.ndarray, p3d: np.ndarray) -> np.ndarray:
        return sigmoid(self.w2d * p2d + self.w3d * p3d + self.b)


def fuse_refined(p2d: np.ndarray, p3d: np.ndarray, masks: np.ndarray, fusion: dict[str, Fusion]) -> np.ndarray:
    """(3, X, Y, Z): p2D, with each region's cubes (``masks[r]``) replaced by the fused value,
    then nested again (TC at least ET, WT at least TC). Why: the regions are nested by definition
    and the label map already resolves a conflict that way (ET wins), but fusing each region's
    cubes on its own left 8-13 % of the demo's ET outside TC in the probabilities, which the QC
    verdict then rightly called implausible."""
    out = p2d.astype(np.float32, copy=True)
    for r, name in enumerate(REGIONS):
        m = masks[r]
        out[r][m] = fusion[name](p2d[r][m], p3d[r][m])
    np.maximum(out[1], out[0], out=out[1])
    np.maximum(out[2], out[1], out=out[2])
    return out


@dataclass(frozen=True)
class RefinementSpec:
    """One fitted guide/refiner pair, as stored in the 3D bundle's manifest ("refinement")."""

    guide_sha256: str
    guide_architecture: str
    mode: str                      # "views" (the guide's view ensemble) or "projections"
    views: tuple[str, ...]         # the guide's views run
    projections: int               # spherical projections per view (mode "projections"), else 0
    fusion: dict[str, Fusion]
    cap_degrees: float = 90.0      # the projections' spherical cap (see spikeseg.runtime.projections)
    kernel_mm: dict[str, float] = field(default_factory=lambda: dict(KERNEL_MM))
    overlap_cap: float = OVERLAP_CAP
    stop_share: float = STOP_SHARE
    max_kernels: int = MAX_KERNELS
    fit: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"version": REFINEMENT_VERSION,
                "guide": {"sha256": self.guide_sha256, "architecture": self.guide_architecture, "mode": self.mode,
                          "views": list(self.views), "projections": self.projections,
                          "projection_cap_degrees": self.cap_degrees},
                "uncertainty": f"Shannon entropy (bits) of the guide members' probabilities in {BINS} bins",
                "kernel_mm": self.kernel_mm, "overlap_cap": self.overlap_cap, "stop_share": self.stop_share,
                "max_kernels": self.max_kernels,
                "fusion": {r: {"w2d": f.w2d, "w3d": f.w3d, "b": f.b} for r, f in self.fusion.items()},
                "fit": self.fit}

    @staticmethod
    def json_schema() -> dict[str, Any]:
        from spikeseg.runtime import schema as js

        fusion = js.obj({"w2d": js.number(), "w3d": js.number(), "b": js.number()}, required=("w2d", "w3d", "b"))
        return js.obj({
            "version": {"const": REFINEMENT_VERSION},
            "guide": js.obj({"sha256": js.string(pattern=r"^[0-9a-f]{64}$"), "architecture": js.string(),
                             "mode": js.string(GUIDE_MODES), "views": js.array(js.string()),
                             "projections": js.integer(0), "projection_cap_degrees": js.number(0)},
                            required=("sha256", "architecture", "mode", "views", "projections",
                                      "projection_cap_degrees")),
            "uncertainty": js.string(), "kernel_mm": js.mapping(js.number(0), keys=REGIONS),
            "overlap_cap": js.number(0, 1), "stop_share": js.number(0), "max_kernels": js.integer(1),
            "fusion": js.mapping(fusion, keys=REGIONS), "fit": js.ANY_OBJECT},
            required=("version", "guide", "fusion", "kernel_mm", "overlap_cap", "stop_share", "max_kernels"))

    @classmethod
    def parse(cls, d: Any, source: str | Path) -> "RefinementSpec":
        try:
            if d.get("version") != REFINEMENT_VERSION:
                raise InputError(source, f"refinement record version {d.get('version')!r}; this spikeseg reads "
                                         f"version {REFINEMENT_VERSION}: export the 3D bundle again")
            g = d["guide"]
            if g["mode"] not in GUIDE_MODES:
                raise InputError(source, f"unknown refinement guide mode {g['mode']!r}; known: {GUIDE_MODES}")
            fusion = {r: Fusion(float(d["fusion"][r]["w2d"]), float(d["fusion"][r]["w3d"]), float(d["fusion"][r]["b"]))
                      for r in REGIONS}
            return cls(str(g["sha256"]), str(g["architecture"]), str(g["mode"]), tuple(g["views"]),
                       int(g["projections"]), fusion, float(g["projection_cap_degrees"]),
                       {r: float(d["kernel_mm"][r]) for r in REGIONS},
                       float(d["overlap_cap"]), float(d["stop_share"]), int(d["max_kernels"]), dict(d.get("fit", {})))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(source, f"malformed refinement record: {type(exc).__name__} {exc}") from exc


@dataclass(frozen=True)
class Cubes:
    """The cubes chosen for one case, per region, and their union."""

    starts: dict[str, list[tuple[int, int, int]]]
    sizes: dict[str, tuple[int, int, int]]
    masks: np.ndarray   # (3, X, Y, Z) bool, per region
    union: np.ndarray   # (X, Y, Z) bool

    def listed(self) -> list[tuple[tuple[int, int, int], tuple[int, int, int]]]:
        """Every region's cubes as (start, size)."""
        return [(st, self.sizes[r]) for r, starts in self.starts.items() for st in starts]

    def summary(self, brain: np.ndarray) -> dict[str, Any]:
        n_brain = max(int(brain.sum()), 1)
        return {"kernels": {r: len(v) for r, v in self.starts.items()},
                "kernel_voxels": {r: list(v) for r, v in self.sizes.items()},
                "fraction_of_brain_refined": float((self.union & brain).sum()) / n_brain,
                "fraction_of_grid_refined": float(self.union.mean())}


def choose_cubes(entropy: np.ndarray, spacing_mm: tuple[float, ...], spec: RefinementSpec,
                 members: int) -> Cubes:
    """Per region, the cubes to refine, from (3, X, Y, Z) entropies of ``members`` members."""
    top = float(np.log2(min(max(members, 2), BINS)))
    starts, sizes = {}, {}
    masks = np.zeros(entropy.shape, bool)
    for r, name in enumerate(REGIONS):
        size = tuple(min(k, n) for k, n in zip(kernel_voxels(spacing_mm, spec.kernel_mm[name]), entropy.shape[1:]))
        stop = spec.stop_share * top * float(np.prod(size))
        starts[name] = search_kernels(entropy[r], size, spec.overlap_cap, stop, spec.max_kernels)
        sizes[name] = size
        masks[r] = cubes_mask(entropy.shape[1:], starts[name], size)
    return Cubes(starts, sizes, masks, masks.any(axis=0))
