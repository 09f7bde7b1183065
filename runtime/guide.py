"""The stages around one case's models: the guide (a bundle's view ensemble, optionally each view
over spherical projections) and the refiner (a 3D bundle run only where the guide is unsure).

Segmentation, the export-time fusion fit and the refinement benchmark all go through
:func:`run_guide` and :func:`refine`, so what is fitted is what runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from spikeseg.runtime.bundle import Bundle
from spikeseg.runtime.bundle_spec import ViewSpec
from spikeseg.runtime.ensemble import fuse, spread
from spikeseg.runtime.errors import InputError
from spikeseg.runtime.inference import Engine, ViewResult, open_engine, run_view, steps_for
from spikeseg.runtime.preprocess import PreprocessParams, SpaceMap, from_view, to_native_space, to_view
from spikeseg.runtime.projections import CAP_DEGREES, projections_for
from spikeseg.runtime.qc import member_agreement
from spikeseg.runtime.refine import Cubes, RefinementSpec, binned_entropy, choose_cubes, fuse_refined, to_bins
from spikeseg.runtime.sliding import cube_predictions, cube_steps, steps_per_case


@dataclass(frozen=True)
class GuideResult:
    """A bundle's prediction on one case with its members' statistics, on the model grid."""

    prob: np.ndarray                 # (3, X, Y, Z) mean over the members
    spread: np.ndarray | None        # (3, X, Y, Z) std across members (None: one member)
    entropy: np.ndarray | None       # (3, X, Y, Z) binned Shannon entropy, bits (when asked for)
    members: int
    kind: str                        # what the members are: "views", "spherical projections", "mirrored copies"
    results: dict[str, ViewResult]   # per view; over projections, slices and counters summed

    def native(self, space: SpaceMap, prob: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """The probabilities (``prob``, e.g. refined, or the guide's own) and the uncertainty map
        (the largest spread over ET/TC/WT) on the case's native grid: what segment writes and
        what QC measures, computed one way."""
        native_prob = to_native_space(self.prob if prob is None else prob, space)
        unc = to_native_space(self.spread.max(axis=0)[None], space)[0] if self.spread is not None else None
        return native_prob, unc

    def agreement(self) -> float | None:
        """The view members' agreement on the whole tumour (:func:`~spikeseg.runtime.qc.member_agreement`);
        None where the members are not kept apart (one view, mirrored copies, projections)."""
        if self.kind != "views" or self.members < 2:
            return None
        return member_agreement([r.prob for r in self.results.values()])


def guide_steps(bundle: Bundle, views: list[str], image: np.ndarray, projections: int = 0) -> int:
    """Progress units :func:`run_guide` reports."""
    return sum(steps_for(bundle.view(v), image, v) for v in views) * max(projections, 1)


def _merged(results: list[ViewResult]) -> ViewResult:
    """One view's runs over several projections as one result: time, slices and counters summed."""
    first = results[0]
    total = lambda attr: {k: sum(getattr(r, attr)[k] for r in results) for k in getattr(first, attr)}  # noqa: E731
    return replace(first, seconds=sum(r.seconds for r in results), slices=sum(r.slices for r in results),
                   skipped=sum(r.skipped for r in results), ops=total("ops"), acts=total("acts"), mems=total("mems"))


def _projected_members(engine: Engine, spec: ViewSpec, image: np.ndarray, view: str, count: int,
                       cap_degrees: float, advance: Callable[[int], object] | None):
    """Yield (back-projected (3, X, Y, Z) probabilities, run result) per spherical projection."""
    seq = to_view(image, view)
    for projection in projections_for(seq, count, cap_degrees):
        res = run_view(engine, spec, from_view(projection.forward(seq), view), view, advance)
        yield from_view(projection.backward(to_view(res.prob, view)), view), res


def run_guide(engines: dict[str, Engine], bundle: Bundle, views: list[str], image: np.ndarray,
              projections: int = 0, advance: Callable[[int], object] | None = None,
              entropy: bool = False, cap_degrees: float = CAP_DEGREES) -> GuideResult:
    """Run the bundle's ``views`` on a (4, X, Y, Z) model-grid image: each view once, or over
    ``projections`` spherical projections in its slice plane. The members (views x projections)
    are accumulated one at a time (sum, sum of squares, 1-byte bins): a member is 3 grid-sized
    float maps, and the paper ran 1024 of them."""
    if projections <= 0:
        results = {v: run_view(engines[v], bundle.view(v), image, v, advance=advance) for v in views}
        probs = [r.prob for r in results.values()]
        mean = fuse(probs)
        if len(probs) > 1:
            return GuideResult(mean, spread(probs, mean),
                               binned_entropy(np.stack([to_bins(p) for p in probs])) if entropy else None,
                               len(probs), "views", results)
        only = next(iter(results.values()))  # one view, or a volume model with its mirrored copies
        window = bundle.view(views[0]).window
        if only.spread is not None and window is not None:
            return GuideResult(mean, only.spread, None, len(window.flips), "mirrored copies", results)
        return GuideResult(mean, None, None, 1, "views", results)
    if any(bundle.view(v).window is not None for v in views):
        raise InputError(bundle.root, "spherical projections are for slice models; this bundle holds a volume model")
    total = sq = None
    bins, results, n = [], {}, 0
    for v in views:
        runs = []
        for prob, res in _projected_members(engines[v], bundle.view(v), image, v, projections, cap_degrees, advance):
            p = prob.astype(np.float32, copy=False)
            total = p.copy() if total is None else total + p
            sq = p * p if sq is None else sq + p * p
            if entropy:
                bins.append(to_bins(p))
            runs.append(res)
            n += 1
        results[v] = _merged(runs)
    mean = total / np.float32(n)
    std = np.sqrt(np.maximum(sq / np.float32(n) - mean * mean, 0.0)).astype(np.float32) if n > 1 else None
    return GuideResult(mean, std, binned_entropy(np.stack(bins)) if entropy else None, n, "spherical projections",
                       results)


@dataclass(frozen=True)
class Refined:
    prob: np.ndarray      # (3, X, Y, Z) fused probabilities on the model grid
    cubes: Cubes
    result: ViewResult    # the refiner's run: slices = patches x copies actually run
    full_steps: int       # what the sliding window everywhere costs, in the same unit


def refine(guide: GuideResult, engine: Engine, spec: ViewSpec, image: np.ndarray, refinement: RefinementSpec,
           spacing_mm: tuple[float, ...], advance: Callable[[int], object] | None = None,
           plan: Callable[[int], object] | None = None) -> Refined:
    """Choose the cubes from the guide's entropy, run the 3D model on one patch centred on each
    (``image``: the case on the model grid as the 3D bundle normalises it), fuse inside them.
    ``plan(n)`` is told the engine calls ahead once the cubes are chosen (a progress bar's total)."""
    assert guide.entropy is not None and spec.window is not None
    cubes = choose_cubes(guide.entropy, spacing_mm, refinement, guide.members)
    listed = cubes.listed()
    if plan is not None:
        plan(cube_steps(image.shape[1:], spec.window, listed))
    t = time.perf_counter()
    p3d, _, calls = cube_predictions(engine, spec.window, image, listed, advance)
    res = ViewResult("refiner", p3d, time.perf_counter() - t, calls)
    return Refined(fuse_refined(guide.prob, p3d, cubes.masks, refinement.fusion), cubes, res,
                   steps_per_case(image.shape[1:], spec.window))


def check_guide(guide: Bundle, grid: PreprocessParams, where: Path) -> None:
    """A guide must be a slice-model bundle on the 3D model's grid (``grid``: its preprocessing;
    normalisation may differ): refused naming ``where`` otherwise."""
    if any(guide.view(v).window is not None for v in guide.views):
        raise InputError(guide.root, "the guide of a refinement must be a slice-model bundle (2D views)")
    g = guide.preprocess
    if g.crop_mm != grid.crop_mm or g.spacing_mm != grid.spacing_mm:
        raise InputError(where, f"the 3D model's grid ({grid.crop_mm} mm at {grid.spacing_mm} mm) differs from the "
                                f"guide's ({g.crop_mm} at {g.spacing_mm}): refinement needs one grid")


def fitted_refinement(bundle: Bundle, guide: Bundle, mode: str | None = None, views: list[str] | None = None,
                      projections: int = 0) -> RefinementSpec:
    """The 3D ``bundle``'s fit for ``guide`` (matched by the guide's checksum, and ``mode`` when
    given), refused with the reason when there is none, the grids differ, or ``views`` /
    ``projections`` ask for other members than the fit was made with."""
    if len(bundle.views) != 1 or bundle.view(bundle.views[0]).window is None:
        raise InputError(bundle.root, "--refine needs a 3D (volume) bundle, e.g. one of unet3d-lite; "
                                      f"this one holds {bundle.architecture} views {bundle.views}")
    check_guide(guide, bundle.preprocess, bundle.root)
    fits = list(bundle.manifest.refinement)
    match = [f for f in fits if f.guide_sha256 == guide.checksum and (mode is None or f.mode == mode)]
    if not match:
        have = ", ".join(f"{f.guide_architecture} {f.guide_sha256[:12]} ({f.mode})" for f in fits) or "none"
        raise InputError(bundle.root, f"holds no fusion fitted for the guide bundle {guide.root} "
                                      f"(sha256 {guide.checksum[:12]}{', mode ' + mode if mode else ''}); "
                                      f"fits it has: {have}. Export it with --refine-guide {guide.root}")
    fit = match[0]
    if views is not None and list(views) != list(fit.views) or projections and projections != fit.projections:
        raise InputError(bundle.root, f"its fusion was fitted on views {list(fit.views)} with {fit.projections} "
                                      f"projections; --views / --projections cannot change that")
    return fit


class Refiner:
    """A 3D bundle opened as the refiner of a guide bundle: its fit for that guide
    (:func:`fitted_refinement`) and a compiled engine."""

    def __init__(self, bundle: Bundle, guide: Bundle, backend: str, precision: str, threads: int,
                 mode: str | None = None, views: list[str] | None = None, projections: int = 0) -> None:
        self.bundle, self.spec = bundle, fitted_refinement(bundle, guide, mode, views, projections)
        self.view = bundle.views[0]
        self.view_spec = bundle.view(self.view)
        self.params = bundle.preprocess
        t0 = time.perf_counter()
        self.engine = open_engine(bundle, self.view, backend, precision, threads)
        self.compile_seconds = time.perf_counter() - t0
