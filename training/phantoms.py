"""Phantom BraTS cases on real anatomy, for demos, tests and benchmarks (no patient data here).

Anatomy: the MNI ICBM152 2009a template that nilearn ships (grey- and white-matter probability
maps and the brain mask; CSF is the rest of the mask), given a random affine jitter per case
(scale 0.92-1.06, rotation up to 6 degrees about each axis, shift up to 4 mm) and placed in the
BraTS grid: 240x240x155 at 1 mm (``full``) or 120x120x78 at 2 mm (``small``), skull-stripped
(zero outside the brain), stored on disk in the BraTS 2021 LPS orientation as scaled int16.

Contrast model: each voxel is a partial-volume mix of CSF, GM and WM with the relative
intensities below (T1: WM > GM > CSF; T2: CSF > GM > WM; FLAIR: CSF suppressed), then tumour
tissue is blended in with soft masks:

    modality  CSF   GM    WM    NCR   edema  ET
    T1        0.25  0.55  0.80  0.30  0.45   0.55
    T1ce      0.25  0.55  0.75  0.30  0.45   1.10
    T2        1.00  0.60  0.45  0.95  0.85   0.65
    FLAIR     0.10  0.55  0.45  0.60  0.90   0.75

The glioma is an irregular ellipsoid (radius 15-32 mm, boundary perturbed by smooth noise)
seeded in white matter: edema outside, a tumour core of 45-70 % of its size inside, whose
outer shell (20-40 % thick) enhances (ET, label 4) around necrosis (NCR, label 1).

``difficulty`` (0 easy .. 1 hard) moves everything that makes real cases hard:
  - contrast: tumour intensities are pulled towards the normal tissue they replace,
    keeping ``1 - 0.7 d`` of the difference;
  - texture: multiplicative smooth noise inside the tumour, amplitude ``0.03 + 0.22 d``;
  - patchy enhancement: up to ``60 d`` % of the enhancing rim does not enhance (labelled NCR);
  - several foci: up to ``1 + round(2 d)`` lesions, satellites smaller;
  - bias field: smooth multiplicative field of amplitude ``0.05 + 0.35 d`` per modality;
  - noise: Rician, sigma ``0.01 + 0.06 d`` of the WM intensity.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from spikeseg.runtime.case_io import MODALITIES
from spikeseg.runtime.errors import InputError

LEVELS = {"easy": 0.0, "medium": 0.5, "hard": 1.0}
SIZES = {"full": ((240, 240, 155), 1.0), "small": ((120, 120, 78), 2.0)}

# rows: modality; columns: CSF, GM, WM, NCR, edema, ET (see the module docstring)
_CONTRAST = np.array([
    [0.25, 0.55, 0.80, 0.30, 0.45, 0.55],
    [0.25, 0.55, 0.75, 0.30, 0.45, 1.10],
    [1.00, 0.60, 0.45, 0.95, 0.85, 0.65],
    [0.10, 0.55, 0.45, 0.60, 0.90, 0.75],
], dtype=np.float32)
_INT16_SCALE = 1000.0


@dataclass(frozen=True)
class Family:
    """A wider family of phantoms than ``standard``: per case, tissue contrasts drawn within the
    orderings that define the sub-regions (SynthSeg's idea, Billot et al., Medical Image Analysis
    2023, kept to what defines ET, necrosis and edema), tumour size and foci, bias field, noise,
    slice thickness (simulated along one axis, resampled back) and the stored intensity scale.
    Each range is (low, high); ``contrast`` is a union of ranges for a per-entry factor on the
    standard contrast table."""

    name: str
    contrast: tuple[tuple[float, float], ...]
    radius_mm: tuple[float, float]
    foci: tuple[int, int]
    bias: tuple[float, float]
    noise: tuple[float, float]
    thickness_mm: tuple[float, float]
    log10_scale: tuple[float, float]


#: ``wide`` for training; ``heldout`` draws its contrasts, bias, noise, slice thickness and scale
#: from outside ``wide``'s ranges, so a model trained on ``wide`` never saw them (transfer test).
#: Radii 5-42 mm: a main lesion from under 1 mL to over 200 mL.
FAMILIES = {
    "wide": Family("wide", ((0.8, 1.2),), (5.0, 40.0), (1, 4), (0.02, 0.45), (0.005, 0.07), (1.0, 4.0), (-1.0, 1.0)),
    "heldout": Family("heldout", ((0.6, 0.8), (1.2, 1.4)), (5.0, 42.0), (1, 4), (0.45, 0.6), (0.07, 0.09),
                      (4.0, 6.0), (1.0, 1.5)),
}


def family_contrast(rng: np.random.Generator, family: Family) -> np.ndarray:
    """The standard contrast table with each entry scaled by a factor from ``family.contrast``,
    then the orderings that define the tissues and sub-regions restored: T1 and T1ce
    CSF < GM < WM; T2 CSF > GM > WM; FLAIR CSF suppressed below GM and WM; ET on T1ce at least
    1.3x its T1 value and brighter than WM (enhancement); NCR on T1ce darker than GM; edema
    brighter than GM and WM on T2 and FLAIR."""
    ranges = family.contrast
    pick = rng.integers(len(ranges), size=_CONTRAST.shape)
    lo = np.array([r[0] for r in ranges])[pick]
    hi = np.array([r[1] for r in ranges])[pick]
    c = (_CONTRAST * rng.uniform(lo, hi)).astype(np.float32)
    for row in (0, 1):
        c[row, :3] = np.sort(c[row, :3])
    c[2, :3] = np.sort(c[2, :3])[::-1]
    c[3, 0] = min(c[3, 0], 0.5 * min(c[3, 1], c[3, 2]))
    c[1, 5] = max(c[1, 5], 1.3 * c[0, 5], 1.1 * c[1, 2])
    c[1, 3] = min(c[1, 3], 0.8 * c[1, 1])
    for row in (2, 3):
        c[row, 4] = max(c[row, 4], 1.15 * max(c[row, 1], c[row, 2]))
    return c


def thick_slices(image: np.ndarray, brain: np.ndarray, axis: int, factor: float) -> np.ndarray:
    """Slices ``factor`` voxels thick along ``axis``: down to fewer slices and back, linearly."""
    from spikeseg.runtime.preprocess import resample

    if factor <= 1.0:
        return image
    shape = list(image.shape[1:])
    thin = list(shape)
    thin[axis] = max(2, int(round(shape[axis] / factor)))
    out = resample(resample(image, tuple(thin)), tuple(shape))
    return np.where(brain, out, 0.0).astype(np.float32)


def parse_difficulty(value: str | float) -> float:
    if isinstance(value, str) and value in LEVELS:
        return LEVELS[value]
    try:
        d = float(value)
    except ValueError:
        raise InputError(None, f"difficulty {value!r}: use easy, medium, hard or a number 0..1")
    if not 0.0 <= d <= 1.0:
        raise InputError(None, f"difficulty {d} outside 0..1")
    return d


@functools.lru_cache(maxsize=1)
def _template() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """GM, WM, brain mask (float32, 1 mm) and the template affine, read once per process."""
    try:
        from nilearn import datasets
    except ImportError as exc:
        raise InputError(None, f"phantoms need nilearn and what it imports ({exc}; pip install 'spikeseg[train]')") from exc
    gm = datasets.load_mni152_gm_template(resolution=1)
    wm = datasets.load_mni152_wm_template(resolution=1)
    mask = datasets.load_mni152_brain_mask(resolution=1)
    return (gm.get_fdata(dtype=np.float32), wm.get_fdata(dtype=np.float32),
            mask.get_fdata(dtype=np.float32), gm.affine)


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    ax, ay, az = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rx @ ry @ rz


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: float) -> np.ndarray:
    """Zero-mean, unit-SD smooth random field: texture, boundary irregularity, bias."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox)
    sd = float(field.std())
    return field / sd if sd > 0 else field


