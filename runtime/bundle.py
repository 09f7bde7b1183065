"""Deployment bundles: a folder of ONNX / OpenVINO IR files plus ``manifest.json``.

Nothing in a bundle is executable code: models are ONNX graphs or OpenVINO IR, and every
file is listed with its sha256 in the manifest. :func:`load_bundle` refuses an unknown
schema version, a missing file or a checksum mismatch before anything is run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from spikeseg.runtime.bundle_spec import FileEntry, ModelEntry, ViewSpec
from spikeseg.runtime.errors import InputError
from spikeseg.runtime.manifest import MANIFEST, Manifest, read_manifest
from spikeseg.runtime.outputs import json_marker
from spikeseg.runtime.preprocess import PreprocessParams
from spikeseg.runtime.qc import QCReference
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
    """A bundle folder whose manifest was read and every listed file verified."""

    root: Path
    manifest: Manifest

    @property
    def specs(self) -> dict[str, ViewSpec]:
        return self.manifest.views

    @property
    def views(self) -> list[str]:
        return list(self.specs)

    @property
    def stateful(self) -> bool:
        return any(spec.stateful for spec in self.specs.values())

    @property
    def architecture(self) -> str:
        return self.manifest.architecture

    @property
    def preprocess(self) -> PreprocessParams:
        return self.manifest.preprocess

    @property
    def qc(self) -> QCReference | None:
        """What the bundle's training data looked like, for the QC verdict (None: exported before
        bundles carried it)."""
        return self.manifest.qc

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
    """Read and verify a bundle: schema version, structure (:func:`read_manifest`), every file's
    path and sha256."""
    root = Path(root)
    manifest = read_manifest(root)
    for spec in manifest.views.values():
        for model in spec.models:
            for entry in model.files():
                read_verified(root, entry)
    return Bundle(root, manifest)


def file_entry(root: Path, path: Path) -> FileEntry:
    return FileEntry(path.relative_to(root).as_posix(), sha256_file(path))
