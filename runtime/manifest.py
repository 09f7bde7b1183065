"""The bundle manifest (``manifest.json``), read and written here and nowhere else.

One typed owner for the whole record: the top level here, each part by its own type (views:
:class:`~spikeseg.runtime.bundle_spec.ViewSpec`, preprocessing:
:class:`~spikeseg.runtime.preprocess.PreprocessParams`, QC reference:
:class:`~spikeseg.runtime.qc.QCReference`, refinement fits:
:class:`~spikeseg.runtime.refine.RefinementSpec`). Export builds a :class:`Manifest` and writes
it; the runtime, the benchmarks and the demo read it back through :func:`read_manifest`. Its
JSON Schema is generated from the same types (:func:`json_schema`) and shipped as
``manifest.schema.json`` beside this module (``make schema`` rewrites it; a test fails while it
is stale), for anyone who reads bundles without spikeseg.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from spikeseg import __version__
from spikeseg.runtime import schema as js
from spikeseg.runtime.atomic import write_json
from spikeseg.runtime.bundle_spec import SCHEMA_VERSION, VOLUME, ViewSpec
from spikeseg.runtime.errors import InputError
from spikeseg.runtime.labels import REGIONS
from spikeseg.runtime.preprocess import VIEWS, PreprocessParams
from spikeseg.runtime.qc import QCReference
from spikeseg.runtime.refine import RefinementSpec

MANIFEST = "manifest.json"
SCHEMA_FILE = "manifest.schema.json"
#: Written for people reading the file; the runtime decides none of it from these.
NOTES: dict[str, Any] = {
    "regions": list(REGIONS),
    "output": "sigmoid probabilities of the nested regions ET, TC, WT",
    "label_convention": "written in the input case's convention (2021 names: ET=4; 2023+: ET=3)",
    "openvino_inference_precision": "f32 (INFERENCE_PRECISION_HINT set by the runtime)",
}


@dataclass(frozen=True)
class Manifest:
    """A bundle: its models per view and everything needed to run and account for them."""

    architecture: str
    views: dict[str, ViewSpec]
    preprocess: PreprocessParams
    #: the trained model's configuration, as the training run recorded it (provenance)
    model_config: dict[str, Any] = field(default_factory=dict)
    qc: QCReference | None = None
    refinement: tuple[RefinementSpec, ...] = ()
    spikeseg_version: str = __version__
    #: when export made it (UTC, ISO 8601)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "schema_version": self.schema_version, "spikeseg_version": self.spikeseg_version,
            "created": self.created,
            "architecture": self.architecture, "model_config": self.model_config,
            "views": {v: spec.to_dict() for v, spec in self.views.items()},
            "preprocess": self.preprocess.to_dict(), "voxel_spacing_mm": list(self.preprocess.spacing_mm), **NOTES}
        if self.qc is not None:
            d["qc"] = self.qc.to_dict()
        if self.refinement:
            d["refinement"] = [r.to_dict() for r in self.refinement]
        return d

    def write(self, folder: str | Path) -> Path:
        dest = Path(folder) / MANIFEST
        write_json(dest, self.to_dict())
        return dest

    @classmethod
    def parse(cls, raw: Any, where: Path) -> "Manifest":
        """Every part checked, in one pass, before any of it is used: one clear error naming the
        file and the field (an unknown version names the spikeseg to re-export with)."""
        version = raw.get("schema_version") if isinstance(raw, dict) else None
        if version != SCHEMA_VERSION:
            made_by = raw.get("spikeseg_version") if isinstance(raw, dict) else None
            raise InputError(where, f"unsupported bundle schema version {version!r} (made by spikeseg {made_by}); "
                                    f"spikeseg {__version__} reads version {SCHEMA_VERSION}: re-export the bundle "
                                    f"with spikeseg {__version__} (`spikeseg export`)")
        for key in ("architecture", "views", "preprocess"):
            if key not in raw:
                raise InputError(where, f"manifest lacks '{key}'")
        views, preprocess = raw["views"], raw["preprocess"]
        if not isinstance(views, dict) or not views:
            raise InputError(where, "malformed manifest: 'views' must be a non-empty object")
        if not isinstance(preprocess, dict):
            raise InputError(where, "malformed manifest: 'preprocess' must be an object")
        unknown = [v for v in views if v not in (*VIEWS, VOLUME)]
        if unknown:
            raise InputError(where, f"malformed manifest: unknown view {unknown[0]!r}; a bundle holds "
                                    f"{', '.join(VIEWS)} or {VOLUME!r}")
        if not isinstance(raw["architecture"], str):
            raise InputError(where, "malformed manifest: 'architecture' must be a string")
        refinement = raw.get("refinement", [])
        if not isinstance(refinement, list):
            raise InputError(where, "malformed manifest: 'refinement' must be a list")
        config = raw.get("model_config", {})
        return cls(
            architecture=raw["architecture"],
            views={str(v): ViewSpec.parse(info, str(v), where) for v, info in views.items()},
            preprocess=PreprocessParams.from_dict(preprocess, where),
            model_config=config if isinstance(config, dict) else {},
            qc=None if raw.get("qc") is None else QCReference.parse(raw["qc"], where),
            refinement=tuple(RefinementSpec.parse(r, where) for r in refinement),
            spikeseg_version=str(raw.get("spikeseg_version", "")), created=str(raw.get("created", "")),
            schema_version=version)


def read_manifest(folder: str | Path) -> Manifest:
    """A bundle folder's manifest, parsed and checked (files are verified by
    :func:`spikeseg.runtime.bundle.load_bundle`, which calls this)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise InputError(folder, f"not a spikeseg bundle (no {MANIFEST})")
    try:
        raw = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # ValueError: also a 5000-digit number
        raise InputError(path, f"unreadable manifest: {type(exc).__name__}: {str(exc)[:200]}") from exc
    return Manifest.parse(raw, path)


