"""Input series to SimpleITK images (physical LPS space, float32), and back to NIfTI: the DICOM
series through SimpleITK's series reader (GDCM), slices ordered along their normal and checked
for a regular spacing; NIfTI files through the runtime's checked reader. N4 bias-field correction."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from spikeseg.prepare.series import MIN_SLICES, Series
from spikeseg.runtime.case_io import MAX_VOXELS, read_volume
from spikeseg.runtime.errors import InputError

#: Slice positions may differ from a regular grid by this fraction of the spacing (rounding).
_GAP_RTOL = 0.02
_LPS = np.diag([-1.0, -1.0, 1.0])


def read_series(s: Series) -> sitk.Image:
    """One series as a 3D float32 image, or an InputError naming the series and the problem."""
    if s.kind == "nifti":
        img, data = read_volume(s.path)
        return from_array(data, img.affine)
    if s.frames > 1:
        raise InputError(s.path, f"series {s.label()} is an enhanced multi-frame DICOM: not read yet; "
                                 "convert it with dcm2niix and pass the NIfTI file")
    voxels = len(s.files) * s.pixels_per_slice  # judged from the tags, before any pixel is read
    if voxels > MAX_VOXELS:
        raise InputError(s.path, f"series {s.label()} claims {voxels:,} voxels, over the limit of {MAX_VOXELS:,}")
    files = _ordered(s)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(s.path, f"cannot read series {s.label()}: {str(exc).strip().splitlines()[-1]}") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(s.path, f"series {s.label()} is not a single-channel 3D volume")
    return sitk.Cast(image, sitk.sitkFloat32)


def _ordered(s: Series) -> list[Path]:
    """The series' files sorted along the slice normal; refused if the slices are not one regular
    stack (mixed orientations, gaps, duplicates), which would give a silently distorted volume."""
    import pydicom

    rows = []
    for f in s.files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        try:
            orient = np.array([float(v) for v in ds.ImageOrientationPatient])
            pos = np.array([float(v) for v in ds.ImagePositionPatient])
        except (AttributeError, TypeError, ValueError):
            raise InputError(f, "DICOM slice without a usable ImageOrientationPatient / ImagePositionPatient") from None
        rows.append((f, orient, pos))
    if len(rows) < MIN_SLICES:
        raise InputError(s.path, f"series {s.label()} has {len(rows)} slices: not a 3D volume")
    orient = rows[0][1]
    if any(not np.allclose(r[1], orient, atol=1e-4) for r in rows):
        raise InputError(s.path, f"series {s.label()} mixes slice orientations: not one 3D volume")
    normal = np.cross(orient[:3], orient[3:])
    rows.sort(key=lambda r: float(r[2] @ normal))
    depth = np.array([float(r[2] @ normal) for r in rows])
    gaps = np.diff(depth)
    step = float(np.median(gaps))
    if step <= 1e-3 or not np.allclose(gaps, step, rtol=_GAP_RTOL, atol=1e-3):
        raise InputError(s.path, f"series {s.label()}: slice spacing is not regular (gaps {gaps.min():.3g} to "
                                 f"{gaps.max():.3g} mm): missing or repeated slices")
    return [r[0] for r in rows]


def from_array(data: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A (X, Y, Z) array with a nibabel (RAS) affine as a SimpleITK image (LPS)."""
    m = np.asarray(affine, dtype=float)
    spacing = np.sqrt((m[:3, :3] ** 2).sum(axis=0))
    direction = _LPS @ m[:3, :3] / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise InputError(None, "the affine has shear: cannot be represented as an image grid")
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data, dtype=np.float32).transpose(2, 1, 0)))
    image.SetSpacing([float(v) for v in spacing])
    image.SetOrigin([float(v) for v in _LPS @ m[:3, 3]])
    image.SetDirection([float(v) for v in direction.ravel()])
    return image


def to_array(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """A SimpleITK image as an (X, Y, Z) array and its nibabel (RAS) affine."""
    affine = np.eye(4)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    affine[:3, :3] = _LPS @ direction @ np.diag(image.GetSpacing())
    affine[:3, 3] = _LPS @ np.array(image.GetOrigin())
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0), affine


def to_nifti(image: sitk.Image, dtype: type = np.float32) -> nib.Nifti1Image:
    """A SimpleITK image as a NIfTI image with both qform and sform set (code 1: scanner)."""
    data, affine = to_array(image)
    img = nib.Nifti1Image(data.astype(dtype), affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


def check_size(image: sitk.Image, where: Path) -> None:
    voxels = int(np.prod(image.GetSize(), dtype=np.int64))
    if voxels > MAX_VOXELS:
        raise InputError(where, f"{image.GetSize()} = {voxels:,} voxels, over the limit of {MAX_VOXELS:,}")


def n4(image: sitk.Image, shrink: int = 4) -> sitk.Image:
    """N4 bias-field correction (Tustison et al., IEEE TMI 2010) fitted on a shrunk copy inside an
    Otsu head mask, the field then divided out at full resolution (SimpleITK's recipe)."""
    positive = sitk.Maximum(image, 0.0) + 1e-3  # N4 works on log intensities
    mask = sitk.OtsuThreshold(positive, 0, 1, 200)
    factors = [shrink if n > 4 * shrink else 1 for n in image.GetSize()]
    small, small_mask = sitk.Shrink(positive, factors), sitk.Shrink(mask, factors)
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([50, 50, 30])
    corrector.Execute(small, small_mask)
    log_bias = corrector.GetLogBiasFieldAsImage(image)
    return sitk.Cast(image / sitk.Exp(log_bias), sitk.sitkFloat32)
