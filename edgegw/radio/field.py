"""A virtual field of sensors that transmit through an emulated radio module.

A field file (TOML) lists devices with their address, driver, reporting interval and how their
values move over time::

    [air]                         # what the sensors transmit on (the gateway must match it)
    band = 920600000
    parameter = "9,7,1,12"

    [[devices]]
    address = 21
    driver = "water_level"
    interval = "5s"
    values = { level = { start = 850, per_hour = 1200, noise = 4 }, water_temperature = 14.5, battery = 3.6 }
    events = [ { at = "40s", set = { battery = 3.3 } } ]

A value is a constant, or a curve ``{start, per_hour, amplitude, period, noise}`` (linear drift plus
a sine plus Gaussian noise), clamped into the driver's declared physical range.

``[faults]`` gives per-frame probabilities of sending garbage instead (``garbage``, ``truncated``,
``bad_hex``, ``wrong_length``) or the same frame twice (``duplicate``).
"""

from __future__ import annotations

import math
import random
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgegw.config import Duration
from edgegw.config.base import WRITTEN
from edgegw.config.locate import key_lines, key_path, place
from edgegw.drivers import Driver, DriverRegistry
from edgegw.envelope import seal
from edgegw.errors import ConfigError
from edgegw.radio.emulator import Air, RylrEmulator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Curve(_Strict):
    start: float
    per_hour: float = 0.0
    amplitude: float = 0.0
    period: Duration = 3600.0
    noise: float = 0.0


class Event(_Strict):
    at: Duration
    set: dict[str, Curve | float | int | str | bool]


class FieldDevice(_Strict):
    address: int = Field(ge=0, le=65535)
    driver: str
    interval: Duration
    values: dict[str, Curve | float | int | str | bool]
    events: list[Event] = []
    rssi: int = -70
    snr: float = 8.0


class Faults(_Strict):
    garbage: float = Field(0.0, ge=0, le=1)
    truncated: float = Field(0.0, ge=0, le=1)
    bad_hex: float = Field(0.0, ge=0, le=1)
    wrong_length: float = Field(0.0, ge=0, le=1)
    duplicate: float = Field(0.0, ge=0, le=1)


class FieldSpec(_Strict):
    air: Air | None = None
    devices: list[FieldDevice] = Field(min_length=1)
    faults: Faults = Faults()


