"""Deployment bundles: a folder of ONNX / OpenVINO IR files plus ``manifest.json``.

Nothing in a bundle is executable code: models are ONNX graphs or OpenVINO IR, and every
file is listed with its sha256 in the manifest. :func:`load_bundle` refuses an unknown
schema version, a missing file or a checksum mismatch before anything is run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from spikeseg import __version__
from spikeseg.runtime.bundle_spec import SCHEMA_VERSION, VOLUME, FileEntry, ModelEntry, ViewSpec
from spikeseg.runtime.errors import InputError
from spikeseg.runtime.outputs import json_marker
from spikeseg.runtime.preprocess import VIEWS, PreprocessParams
from spikeseg.runtime.qc import QCReference

MANIFEST = "manifest.json"
#: How ``--overwrite`` recognises a bundle folder export made (and so may replace).
is_bundle = json_marker(MANIFEST, ("schema_version", "views"))


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class ModelFile:
    """A model a backend can load: its entry in the manifest and the bundle it lives in."""

    view: str
    entry: ModelEntry
    root: Path

    @property
    def format(self) -> str:
        return self.entry.format

    @property
    def precision(self) -> str:
        return self.entry.precision

    @property
    def path(self) -> Path:
        return bundle_file(self.root, self.entry.file.file)

    @classmethod
    def local(cls, path: str | Path, precision: str = "fp32") -> "ModelFile":
        """A model file outside any bundle (during export, in benchmarks), hashed as found."""
        path = Path(path)
        weights = file_entry(path.parent, path.with_suffix(".bin")) if path.suffix == ".xml" else None
        fmt = "openvino" if weights else "onnx"
        return cls("", ModelEntry(file_entry(path.parent, path), fmt, precision, weights), path.parent)

    def model_bytes(self) -> bytes:
        """The model, read once and checked against the manifest (a backend never reads the path)."""
        return read_verified(self.root, self.entry.file)

    def weights_bytes(self) -> bytes | None:
        return read_verified(self.root, self.entry.weights) if self.entry.weights else None


@dataclass(frozen=True)
class Bundle:
    root: Path
    manifest: dict[str, Any]
    specs: dict[str, ViewSpec]

    @property
    def views(self) -> list[str]:
        return list(self.specs)

    @property
    def stateful(self) -> bool:
        return any(spec.stateful for spec in self.specs.values())

    @property
    def architecture(self) -> str:
        return str(self.manifest["architecture"])

    @property
    def preprocess(self) -> PreprocessParams:
        return PreprocessParams.from_dict(self.manifest["preprocess"], self.root / MANIFEST)

    @property
    def qc(self) -> QCReference | None:
        """What the bundle's training data looked like, for the QC verdict (None: exported before
        bundles carried it; checked when the bundle was loaded)."""
        raw = self.manifest.get("qc")
        return None if raw is None else QCReference.parse(raw, self.root / MANIFEST)

    @property
    def checksum(self) -> str:
        """sha256 of the manifest, which pins every model file's sha256: the bundle's identity."""
        return sha256_file(self.root / MANIFEST)

    def view(self, view: str) -> ViewSpec:
        if view not in self.specs:
            raise InputError(self.root, f"bundle has no {view} model (it has {self.views})")
        return self.specs[view]

    def model_file(self, view: str, fmt: str, precision: str) -> ModelFile:
        for m in self.view(view).models:
            if m.format == fmt and m.precision == precision:
                return ModelFile(view, m, self.root)
        have = sorted({(m.format, m.precision) for m in self.view(view).models})
        raise InputError(self.root, f"bundle has no {precision} {fmt} model for {view} (it has {have})")


def _parse_views(manifest: Any, path: Path) -> dict[str, ViewSpec]:
    """The manifest's shape, checked before any of it is used: one clear error, no traceback."""
    if not isinstance(manifest.get("views"), dict) or not manifest["views"]:
        raise InputError(path, "malformed manifest: 'views' must be a non-empty object")
    if not isinstance(manifest.get("preprocess"), dict):
        raise InputError(path, "malformed manifest: 'preprocess' must be an object")
    unknown = [v for v in manifest["views"] if v not in (*VIEWS, VOLUME)]
    if unknown:
        raise InputError(path, f"malformed manifest: unknown view {unknown[0]!r}; a bundle holds "
                               f"{', '.join(VIEWS)} or {VOLUME!r}")
    return {str(view): ViewSpec.parse(info, str(view), path) for view, info in manifest["views"].items()}


def bundle_file(root: Path, name: str) -> Path:
    """A manifest path as a file inside the bundle: relative, no '..', no symlink on the way."""
    rel = PurePosixPath(name)
    if rel.is_absolute() or not rel.parts or ".." in rel.parts or "\\" in name or name.startswith("~"):
        raise InputError(root / MANIFEST, f"file {name!r} is not a plain path inside the bundle")
    path = root.joinpath(*rel.parts)
    probe = root
    for part in rel.parts:
        probe = probe / part
        if probe.is_symlink():
            raise InputError(path, "is a symlink: bundle files must be regular files inside the bundle")
    if not path.resolve().is_relative_to(root.resolve()):
        raise InputError(path, "resolves outside the bundle")
    return path


def read_verified(root: Path, entry: FileEntry) -> bytes:
    """A listed file's bytes, checked against its sha256: what is hashed is what is loaded."""
    path = bundle_file(root, entry.file)
    if not path.is_file():
        raise InputError(path, "listed in the manifest but missing")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != entry.sha256:
        raise InputError(path, "checksum mismatch: the file was changed after the bundle was made")
    return data


def load_bundle(root: str | Path) -> Bundle:
    """Read and verify a bundle: schema version, structure, every file's path and sha256."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise InputError(root, f"not a spikeseg bundle (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # ValueError: also a 5000-digit number
        raise InputError(path, f"unreadable manifest: {type(exc).__name__}: {str(exc)[:200]}") from exc
    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if version != SCHEMA_VERSION:
        made_by = manifest.get("spikeseg_version") if isinstance(manifest, dict) else None
        raise InputError(path, f"unsupported bundle schema version {version!r} (made by spikeseg {made_by}); "
                               f"spikeseg {__version__} reads version {SCHEMA_VERSION}: re-export the bundle "
                               f"with spikeseg {__version__} (`spikeseg export`)")
    for key in ("architecture", "views", "preprocess"):
        if key not in manifest:
            raise InputError(path, f"manifest lacks '{key}'")
    specs = _parse_views(manifest, path)
    PreprocessParams.from_dict(manifest["preprocess"], path)  # every field checked now, not when a case runs
    if manifest.get("qc") is not None:
        QCReference.parse(manifest["qc"], path)
    for spec in specs.values():
        for model in spec.models:
            for entry in model.files():
                read_verified(root, entry)
    return Bundle(root, manifest, specs)


def file_entry(root: Path, path: Path) -> FileEntry:
    return FileEntry(path.relative_to(root).as_posix(), sha256_file(path))
