"""Registration with SimpleITK (ITK's registration framework): rigid co-registration of each
modality to T1ce, then an affine map of T1ce to the template; Mattes mutual information,
multi-resolution, seeded sampling (the same inputs give the same transforms).

Every transform is kept as a 4x4 matrix in LPS mm (ITK's convention: it maps a point of the
fixed image to the moving image), so transforms compose by matrix products and the runtime can
invert them with numpy alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

#: Sampled points per level: enough for a stable mutual information, few enough for seconds.
_SAMPLES = 30_000
_SEED = 20261206
#: LPS <-> RAS: both flip x and y.
FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class Registration:
    """A fitted transform (fixed -> moving, LPS mm) and how well it fits."""

    matrix: np.ndarray
    mutual_information: float  # Mattes MI at the final level, as a positive number (higher: better)
    iterations: int
    stop: str


def matrix_of(transform: sitk.Transform) -> np.ndarray:
    """A SimpleITK affine-family transform (Euler, similarity, affine, or a composite of them) as a
    4x4 matrix: x -> A (x - c) + c + t."""
    t = transform.Downcast() if hasattr(transform, "Downcast") else transform
    if isinstance(t, sitk.CompositeTransform):
        out = np.eye(4)
        for i in range(t.GetNumberOfTransforms()):  # ITK applies the last-added transform first
            out = out @ matrix_of(t.GetNthTransform(i))
        return out
    a = np.array(t.GetMatrix()).reshape(3, 3)
    c, tr = np.array(t.GetCenter()), np.array(t.GetTranslation())
    m = np.eye(4)
    m[:3, :3] = a
    m[:3, 3] = c + tr - a @ c
    return m


def transform_of(matrix: np.ndarray) -> sitk.AffineTransform:
    t = sitk.AffineTransform(3)
    t.SetMatrix([float(v) for v in matrix[:3, :3].ravel()])
    t.SetTranslation([float(v) for v in matrix[:3, 3]])
    return t


def _method(fixed: sitk.Image, levels: tuple[int, ...], iterations: int) -> sitk.ImageRegistrationMethod:
    r = sitk.ImageRegistrationMethod()
    r.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    voxels = [float(np.prod([max(n // f, 1) for n in fixed.GetSize()])) for f in levels]
    r.SetMetricSamplingStrategy(r.RANDOM)
    r.SetMetricSamplingPercentagePerLevel([min(1.0, _SAMPLES / v) for v in voxels], _SEED)
    r.SetInterpolator(sitk.sitkLinear)
    r.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-3, numberOfIterations=iterations,
                                               relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
    r.SetOptimizerScalesFromPhysicalShift()
    r.SetShrinkFactorsPerLevel(list(levels))
    r.SetSmoothingSigmasPerLevel([0.5 * f for f in levels])
    r.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return r


def _run(r: sitk.ImageRegistrationMethod, fixed: sitk.Image, moving: sitk.Image) -> tuple[sitk.Transform, float, int, str]:
    out = r.Execute(fixed, moving)
    return out, -float(r.GetMetricValue()), int(r.GetOptimizerIteration()), r.GetOptimizerStopConditionDescription()


def rigid(fixed: sitk.Image, moving: sitk.Image) -> Registration:
    """Rigid (6 degrees of freedom) map from ``fixed`` to ``moving``, started from their centres
    of mass: one patient, one session, other sequences."""
    init = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(),
                                             sitk.CenteredTransformInitializerFilter.MOMENTS)
    r = _method(fixed, (4, 2, 1), 200)
    r.SetInitialTransform(init, inPlace=False)
    out, mi, it, stop = _run(r, fixed, moving)
    return Registration(matrix_of(out), mi, it, stop)


def affine(fixed: sitk.Image, moving: sitk.Image, fixed_mask: sitk.Image) -> Registration:
    """Affine (12 degrees of freedom) map from the template (``fixed``, sampled only inside
    ``fixed_mask``: the template has no skull) to a case: similarity first at coarse levels, then
    affine."""
    init = sitk.CenteredTransformInitializer(fixed, moving, sitk.Similarity3DTransform(),
                                             sitk.CenteredTransformInitializerFilter.MOMENTS)
    r = _method(fixed, (8, 4), 200)
    r.SetMetricFixedMask(fixed_mask)
    r.SetInitialTransform(init, inPlace=False)
    similarity, _, it1, _ = _run(r, fixed, moving)
    start = transform_of(matrix_of(similarity))
    r = _method(fixed, (4, 2, 1), 200)
    r.SetMetricFixedMask(fixed_mask)
    r.SetInitialTransform(start, inPlace=False)
    out, mi, it2, stop = _run(r, fixed, moving)
    return Registration(matrix_of(out), mi, it1 + it2, stop)


def resample(moving: sitk.Image, reference: sitk.Image, matrix: np.ndarray, labels: bool = False) -> sitk.Image:
    """``moving`` on ``reference``'s grid through ``matrix`` (reference -> moving, LPS mm): labels
    by nearest neighbour; images by cubic B-spline (nnU-Net's order 3: sharper than linear, which
    cost a model Dice on scanner-style phantoms, docs/prepare.md), clamped at 0 where it overshoots."""
    if labels:
        return sitk.Resample(moving, reference, transform_of(matrix), sitk.sitkNearestNeighbor, 0,
                             moving.GetPixelID())
    out = sitk.Resample(moving, reference, transform_of(matrix), sitk.sitkBSpline, 0.0, sitk.sitkFloat32)
    return sitk.Maximum(out, 0.0)


def ras(matrix_lps: np.ndarray) -> np.ndarray:
    """A point map in LPS mm as the same map in RAS mm (nibabel's and NIfTI's world)."""
    return FLIP @ matrix_lps @ FLIP


def displacement_mm(a: np.ndarray, b: np.ndarray, points: np.ndarray) -> float:
    """Mean distance between where two 4x4 maps send ``points`` (N, 3): a registration error."""
    h = np.c_[points, np.ones(len(points))]
    return float(np.linalg.norm((h @ a.T - h @ b.T)[:, :3], axis=1).mean())
