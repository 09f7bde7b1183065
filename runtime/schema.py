"""JSON Schema building blocks (draft 2020-12) for the contracts' own ``json_schema()`` methods:
each typed owner states the shape it writes beside its writer and its reader, and the bundle
manifest's schema is composed from them (:mod:`spikeseg.runtime.manifest`)."""

from __future__ import annotations

from typing import Any

DRAFT = "https://json-schema.org/draft/2020-12/schema"


def integer(minimum: int | None = None) -> dict[str, Any]:
    return {"type": "integer", **({"minimum": minimum} if minimum is not None else {})}


def number(minimum: float | None = None, maximum: float | None = None, nullable: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"type": ["number", "null"] if nullable else "number"}
    if minimum is not None:
        out["minimum"] = minimum
    if maximum is not None:
        out["maximum"] = maximum
    return out


def string(enum: tuple[str, ...] | list[str] | None = None, pattern: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "string"}
    if enum is not None:
        out["enum"] = list(enum)
    if pattern is not None:
        out["pattern"] = pattern
    return out


def array(items: dict[str, Any], length: int | None = None, min_items: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "array", "items": items}
    if length is not None:
        out["minItems"] = out["maxItems"] = length
    elif min_items:
        out["minItems"] = min_items
    return out


def shape(length: int | None = None) -> dict[str, Any]:
    """A list of sizes (positive integers)."""
    return array(integer(1), length, min_items=1)


def obj(properties: dict[str, Any], required: tuple[str, ...] | list[str] = (), extra: bool | dict[str, Any] = True,
        description: str | None = None) -> dict[str, Any]:
    """An object; ``extra``: whether (or as what) keys not listed may appear."""
    out: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        out["required"] = list(required)
    if extra is not True:
        out["additionalProperties"] = extra
    if description:
        out["description"] = description
    return out


def mapping(values: dict[str, Any], keys: tuple[str, ...] | None = None, min_properties: int = 0) -> dict[str, Any]:
    """An object used as a map: any key (or one of ``keys``) to ``values``."""
    out: dict[str, Any] = {"type": "object", "additionalProperties": values}
    if keys is not None:
        out["propertyNames"] = {"enum": list(keys)}
    if min_properties:
        out["minProperties"] = min_properties
    return out


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


ANY_OBJECT: dict[str, Any] = {"type": "object"}
