"""The published Smart Data Models JSON Schemas (tests/sdm/schemas, SOURCES.txt says from where), offline.

:func:`sdm_schema_errors` validates an entity in key-value form against its type's schema, every
``$ref`` resolved from the local copies (the schemas name their GitHub Pages URLs).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

DIR = Path(__file__).parent / "sdm" / "schemas"
BASE = "https://smart-data-models.github.io/"
SHARED = {
    "data-models/common-schema.json": "common-schema.json",
    "dataModel.Device/device-schema.json": "device-schema.json",
    "dataModel.Alert/alert-schema.json": "alert-schema.json",
    "dataModel.Weather/weather-schema.json": "weather-schema.json",
}
TYPES = ("WaterObserved", "Device", "DeviceMeasurement", "Alert")


@cache
def _validators() -> dict[str, jsonschema.Draft7Validator]:
    registry: Registry = Registry()
    for url, name in SHARED.items():
        registry = registry.with_resource(BASE + url, Resource.from_contents(json.loads((DIR / name).read_text()),
                                                                            default_specification=DRAFT7))
    return {t: jsonschema.Draft7Validator(json.loads((DIR / f"{t}.json").read_text()), registry=registry)
            for t in TYPES}


def sdm_schema_errors(kv: dict[str, Any]) -> list[str]:
    """What the published schema of ``kv["type"]`` refuses (nothing for a type without one)."""
    validator = _validators().get(kv.get("type", ""))
    if validator is None:
        return []
    return [f"{kv['type']} {'/'.join(map(str, e.absolute_path)) or '(entity)'}: {e.message}"
            for e in validator.iter_errors(kv)]
