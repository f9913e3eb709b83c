"""Source types by their config ``type``: the bundled module families and third-party plugins.

A source type is a :class:`SourceType`: its config model (a pydantic section whose ``type`` field is
a one-value Literal), a factory that builds the running :class:`~edgegw.radio.Source`, and
optionally an emulator factory for ``simulate``. Third-party packages add types through the
``edgegw.sources`` entry-point group; each entry point loads a :class:`SourceType`::

    [project.entry-points."edgegw.sources"]
    my_module = "my_package.source:SOURCE_TYPE"

The daemon builds every source through :func:`build_source`, so a new module family touches no
other file.
"""

from __future__ import annotations

import importlib.metadata
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from edgegw.radio import ReadTurn, Source


@dataclass(frozen=True)
class SourceType:
    """One kind of radio source: what its config looks like, and how to run (and emulate) it."""

    config: type[BaseModel]  # with a `type: Literal["<name>"]` field
    build: Callable[[Any, Any, ReadTurn], Source]  # (config, port: str, or None for SPI radios, read turn)
    emulator: Callable[[Any, Path], Any] | None = None  # (config, link) -> the module's emulator, for `simulate`
    problems: Callable[[Any], list[str]] | None = None  # what stops the source running here (a missing extra)

    @property
    def name(self) -> str:
        (tag,) = typing.get_args(self.config.model_fields["type"].annotation)
        return tag


def serial_family(config: type[BaseModel], radio: Callable[[Any, str, ReadTurn], Source], emulator: str) -> SourceType:
    """A serial module family: its radio reads the configured port, its emulator (``"module:Class"``,
    imported when a config simulates it) takes the pty's link."""

    def build(source: Any, port: Any, read_turn: ReadTurn) -> Source:
        assert port is not None  # the config requires a port where it does not simulate
        return radio(source, port, read_turn)

    def emulate(source: Any, link: Path) -> Any:
        module, name = emulator.split(":")
        return getattr(importlib.import_module(module), name)(link)

    return SourceType(config, build, emulate)


def _bundled() -> list[SourceType]:
    from edgegw.radio import e220, es920lr, im920sl, rylr, sx127x

    return [
        serial_family(rylr.RylrSource, rylr.RylrRadio, "edgegw.radio.emulator:RylrEmulator"),
        es920lr.SOURCE_TYPE,
        im920sl.SOURCE_TYPE,
        e220.SOURCE_TYPE,
        sx127x.SOURCE_TYPE,
    ]


def _plugins() -> tuple[list[SourceType], list[str]]:
    """Entry-point source types, and one line per plugin that failed to load (reported by config check)."""
    found, broken = [], []
    for ep in importlib.metadata.entry_points(group="edgegw.sources"):
        try:
            obj = ep.load()
            if not isinstance(obj, SourceType):
                raise TypeError(f"expected an edgegw.radio.registry.SourceType, got {type(obj).__name__}")
            found.append(obj)
        except Exception as exc:  # a broken plugin must name itself, not stop every other source
            broken.append(f"entry point {ep.name} ({ep.value}): {exc!r}")
    return found, broken


def _load() -> tuple[dict[str, SourceType], list[str]]:
    plugins, broken = _plugins()
    types: dict[str, SourceType] = {}
    for t in [*_bundled(), *plugins]:
        if t.name in types:
            broken.append(f"source type {t.name!r} is registered twice; the first one is used")
            continue
        types[t.name] = t
    return types, broken


SOURCE_TYPES, PLUGIN_PROBLEMS = _load()


def build_source(config: Any, port: str | None, read_turn: ReadTurn) -> Source:
    """The running source for one ``[[sources]]`` entry, reading ``port`` (None for SPI radios)."""
    return SOURCE_TYPES[config.type].build(config, port, read_turn)


def build_emulator(config: Any, link: Path) -> Any:
    """An emulator of the source's module (a pty at ``link``), for ``simulate``; ValueError if it has none.

    It offers what :class:`~edgegw.radio.field.VirtualField` drives: ``plug``, ``unplug``, ``plugged``,
    ``receive(address, hex_data, rssi, snr)``, ``write_line`` and an ``air`` attribute."""
    make = SOURCE_TYPES[config.type].emulator
    if make is None:
        raise ValueError(f"source type {config.type!r} has no emulator to simulate with")
    return make(config, link)


def source_problems(configs: list[Any]) -> list[str]:
    """What stops configured sources running on this machine (e.g. an extra not installed), by key path."""
    out = []
    for i, c in enumerate(configs):
        check = SOURCE_TYPES[c.type].problems
        out += [f"sources[{i}].type: {p}" for p in (check(c) if check else [])]
    return out


STANDALONE = ("rylr", "es920lr", "im920sl", "e220")  # emulators another process can use: a pty and nothing else


def standalone_emulator(kind: str, link: Path) -> Any:
    """A pty emulator of module type ``kind`` at ``link``, for ``edgegw simulate``; ValueError saying
    what to do instead for a radio no pty can stand in for (a chip on SPI)."""
    make = SOURCE_TYPES[kind].emulator if kind in STANDALONE else None
    if make is None:
        raise ValueError(f"{kind!r} is not a serial module: no pseudo-terminal can stand in for it. Let the daemon"
                         f" emulate it instead: in its [[sources]] entry, set simulate = \"FIELD.toml\" (a field file,"
                         f" e.g. \"jp-field.toml\") in place of the hardware; see configs/{kind}.toml")
    return make(None, link)