def _placement(shape: tuple[int, ...], spacing: float, jitter: np.ndarray, shift: np.ndarray):
    """Resampling of a template-space volume onto the output RAS grid (centred on the brain),
    moved by ``jitter`` (3x3) and ``shift`` (mm): a function of the volume."""
    _, _, mask, t_aff = _template()
    brain = np.argwhere(mask > 0.5)
    centre_vox = (brain.min(0) + brain.max(0)) / 2.0
    centre_mm = t_aff[:3, :3] @ centre_vox + t_aff[:3, 3]
    # output voxel -> output mm (grid centred on the brain) -> jitter -> template voxel
    out_centre = (np.array(shape) - 1) / 2.0
    t_inv = np.linalg.inv(t_aff)
    matrix = t_inv[:3, :3] @ jitter * spacing
    offset = t_inv[:3, :3] @ (jitter @ (-out_centre * spacing) + centre_mm + shift) + t_inv[:3, 3]
    return functools.partial(ndimage.affine_transform, matrix=matrix, offset=offset,
                             output_shape=shape, order=1, mode="constant", cval=0.0)


def grid_affine(shape: tuple[int, ...], spacing: float) -> np.ndarray:
    """The RAS affine of every phantom grid: ``spacing`` mm voxels, world origin at the centre."""
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = -(np.array(shape) - 1) / 2.0 * spacing
    return affine


