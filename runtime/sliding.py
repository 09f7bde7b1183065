"""Sliding-window inference of a volume model (the ``patch-sliding-window`` execution), numpy only.

A 3D model trained on patches sees a whole case as overlapping patches. As nnU-Net does
(Isensee et al., Nature Methods 2021): patch positions evenly spaced so that neighbours overlap
by at least ``overlap``; each patch's class logits weighted by a Gaussian centred on the patch
(sigma = ``sigma_scale`` x the patch), because a convolutional network is least sure at a
patch's border, where it saw the least context; the weighted logits summed and divided by the
summed weights. Softmax over the classes (background, NCR, ED, ET) then gives the nested
regions: ET = p(ET), TC = p(NCR) + p(ET), WT = 1 - p(background).

Test-time augmentation: the case is also run mirrored along the spec's axes and each output
mirrored back; the copies' mean is the prediction and their spread (standard deviation, as
across the views of the slice models) the voxel-wise uncertainty.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable

import numpy as np

from spikeseg.runtime.bundle_spec import INPUT, LOGITS, WindowSpec


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start of every patch along an axis of ``size`` voxels: the first at 0, the last flush with
    the end, evenly spaced with steps of at most ``patch * (1 - overlap)`` (nnU-Net's rule)."""
    if size <= patch:
        return [0]
    target = max(patch * (1.0 - overlap), 1.0)
    n = math.ceil((size - patch) / target) + 1
    step = (size - patch) / (n - 1)
    return [int(round(step * i)) for i in range(n)]


def patch_boxes(shape: tuple[int, ...], window: WindowSpec) -> list[tuple[slice, slice, slice]]:
    """Every patch's box on a grid of ``shape`` (already at least the patch size)."""
    starts = [window_starts(n, p, window.overlap) for n, p in zip(shape, window.patch)]
    p0, p1, p2 = window.patch
    return [(slice(a, a + p0), slice(b, b + p1), slice(c, c + p2))
            for a in starts[0] for b in starts[1] for c in starts[2]]


def steps_per_case(shape: tuple[int, ...], window: WindowSpec) -> int:
    """Engine calls for one case: patches x mirrored copies."""
    padded = tuple(max(n, p) for n, p in zip(shape, window.patch))
    return len(patch_boxes(padded, window)) * len(window.flips)


@lru_cache(maxsize=4)
def gaussian_weight(patch: tuple[int, ...], sigma_scale: float) -> np.ndarray:
    """Separable Gaussian over the patch, 1 at its centre, never 0 (every voxel counts a little).
    Made once per patch shape (every copy of every case shares it), hence read-only."""
    w = np.ones((), np.float64)
    for p in patch:
        x = np.arange(p) - (p - 1) / 2.0
        w = np.multiply.outer(w, np.exp(-0.5 * (x / (sigma_scale * p)) ** 2))
    out = (w / w.max()).astype(np.float32)
    out.flags.writeable = False
    return out


def pad_to_patch(image: np.ndarray, patch: tuple[int, ...]) -> np.ndarray:
    """Zero-pad (C, X, Y, Z) at the far end of each axis smaller than the patch (0 is what
    background normalises to)."""
    pad = [(0, 0)] + [(0, max(p - n, 0)) for n, p in zip(image.shape[1:], patch)]
    return np.pad(image, pad) if any(hi for _, hi in pad) else image


