"""Phantoms as a scanner delivers them, for ``spikeseg prepare``'s tests and timing: skull and
scalp around the brain, each sequence moved by a known rigid transform (the patient between
series) and sampled on its own grid (e.g. 0.9x0.9x3 mm FLAIR), written as DICOM series with
realistic tags (pydicom), plus a localiser series to be ignored.

The known transforms and the phantom's brain and labels on the native T1ce grid come back with
the folder, so registration error, brain-mask Dice and segmentation Dice can be measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from spikeseg.runtime.case_io import MODALITIES
from spikeseg.training.phantoms import _rotation, make_case

#: (description, TR, TE, TI, contrast agent, native spacing (column, row, slice) mm) per modality.
SEQUENCES = {
    "t1": ("t1_mprage_sag_p2_iso", 2300.0, 2.3, 900.0, "", (1.2, 1.2, 2.0)),
    "t1ce": ("t1_mprage_tra_p2_iso POST", 2300.0, 2.3, 900.0, "Gadovist", (1.2, 1.2, 1.2)),
    "t2": ("t2_tse_tra", 6000.0, 100.0, None, "", (1.0, 1.0, 3.0)),
    "flair": ("t2_tirm_tra_dark-fluid", 9000.0, 85.0, 2500.0, "", (0.9, 0.9, 3.0)),
}
#: Head layers outside the brain: (outer edge mm, intensity per modality in MODALITIES order).
HEAD = (
    (2.0, (0.25, 0.25, 1.00, 0.10)),   # CSF between brain and skull
    (8.0, (0.05, 0.05, 0.05, 0.05)),   # cortical bone
    (13.0, (1.00, 1.00, 0.70, 0.80)),  # scalp with fat (bright in T1)
)
_SCALE = 1000.0


@dataclass
class ScannerCase:
    """A written scanner-style case and the truth to measure ``prepare`` against."""

    folder: Path
    #: per modality: phantom world (RAS mm) -> that series' scanner world (RAS mm)
    motion: dict[str, np.ndarray]
    #: the native T1ce grid: shape and RAS affine, and the phantom's brain and labels on it
    t1ce_shape: tuple[int, int, int]
    t1ce_affine: np.ndarray
    brain_t1ce: np.ndarray
    labels_t1ce: np.ndarray
    #: the phantom itself: image (4, X, Y, Z), labels, RAS affine
    phantom: tuple[np.ndarray, np.ndarray, np.ndarray] = field(repr=False, default=None)  # type: ignore[assignment]
    #: per modality: the series as written (stored values) and its grid's RAS affine
    series: dict[str, tuple[np.ndarray, np.ndarray]] = field(repr=False, default_factory=dict)

    def on_native_t1ce(self, labels: np.ndarray, affine: np.ndarray) -> np.ndarray:
        """A label map on a phantom-world grid (``affine``) carried onto the native T1ce grid by the
        known motion, nearest neighbour: how :attr:`labels_t1ce` was made, so a prediction made on
        the phantom is scored there against the same reference, on the same grid, as one made on
        the prepared case."""
        return _sample(labels, affine, np.linalg.inv(self.motion["t1ce"]), self.t1ce_shape, self.t1ce_affine, 0)

    def oracle(self) -> np.ndarray:
        """The written series brought back onto the phantom's grid by the known motion (linear) and
        cut to the phantom's brain: what a perfect ``prepare`` (no registration error, the true
        brain mask) could make of these scans. Against the phantom it is what the scans alone cost
        (their resolution, noise, one resampling each way); against ``prepare``'s result, what
        registration and brain extraction cost."""
        image, _, affine = self.phantom
        brain = image.any(axis=0)
        out = np.zeros(image.shape, np.float32)
        for c, m in enumerate(MODALITIES):
            vol, grid = self.series[m]
            out[c] = _sample(vol.astype(np.float32), grid, self.motion[m], brain.shape, affine, 1) * brain
        return out


def rigid_motion(rng: np.random.Generator, degrees: float, mm: float) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = _rotation(rng, degrees)
    m[:3, 3] = rng.uniform(-mm, mm, 3)
    return m


def with_head(image: np.ndarray, affine: np.ndarray, pad_mm: float = 24.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The phantom padded and wrapped in CSF, skull and scalp; returns image, brain mask, affine."""
    spacing = float(affine[0, 0])
    pad = int(math.ceil(pad_mm / spacing))
    image = np.pad(image, ((0, 0), (pad, pad), (pad, pad), (pad, pad)))
    affine = affine.copy()
    affine[:3, 3] -= pad * spacing
    brain = image.any(axis=0)
    dist = ndimage.distance_transform_edt(~brain, sampling=spacing)
    inner = 0.0
    for outer, values in HEAD:
        shell = (dist > inner) & (dist <= outer)
        for c, v in enumerate(values):
            image[c][shell] = v
        inner = outer
    return image, brain, affine


def _native_grid(corners_ras: np.ndarray, spacing: tuple[float, float, float]) -> tuple[tuple[int, int, int], np.ndarray]:
    """An axial LPS-aligned grid (the scanner's) covering ``corners_ras``: shape and RAS affine."""
    lps = corners_ras * np.array([-1, -1, 1])
    lo, hi = lps.min(0) - 4.0, lps.max(0) + 4.0
    shape = tuple(int(math.ceil((b - a) / s)) + 1 for a, b, s in zip(lo, hi, spacing))
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = lo * np.array([-1, -1, 1])
    return shape, affine


