"""The driver interface, the declarative layout driver, and driver discovery.

A driver turns a device's payload bytes into named values, and back (the simulator encodes with the
same driver the gateway decodes with). Drivers are pure: no I/O, no clock, no state.

Drivers are found in three places, in this order, and a name may be defined only once:

1. the bundled ``drivers/`` folder (installed as the ``edgegw_drivers`` package);
2. ``drivers_dir`` from the config: every ``*.py`` file in it;
3. the ``edgegw.drivers`` entry-point group of installed packages;

plus one :class:`LayoutDriver` per ``[[layouts]]`` table of the config.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import math
import pkgutil
import struct
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import ClassVar

from edgegw.errors import DecodeError, DriverLoadError
from edgegw.model import Value


@dataclass(frozen=True)
class ValueSpec:
    """What one decoded value means: its unit and the physically possible range.

    ``minimum``/``maximum`` bound what the sensor can measure; a value outside them is implausible
    (the rules flag it as a sensor fault) but it is still a reading, kept and forwarded.
    ``choices`` lists the allowed strings of an enumerated value.
    """

    unit: str = ""
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class Decoded:
    """A driver's result: the values, plus the frame counter (and its epoch, when the device sends one)."""

    values: dict[str, Value]
    counter: int | None = None
    epoch: int | None = None


