"""The bundle manifest's one owner (runtime/manifest.py) and its shipped JSON Schema, checked
against real exported bundles and against the independent ``jsonschema`` validator."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest

from spikeseg.runtime.errors import InputError
from spikeseg.runtime.manifest import MANIFEST, Manifest, format_page, json_schema, schema_path
from tests.helpers import REPO


def test_the_shipped_schema_and_the_format_page_are_what_the_types_generate() -> None:
    """``make schema`` rewrites both; this fails while either is stale."""
    jsonschema.Draft202012Validator.check_schema(json_schema())
    assert json.loads(schema_path().read_text()) == json_schema()
    assert (REPO / "docs" / "bundle-format.md").read_text() == format_page()


def _raw(bundle: Path) -> dict:
    return json.loads((bundle / MANIFEST).read_text())


def test_exported_manifests_round_trip_and_meet_the_shipped_schema(bundles) -> None:
    schema = json.loads(schema_path().read_text())
    for arch in ("useg", "spiking-useg"):
        raw = _raw(bundles[arch])
        jsonschema.validate(raw, schema)
        assert Manifest.parse(raw, bundles[arch] / MANIFEST).to_dict() == raw  # read back, written back: the same


def _break(raw: dict, how: str) -> dict:
    m = copy.deepcopy(raw)
    view = next(iter(m["views"]))
    models = m["views"][view]["models"]
    if how == "a model without its sha256":
        del models[0]["sha256"]
    elif how == "an execution nobody runs":
        m["views"][view]["execution"] = "quantum"
    elif how == "no views":
        m["views"] = {}
    elif how == "a view that does not exist":
        m["views"]["diagonal"] = m["views"][view]
    elif how == "another schema version":
        m["schema_version"] = 2
    elif how == "OpenVINO IR without its weights":
        del next(x for x in models if x["format"] == "openvino")["weights"]
    elif how == "an unknown normalisation":
        m["preprocess"]["normalisation"] = "none"
    elif how == "a layer of an unknown kind":
        m["views"][view]["layers"][0]["kind"] = "pool"
    elif how == "refinement not a list":
        m["refinement"] = {}
    elif how == "no preprocess":
        del m["preprocess"]
    return m


BREAKS = ("a model without its sha256", "an execution nobody runs", "no views", "a view that does not exist",
          "another schema version", "OpenVINO IR without its weights", "an unknown normalisation",
          "a layer of an unknown kind", "refinement not a list", "no preprocess")


def test_the_schema_and_the_runtime_refuse_the_same_broken_manifests(bundles) -> None:
    schema = json.loads(schema_path().read_text())
    raw = _raw(bundles["spiking-useg"])
    for how in BREAKS:
        broken = _break(raw, how)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schema)
        with pytest.raises(InputError):
            Manifest.parse(broken, bundles["spiking-useg"] / MANIFEST)