def load_field(path: Path) -> FieldSpec:
    """Read and check a field file; :class:`ConfigError` lists its problems as a config's are listed."""
    try:
        text = Path(path).read_text()
        return FieldSpec.model_validate(tomllib.loads(text), context=WRITTEN)
    except FileNotFoundError:
        raise ConfigError(str(path), ["file not found"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [f"not valid TOML: {exc}"]) from None
    except ValidationError as exc:
        lines, raw = key_lines(text), tomllib.loads(text)
        problems = [place(f"{key_path(e['loc'])}: {_message(e)}", lines, raw) for e in exc.errors()]
        raise ConfigError(str(path), [p for p, _ in sorted(problems, key=lambda p: p[1])]) from None


def _message(err: Any) -> str:
    if err["type"] == "missing":
        return "required key is missing"
    if err["type"] == "extra_forbidden":
        return "unknown key"
    return str(err["msg"]).removeprefix("Value error, ")


def value_at(spec: Curve | float | int | str | bool, t: float, rng: random.Random) -> Any:
    if not isinstance(spec, Curve):
        return spec
    return (spec.start + spec.per_hour * t / 3600 + spec.amplitude * math.sin(2 * math.pi * t / spec.period)
            + (rng.gauss(0, spec.noise) if spec.noise else 0.0))


@dataclass
class Sent:
    """One frame the field put on the air (what a test expects the gateway to report)."""

    address: int
    driver: str
    counter: int | None
    values: dict[str, Any]
    data: str


@dataclass
class VirtualDevice:
    spec: FieldDevice
    driver: Driver
    counter: int = 0
    key: bytes | None = None  # provisioned as a real sensor is (see edgegw.envelope): its frames are sealed
    # Kept in a real sensor's non-volatile memory; here it starts from the clock (tenths of a second
    # since 2026), so that a restarted demo's frames are not replays of the last run's.
    frame_counter: int = field(default_factory=lambda: int((time.time() - 1_767_225_600) * 10))
    next_at: float = 0.0
    events_due: list[float] = field(default_factory=list)

    def due(self) -> float:
        """When this device transmits next: its heartbeat, or earlier when an event happens (a trap
        sensor reports the moment it is sprung, not at its next heartbeat)."""
        return min([self.next_at, *self.events_due[:1]])

    def values_at(self, t: float, rng: random.Random) -> dict[str, Any]:
        specs = dict(self.spec.values)
        for event in self.spec.events:
            if t >= event.at:
                specs.update(event.set)
        values = {}
        for name, spec in specs.items():
            v = value_at(spec, t, rng)
            vs = self.driver.values.get(name)
            if vs is not None and isinstance(v, float):
                lo = vs.minimum if vs.minimum is not None else -math.inf
                hi = vs.maximum if vs.maximum is not None else math.inf
                v = min(max(v, lo), hi)
            values[name] = v
        return values


@dataclass
class VirtualField:
    """Runs a field against an emulator: each device transmits on its interval."""

    spec: FieldSpec
    drivers: DriverRegistry
    emulator: RylrEmulator
    seed: int | None = None
    keys: dict[int, bytes] = field(default_factory=dict)  # by address: the sensors that seal their frames
    sent: list[Sent] = field(default_factory=list)
    faults_sent: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        unknown = sorted({d.driver for d in self.spec.devices if d.driver not in self.drivers})
        if unknown:
            raise ConfigError("field", [f"devices: unknown driver(s) {unknown}; known: {self.drivers.names()}"])
        self.devices = [VirtualDevice(d, self.drivers[d.driver], key=self.keys.get(d.address))
                        for d in self.spec.devices]
        if self.spec.air is not None and isinstance(getattr(self.emulator, "air", None), Air):
            self.emulator.air = self.spec.air  # [air] is an RYLR's; other modules hear what their config says

    def transmit(self, device: VirtualDevice, t: float) -> None:
        """Encode the device's current values and put the frame on the air (with faults, if configured)."""
        values = device.values_at(t, self.rng)
        payload = device.driver.encode(values, device.counter)
        decoded_counter = device.counter % (1 << device.driver.counter_bits) if device.driver.counter_bits else None
        device.counter += 1
        if device.key is not None:
            device.frame_counter += 1
            payload = seal(device.key, device.spec.address, device.frame_counter, payload)
            decoded_counter = device.frame_counter
        data = payload.hex().upper()
        fault = self._pick_fault()
        rssi = device.spec.rssi + self.rng.randint(-3, 3)
        snr = round(device.spec.snr + self.rng.uniform(-1, 1), 1)
        if fault is None or fault == "duplicate":
            if self.emulator.receive(device.spec.address, data, rssi, snr):
                self.sent.append(Sent(device.spec.address, device.driver.name, decoded_counter, values, data))
            if fault == "duplicate":
                self.emulator.receive(device.spec.address, data, rssi, snr)
        else:
            self.emulator.write_line(self._corrupt(fault, device.spec.address, data, rssi, snr))
        if fault:
            self.faults_sent[fault] = self.faults_sent.get(fault, 0) + 1

    def _pick_fault(self) -> str | None:
        for name, p in self.spec.faults:
            if p and self.rng.random() < p:
                return name
        return None

    def _corrupt(self, fault: str, address: int, data: str, rssi: int, snr: float) -> str:
        if fault == "garbage":
            return "".join(chr(self.rng.randint(32, 126)) for _ in range(self.rng.randint(1, 40)))
        if fault == "truncated":
            line = f"+RCV={address},{len(data)},{data},{rssi},{snr:g}"
            return line[: self.rng.randint(5, len(line) - 8)]
        if fault == "bad_hex":
            return f"+RCV={address},{len(data)},{'ZZ' + data[2:]},{rssi},{snr:g}"
        return f"+RCV={address},{len(data) + 3},{data},{rssi},{snr:g}"  # wrong_length

    def run(self, stop: threading.Event, speed: float = 1.0) -> None:
        """Transmit in (sped-up) real time until ``stop``; devices start at random offsets."""
        start = time.monotonic()
        for d in self.devices:
            d.next_at = self.rng.uniform(0, min(d.spec.interval, 3.0))
            d.events_due = sorted(e.at for e in d.spec.events)
        while not stop.is_set():
            t = (time.monotonic() - start) * speed
            device = min(self.devices, key=VirtualDevice.due)
            at = device.due()
            if at > t:
                stop.wait(min((at - t) / speed, 0.5))
                continue
            if self.emulator.plugged:
                self.transmit(device, at)
            if device.events_due and device.events_due[0] == at:
                device.events_due.pop(0)
            else:
                device.next_at += device.spec.interval
