"""Preprocessing as data in, data out, driven by one JSON-serialisable record.

Training saves a :class:`PreprocessParams` with every model and the runtime reads it back, so
both sides crop, resample and normalise identically (the nnU-Net "plans" idea). All arrays
here are in RAS with the spatial axes last: ``(C, X, Y, Z)``.

The paper crops the central 160x192x152 mm box of the 240x240x155 BraTS volume and min-max
scales each modality to [0, 1] over the whole volume. Models may run at a coarser spacing
than the input (2 mm for the CPU presets); :func:`to_model_space` and :func:`to_native_space`
are exact inverses in geometry, so outputs land on the input grid voxel for voxel.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spikeseg.runtime.case_io import MODALITIES, Case, load_case
from spikeseg.runtime.errors import InputError
from spikeseg.runtime.labels import labels_to_regions

VIEWS: dict[str, int] = {"sagittal": 0, "coronal": 1, "axial": 2}
#: ``zscore-clip``: the cascaded multi-encoder U-Net's (Aliyev & Gardashova 2025, after Isensee
#: et al. 2018): brain z-score clipped to [-5, 5] and shifted to [0, 10], background 0
NORMALISATIONS = ("minmax", "zscore", "zscore-clip")
CLIP_Z = 5.0
PARAMS_VERSION = 1
#: Largest crop box in native voxels: the box is cut and normalised at the input's resolution
#: (4 float32 channels: 640 MB at this bound; the paper's 160x192x152 mm box at 0.5 mm is 37 M).
#: A 16^3 case at 0.2 mm once asked for 800x960x760 voxels, 8.7 GiB, twice.
MAX_BOX_VOXELS = 40_000_000
#: What a preprocessing record may say: a box up to 512 mm a side, a model grid spacing of
#: 0.2-20 mm and at most 512 voxels a side (a manifest is input: a negative crop gave an empty
#: segmentation with exit 0, a spacing of 0 a division by zero).
_CROP_RANGE_MM = (1.0, 512.0)
_SPACING_RANGE_MM = (0.2, 20.0)
_MAX_GRID = 512


@dataclass(frozen=True)
class PreprocessParams:
    """How a model sees a case. Saved beside every model; change it and retrain."""

    crop_mm: tuple[float, float, float] = (160.0, 192.0, 152.0)
    spacing_mm: tuple[float, float, float] = (2.0, 2.0, 2.0)
    normalisation: str = "minmax"
    modalities: tuple[str, ...] = MODALITIES  # the input channels, in order
    version: int = PARAMS_VERSION

    def __post_init__(self) -> None:
        for name, values, (lo, hi) in (("crop_mm", self.crop_mm, _CROP_RANGE_MM),
                                       ("spacing_mm", self.spacing_mm, _SPACING_RANGE_MM)):
            if not isinstance(values, tuple) or len(values) != 3 or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi
                    for v in values):
                raise ValueError(f"{name} must be three numbers from {lo} to {hi} mm, not {values!r}")
        if not all(2 <= n <= _MAX_GRID for n in self.model_shape):
            raise ValueError(f"crop_mm / spacing_mm give a model grid of {self.model_shape} voxels; "
                             f"expected 2 to {_MAX_GRID} a side")
        if isinstance(self.version, bool) or not isinstance(self.version, int):
            raise ValueError(f"version must be an integer, not {self.version!r}")
        if not isinstance(self.normalisation, str) or self.normalisation not in NORMALISATIONS:
            raise ValueError(f"normalisation must be one of {NORMALISATIONS}")
        if not isinstance(self.modalities, tuple) or tuple(self.modalities) != MODALITIES:
            raise ValueError(f"the model reads modalities {list(self.modalities)} in that order; spikeseg "
                             f"loads cases as {list(MODALITIES)}")

    @property
    def model_shape(self) -> tuple[int, int, int]:
        """Voxel grid the model sees, e.g. (80, 96, 76) for the paper's box at 2 mm."""
        return tuple(int(round(c / s)) for c, s in zip(self.crop_mm, self.spacing_mm))

    def slice_shape(self, view: str) -> tuple[int, int]:
        shape = list(self.model_shape)
        shape.pop(VIEWS[view])
        return tuple(shape)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @staticmethod
    def json_schema() -> dict[str, Any]:
        from spikeseg.runtime import schema as js

        return js.obj({"crop_mm": js.array(js.number(*_CROP_RANGE_MM), length=3),
                       "spacing_mm": js.array(js.number(*_SPACING_RANGE_MM), length=3),
                       "normalisation": js.string(NORMALISATIONS), "modalities": {"const": list(MODALITIES)},
                       "version": js.integer()}, required=("crop_mm", "spacing_mm", "normalisation"))

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str | Path | None = None) -> "PreprocessParams":
        if not isinstance(d, dict):
            raise InputError(source, "preprocessing record: must be an object")
        if d.get("version") != PARAMS_VERSION or isinstance(d.get("version"), bool):
            raise InputError(source, f"preprocessing record version {d.get('version')!r}; "
                                     f"this spikeseg reads version {PARAMS_VERSION}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        try:
            return cls(**kw)
        except (TypeError, ValueError) as exc:
            raise InputError(source, f"preprocessing record: {exc}") from exc

    def save(self, path: str | Path) -> None:
        from spikeseg.runtime.atomic import write_json
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "PreprocessParams":
        return cls.from_dict(json.loads(Path(path).read_text()), path)


@dataclass(frozen=True)
class SpaceMap:
    """Where the model grid sits in one case's native RAS grid (for the way back)."""

    native_shape: tuple[int, int, int]
    start: tuple[int, int, int]
    size: tuple[int, int, int]
    model_shape: tuple[int, int, int] = field(default=(0, 0, 0))


def crop_box(native_shape: tuple[int, ...], spacing: tuple[float, ...],
             crop_mm: tuple[float, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Start and size (native voxels) of the central box; starts may be negative (padding)."""
    size = tuple(int(round(c / s)) for c, s in zip(crop_mm, spacing))
    start = tuple((n - k) // 2 for n, k in zip(native_shape, size))
    return start, size


def crop(volume: np.ndarray, start: tuple[int, ...], size: tuple[int, ...],
         fill: float | np.ndarray = 0.0) -> np.ndarray:
    """Cut the box out of the last three axes, padding with ``fill`` (a scalar, or one value per
    leading channel) where it leaves the volume. A box inside the volume comes back as a view:
    no copy of a 240x240x155x4 image just to look at its middle."""
    lead = volume.shape[:-3]
    src, dst = [], []
    for n, s, k in zip(volume.shape[-3:], start, size):
        lo, hi = max(s, 0), min(s + k, n)
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    if all(s >= 0 and s + k <= n for n, s, k in zip(volume.shape[-3:], start, size)):
        return volume[(...,) + tuple(src)]
    out = np.empty(lead + tuple(size), dtype=volume.dtype)
    out[...] = np.reshape(fill, np.shape(fill) + (1, 1, 1)) if np.ndim(fill) else fill
    out[(...,) + tuple(dst)] = volume[(...,) + tuple(src)]
    return out


def uncrop(box: np.ndarray, start: tuple[int, ...], native_shape: tuple[int, ...],
           fill: float = 0.0) -> np.ndarray:
    """Paste a box back into a volume of ``native_shape``: the exact inverse of :func:`crop`."""
    lead = box.shape[:-3]
    out = np.full(lead + tuple(native_shape), fill, dtype=box.dtype)
    src, dst = [], []
    for n, s, k in zip(native_shape, start, box.shape[-3:]):
        lo, hi = max(s, 0), min(s + k, n)
        dst.append(slice(lo, hi))
        src.append(slice(lo - s, hi - s))
    out[(...,) + tuple(dst)] = box[(...,) + tuple(src)]
    return out


def _linear_taps(n: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For an axis resampled from n to m voxels with centres aligned: each output voxel's two
    source voxels and the weight of the second (edges repeat, as ``mode='nearest'``)."""
    x = np.clip((np.arange(m) + 0.5) * (n / m) - 0.5, 0, n - 1)
    i0 = np.floor(x).astype(np.intp)
    return i0, np.minimum(i0 + 1, n - 1), (x - i0).astype(np.float32)


def resample(volume: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Resample the last three axes to ``shape`` by linear interpolation, voxel centres aligned.

    The same numbers as ``scipy.ndimage.zoom(order=1, mode="nearest", grid_mode=True)`` (tested
    against it), computed one axis at a time as two gathers and a blend, about ten times faster
    than ``zoom`` on a whole case. At an
    integer factor 2 going down, the grid-mode points fall between voxel pairs, so the result is
    the mean of each 2x2x2 block and does not alias.
    """
    out = np.asarray(volume, dtype=np.float32)
    for axis in (-1, -2, -3):  # the contiguous axis first, while the array is smallest
        n, m = out.shape[axis], shape[axis]
        if n == m:
            continue
        i0, i1, w = _linear_taps(n, m)
        lo, hi = np.take(out, i0, axis=axis), np.take(out, i1, axis=axis)
        hi -= lo
        hi *= w.reshape((m,) + (1,) * (-axis - 1))
        lo += hi
        out = lo
    return out


def normalisation_stats(image: np.ndarray, method: str) -> list[tuple[float, float]]:
    """Per modality (min, max) for ``minmax`` or brain (mean, std) for ``zscore``, over the whole
    volume: the statistics are the volume's, whatever part of it the model sees."""
    stats = []
    for vol in image:
        if method == "minmax":
            stats.append((float(vol.min()), float(vol.max())))
        else:
            vals = vol[vol != 0]
            stats.append((float(vals.mean()), float(vals.std())) if vals.size else (0.0, 1.0))
    return stats


def normalise(image: np.ndarray, method: str, stats: list[tuple[float, float]] | None = None) -> np.ndarray:
    """Per modality: min-max to [0, 1] over the volume (paper) or z-score over brain voxels
    (nonzero), background staying 0 (``zscore-clip``: the z-score clipped to +-5 and shifted by
    5, so brain lies in [0, 10] and background stays 0). ``stats`` from
    :func:`normalisation_stats` of the volume ``image`` was cut from; by default ``image``'s own."""
    stats = normalisation_stats(image, method) if stats is None else stats
    out = np.empty(image.shape, dtype=np.float32)
    for c, (vol, (a, b)) in enumerate(zip(image, stats)):
        if method == "minmax":
            out[c] = (vol - a) / (b - a) if b > a else 0.0
        else:
            z = (vol - a) / (b if b > 0 else 1.0)
            if method == "zscore-clip":
                z = np.clip(z, -CLIP_Z, CLIP_Z) + CLIP_Z
            out[c] = np.where(vol != 0, z, 0.0)
    return out


def check_box(native_shape: tuple[int, ...], spacing: tuple[float, ...], params: PreprocessParams,
              where: str | Path | None = None) -> None:
    """Refuse, before anything is allocated, a case whose crop box at its own resolution would
    exceed :data:`MAX_BOX_VOXELS` (the box is cut and normalised at the input's resolution)."""
    _, size = crop_box(native_shape, spacing, params.crop_mm)
    voxels = math.prod(size)
    if voxels > MAX_BOX_VOXELS:
        raise InputError(where, f"at {tuple(round(float(s), 3) for s in spacing)} mm the model's "
                                f"{tuple(params.crop_mm)} mm box is {size} = {voxels:,} voxels, over the limit of "
                                f"{MAX_BOX_VOXELS:,}: resample the case to about 1 mm first")


def to_model_space(image: np.ndarray, spacing: tuple[float, ...],
                   params: PreprocessParams, where: str | Path | None = None) -> tuple[np.ndarray, SpaceMap]:
    """(4, X, Y, Z) native RAS image to the normalised model grid, and the map for the way back.

    Cut first, then normalise the box with the whole volume's statistics: the same numbers as
    normalising the volume and cutting it (tested), on the half of the voxels the model sees.
    Padding outside the volume is filled with what normalises to 0 (the minimum, or 0 for
    z-score, where 0 is background)."""
    native_shape = tuple(image.shape[-3:])
    check_box(native_shape, spacing, params, where)
    start, size = crop_box(native_shape, spacing, params.crop_mm)
    stats = normalisation_stats(image, params.normalisation)
    fill = np.array([lo for lo, _ in stats], image.dtype) if params.normalisation == "minmax" else 0.0
    boxed = normalise(crop(image, start, size, fill), params.normalisation, stats)
    model = resample(boxed, params.model_shape)
    return model, SpaceMap(native_shape, start, size, params.model_shape)


def regions_to_model_space(regions: np.ndarray, space: SpaceMap) -> np.ndarray:
    """Region masks to the model grid (majority of each resampled voxel), for training targets."""
    boxed = crop(regions.astype(np.float32), space.start, space.size)
    return resample(boxed, space.model_shape) >= 0.5


@dataclass(frozen=True)
class ModelSpaceCase:
    """A case as every stage sees it: the loaded case, its model-grid image, the way back, and
    (when the case has a label map) the region targets on the model grid."""

    case: Case
    image: np.ndarray
    space: SpaceMap
    regions: np.ndarray | None = None


def model_space(case: Case, params: PreprocessParams) -> ModelSpaceCase:
    """The one way from a loaded case to the model grid, shared by training, export, runtime and
    benchmarks so they cannot drift apart."""
    image, space = to_model_space(case.image, case.spacing, params, case.files.folder)
    regions = None
    if case.label is not None:
        regions = regions_to_model_space(labels_to_regions(case.label, case.files.convention), space)
    return ModelSpaceCase(case, image, space, regions)


def load_model_space(folder: str | Path, params: PreprocessParams, label: str = "ignore") -> ModelSpaceCase:
    """:func:`model_space` of a case folder. ``label``: ``ignore`` (segmentation: the label is not
    read), ``optional`` (used when present) or ``required`` (training and scoring: a case
    without one is an input error naming the folder)."""
    if label not in ("ignore", "optional", "required"):
        raise ValueError(f"label must be ignore, optional or required, not {label!r}")
    case = load_case(folder, with_label=label != "ignore")
    if label == "required" and case.label is None:
        raise InputError(case.files.folder, "this step needs a reference label map (<id>_seg)")
    return model_space(case, params)


def to_native_space(maps: np.ndarray, space: SpaceMap) -> np.ndarray:
    """(C, x, y, z) model-grid maps (probabilities) back onto the native RAS grid, zero outside."""
    boxed = resample(maps, space.size).astype(maps.dtype, copy=False)
    return uncrop(boxed, space.start, space.native_shape)


def to_view(volume: np.ndarray, view: str) -> np.ndarray:
    """(C, X, Y, Z) to a slice sequence (T, C, H, W) along the view's axis."""
    return np.moveaxis(volume, 1 + VIEWS[view], 0)


def from_view(sequence: np.ndarray, view: str) -> np.ndarray:
    """(T, C, H, W) per-slice outputs back to (C, X, Y, Z): the exact inverse of :func:`to_view`."""
    return np.moveaxis(sequence, 0, 1 + VIEWS[view])


def parse_views(spec: str) -> list[str]:
    """``all`` or a comma list to view names, checked."""
    views = list(VIEWS) if spec == "all" else [v.strip() for v in spec.split(",") if v.strip()]
    bad = [v for v in views if v not in VIEWS]
    if bad or not views:
        raise InputError(None, f"unknown view {bad or spec!r}; choose from {list(VIEWS)} or 'all'")
    return views
