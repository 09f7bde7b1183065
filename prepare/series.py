"""Find the input series (DICOM series at any depth, NIfTI files with any names) and name each
one's modality: from the DICOM tags (series description, protocol and sequence names, contrast
agent, TR/TE/TI) or the file name, with an explicit mapping that always wins. Two candidates for
one modality, or none, is an error that lists every series found: never a guess.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from spikeseg.runtime.case_io import MODALITIES, check_regular_file
from spikeseg.runtime.errors import InputError

#: At most this many files are looked at under the input folder (a whole PACS export is not one case).
MAX_FILES = 20_000
#: A series with fewer slices than this is not a 3D volume (localisers, single-slice scouts).
MIN_SLICES = 8
_NIFTI = re.compile(r"\.nii(\.gz)?\Z", re.IGNORECASE)

# Words in a series description, protocol or file name (lower case); (?<![a-z0-9]) keeps "t1" out of "st1".
_FLAIR = re.compile(r"flair|t2f|dark.?fluid|(?<![a-z0-9])tirm")
# Philips prefixes 3D sequences with "s" (sT1W_3D_TFE).
_T2 = re.compile(r"(?<![a-z0-9])s?t2(?![0-9*]|star|\s*\*)|(?<![a-z0-9])(tse|fse)(?![a-z])")
_T1 = re.compile(r"(?<![a-z0-9])s?t1(?![0-9])|mprage|mp-rage|mp2rage|spgr|bravo|tfl3d|(?<![a-z0-9])vibe")
_POST = re.compile(r"(?<![a-z0-9])(post|gd|gad|gado\w*|contrast|ce|c\+|\+c|t1c|t1ce|t1gd|t1post|kmp|km)(?![a-z0-9])"
                   r"|t1.?ce(?![a-z])|t1.?gd|t1.?post|t1.?\+c|t1c(?![a-z])")
_PRE = re.compile(r"(?<![a-z0-9])(pre|native|nativ|t1n)(?![a-z0-9])")
_LOCALISER = re.compile(r"locali[sz]er|scout|survey|(?<![a-z0-9])loc(?![a-z0-9])|tri.?pilot|3.?plane|aahead")


@dataclass
class Series:
    """One input series: a DICOM series (its files) or one NIfTI file."""

    key: str
    kind: str  # "dicom" or "nifti"
    files: list[Path]
    description: str = ""
    study: str = ""
    tr: float | None = None
    te: float | None = None
    ti: float | None = None
    contrast: str = ""
    image_type: str = ""
    frames: int = 1
    pixels_per_slice: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def path(self) -> Path:
        """The folder of a DICOM series, the file of a NIfTI one."""
        return self.files[0].parent if self.kind == "dicom" else self.files[0]

    def label(self) -> str:
        """How the series is named in messages and in ``prepare.json``."""
        if self.kind == "nifti":
            return f"{self.path}"
        tags = [f"{len(self.files)} files"]
        tags += [f"{name} {v:g} ms" for name, v in (("TR", self.tr), ("TE", self.te), ("TI", self.ti)) if v is not None]
        if self.contrast:
            tags.append(f"contrast agent {self.contrast!r}")
        return f"'{self.description or '(no description)'}' in {self.path} ({', '.join(tags)})"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "path": str(self.path), "description": self.description, "files": len(self.files),
                "series_uid": self.key if self.kind == "dicom" else None, "tr_ms": self.tr, "te_ms": self.te,
                "ti_ms": self.ti, "contrast_agent": self.contrast or None}


def _float(value: object) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _walk(root: Path) -> list[Path]:
    """Every regular file under ``root`` (hidden entries and links to folders skipped), bounded."""
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            if path.is_file():
                files.append(path)
                if len(files) > MAX_FILES:
                    raise InputError(root, f"more than {MAX_FILES} files: give one patient's study, not an archive")
    return files


def discover(root: str | Path) -> list[Series]:
    """The series under ``root`` (or the one NIfTI file ``root``)."""
    root = Path(root)
    if root.is_file():
        return [_nifti_series(root)] if _NIFTI.search(root.name) else discover_dicom([root])
    if not root.is_dir():
        raise InputError(root, "no such file or folder")
    files = _walk(root)
    found = [_nifti_series(p) for p in files if _NIFTI.search(p.name)]
    found += discover_dicom([p for p in files if not _NIFTI.search(p.name)])
    if not found:
        raise InputError(root, "no DICOM series and no NIfTI files (.nii, .nii.gz) found")
    return found


def _nifti_series(path: Path) -> Series:
    check_regular_file(path)
    return Series(str(path), "nifti", [path], description=_NIFTI.sub("", path.name))


def discover_dicom(files: list[Path]) -> list[Series]:
    """Group DICOM files by SeriesInstanceUID (other files are skipped: a DICOMDIR, a README)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    groups: dict[str, Series] = {}
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        uid = str(ds.get("SeriesInstanceUID", ""))
        if not uid or "ImagePositionPatient" not in ds and int(ds.get("NumberOfFrames", 1) or 1) == 1:
            continue  # not an image slice (DICOMDIR, structured report, presentation state)
        s = groups.get(uid)
        if s is None:
            names = [str(ds.get(k, "") or "").strip() for k in ("SeriesDescription", "ProtocolName", "SequenceName")]
            text = " ".join(dict.fromkeys(n for n in names if n))  # each name once
            s = groups[uid] = Series(uid, "dicom", [], description=" ".join(text.split()),
                                     study=str(ds.get("StudyInstanceUID", "")), tr=_float(ds.get("RepetitionTime")),
                                     te=_float(ds.get("EchoTime")), ti=_float(ds.get("InversionTime")),
                                     contrast=str(ds.get("ContrastBolusAgent", "") or "").strip(),
                                     image_type="\\".join(str(v) for v in ds.get("ImageType", []) or []),
                                     frames=int(ds.get("NumberOfFrames", 1) or 1),
                                     pixels_per_slice=int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0))
        s.files.append(path)
    return sorted(groups.values(), key=lambda s: (str(s.path), s.description))