def prepare_template() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The registration target of ``spikeseg prepare``: nilearn's MNI ICBM152 2009 T1 and brain
    mask placed on the ``full`` BraTS grid as every phantom is, without the per-case jitter.
    Returns T1 (float32, 0..1), brain mask (uint8) and the RAS affine."""
    from nilearn import datasets

    shape, spacing = SIZES["full"]
    t1 = datasets.load_mni152_template(resolution=1).get_fdata(dtype=np.float32)
    warp = _placement(shape, spacing, np.eye(3), np.zeros(3))
    mask = warp(_template()[2]) > 0.5
    return np.clip(warp(t1), 0, None) * mask, mask.astype(np.uint8), grid_affine(shape, spacing)


def write_prepare_template(dest: str | Path | None = None) -> list[Path]:
    """Write :func:`prepare_template` as ``spikeseg prepare``'s shipped template (T1 scaled to
    0..255 as uint8: mutual information needs no more, and it ships in under 2 MB)."""
    from spikeseg.prepare.template import MASK, T1, template_dir

    dest = Path(dest) if dest is not None else template_dir()
    t1, mask, affine = prepare_template()
    t1 = np.round(255 * t1 / max(float(t1.max()), 1e-6)).astype(np.uint8)
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for name, data in ((T1, t1), (MASK, mask)):
        img = nib.Nifti1Image(data, affine)
        img.header.set_xyzt_units("mm", "sec")
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        nib.save(img, dest / name)
        out.append(dest / name)
    return out


def _anatomy(rng: np.random.Generator, shape: tuple[int, ...], spacing: float) -> tuple[np.ndarray, ...]:
    """CSF, GM, WM partial-volume maps on the output RAS grid, template jittered per case."""
    gm, wm, mask, _ = _template()
    jitter = _rotation(rng, 6.0) @ np.diag(1.0 / rng.uniform(0.92, 1.06, 3))
    shift = rng.uniform(-4, 4, 3)
    warp = _placement(shape, spacing, jitter, shift)
    m = warp(mask) > 0.5
    g = np.clip(warp(gm), 0, 1) * m
    w = np.clip(warp(wm), 0, 1) * m
    total = g + w
    over = total > 1
    g[over] /= total[over]
    w[over] /= total[over]
    csf = np.clip(1.0 - g - w, 0, 1) * m
    return csf, g, w, m


@dataclass(frozen=True)
class Lesion:
    centre: np.ndarray  # voxel
    radius_mm: float
    core_fraction: float
    rim_fraction: float


def _lesion_masks(rng: np.random.Generator, shape: tuple[int, ...], spacing: float,
                  lesion: Lesion, necrotic: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boolean WT, TC and ET masks of one lesion, computed in its bounding box."""
    reach = int(math.ceil(lesion.radius_mm * 1.6 / spacing))
    lo = np.maximum(lesion.centre.astype(int) - reach, 0)
    hi = np.minimum(lesion.centre.astype(int) + reach + 1, shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), -1)
    rel = (grid - lesion.centre) * spacing
    axes = lesion.radius_mm * rng.uniform(0.75, 1.25, 3)
    local = rel @ _rotation(rng, 90.0) / axes
    r = np.sqrt(np.sum(local**2, -1))
    bshape = r.shape
    wt = r < 1.0 + 0.25 * _smooth_noise(rng, bshape, 4.0 / spacing)
    rc = r / lesion.core_fraction
    tc = rc < 1.0 + 0.15 * _smooth_noise(rng, bshape, 3.0 / spacing)
    tc &= wt
    inner = rc < (1.0 - lesion.rim_fraction) + 0.1 * _smooth_noise(rng, bshape, 3.0 / spacing)
    et = tc & ~inner if necrotic else tc.copy()
    out = []
    for sub in (wt, tc, et):
        full = np.zeros(shape, dtype=bool)
        full[box] = sub
        out.append(full)
    return tuple(out)


