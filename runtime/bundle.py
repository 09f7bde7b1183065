"""Deployment bundles: a folder of ONNX / OpenVINO IR files plus ``manifest.json``.

Nothing in a bundle is executable code: models are ONNX graphs or OpenVINO IR, and every
file is listed with its sha256 in the manifest. :func:`load_bundle` refuses an unknown
schema version, a missing file or a checksum mismatch before anything is run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.errors import InputError
from runtime.preprocess import PreprocessParams

SCHEMA_VERSION = 2  # 2: step graphs count membrane updates (outputs.mems)
MANIFEST = "manifest.json"


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
                weights = self.root / m["weights"]["file"] if m.get("weights") else None
                return ModelFile(view, fmt, precision, self.root / m["file"], weights)
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


def load_bundle(root: str | Path) -> Bundle:
    """Read and verify a bundle: schema version, required fields, every file's sha256."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise InputError(root, f"not a spikeseg bundle (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"unreadable manifest: {exc}") from exc
    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if version != SCHEMA_VERSION:
        raise InputError(path, f"unsupported bundle schema version {version!r}; this spikeseg reads "
                               f"version {SCHEMA_VERSION} (re-export the bundle with `spikeseg export`)")
    for key in ("architecture", "stateful", "views", "preprocess"):
        if key not in manifest:
            raise InputError(path, f"manifest lacks '{key}'")
    for entry in _listed_files(manifest):
        f = root / entry["file"]
        if not f.is_file():
            raise InputError(f, "listed in the manifest but missing")
        if sha256_file(f) != entry["sha256"]:
            raise InputError(f, "checksum mismatch: the file was changed after the bundle was made")
    return Bundle(root, manifest)


def file_entry(root: Path, path: Path) -> dict[str, str]:
    return {"file": path.relative_to(root).as_posix(), "sha256": sha256_file(path)}