def patch_feed(image: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    """The (1, C, d, h, w) engine input of one box of a padded (C, X, Y, Z) image."""
    return np.ascontiguousarray(image[(slice(None),) + box][None], dtype=np.float32)


def blended_logits(engine: Callable, window: WindowSpec, image: np.ndarray,
                   advance: Callable[[int], object] | None = None) -> np.ndarray:
    """(classes, X, Y, Z) Gaussian-blended class logits of one (C, X, Y, Z) image."""
    shape = image.shape[1:]
    padded = pad_to_patch(image, window.patch)
    weight = gaussian_weight(window.patch, window.sigma_scale)
    acc = np.zeros((len(window.classes),) + padded.shape[1:], np.float32)
    norm = np.zeros(padded.shape[1:], np.float32)
    for box in patch_boxes(padded.shape[1:], window):
        logits = engine({INPUT: patch_feed(padded, box)})[LOGITS][0]
        acc[(slice(None),) + box] += logits * weight
        norm[box] += weight
        if advance is not None:
            advance(1)
    acc /= norm
    return acc[(slice(None),) + tuple(slice(0, n) for n in shape)]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Over the first axis, stable."""
    e = np.exp(logits - logits.max(axis=0, keepdims=True))
    return (e / e.sum(axis=0, keepdims=True)).astype(np.float32)


def classes_to_regions(probs: np.ndarray) -> np.ndarray:
    """(background, NCR, ED, ET) probabilities to the nested regions (ET, TC, WT)."""
    return np.stack([probs[3], probs[1] + probs[3], 1.0 - probs[0]]).astype(np.float32)


def mirrored_predictions(engine: Callable, window: WindowSpec, image: np.ndarray,
                         advance: Callable[[int], object] | None = None) -> list[np.ndarray]:
    """(3, X, Y, Z) region probabilities of every mirrored copy, each mirrored back."""
    members = []
    for axes in window.flips:
        dims = tuple(1 + a for a in axes)
        copy = np.flip(image, dims) if dims else image
        regions = classes_to_regions(softmax(blended_logits(engine, window, copy, advance)))
        members.append(np.ascontiguousarray(np.flip(regions, dims)) if dims else regions)
    return members


def tiles(cubes: list[tuple[tuple[int, int, int], tuple[int, int, int]]],
          patch: tuple[int, ...]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The cubes, each larger than the patch along an axis split into equal tiles that fit."""
    out = []
    for start, size in cubes:
        splits = [-(-k // p) for k, p in zip(size, patch)]
        edges = [np.linspace(s, s + k, n + 1).round().astype(int) for s, k, n in zip(start, size, splits)]
        for a in range(splits[0]):
            for b in range(splits[1]):
                for c in range(splits[2]):
                    lo = (edges[0][a], edges[1][b], edges[2][c])
                    hi = (edges[0][a + 1], edges[1][b + 1], edges[2][c + 1])
                    out.append((tuple(int(x) for x in lo), tuple(int(h - l) for l, h in zip(lo, hi))))
    return out


def cube_steps(shape: tuple[int, ...], window: WindowSpec,
               cubes: list[tuple[tuple[int, int, int], tuple[int, int, int]]]) -> int:
    """Engine calls :func:`cube_predictions` makes: distinct centred patches x mirrored copies."""
    padded = tuple(max(n, p) for n, p in zip(shape, window.patch))
    boxes = {tuple(b.start for b in centred_box(st, sz, window.patch, padded)) for st, sz in tiles(cubes, window.patch)}
    return len(boxes) * len(window.flips)


def centred_box(start: tuple[int, ...], size: tuple[int, ...], patch: tuple[int, ...],
                grid: tuple[int, ...]) -> tuple[slice, slice, slice]:
    """The patch box centred on a cube (``start``, ``size``), moved inside the (padded) grid."""
    lo = [min(max(s + k // 2 - p // 2, 0), max(n - p, 0)) for s, k, p, n in zip(start, size, patch, grid)]
    return tuple(slice(a, a + p) for a, p in zip(lo, patch))


def cube_predictions(engine: Callable, window: WindowSpec, image: np.ndarray,
                     cubes: list[tuple[tuple[int, int, int], tuple[int, int, int]]],
                     advance: Callable[[int], object] | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """A volume model on chosen cubes only (uncertainty-guided refinement): each cube
    (start, size) is seen by one patch centred on it (the centre of a patch is where the model
    has the most context), every mirrored copy of the spec, a patch shared by several cubes run
    once. Returns the (3, X, Y, Z) region probabilities averaged over the cubes covering each
    voxel (0 elsewhere), how many cubes cover each voxel, and the engine calls made."""
    shape = image.shape[1:]
    padded = pad_to_patch(image, window.patch)
    acc = np.zeros((3,) + padded.shape[1:], np.float32)
    count = np.zeros(padded.shape[1:], np.float32)
    seen: dict[tuple[int, ...], np.ndarray] = {}
    for start, size in tiles(cubes, window.patch):
        box = centred_box(start, size, window.patch, padded.shape[1:])
        key = tuple(b.start for b in box)
        if key not in seen:
            feed = patch_feed(padded, box)
            members = []
            for axes in window.flips:
                dims = tuple(2 + a for a in axes)
                logits = engine({INPUT: np.ascontiguousarray(np.flip(feed, dims)) if dims else feed})[LOGITS]
                logits = np.flip(logits, dims)[0] if dims else logits[0]
                members.append(classes_to_regions(softmax(logits)))
                if advance is not None:
                    advance(1)
            seen[key] = np.mean(members, axis=0)
        cube = tuple(slice(s, s + k) for s, k in zip(start, size))
        inner = tuple(slice(c.start - b.start, c.stop - b.start) for c, b in zip(cube, box))
        acc[(slice(None),) + cube] += seen[key][(slice(None),) + inner]
        count[cube] += 1
    np.divide(acc, np.maximum(count, 1), out=acc)
    crop = tuple(slice(0, n) for n in shape)
    return acc[(slice(None),) + crop], count[crop], len(seen) * len(window.flips)
