"""The record ``spikeseg prepare`` leaves in a case folder (``<case>/prepare/prepare.json``), read
and written here only, and the one thing the runtime does with it: put a segmentation back on the
scanner's native T1ce grid (numpy and scipy; no registration library at the point of care).

The record's ``native`` part is a contract: ``template_to_native`` maps a point of the prepared
(template) grid, in RAS mm, to the native T1ce scan's RAS mm, and ``reference`` names the native
T1ce volume written beside the record (with its sha256), whose grid the native outputs take.
The rest (inputs, series chosen and why, methods, checks, timings) is provenance for people.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from spikeseg.runtime.atomic import write_json
from spikeseg.runtime.bundle import sha256_file
from spikeseg.runtime.case_io import Geometry, image_like, read_volume
from spikeseg.runtime.errors import InputError

#: The sub-folder of a prepared case that holds the record, the transforms and the native T1ce.
FOLDER = "prepare"
RECORD = "prepare.json"
NATIVE_REFERENCE = "native_t1ce.nii.gz"
VERSION = 1
_MAX_RECORD_BYTES = 4 << 20


@dataclass(frozen=True)
class PrepareRecord:
    """What ``prepare`` did to a case, and how to go back to the native grid."""

    case_id: str
    template_to_native: np.ndarray
    reference: str = NATIVE_REFERENCE
    reference_sha256: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    version: int = VERSION

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "case_id": self.case_id,
                "native": {"template_to_native_ras": self.template_to_native.round(9).tolist(),
                           "reference": self.reference, "reference_sha256": self.reference_sha256},
                **self.provenance}

    def write(self, case_folder: Path) -> Path:
        dest = Path(case_folder) / FOLDER / RECORD
        write_json(dest, self.to_dict())
        return dest


def read_record(case_folder: str | Path) -> PrepareRecord | None:
    """The case's prepare record, None where the case did not come from ``prepare``; a record
    that is there but unreadable, of an unknown version or inconsistent is an InputError."""
    path = Path(case_folder) / FOLDER / RECORD
    if not path.exists():
        return None
    if not path.is_file() or path.stat().st_size > _MAX_RECORD_BYTES:
        raise InputError(path, "not a prepare record (not a regular file, or over 4 MB)")
    try:
        raw = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"not JSON: {exc}") from None
    if not isinstance(raw, dict) or raw.get("version") != VERSION:
        version = raw.get("version") if isinstance(raw, dict) else None
        raise InputError(path, f"prepare record version {version!r}: this spikeseg reads version {VERSION}; "
                               "prepare the case again with this version")
    native = raw.get("native")
    try:
        matrix = np.array(native["template_to_native_ras"], dtype=float)
        reference, digest = str(native["reference"]), str(native["reference_sha256"])
    except (TypeError, KeyError, ValueError):
        raise InputError(path, "the record's 'native' part is missing or malformed") from None
    if matrix.shape != (4, 4) or not np.isfinite(matrix).all() or abs(np.linalg.det(matrix[:3, :3])) < 1e-3 \
            or not np.allclose(matrix[3], [0, 0, 0, 1]):
        raise InputError(path, "template_to_native_ras is not an invertible 4x4 affine")
    if Path(reference).name != reference or reference.startswith("."):
        raise InputError(path, f"reference {reference!r} is not a plain file name beside the record")
    provenance = {k: v for k, v in raw.items() if k not in ("version", "case_id", "native")}
    return PrepareRecord(str(raw.get("case_id", "")), matrix, reference, digest, provenance)


@dataclass(frozen=True)
class NativeGrid:
    """The native T1ce's grid (read and verified once per case) and the map to it."""

    geometry: Geometry
    record: PrepareRecord

    @classmethod
    def open(cls, case_folder: str | Path, record: PrepareRecord) -> "NativeGrid":
        path = Path(case_folder) / FOLDER / record.reference
        if not path.is_file():
            raise InputError(path, "the native T1ce named in prepare.json is missing")
        if record.reference_sha256 and sha256_file(path) != record.reference_sha256:
            raise InputError(path, "does not match the sha256 in prepare.json (changed after prepare)")
        img, _ = read_volume(path)
        return cls(Geometry.of(img), record)

    def resample(self, data: np.ndarray, source: Geometry, labels: bool) -> np.ndarray:
        """A RAS volume on ``source``'s grid (the prepared case) seen on the native grid, RAS:
        linear for intensities; for labels, each label's indicator linearly and the label with the
        largest weight kept (ANTs' ``GenericLabel`` interpolation), so a boundary falls where the
        two grids put it rather than snapping to the nearest voxel's label. Zero outside the
        prepared grid."""
        native_to_source = (np.linalg.inv(source.canonical_affine) @ np.linalg.inv(self.record.template_to_native)
                            @ self.geometry.canonical_affine)

        def sample(volume: np.ndarray, outside: float) -> np.ndarray:
            return ndimage.affine_transform(volume, native_to_source[:3, :3], native_to_source[:3, 3],
                                            output_shape=self.geometry.canonical_shape, order=1, mode="constant",
                                            cval=outside)

        if not labels:
            return sample(np.asarray(data, dtype=np.float32), 0.0)
        data = np.asarray(data)
        out = np.zeros(self.geometry.canonical_shape, data.dtype)
        best = np.full(self.geometry.canonical_shape, -1.0, np.float32)
        for value in np.unique(data):  # ascending: background wins a tie
            weight = sample((data == value).astype(np.float32), 1.0 if value == 0 else 0.0)
            wins = weight > best
            out[wins], best[wins] = value, weight[wins]
        return out

    def image(self, data: np.ndarray, source: Geometry, dtype: type, labels: bool,
              slope: float = 1.0) -> nib.spatialimages.SpatialImage:
        """:meth:`resample`, as an image in the native T1ce's exact on-disk geometry."""
        return image_like(self.resample(data, source, labels), self.geometry, dtype, slope)