def not_a_volume(s: Series) -> str | None:
    """Why a series cannot be a modality volume (a localiser, too few slices), or None."""
    text = s.description.lower()
    if "LOCALIZER" in s.image_type.upper() or _LOCALISER.search(text):
        return "a localiser"
    if s.kind == "dicom" and s.frames == 1 and len(s.files) < MIN_SLICES:
        return f"{len(s.files)} slices, not a 3D volume"
    return None


def guess(s: Series) -> tuple[str | None, str]:
    """(modality or None, why) from the names first, then from TR/TE/TI and the contrast tag."""
    text = s.description.lower()
    post = bool(s.contrast) or bool(_POST.search(text)) and not _PRE.search(text)
    source = "file name" if s.kind == "nifti" else "series description"
    if _FLAIR.search(text):
        return "flair", f"{source} says FLAIR"
    if _T1.search(text):
        if post:
            why = f"contrast agent tag {s.contrast!r}" if s.contrast else f"{source} says post-contrast"
            return "t1ce", f"{source} says T1; {why}"
        return "t1", f"{source} says T1, no contrast agent"
    if _T2.search(text):
        return "t2", f"{source} says T2"
    if s.ti is not None and s.ti >= 1500 and (s.tr or 0) >= 4000:
        return "flair", f"inversion recovery, TI {s.ti:g} ms, TR {s.tr:g} ms"
    if s.te is not None and s.tr is not None:
        if s.te >= 70 and s.tr >= 2000:
            return "t2", f"TE {s.te:g} ms, TR {s.tr:g} ms (T2-weighted)"
        if s.te <= 20 and s.tr <= 2500:
            return ("t1ce" if s.contrast else "t1"), f"TE {s.te:g} ms, TR {s.tr:g} ms (T1-weighted)" + (
                f", contrast agent {s.contrast!r}" if s.contrast else "")
    return None, "no modality in its name or tags"


@dataclass
class Choice:
    """The series chosen for one modality, and why."""

    modality: str
    series: Series
    why: str


def read_map(path: str | Path) -> dict[str, Path]:
    """A JSON mapping ``{"t1": PATH, "t1ce": ..., "t2": ..., "flair": ...}``; relative paths are
    relative to the map file."""
    path = Path(path)
    check_regular_file(path)
    if path.stat().st_size > 1 << 20:
        raise InputError(path, "a modality map is a small JSON file; this one is over 1 MB")
    try:
        raw = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"not JSON: {exc}") from None
    if not isinstance(raw, dict) or not raw or any(k not in MODALITIES or not isinstance(v, str) for k, v in raw.items()):
        raise InputError(path, f"expected an object mapping some of {list(MODALITIES)} to paths")
    return {k: (path.parent / v) for k, v in raw.items()}


def _matches(s: Series, given: Path) -> bool:
    given = given.resolve()
    if s.kind == "nifti":
        return s.path.resolve() == given
    return given == s.path.resolve() or any(f.resolve() == given for f in s.files)


def choose(found: list[Series], explicit: dict[str, Path]) -> list[Choice]:
    """One series per modality: the explicit ones first, the rest by :func:`guess`."""
    chosen: dict[str, Choice] = {}
    listing = "series found:\n" + "\n".join(f"  - {s.label()}" + (f" [{r}]" if (r := not_a_volume(s)) else "")
                                             for s in found)
    for modality, given in explicit.items():
        hits = [s for s in found if _matches(s, given)]
        if not hits and _NIFTI.search(given.name) and given.is_file():
            hits = [_nifti_series(given)]
        if not hits and given.exists():
            hits = discover(given)
        if len(hits) != 1:
            problem = "is not one of the series found" if not hits else f"holds {len(hits)} series: name one file of it"
            raise InputError(given, f"--{modality} {problem}\n{listing}")
        chosen[modality] = Choice(modality, hits[0], "named on the command line")
    used = {id(c.series) for c in chosen.values()}
    candidates: dict[str, list[tuple[Series, str]]] = {}
    for s in found:
        if id(s) in used or not_a_volume(s):
            continue
        modality, why = guess(s)
        if modality is not None and modality not in chosen:
            candidates.setdefault(modality, []).append((s, why))
    for modality, hits in candidates.items():
        if len(hits) > 1:
            names = "\n".join(f"  - {s.label()}" for s, _ in hits)
            raise InputError(None, f"{len(hits)} series look like {modality}:\n{names}\n"
                                   f"choose one with --{modality} PATH (or --map FILE)")
        chosen[modality] = Choice(modality, *hits[0])
    missing = [m for m in MODALITIES if m not in chosen]
    if missing:
        raise InputError(None, f"no series for {', '.join(missing)}: name {'it' if len(missing) == 1 else 'them'} "
                               f"with --{missing[0]} PATH (or --map FILE)\n{listing}")
    studies = {c.series.study for c in chosen.values() if c.series.study}
    if len(studies) > 1:
        raise InputError(None, f"the chosen series come from {len(studies)} studies: prepare one study at a time\n{listing}")
    return [chosen[m] for m in MODALITIES]
