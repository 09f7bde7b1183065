"""Deployment bundles: a folder of ONNX / OpenVINO IR files plus ``manifest.json``.

Nothing in a bundle is executable code: models are ONNX graphs or OpenVINO IR, and every
file is listed with its sha256 in the manifest. :func:`load_bundle` refuses an unknown
schema version, a missing file or a checksum mismatch before anything is run.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from runtime.errors import InputError
from runtime.preprocess import PreprocessParams

SCHEMA_VERSION = 2  # 2: step graphs count membrane updates (outputs.mems)
MANIFEST = "manifest.json"
FORMATS = ("onnx", "openvino")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class ModelFile:
    view: str
    format: str          # "onnx" | "openvino"
    precision: str       # "fp32" | "int8"
    path: Path           # .onnx or .xml
    weights: Path | None  # .bin for OpenVINO
    root: Path
    entry: dict[str, Any]

    @classmethod
    def local(cls, path: str | Path, precision: str = "fp32") -> "ModelFile":
        """A model file outside any bundle (during export, in benchmarks), hashed as found."""
        path = Path(path)
        fmt = "openvino" if path.suffix == ".xml" else "onnx"
        entry: dict[str, Any] = file_entry(path.parent, path)
        weights = path.with_suffix(".bin") if fmt == "openvino" else None
        if weights is not None:
            entry["weights"] = file_entry(path.parent, weights)
        return cls("", fmt, precision, path, weights, path.parent, entry)

    def model_bytes(self) -> bytes:
        """The model, read once and checked against the manifest (a backend never reads the path)."""
        return read_verified(self.root, self.entry)

    def weights_bytes(self) -> bytes | None:
        return read_verified(self.root, self.entry["weights"]) if self.entry.get("weights") else None


@dataclass(frozen=True)
class Bundle:
    root: Path
    manifest: dict[str, Any]

    @property
    def views(self) -> list[str]:
        return list(self.manifest["views"])

    @property
    def stateful(self) -> bool:
        return bool(self.manifest["stateful"])

    @property
    def architecture(self) -> str:
        return str(self.manifest["architecture"])

    @property
    def preprocess(self) -> PreprocessParams:
        return PreprocessParams.from_dict(self.manifest["preprocess"], self.root / MANIFEST)

    @property
    def checksum(self) -> str:
        """sha256 of the manifest, which pins every model file's sha256: the bundle's identity."""
        return sha256_file(self.root / MANIFEST)

    def view_info(self, view: str) -> dict[str, Any]:
        if view not in self.manifest["views"]:
            raise InputError(self.root, f"bundle has no {view} model (it has {self.views})")
        return self.manifest["views"][view]

    def model_file(self, view: str, fmt: str, precision: str) -> ModelFile:
        for m in self.view_info(view)["models"]:
            if m["format"] == fmt and m["precision"] == precision:
                weights = bundle_file(self.root, m["weights"]["file"]) if m.get("weights") else None
                return ModelFile(view, fmt, precision, bundle_file(self.root, m["file"]), weights, self.root, m)
        have = sorted({(m["format"], m["precision"]) for m in self.view_info(view)["models"]})
        raise InputError(self.root, f"bundle has no {precision} {fmt} model for {view} (it has {have})")


def _listed_files(manifest: dict[str, Any]) -> list[dict[str, str]]:
    files = []
    for info in manifest["views"].values():
        for m in info["models"]:
            files.append(m)
            if m.get("weights"):
                files.append(m["weights"])
    return files


_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_VIEW_KEYS = ("models", "layers", "activation_shapes", "dense_macs_per_slice", "outputs", "states",
              "slices_per_case")


def _check_structure(manifest: Any, path: Path) -> None:
    """The manifest's shape, checked before any of it is used: one clear error, no traceback."""
    def bad(problem: str) -> InputError:
        return InputError(path, f"malformed manifest: {problem}")

    if not isinstance(manifest.get("views"), dict) or not manifest["views"]:
        raise bad("'views' must be a non-empty object")
    if not isinstance(manifest.get("preprocess"), dict):
        raise bad("'preprocess' must be an object")
    for view, info in manifest["views"].items():
        if not isinstance(info, dict):
            raise bad(f"view {view!r} must be an object")
        missing = [k for k in _VIEW_KEYS if k not in info]
        if missing:
            raise bad(f"view {view!r} lacks {missing}")
        if not isinstance(info["models"], list) or not info["models"]:
            raise bad(f"view {view!r} has no models")
        for m in info["models"]:
            if not isinstance(m, dict) or m.get("format") not in FORMATS or m.get("precision") not in ("fp32", "int8"):
                raise bad(f"view {view!r}: a model entry needs format {FORMATS} and precision fp32/int8")
            if m["format"] == "openvino" and not isinstance(m.get("weights"), dict):
                raise bad(f"view {view!r}: OpenVINO model {m.get('file')!r} lacks its weights entry")
            for entry in (m, m.get("weights")) if m["format"] == "openvino" else (m,):
                if not isinstance(entry.get("file"), str) or not _SHA256.match(str(entry.get("sha256"))):
                    raise bad(f"view {view!r}: every file entry needs a 'file' string and a sha256")


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


def read_verified(root: Path, entry: dict[str, str]) -> bytes:
    """A listed file's bytes, checked against its sha256: what is hashed is what is loaded."""
    path = bundle_file(root, entry["file"])
    if not path.is_file():
        raise InputError(path, "listed in the manifest but missing")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
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
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise InputError(path, f"unreadable manifest: {type(exc).__name__}") from exc
    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if version != SCHEMA_VERSION:
        raise InputError(path, f"unsupported bundle schema version {version!r}; this spikeseg reads "
                               f"version {SCHEMA_VERSION} (re-export the bundle with `spikeseg export`)")
    for key in ("architecture", "stateful", "views", "preprocess"):
        if key not in manifest:
            raise InputError(path, f"manifest lacks '{key}'")
    _check_structure(manifest, path)
    for entry in _listed_files(manifest):
        read_verified(root, entry)
    return Bundle(root, manifest)


def file_entry(root: Path, path: Path) -> dict[str, str]:
    return {"file": path.relative_to(root).as_posix(), "sha256": sha256_file(path)}