def json_schema() -> dict[str, Any]:
    """The manifest's JSON Schema (draft 2020-12), composed from each part's own schema."""
    top = js.obj({
        "schema_version": {"const": SCHEMA_VERSION},
        "spikeseg_version": js.string(),
        "created": js.string(),
        "architecture": js.string(),
        "model_config": js.ANY_OBJECT,
        "views": js.mapping(ViewSpec.json_schema(), keys=(*VIEWS, VOLUME), min_properties=1),
        "preprocess": PreprocessParams.json_schema(),
        "voxel_spacing_mm": js.array(js.number(), length=3),
        "qc": js.nullable(QCReference.json_schema()),
        "refinement": js.array(RefinementSpec.json_schema()),
        **{k: js.array(js.string()) if isinstance(v, list) else js.string() for k, v in NOTES.items()},
    }, required=("schema_version", "architecture", "views", "preprocess"))
    return {"$schema": js.DRAFT, "$id": f"https://spikeseg.invalid/schema/manifest-{SCHEMA_VERSION}.json",
            "title": f"spikeseg bundle manifest, schema version {SCHEMA_VERSION}",
            "description": "manifest.json of a spikeseg bundle: ONNX / OpenVINO IR models per view with their "
                           "sha256, how they run, how a case is preprocessed, the QC reference and refinement fits.",
            **top}


def schema_path() -> Path:
    """The shipped schema file."""
    return Path(str(resources.files("spikeseg.runtime") / SCHEMA_FILE))


def write_schema(dest: str | Path | None = None) -> Path:
    dest = Path(dest) if dest is not None else schema_path()
    dest.write_text(json.dumps(json_schema(), indent=2) + "\n")
    return dest


def _rows(schema: dict[str, Any], prefix: str = "") -> list[str]:
    """Markdown table rows, one per property, recursing into objects and lists of objects."""
    rows = []
    required = set(schema.get("required", []))
    for name, prop in schema.get("properties", {}).items():
        key = f"{prefix}{name}"
        inner = next((p for p in prop.get("anyOf", []) if p.get("type") != "null"), prop)
        kind = inner.get("type", "const" if "const" in inner else "any")
        if isinstance(kind, list):
            kind = " or ".join(kind)
        detail = []
        for word in ("enum", "const", "pattern", "minimum", "maximum", "minItems"):
            if word in inner:
                detail.append(f"{word} {json.dumps(inner[word])}")
        if "propertyNames" in inner:
            detail.append(f"keys {json.dumps(inner['propertyNames']['enum'])}")
        rows.append(f"| `{key}` | {kind} | {'yes' if name in required else ''} | {'; '.join(detail)} |")
        children = inner.get("additionalProperties") if kind == "object" and "properties" not in inner else inner
        if kind == "array":
            children = inner.get("items", {})
        if isinstance(children, dict) and "properties" in children:
            placeholder = "{view}" if name == "views" else "{key}"
            suffix = "[]." if kind == "array" else (f".{placeholder}." if children is not inner else ".")
            rows += _rows(children, f"{key}{suffix}")
    return rows


def format_page() -> str:
    """``docs/bundle-format.md``, generated from :func:`json_schema` (``make schema``)."""
    schema = json_schema()
    return "\n".join([
        "# The bundle format", "",
        "A bundle is a folder: ONNX and OpenVINO IR models and `manifest.json`, which lists every file with its "
        "sha256. The runtime reads nothing a manifest does not list and verifies every listed file before it "
        "runs one. This page is generated from the manifest's JSON Schema "
        f"(`spikeseg/runtime/{SCHEMA_FILE}`, shipped with the package; `make schema`), itself generated from "
        "the types that read and write the manifest (`runtime/manifest.py`).", "",
        f"Schema version {SCHEMA_VERSION}. A bundle of another version is refused with the spikeseg version to "
        "re-export it with. `{view}` stands for each of the views (`sagittal`, `coronal`, `axial`, or `volume` "
        "for a 3D model).", "",
        "| key | type | required | constraints |", "|---|---|---|---|",
        *_rows(schema), ""])


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(description="Write the manifest's JSON Schema and the bundle-format page.")
    p.add_argument("--schema", type=Path, default=schema_path())
    p.add_argument("--page", type=Path, help="docs/bundle-format.md")
    a = p.parse_args(argv)
    print(write_schema(a.schema))
    if a.page:
        a.page.write_text(format_page())
        print(a.page)


if __name__ == "__main__":
    main()
