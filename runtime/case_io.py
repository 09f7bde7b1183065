"""BraTS case folders: find the files, check them, load them in one orientation, write back exactly.

Teams whose code ignored the NIfTI header failed on 87 of 570 BraTS 2021 test cases (LPI vs RAI
orientations). So every volume is reoriented to RAS on load, by axis permutation and flips only
(no interpolation), and every output is turned back the same way and written with the input's
own header, affine and qform/sform codes: it overlays the input in ITK-SNAP or 3D Slicer.
"""

from __future__ import annotations

import gzip
import re
import stat
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np

from spikeseg.runtime.atomic import atomic_path, nifti_suffix
from spikeseg.runtime.errors import InputError
from spikeseg.runtime.labels import LabelConvention, convention_for_scheme

if TYPE_CHECKING:
    from spikeseg.runtime.prepared import PrepareRecord

#: Channel order of every model input, whatever the file names say.
MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")

#: File-name keys per naming scheme, and the separator before the key.
SCHEMES: dict[str, tuple[str, dict[str, str]]] = {
    "brats2021": ("_", {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair", "seg": "seg"}),
    "brats2023": ("-", {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", "seg": "seg"}),
}

_NIFTI = re.compile(r"^(?P<stem>.+?)(?P<ext>\.nii(\.gz)?)\Z")  # \Z: "$" would match before a final newline
#: A case id names the case's output folder and files, so it must be one plain path component.
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}\Z")
_AFFINE_TOL_MM = 1e-3
#: Largest volume read: 2^25 voxels (e.g. 512x512x128 or 320^3; a 1 mm BraTS volume is
#: 240x240x155 = 8.9 M). Four of them in float64 peak at about 2.2 GB while a case loads; at
#: 512^3 four 1 MB gzips once drove a process to 8.3 GB.
MAX_VOXELS = 2 ** 25
#: Largest NIfTI header with its extensions (``vox_offset``): nibabel reads extensions up to it,
#: and a 4.5 MB gzip whose extension claimed gigabytes reached 4.3 GB before failing. Headers of
#: real scans are 352 bytes plus at most a few kB of extensions.
MAX_HEADER_BYTES = 8 << 20
#: The header's voxel size (pixdim) and the affine's may differ by rounding only (relative).
_SPACING_RTOL = 1e-3
#: Smallest extent along any axis of a volume we segment.
MIN_DIM = 8
_DEFLATE_MAX_RATIO = 1032
_SPACING_RANGE_MM = (0.2, 10.0)
_RAS = nib.orientations.axcodes2ornt(("R", "A", "S"))


@dataclass(frozen=True)
class CaseFiles:
    """Where one case's files are and which naming scheme they follow."""

    case_id: str
    folder: Path
    scheme: str
    modalities: dict[str, Path]
    seg: Path | None

    @property
    def convention(self) -> LabelConvention:
        return convention_for_scheme(self.scheme)



@dataclass(frozen=True)
class Geometry:
    """The input's exact on-disk geometry, kept so outputs can be written back in it."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    header: nib.Nifti1Header
    image_class: type
    ornt: np.ndarray = field(repr=False)

    @classmethod
    def of(cls, img: nib.spatialimages.SpatialImage) -> "Geometry":
        return cls(tuple(int(s) for s in img.shape[:3]), img.affine.copy(), img.header.copy(),
                   type(img), nib.orientations.io_orientation(img.affine))

    @property
    def canonical_spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along R, A, S, from the affine nibabel applies (one source of
        geometry: a pixdim that disagrees with it is refused on load)."""
        zooms = affine_spacing(self.affine)
        return tuple(float(zooms[int(ax)]) for ax in np.argsort(self.ornt[:, 0]))

    @property
    def canonical_shape(self) -> tuple[int, int, int]:
        """The volume's shape as :meth:`to_canonical` returns it (R, A, S order)."""
        return tuple(self.shape[int(ax)] for ax in np.argsort(self.ornt[:, 0]))

    @property
    def canonical_affine(self) -> np.ndarray:
        """The voxel-to-world (RAS mm) affine of the volume as :meth:`to_canonical` returns it."""
        return self.affine @ nib.orientations.inv_ornt_aff(self.ornt, self.shape)

    def to_canonical(self, data: np.ndarray) -> np.ndarray:
        """Reorient a volume (spatial axes last three, or only three) from disk order to RAS."""
        return _reorient(data, self.ornt)

    def from_canonical(self, data: np.ndarray) -> np.ndarray:
        """Exact inverse of :meth:`to_canonical`."""
        return _reorient(data, nib.orientations.ornt_transform(_RAS, self.ornt))


def affine_spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel size along each on-disk axis: the length of the affine's columns."""
    return np.sqrt((np.asarray(affine, dtype=float)[:3, :3] ** 2).sum(axis=0))


def _reorient(data: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    lead = data.ndim - 3
    if lead == 0:
        return nib.orientations.apply_orientation(data, ornt)
    moved = np.moveaxis(data, tuple(range(lead)), tuple(range(3, 3 + lead)))
    out = nib.orientations.apply_orientation(moved, ornt)
    return np.moveaxis(out, tuple(range(3, 3 + lead)), tuple(range(lead)))


@dataclass
class Case:
    """A loaded case in RAS: ``image`` is (4, X, Y, Z) float32 in :data:`MODALITIES` order."""

    files: CaseFiles
    image: np.ndarray
    geometry: Geometry
    label: np.ndarray | None = None
    #: where the folder came from ``spikeseg prepare``: its record (the way back to the native grid)
    prepared: "PrepareRecord | None" = None

    @property
    def case_id(self) -> str:
        return self.files.case_id

    @property
    def spacing(self) -> tuple[float, float, float]:
        return self.geometry.canonical_spacing


def _split_name(path: Path) -> tuple[str, str] | None:
    """(stem, extension) of a NIfTI file name; hidden files (macOS ``._*`` resource forks,
    editors' temporaries, our own partial outputs) are never case files."""
    if path.name.startswith("."):
        return None
    m = _NIFTI.match(path.name)
    return (m.group("stem"), m.group("ext")) if m else None


def label_file_id(path: Path) -> tuple[str, str] | None:
    """(case id, naming scheme) when ``path`` is named like a reference label map
    (``<id>_seg`` or ``<id>-seg``, .nii or .nii.gz), else None."""
    split = _split_name(path)
    if split is None:
        return None
    for scheme, (sep, keys) in SCHEMES.items():
        case_id, found, key = split[0].rpartition(sep)
        if found and case_id and key == keys["seg"]:
            return case_id, scheme
    return None


def find_case(folder: str | Path) -> CaseFiles:
    """Identify the four modalities and the optional label map in one case folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "not a folder")
    stems = [(p, s[0]) for p in sorted(folder.iterdir()) if (s := _split_name(p))]
    best: CaseFiles | None = None
    for scheme, (sep, keys) in SCHEMES.items():
        found: dict[str, Path] = {}
        case_ids: set[str] = set()
        for path, stem in stems:
            if sep not in stem:
                continue
            case_id, key = stem.rsplit(sep, 1)
            for canon, file_key in keys.items():
                if key == file_key:
                    check_regular_file(path)
                    if canon in found:
                        raise InputError(path, f"second file for modality '{file_key}' "
                                               f"(also {found[canon].name})")
                    found[canon] = path
                    case_ids.add(case_id)
        if not found:
            continue
        if len(case_ids) > 1:
            raise InputError(folder, f"files of more than one case: {sorted(case_ids)}")
        missing = [keys[m] for m in MODALITIES if m not in found]
        if missing:
            raise InputError(folder, f"missing modality {', '.join(missing)} "
                                     f"(expected {scheme} names like "
                                     f"{case_ids.pop()}{sep}{keys[MODALITIES[0]]}.nii.gz)")
        candidate = CaseFiles(check_case_id(case_ids.pop(), folder), folder, scheme,
                              {m: found[m] for m in MODALITIES}, found.get("seg"))
        if best is not None:
            raise InputError(folder, "files in both BraTS 2021 and 2023 naming")
        best = candidate
    if best is None:
        raise InputError(folder, "no BraTS modality files (<id>_t1/_t1ce/_t2/_flair or "
                                 "<id>-t1n/-t1c/-t2w/-t2f, .nii or .nii.gz)")
    return best


def check_regular_file(path: Path) -> None:
    """A file named like a case file must be one: a directory, a FIFO (reading it would block
    forever), a device or a dangling link is named for what it is, not "missing"."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise InputError(path, "is a dangling symbolic link (its target does not exist)") from None
    except OSError as exc:
        raise InputError(path, f"cannot be read: {exc.strerror or exc}") from exc
    if stat.S_ISDIR(mode):
        raise InputError(path, "is a folder, not a NIfTI file")
    if stat.S_ISFIFO(mode):
        raise InputError(path, "is a named pipe (FIFO), not a NIfTI file")
    if not stat.S_ISREG(mode):
        raise InputError(path, "is a device or socket, not a NIfTI file")


def check_case_id(case_id: str, where: Path) -> str:
    """Refuse a case id that is not one plain path component.

    The id comes from file names a user (or an attacker) chose, and it names the output folder:
    ``..`` or ``.`` there once made ``--overwrite`` delete the parent of the output folder, or
    every other case's results. Allowed: letters, digits and ``. _ + -``, not starting with a dot
    or a dash, at most 200 characters (BraTS ids such as ``BraTS2021_00000`` and
    ``BraTS-GLI-00000-000`` pass)."""
    if not _SAFE_ID.match(case_id):
        raise InputError(where, f"case id {case_id!r} (from the file names) is not a safe folder name: "
                                "use letters, digits and . _ + - only, not starting with a dot")
    return case_id


def looks_like_case(folder: Path) -> bool:
    """True when a folder holds NIfTI files directly (a case), not case sub-folders."""
    return folder.is_dir() and any(_split_name(p) for p in folder.iterdir() if p.is_file() or _is_odd(p))


def _is_odd(path: Path) -> bool:
    """A link, pipe or folder with a case file's name: a case whose file is broken, which
    :func:`check_regular_file` then names, rather than no case at all."""
    return path.is_symlink() or path.is_fifo() or (path.is_dir() and _split_name(path) is not None)


def find_cases(root: str | Path) -> list[Path]:
    """One case folder, or a folder of case folders, to the sorted list of case folders."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "no such folder")
    if looks_like_case(root):
        return [root]
    cases = sorted(p for p in root.iterdir() if looks_like_case(p))
    if not cases:
        raise InputError(root, "no case folders with NIfTI files inside")
    return cases


def _describe(exc: Exception) -> str:
    """An exception as text that is never empty (``MemoryError()`` prints as nothing)."""
    return str(exc) or type(exc).__name__


def _raw_header(path: Path) -> tuple[bytes, object]:
    """The first bytes of a NIfTI file (decompressed) and the open stream positioned after them."""
    f = gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")
    try:
        return f.read(544), f
    except Exception:
        f.close()
        raise


def check_raw_header(path: Path) -> None:
    """What nibabel would trust before it reads a byte of data, checked from the raw header with
    bounded reads: the header size (NIfTI-1 or -2), ``vox_offset`` and every extension's size
    (at most :data:`MAX_HEADER_BYTES` in all), and voxel sizes that are not 0 (nibabel quietly
    turns a 0 into 1 mm)."""
    try:
        raw, f = _raw_header(path)
    except Exception as exc:  # gzip, zlib and OS errors
        raise InputError(path, f"cannot read NIfTI header: {_describe(exc)}") from exc
    with f:  # type: ignore[attr-defined]
        if len(raw) < 352:
            raise InputError(path, f"too short for a NIfTI header ({len(raw)} bytes)")
        for endian in "<>":
            size = struct.unpack(endian + "i", raw[:4])[0]
            if size in (348, 540):
                break
        else:
            raise InputError(path, "not a NIfTI-1 or NIfTI-2 file (header size field is neither 348 nor 540)")
        if size == 348:
            pixdim = struct.unpack(endian + "8f", raw[76:108])
            vox_offset, ext_at = struct.unpack(endian + "f", raw[108:112])[0], 348
        else:
            if len(raw) < 544:
                raise InputError(path, "truncated NIfTI-2 header")
            pixdim = struct.unpack(endian + "8d", raw[104:168])
            vox_offset, ext_at = struct.unpack(endian + "q", raw[168:176])[0], 540
        if not np.isfinite(vox_offset) or not 0 <= vox_offset <= MAX_HEADER_BYTES:
            raise InputError(path, f"header says the data starts at byte {vox_offset:,.0f}: over the "
                                   f"{MAX_HEADER_BYTES:,}-byte limit for a header with its extensions")
        zero = [i for i in (1, 2, 3) if pixdim[i] == 0]
        if zero:
            raise InputError(path, f"voxel size (pixdim) is 0 along axis {zero[0]}: the header's geometry is broken")
        if raw[ext_at:ext_at + 1] not in (b"", b"\x00"):
            try:
                _check_extensions(path, f, raw[ext_at + 4:], int(vox_offset) - ext_at - 4, endian)
            except (OSError, EOFError, zlib.error, struct.error) as exc:  # a gzip stream cut short or corrupt
                raise InputError(path, f"cannot read the NIfTI header's extensions: {_describe(exc)}") from exc


def _check_extensions(path: Path, f: object, head: bytes, room: int, endian: str) -> None:
    """Walk the extension chain, skipping bodies in bounded chunks: each declared size must be a
    positive multiple of 8 that fits before the data starts."""
    buf = head
    while room >= 16:
        while len(buf) < 8:
            more = f.read(8 - len(buf))  # type: ignore[attr-defined]
            if not more:
                raise InputError(path, "header extension cut short (truncated file)")
            buf += more
        esize = struct.unpack(endian + "i", buf[:4])[0]
        if esize < 16 or esize > room:
            raise InputError(path, f"header extension claims {esize:,} bytes, but {max(room, 0):,} are left before "
                                   "the data starts: corrupt or hostile header")
        skip, buf = esize - len(buf), buf[esize:] if len(buf) > esize else b""
        while skip > 0:
            chunk = f.read(min(skip, 1 << 20))  # type: ignore[attr-defined]
            if not chunk:
                raise InputError(path, "header extension cut short (truncated file)")
            skip -= len(chunk)
        room -= esize


def check_header(path: Path, img: nib.spatialimages.SpatialImage) -> None:
    """Refuse, from the header alone, a file that would exhaust memory or give silent nonsense.

    A 93-byte file can claim 1200^3 float32 voxels; reading it drove the process to 6.9 GB.
    So the claimed size is bounded (:data:`MAX_VOXELS`) and checked against the file: exactly
    for ``.nii``, and for ``.nii.gz`` through deflate's largest possible ratio (1032:1)."""
    check_image(path, img)
    voxels = int(np.prod(img.shape, dtype=np.int64))
    claimed = int(img.header.get("vox_offset", 0)) + voxels * img.header.get_data_dtype().itemsize
    size = path.stat().st_size
    compressed = path.name.endswith(".gz")
    if (size < claimed) if not compressed else (size * _DEFLATE_MAX_RATIO < claimed):
        raise InputError(path, f"header claims {claimed:,} bytes of data but the file has {size:,}"
                               f"{' compressed' if compressed else ''} bytes (truncated or corrupt)")


def check_image(where: str | Path, img: nib.spatialimages.SpatialImage) -> None:
    """The checks of :func:`check_header` that need no file: size, data type, orientation and
    geometry (an image handed over in memory passes the same ones)."""
    shape = tuple(int(s) for s in img.shape)
    spatial = shape[:3]
    if len(spatial) < 3 or min(spatial) < MIN_DIM:
        raise InputError(where, f"volume shape {shape} is too small for a brain MRI "
                                f"(at least {MIN_DIM} voxels along each axis)")
    if len(shape) > 3 and any(s != 1 for s in shape[3:]):
        raise InputError(where, f"expected a 3D volume, got shape {shape}")
    voxels = int(np.prod(shape, dtype=np.int64))
    if voxels > MAX_VOXELS:
        raise InputError(where, f"header claims {shape} = {voxels:,} voxels, over the limit of "
                                f"{MAX_VOXELS:,} for one volume")
    dtype = img.header.get_data_dtype()
    if dtype.kind == "c":
        raise InputError(where, f"complex data ({dtype}): expected real-valued intensities")
    if dtype.kind not in "biuf":
        raise InputError(where, f"unsupported data type {dtype}")
    if int(img.header["qform_code"]) == 0 and int(img.header["sform_code"]) == 0:
        raise InputError(where, "header has no orientation (qform_code and sform_code are both 0), so "
                                "left/right cannot be known; set them (e.g. fslorient -setsformcode 1)")
    affine = np.asarray(img.affine, dtype=float)
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-6:
        raise InputError(where, "affine is singular or not finite: the header's geometry is broken")
    spacing = affine_spacing(affine)
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=float)
    if not np.allclose(zooms, spacing, rtol=_SPACING_RTOL, atol=1e-5):
        raise InputError(where, f"voxel size in the header (pixdim {tuple(round(float(z), 4) for z in zooms)} mm) "
                                f"disagrees with the affine ({tuple(round(float(z), 4) for z in spacing)} mm, "
                                f"{'sform' if int(img.header['sform_code']) else 'qform'}): which one is right "
                                "cannot be known; fix the header")
    if not all(_SPACING_RANGE_MM[0] <= z <= _SPACING_RANGE_MM[1] for z in spacing):
        raise InputError(where, f"implausible voxel spacing {tuple(round(float(z), 4) for z in spacing)} mm "
                                f"(expected {_SPACING_RANGE_MM[0]} to {_SPACING_RANGE_MM[1]} mm)")


def _open(path: Path) -> nib.spatialimages.SpatialImage:
    """A NIfTI file's header, checked; no data read yet (so the whole case can be judged from its
    headers before anything large is allocated)."""
    check_regular_file(path)
    if path.stat().st_size == 0:
        raise InputError(path, "empty file")
    check_raw_header(path)
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel, gzip, zlib and OS errors all mean the same to a user
        raise InputError(path, f"cannot read NIfTI header: {_describe(exc)}") from exc
    check_header(path, img)
    return img


def _data(path: Path, img: nib.spatialimages.SpatialImage) -> np.ndarray:
    """The volume of an opened file as float32, scaling applied, any failure a clear InputError."""
    try:
        data = img.get_fdata(dtype=np.float32, caching="unchanged")  # applies scl_slope/inter
    except Exception as exc:
        raise InputError(path, f"cannot read NIfTI (truncated or corrupt?): {_describe(exc)}") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(path, f"expected a 3D volume, got shape {tuple(data.shape)}")
    return data


def read_volume(path: Path) -> tuple[nib.spatialimages.SpatialImage, np.ndarray]:
    """Load one NIfTI file fully, its header checked first (size, geometry, hostile extensions),
    every low-level failure a clear InputError."""
    img = _open(path)
    return img, _data(path, img)


def _check_same_grid(ref_path: Path, ref: Geometry, path: Path,
                     img: nib.spatialimages.SpatialImage, shape: tuple[int, ...]) -> None:
    shape = tuple(shape)[:3] if len(shape) == 4 and shape[3] == 1 else tuple(shape)
    if tuple(shape) != ref.shape:
        raise InputError(path, f"shape {tuple(shape)} differs from {ref_path.name} {ref.shape}")
    if not np.allclose(img.affine, ref.affine, atol=_AFFINE_TOL_MM):
        raise InputError(path, f"affine differs from {ref_path.name} (not co-registered?)")


def load_case(folder: str | Path, with_label: bool = True) -> Case:
    """Load and check a case folder in a BraTS layout; ``image`` comes back in RAS, float32,
    scaling applied."""
    from spikeseg.runtime.prepared import read_record  # it builds on this module

    case = load_files(find_case(folder), with_label)
    case.prepared = read_record(folder)
    return case


def load_files(files: CaseFiles, with_label: bool = True) -> Case:
    """Load and check the files ``files`` names (a BraTS folder's, or any four paths)."""
    paths = [files.modalities[m] for m in MODALITIES]
    # Every header first, in file order (errors name the first bad file), and the grids compared,
    # before any voxel data is decompressed or allocated.
    return _assemble(files, paths, [_open(path) for path in paths], with_label)


def case_from_images(images: dict[str, nib.spatialimages.SpatialImage], case_id: str = "case",
                     scheme: str = "brats2021") -> Case:
    """A case from four images in memory (nibabel images keyed by :data:`MODALITIES`), checked as
    files are; ``scheme`` picks the label convention of the outputs."""
    _check_keys(images)
    if scheme not in SCHEMES:
        raise InputError(None, f"unknown label scheme {scheme!r}; choose from {list(SCHEMES)}")
    names = {m: Path(f"<{m} image>") for m in MODALITIES}
    for m in MODALITIES:
        if not isinstance(images[m], nib.spatialimages.SpatialImage):
            raise InputError(names[m], f"expected a nibabel image, got {type(images[m]).__name__}")
        check_image(names[m], images[m])
    files = CaseFiles(check_case_id(case_id, None), Path("."), scheme, names, None)
    return _assemble(files, [names[m] for m in MODALITIES], [images[m] for m in MODALITIES], with_label=False)


def case_from_arrays(volumes: dict[str, np.ndarray] | np.ndarray, affine: np.ndarray, case_id: str = "case",
                     scheme: str = "brats2021") -> Case:
    """A case from arrays on one grid: a (4, X, Y, Z) array in :data:`MODALITIES` order or one
    volume per modality, with the voxel-to-world ``affine`` (RAS mm, as nibabel's)."""
    if isinstance(volumes, np.ndarray):
        if volumes.ndim != 4 or volumes.shape[0] != len(MODALITIES):
            raise InputError(None, f"expected a (4, X, Y, Z) array in {list(MODALITIES)} order, got shape "
                                   f"{volumes.shape}")
        volumes = dict(zip(MODALITIES, volumes))
    _check_keys(volumes)
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4):
        raise InputError(None, f"expected a 4x4 affine, got shape {affine.shape}")
    images = {m: nib.Nifti1Image(np.asarray(volumes[m], dtype=np.float32), affine) for m in MODALITIES}
    return case_from_images(images, case_id, scheme)


def _check_keys(given: dict) -> None:
    missing, unknown = [m for m in MODALITIES if m not in given], sorted(set(given) - set(MODALITIES))
    if missing or unknown:
        raise InputError(None, f"expected one image per modality {list(MODALITIES)}"
                               + (f"; missing {missing}" if missing else "") + (f"; unknown {unknown}" if unknown else ""))


def _assemble(files: CaseFiles, paths: list[Path], images: list[nib.spatialimages.SpatialImage],
              with_label: bool) -> Case:
    """Opened, checked images to a case: grids compared, data read, every voxel finite."""
    geometry, first = Geometry.of(images[0]), paths[0]
    for path, img in zip(paths[1:], images[1:]):
        _check_same_grid(first, geometry, path, img, img.shape)
    # Decompression dominates loading and zlib releases the GIL: the four files are read side by
    # side (about half the time on 2 cores); checks and errors stay in file order.
    with ThreadPoolExecutor(max_workers=len(paths)) as pool:
        reads = [pool.submit(_data, path, img) for path, img in zip(paths, images)]
    channels = []
    for path, read in zip(paths, reads):
        data = read.result()
        if not np.isfinite(data).all():
            n = int((~np.isfinite(data)).sum())
            raise InputError(path, f"{n} voxels are NaN or infinite")
        channels.append(geometry.to_canonical(data))
    label = None
    if with_label and files.seg is not None:
        label = read_label(files.seg, files.convention, geometry, first)
    return Case(files, np.stack(channels), geometry, label)


def read_label(path: Path, convention: LabelConvention, geometry: Geometry,
               ref_path: Path) -> np.ndarray:
    """A label map as uint8 in RAS, checked against the case grid and the label convention."""
    img, data = read_volume(path)
    _check_same_grid(ref_path, geometry, path, img, data.shape)
    if not np.isfinite(data).all() or not np.array_equal(data, np.round(data)):
        raise InputError(path, "label map has non-integer values")
    values = set(np.unique(data).astype(int).tolist())
    unknown = values - set(convention.allowed)
    if unknown:
        raise InputError(path, f"label values {sorted(unknown)} not in the {convention.name} "
                               f"convention {list(convention.allowed)}")
    return geometry.to_canonical(data.astype(np.uint8))


def load_label_file(path: str | Path, convention: LabelConvention,
                    like: Geometry | None = None) -> tuple[np.ndarray, Geometry]:
    """Read a lone label map (a prediction, say) in RAS; check it against ``like`` if given."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file")
    img, _ = read_volume(path)
    geometry = like if like is not None else Geometry.of(img)
    return read_label(path, convention, geometry, path), geometry


def image_like(data: np.ndarray, geometry: Geometry, dtype: type, slope: float = 1.0) -> nib.spatialimages.SpatialImage:
    """A RAS volume (spatial axes last) as an image in the input's exact on-disk geometry.

    Extra leading axes (e.g. 3 region probabilities) become the 4th NIfTI dimension. With an
    integer ``dtype`` and a ``slope``, ``data`` is stored as round(data / slope) with the NIfTI
    scale factor ``scl_slope = slope``, which viewers and nibabel apply when they read it.
    """
    out = geometry.from_canonical(np.asarray(data))
    if slope != 1.0:
        info = np.iinfo(dtype)
        out = np.clip(np.rint(out / slope), info.min, info.max)
    out = out.astype(dtype, copy=False)
    if out.ndim == 4:
        out = np.moveaxis(out, 0, -1)
    header = geometry.header.copy()
    header.set_data_dtype(dtype)
    img = geometry.image_class(out, geometry.affine, header)
    img.header.set_slope_inter(slope, 0.0)
    src = geometry.header
    img.set_qform(src.get_qform(), code=int(src["qform_code"]))
    img.set_sform(src.get_sform(), code=int(src["sform_code"]))
    return img


def save_like(data: np.ndarray, geometry: Geometry, dest: str | Path, dtype: type,
              overwrite: bool = False, slope: float = 1.0) -> Path:
    """Write a RAS volume in the input's exact on-disk geometry (:func:`image_like`), atomically."""
    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise InputError(dest, "exists; pass --overwrite to replace it")
    img = image_like(data, geometry, dtype, slope)
    with atomic_path(dest, suffix=nifti_suffix(dest)) as tmp:
        nib.save(img, str(tmp))
    return dest