def _sample(volume: np.ndarray, src_affine: np.ndarray, world: np.ndarray, shape: tuple[int, ...],
            dst_affine: np.ndarray, order: int) -> np.ndarray:
    """``volume`` (on ``src_affine``) seen on a grid (``dst_affine``) through ``world``
    (destination world -> source world)."""
    m = np.linalg.inv(src_affine) @ world @ dst_affine
    return ndimage.affine_transform(volume, m[:3, :3], m[:3, 3], output_shape=shape, order=order, mode="constant")


def write_scanner_case(out: str | Path, seed: int = 0, size: str = "small", difficulty: float = 0.5,
                       family: str = "standard") -> ScannerCase:
    """Write one scanner-style case under ``out`` (``out/<series folder>/IM*.dcm``)."""
    out = Path(out)
    image, labels, affine = make_case(seed, size, difficulty, family)
    head, brain, head_affine = with_head(image, affine)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 4242]))
    nz = np.argwhere(head.any(axis=0))  # the scanner's field of view covers the head, not the padding
    lo, hi = nz.min(0), nz.max(0)
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])], float)
    corners = np.c_[corners, np.ones(8)] @ head_affine.T
    study = _uid(rng)
    motion: dict[str, np.ndarray] = {}
    series: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    t1ce_grid = None
    for number, modality in enumerate(MODALITIES, start=2):
        motion[modality] = m = rigid_motion(rng, 8.0, 8.0)
        desc, tr, te, ti, agent, spacing = SEQUENCES[modality]
        shape, native = _native_grid((corners @ m.T)[:, :3], spacing)
        vol = _sample(head[MODALITIES.index(modality)], head_affine, np.linalg.inv(m), shape, native, 1)
        noise = rng.standard_normal((2,) + vol.shape).astype(np.float32) * 0.01
        vol = np.sqrt((vol + noise[0]) ** 2 + noise[1] ** 2)
        series[modality] = (_write_series(out / f"{number:02d}_{desc.split()[0]}", vol * _SCALE, native, study,
                                          number, desc, tr, te, ti, agent, rng), native)
        if modality == "t1ce":
            t1ce_grid = (shape, native)
    _write_localiser(out / "01_localizer", head[0], head_affine, study, rng)
    shape, native = t1ce_grid
    to_phantom = np.linalg.inv(motion["t1ce"])
    return ScannerCase(out, motion, shape, native,
                       _sample(brain.astype(np.uint8), head_affine, to_phantom, shape, native, 0).astype(bool),
                       _sample(labels, affine, to_phantom, shape, native, 0), (image, labels, affine), series)


def _uid(rng: np.random.Generator) -> str:
    return "2.25." + str(int(rng.integers(1, 2**62)) * (2**62) + int(rng.integers(1, 2**62)))


def _write_series(folder: Path, vol: np.ndarray, affine: np.ndarray, study: str, number: int, desc: str,
                  tr: float, te: float, ti: float | None, agent: str, rng: np.random.Generator) -> np.ndarray:
    """One DICOM file per axial slice; ``affine`` is the grid's RAS affine (LPS-aligned axes).
    Returns the values as stored."""
    folder.mkdir(parents=True, exist_ok=True)
    series = _uid(rng)
    spacing = np.abs(np.diag(affine)[:3])
    origin_lps = affine[:3, 3] * np.array([-1, -1, 1])
    data = np.clip(np.round(vol), 0, 32767).astype(np.int16)
    for k in range(data.shape[2]):
        ds = _dataset(study, series, number, k + 1, desc)
        ds.RepetitionTime, ds.EchoTime = tr, te
        if ti is not None:
            ds.InversionTime = ti
        if agent:
            ds.ContrastBolusAgent = agent
        ds.ImagePositionPatient = [float(v) for v in origin_lps + np.array([0, 0, k * spacing[2]])]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # between rows, between columns
        ds.SliceThickness = ds.SpacingBetweenSlices = float(spacing[2])
        _pixels(ds, data[:, :, k].T)
        ds.save_as(folder / f"IM{k + 1:04d}.dcm", enforce_file_format=True)
    return data


def _write_localiser(folder: Path, t1: np.ndarray, affine: np.ndarray, study: str, rng: np.random.Generator) -> None:
    """Three orthogonal scout slices: a series ``prepare`` must skip."""
    folder.mkdir(parents=True, exist_ok=True)
    series = _uid(rng)
    mid = np.array(t1.shape) // 2
    planes = [t1[:, :, mid[2]].T, t1[mid[0], :, :].T, t1[:, mid[1], :].T]
    for k, plane in enumerate(planes):
        ds = _dataset(study, series, 1, k + 1, "AAHScout localizer")
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER", "NONE"]
        ds.ImagePositionPatient = [0.0, 0.0, float(k)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [float(affine[1, 1]), float(affine[0, 0])]
        _pixels(ds, np.clip(plane * _SCALE, 0, 32767).astype(np.int16))
        ds.save_as(folder / f"IM{k + 1:04d}.dcm", enforce_file_format=True)


def _dataset(study: str, series: str, number: int, instance: int, desc: str):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = uid = generate_uid(entropy_srcs=[series, str(instance)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, uid
    ds.Modality, ds.Manufacturer, ds.MagneticFieldStrength = "MR", "spikeseg phantom", 3.0
    ds.PatientID, ds.PatientName = "PHANTOM", "Phantom^Scanner"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.FrameOfReferenceUID = study + ".1"
    ds.SeriesNumber, ds.InstanceNumber = number, instance
    ds.SeriesDescription = ds.ProtocolName = desc
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    return ds


def _pixels(ds, plane: np.ndarray) -> None:
    """Rows x columns int16 pixels, stored as the scanner does (no rescaling)."""
    ds.Rows, ds.Columns = plane.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope = 0, 1
    ds.PixelData = np.ascontiguousarray(plane).tobytes()