class Driver:
    """Base class of device drivers.

    Subclasses set ``name``, ``description``, ``values`` and ``counter_bits`` (the width of the frame
    counter on air, so the gateway can tell a wrap-around or device reset from a retransmission), and
    implement :meth:`decode` and :meth:`encode`. ``max_payload``, the largest payload the driver
    decodes in bytes, lets ``edgegw config check`` tell whether the device's frames fit its radio
    module; None (not declared) skips that check.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    values: ClassVar[Mapping[str, ValueSpec]] = {}
    counter_bits: ClassVar[int | None] = None
    max_payload: ClassVar[int | None] = None

    def decode(self, payload: bytes) -> Decoded:
        """Decode one payload; raise :class:`DecodeError` with a short reason when it is not ours."""
        raise NotImplementedError

    def encode(self, values: Mapping[str, Value], counter: int | None = None) -> bytes:
        """Build the payload a device would send for these values (used by the simulator and tests)."""
        raise NotImplementedError

    def units(self) -> dict[str, str]:
        return {k: v.unit for k, v in self.values.items() if v.unit}


# -- declarative layouts ----------------------------------------------------------------------------

FIELD_TYPES: dict[str, str] = {
    "u8": "B", "i8": "b", "u16": "H", "i16": "h", "u32": "I", "i32": "i", "f32": "f",
}


@dataclass(frozen=True)
class LayoutField:
    name: str
    type: str
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""
    minimum: float | None = None
    maximum: float | None = None
    counter: bool = False


class LayoutDriver(Driver):
    """A driver described by data: a fixed sequence of integer/float fields.

    Each field is decoded as ``raw * scale + offset``. A field marked ``counter`` is the frame counter
    and is not a value. The payload must be exactly as long as the layout.
    """

    def __init__(self, name: str, fields: Iterable[LayoutField], endian: str = "big", description: str = ""):
        self.name = name  # type: ignore[misc]  # per instance: one layout, one driver
        self.description = description or f"declarative layout {name!r}"  # type: ignore[misc]
        self.fields = tuple(fields)
        self._struct = struct.Struct(("<" if endian == "little" else ">") + "".join(FIELD_TYPES[f.type] for f in self.fields))
        counters = [f for f in self.fields if f.counter]
        self.max_payload = self._struct.size  # type: ignore[misc]
        self.counter_bits = 8 * struct.calcsize(FIELD_TYPES[counters[0].type]) if counters else None  # type: ignore[misc]
        self.values = {  # type: ignore[misc]
            f.name: ValueSpec(unit=f.unit, minimum=f.minimum, maximum=f.maximum) for f in self.fields if not f.counter
        }

    def decode(self, payload: bytes) -> Decoded:
        if len(payload) != self._struct.size:
            raise DecodeError("wrong_length", f"{self.name} expects {self._struct.size} bytes, got {len(payload)}")
        values: dict[str, Value] = {}
        counter = None
        for f, raw in zip(self.fields, self._struct.unpack(payload), strict=True):
            if f.counter:
                counter = int(raw)
            elif f.type == "f32" and not math.isfinite(raw):
                raise DecodeError("bad_value", f"{f.name} is {raw}")
            elif f.type == "f32":
                values[f.name] = raw * f.scale + f.offset
            else:
                values[f.name] = _scaled(raw, f.scale, f.offset)
        return Decoded(values, counter)

    def encode(self, values: Mapping[str, Value], counter: int | None = None) -> bytes:
        raws: list[float] = []
        for f in self.fields:
            if f.counter:
                raws.append((counter or 0) % (1 << (self.counter_bits or 0)))
            else:
                raw = (float(values[f.name]) - f.offset) / f.scale
                raws.append(raw if f.type == "f32" else round(raw))
        return self._struct.pack(*raws)


def _scaled(raw: int, scale: float, offset: float) -> Value:
    if scale == 1.0 and offset == 0.0:
        return raw
    # Round away the binary noise of the scale (0.1 * 3 = 0.30000000000000004) at the scale's precision.
    digits = max(0, -math.floor(math.log10(abs(scale)))) + 2 if scale else 6
    return round(raw * scale + offset, digits)


# -- discovery --------------------------------------------------------------------------------------

@dataclass
class DriverRegistry:
    """Drivers by name, and where each came from (for ``edgegw drivers list``)."""

    drivers: dict[str, Driver] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)

    def add(self, driver: Driver, origin: str) -> None:
        if not driver.name:
            raise DriverLoadError(f"{origin}: driver class {type(driver).__name__} has no name")
        if driver.name in self.drivers:
            raise DriverLoadError(
                f"{origin}: driver name {driver.name!r} is already defined by {self.origins[driver.name]}"
            )
        self.drivers[driver.name] = driver
        self.origins[driver.name] = origin

    def __contains__(self, name: object) -> bool:
        return name in self.drivers

    def __getitem__(self, name: str) -> Driver:
        return self.drivers[name]

    def names(self) -> list[str]:
        return sorted(self.drivers)


def _drivers_in(module: ModuleType) -> list[Driver]:
    return [
        cls()
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, Driver) and cls.__module__ == module.__name__ and cls.name
    ]


def load_drivers(drivers_dir: Path | None = None, layouts: Iterable[LayoutDriver] = ()) -> DriverRegistry:
    """Discover every driver; raise :class:`DriverLoadError` naming the file that failed."""
    registry = DriverRegistry()
    import edgegw_drivers

    for info in pkgutil.iter_modules(edgegw_drivers.__path__):
        module = importlib.import_module(f"edgegw_drivers.{info.name}")
        for driver in _drivers_in(module):
            registry.add(driver, f"bundled:{info.name}")

    if drivers_dir is not None:
        for path in sorted(Path(drivers_dir).glob("*.py")):
            spec = importlib.util.spec_from_file_location(f"edgegw_site_drivers.{path.stem}", path)
            assert spec and spec.loader
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module  # dataclasses and pickling look modules up here
            try:
                spec.loader.exec_module(module)
            except Exception as exc:  # a site driver with a typo must name itself, not kill discovery silently
                raise DriverLoadError(f"{path}: cannot load driver module: {exc!r}") from exc
            for driver in _drivers_in(module):
                registry.add(driver, str(path))

    for ep in importlib.metadata.entry_points(group="edgegw.drivers"):
        try:
            obj = ep.load()
        except Exception as exc:
            raise DriverLoadError(f"entry point {ep.name} ({ep.value}): {exc!r}") from exc
        for driver in _drivers_in(obj) if isinstance(obj, ModuleType) else [obj()]:
            registry.add(driver, f"entry point {ep.value}")

    for layout in layouts:
        registry.add(layout, "config [[layouts]]")
    return registry
