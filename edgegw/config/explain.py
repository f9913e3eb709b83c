"""Pydantic's validation errors in an installer's words: the key path as the file writes it, what is
expected, the close name of a misspelt key or type, the unit of a range."""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Union

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from edgegw.config.base import _duration, _size, did_you_mean
from edgegw.config.locate import key_path
from edgegw.config.rules import RULE_DEFAULTS
from edgegw.config.uplinks import _URL_EXAMPLE, UPLINK_TYPES
from edgegw.radio.registry import SOURCE_TYPES


def _clean_loc(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """A pydantic error location without its discriminator tags (right after a list index) and
    validator names: the keys as the file writes them."""
    out: list[int | str] = []
    for i, part in enumerate(loc):
        if isinstance(part, str) and ((i and isinstance(loc[i - 1], int) and part in _TAGS)
                                      or part.startswith("function-")):
            continue
        out.append(part)
    return tuple(out)


_TAGS = (*SOURCE_TYPES, *UPLINK_TYPES, *RULE_DEFAULTS, "command")


def loc_path(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as the key path an installer reads, e.g. ``devices[3].driver``."""
    return key_path(_clean_loc(loc))


def _as_model(ann: Any, value: Any) -> Any:
    """What an annotation validates ``value`` as: a union resolved by the item's ``type``."""
    while True:
        origin = typing.get_origin(ann)
        if origin is Annotated:
            ann = typing.get_args(ann)[0]
        elif origin in (Union, types.UnionType):
            members = [a for a in typing.get_args(ann) if a is not type(None)]
            tag = value.get("type") if isinstance(value, dict) else None
            by_tag = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)
                      and "type" in m.model_fields and tag in typing.get_args(m.model_fields["type"].annotation)]
            if len(by_tag) != 1 and len(members) != 1:
                return None
            ann = by_tag[0] if by_tag else members[0]
        else:
            return ann


def _section_at(loc: tuple[int | str, ...], raw: Any, root: type[BaseModel]) -> type[BaseModel] | None:
    """The config section (model) that holds the last key of ``loc``, following the raw file
    through lists, tables and typed unions; None where the file's shape is not the model's."""
    ann: Any = root
    value = raw
    for part in loc[:-1]:
        ann = _as_model(ann, value)
        origin = typing.get_origin(ann)
        if origin is list and isinstance(part, int):
            ann = typing.get_args(ann)[0]
            value = value[part] if isinstance(value, list) and part < len(value) else None
        elif origin is dict:
            ann = typing.get_args(ann)[1]
            value = value.get(part) if isinstance(value, dict) else None
        elif isinstance(ann, type) and issubclass(ann, BaseModel) and part in ann.model_fields:
            ann = ann.model_fields[str(part)].annotation
            value = value.get(part) if isinstance(value, dict) else None
        else:
            return None
    ann = _as_model(ann, value)
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _unit(field: FieldInfo) -> str:
    """The unit a field's numbers are in: declared (``json_schema_extra={"unit": "Hz"}``), or that of
    its type (a Duration is in seconds, a Size in bytes)."""
    extra = field.json_schema_extra
    if isinstance(extra, dict) and isinstance(extra.get("unit"), str):
        return str(extra["unit"])
    metadata = [*field.metadata, *(m for a in typing.get_args(field.annotation) for m in getattr(a, "__metadata__", ()))]
    for m in metadata:
        if getattr(m, "func", None) is _duration:
            return "s"
        if getattr(m, "func", None) is _size:
            return "bytes"
    return ""


# What a missing key is, where "required key is missing" alone would leave an installer guessing.
_MISSING_HINTS = {
    "apikey": ": the API key of the IoT Agent's service group (ask the platform team), "
              'e.g. "4jggokgpepnvsb2uv4s40d59ov"',
    "url": f": the context broker's base URL, {_URL_EXAMPLE}",
}


_RANGE_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


def describe(err: dict[str, Any], raw: Any, root: type[BaseModel]) -> list[str]:
    """One pydantic error of validating ``raw`` as ``root`` (the whole config), as problem lines."""
    loc = _clean_loc(err["loc"])
    path = key_path(loc)  # cleaned once: a field named like a tag (an action's command) stays
    msg = err["msg"].removeprefix("Value error, ")
    section = _section_at(loc, raw, root) if loc else None
    if err["type"] == "extra_forbidden":
        key = loc[-1]
        if len(loc) > 1 and key in root.model_fields:
            msg = (f"unknown key here; {key} is a top-level key: TOML puts every key below a [section] header "
                   "into that section, so move it above the first [section] or [[section]]")
        elif section is not None and (hint := did_you_mean(key, section.model_fields)):
            msg = f"unknown key{hint}"
        else:
            msg = "unknown key (misspelt? see configs/ for the keys each section takes)"
    elif err["type"] == "missing":
        msg = "required key is missing" + _MISSING_HINTS.get(str(loc[-1]), "")
    elif err["type"] == "union_tag_not_found":
        tags = {"rules": tuple(RULE_DEFAULTS), "actions": ("command", "mqtt"),
                "sources": tuple(SOURCE_TYPES)}.get(str(loc[0]), UPLINK_TYPES)
        return [f"{path}.type: required key is missing; expected one of: {', '.join(map(repr, tags))}"]
    elif err["type"] == "union_tag_invalid":
        tag = err["input"].get("type")
        known = [t.strip(" '") for t in err["ctx"]["expected_tags"].split(",")]
        return [f"{path}.type: unknown type {tag!r}{did_you_mean(tag, known)}; expected one of:"
                f" {err['ctx']['expected_tags']}"]
    elif err["type"] == "list_type" and len(loc) == 1 and isinstance(err.get("input"), dict):
        msg = (f"expected a list of tables: write [[{loc[0]}]] (double brackets) above each entry, "
               f"not [{loc[0]}]")
    elif err["type"] in ("list_type", "path_type") and section is not None and str(loc[-1]) in section.model_fields:
        shape = "a list" if err["type"] == "list_type" else 'a path in quotes, e.g. "/var/lib/edgegw"'
        about = section.model_fields[str(loc[-1])].description
        msg = f"expected {shape}" + (f": {about}" if about and err["type"] == "list_type" else "")
        msg += f" (got {err['input']!r})"
    elif err["type"] in _RANGE_ERRORS and section is not None and str(loc[-1]) in section.model_fields \
            and (unit := _unit(section.model_fields[str(loc[-1])])):
        got = f"{err['input']} {unit}" if isinstance(err["input"], int | float) else repr(err["input"])
        msg = f"{msg} {unit} (got {got})"
    elif err["type"] not in ("value_error", "assertion_error") and "input" in err and not isinstance(err["input"], dict | list):
        msg = f"{msg} (got {err['input']!r})"
    if "\n" in msg:  # cross-reference problems carry their own key paths
        return msg.split("\n")
    return [f"{path}: {msg}" if path else msg]