def make_case(seed: int, size: str = "small", difficulty: float = 0.5,
              family: str = "standard") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One phantom in RAS: image (4, X, Y, Z) float32, labels uint8 (0/1/2/4), RAS affine.
    ``family``: ``standard`` (the contrast table above), or one of :data:`FAMILIES`, whose draws
    come from their own random stream (the standard phantoms of a seed stay what they were)."""
    shape, spacing = SIZES[size]
    rng = np.random.default_rng(np.random.SeedSequence([seed, int(difficulty * 1000)]))
    fam = FAMILIES.get(family)
    if fam is None and family != "standard":
        raise InputError(None, f"family {family!r}: choose from {['standard', *FAMILIES]}")
    frng = np.random.default_rng(np.random.SeedSequence([seed, 7919, list(FAMILIES).index(family)])) if fam else None
    contrast = family_contrast(frng, fam) if fam else _CONTRAST
    csf, gm, wm, brain = _anatomy(rng, shape, spacing)
    d = difficulty

    # Lesions seeded in deep white matter, satellites near the main one.
    deep_wm = np.argwhere(ndimage.binary_erosion(wm > 0.6, iterations=int(12 / spacing)))
    if deep_wm.size == 0:
        deep_wm = np.argwhere(wm > 0.5)
    main = deep_wm[rng.integers(len(deep_wm))].astype(float)
    n_foci = 1 + int(rng.integers(0, 1 + round(2 * d)))
    if fam:
        n_foci = int(frng.integers(fam.foci[0], fam.foci[1] + 1))
    wt = np.zeros(shape, bool)
    tc = np.zeros(shape, bool)
    et = np.zeros(shape, bool)
    for k in range(n_foci):
        if k == 0:
            centre, radius = main, rng.uniform(15, 32)
            if fam:
                radius = frng.uniform(*fam.radius_mm)
        else:
            centre = main + rng.normal(0, 25 / spacing, 3)
            centre = np.clip(centre, 0, np.array(shape) - 1)
            radius = rng.uniform(7, 14)
            if fam:
                radius = min(radius, frng.uniform(0.3, 0.7) * max(fam.radius_mm[0], radius))
        les = Lesion(centre, radius, rng.uniform(0.45, 0.7), rng.uniform(0.2, 0.4))
        w, t, e = _lesion_masks(rng, shape, spacing, les, necrotic=radius > 12)
        wt |= w
        tc |= t
        et |= e
    wt &= brain
    tc &= wt
    et &= tc
    if d > 0:  # patchy enhancement: part of the rim does not enhance
        patch = _smooth_noise(rng, shape, 4.0 / spacing)
        et &= patch > np.quantile(patch[et], 0.6 * d) if et.any() else et
    ncr = tc & ~et
    edema = wt & ~tc

    # Partial-volume tissue mix, then tumour blended in with slightly soft masks.
    fractions = [csf, gm, wm]
    soft = [ndimage.gaussian_filter(m.astype(np.float32), 0.6) for m in (ncr, edema, et)]
    tumour_total = np.clip(sum(soft), 0, 1)
    keep = 1.0 - 0.7 * d
    image = np.empty((4,) + shape, dtype=np.float32)
    texture_amp = 0.03 + 0.22 * d
    texture = 1.0 + texture_amp * _smooth_noise(rng, shape, 1.5 / spacing)
    noise_sd = (frng.uniform(*fam.noise) if fam else 0.01 + 0.06 * d) * _CONTRAST[:, 2].mean()
    bias_amp = [frng.uniform(*fam.bias) if fam else 0.05 + 0.35 * d for _ in range(4)]
    for c in range(4):
        normal = sum(f * contrast[c, i] for i, f in enumerate(fractions))
        tumour = sum(s * (normal + keep * (contrast[c, 3 + i] - normal)) for i, s in enumerate(soft))
        vol = normal * (1 - tumour_total) + tumour * texture
        bias = np.exp(bias_amp[c] * _smooth_noise(rng, shape, 40.0 / spacing) / 2)
        vol = vol * bias
        n1 = rng.standard_normal(shape).astype(np.float32) * noise_sd
        n2 = rng.standard_normal(shape).astype(np.float32) * noise_sd
        vol = np.sqrt((vol + n1) ** 2 + n2**2)
        image[c] = np.where(brain, vol, 0.0)

    if fam:  # thick slices along one axis, resampled back to the grid (a 2D acquisition)
        image = thick_slices(image, brain, int(frng.integers(3)), frng.uniform(*fam.thickness_mm) / spacing)
    labels = np.zeros(shape, np.uint8)
    labels[edema] = 2
    labels[ncr] = 1
    labels[et] = 4
    return image, labels, grid_affine(shape, spacing)


def storage(seed: int, family: str = "standard") -> tuple[float, type]:
    """How a case's intensities are stored: the scale and the data type. ``standard``: int16 x 1000,
    like BraTS; a family draws a scale from its ``log10_scale`` range and int16, uint16 or float32."""
    fam = FAMILIES.get(family)
    if fam is None:
        return _INT16_SCALE, np.int16
    r = np.random.default_rng(np.random.SeedSequence([seed, 104729, list(FAMILIES).index(family)]))
    return _INT16_SCALE * 10 ** r.uniform(*fam.log10_scale), (np.int16, np.uint16, np.float32)[int(r.integers(3))]


def write_case(out_dir: Path, case_id: str, image: np.ndarray, labels: np.ndarray,
               affine_ras: np.ndarray, scale: float = _INT16_SCALE, dtype: type = np.int16) -> Path:
    """Write one case in the BraTS 2021 layout and LPS orientation, intensities x ``scale`` as
    ``dtype`` (int16 x 1000 like BraTS by default; an integer type too small for the scaled
    values is stored as float32)."""
    from spikeseg.runtime.atomic import atomic_path

    folder = Path(out_dir) / case_id
    folder.mkdir(parents=True, exist_ok=True)
    to_lps = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"),
                                             nib.orientations.axcodes2ornt("LPS"))
    if np.issubdtype(dtype, np.integer) and float(image.max()) * scale > np.iinfo(dtype).max:
        dtype = np.float32
    cast = (lambda v: np.round(v).astype(dtype)) if np.issubdtype(dtype, np.integer) else (lambda v: v.astype(dtype))
    volumes = {k: cast(image[i] * scale) for i, k in enumerate(MODALITIES)}
    volumes["seg"] = labels
    for key, vol in volumes.items():
        img = nib.Nifti1Image(vol, affine_ras).as_reoriented(to_lps)
        img.header.set_xyzt_units("mm", "sec")
        img.set_qform(img.affine, code=1)
        img.set_sform(img.affine, code=1)
        dest = folder / f"{case_id}_{key}.nii.gz"
        with atomic_path(dest, suffix=".nii.gz") as tmp:
            nib.save(img, str(tmp))
    return folder


def generate(out_dir: str | Path, cases: int, seed: int, size: str = "small",
             difficulty: float = 0.5, overwrite: bool = False, progress: bool = True,
             family: str = "standard") -> list[Path]:
    """Write ``cases`` phantom case folders ``BraTS2021_<seed*1000+i>`` into ``out_dir``."""
    from tqdm import tqdm

    if size not in SIZES:
        raise InputError(None, f"size {size!r}: choose from {list(SIZES)}")
    out_dir = Path(out_dir)
    written = []
    for i in tqdm(range(cases), desc="phantoms", unit="case", disable=not progress):
        case_id = f"BraTS2021_{seed * 1000 + i:05d}"
        if (out_dir / case_id).exists() and not overwrite:
            raise InputError(out_dir / case_id, "exists; pass --overwrite to replace it")
        image, labels, affine = make_case(seed * 1000 + i, size, difficulty, family)
        written.append(write_case(out_dir, case_id, image, labels, affine, *storage(seed * 1000 + i, family)))
    return written
