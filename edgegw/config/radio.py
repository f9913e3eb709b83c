"""Config of radio sources, devices and declarative payload layouts."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import (
    AwareDatetime,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edgegw.config.base import Duration, _Section
from edgegw.drivers import DriverRegistry, LayoutDriver, LayoutField

# -- radio sources ----------------------------------------------------------------------------------

RYLR_BANDWIDTH_CODES = {7.8: 0, 10.4: 1, 15.6: 2, 20.8: 3, 31.25: 4, 41.7: 5, 62.5: 6, 125: 7, 250: 8, 500: 9}


class RylrSource(_Section):
    """A REYAX RYLR896/RYLR998 module on a serial port (AT commands)."""

    type: Literal["rylr"]
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    port: str | None = Field(None, description="serial device, e.g. /dev/ttyUSB0 or /dev/serial/by-id/...")
    simulate: Path | None = Field(None, description="field file: emulate the module on a pty instead of a port")
    baudrate: int = 115200
    address: int = Field(1, ge=0, le=65535)
    network_id: int = Field(18, ge=0, le=18)
    band: int = Field(920_600_000, ge=862_000_000, le=1_020_000_000, description="Hz")
    spreading_factor: int = Field(9, ge=7, le=12)
    bandwidth_khz: float = 125
    coding_rate: int = Field(1, ge=1, le=4)
    preamble: int = Field(12, ge=4, le=24)
    cpin: str | None = Field(None, pattern=r"^[0-9A-Fa-f]{8}([0-9A-Fa-f]{24})?$")
    payload_encoding: Literal["hex", "base64", "text"] = "hex"

    @field_validator("bandwidth_khz")
    @classmethod
    def _known_bandwidth(cls, v: float) -> float:
        if v not in RYLR_BANDWIDTH_CODES:
            raise ValueError(f"expected one of {sorted(RYLR_BANDWIDTH_CODES)} kHz")
        return v

    @model_validator(mode="after")
    def _port_or_simulate(self) -> RylrSource:
        if (self.port is None) == (self.simulate is None):
            raise ValueError("set exactly one of port (a real module) or simulate (a field file for the emulator)")
        return self

    def at_parameter(self) -> str:
        """The AT+PARAMETER argument: SF, bandwidth code, coding rate, preamble."""
        return f"{self.spreading_factor},{RYLR_BANDWIDTH_CODES[self.bandwidth_khz]},{self.coding_rate},{self.preamble}"


Source = RylrSource  # one module family so far; later families join a discriminated union on `type`


# -- devices and layouts ----------------------------------------------------------------------------

class Device(_Section):
    id: str = Field(pattern=r"^[A-Za-z0-9_.:-]+$", max_length=64)
    address: int = Field(ge=0, le=65535)
    driver: str
    source: str | None = None
    name: str = ""
    location: tuple[float, float] | None = Field(None, description="[latitude, longitude]")
    interval: Duration = Field(3600, description="expected reporting interval")
    require_auth: bool | None = Field(None, description="reject frames that are not authenticated; default: true"
                                      " when keys_file has a key for the device")
    accept_plain_until: AwareDatetime | None = Field(
        None, description="rollout window: until then a device with a key may also send plain frames (marked"
                          " unverified), e.g. 2027-03-31T23:59:59+09:00")

    @field_validator("driver")
    @classmethod
    def _driver_known(cls, v: str, info: ValidationInfo) -> str:
        drivers: DriverRegistry | None = (info.context or {}).get("drivers")
        if drivers is not None and v not in drivers:
            raise ValueError(f"unknown driver {v!r}; known drivers: {', '.join(drivers.names()) or 'none'}")
        return v

    @field_validator("location")
    @classmethod
    def _on_earth(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not (-90 <= v[0] <= 90 and -180 <= v[1] <= 180):
            raise ValueError("expected [latitude, longitude] in degrees, e.g. [35.6762, 139.6503]")
        return v


class LayoutFieldSpec(_Section):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    type: Literal["u8", "i8", "u16", "i16", "u32", "i32", "f32"]
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""
    min: float | None = None
    max: float | None = None
    counter: bool = False

    @field_validator("scale")
    @classmethod
    def _nonzero(cls, v: float) -> float:
        if v == 0:
            raise ValueError("scale must not be 0")
        return v


class Layout(_Section):
    """A declarative driver: the payload is these fields, in order, with no gaps."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    endian: Literal["big", "little"] = "big"
    fields: list[LayoutFieldSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_counter(self) -> Layout:
        if sum(f.counter for f in self.fields) > 1:
            raise ValueError("at most one field may be the frame counter (counter = true)")
        if any(f.counter and f.type not in ("u8", "u16", "u32") for f in self.fields):
            raise ValueError("the counter field must be unsigned (u8, u16 or u32)")
        return self

    def driver(self) -> LayoutDriver:
        return LayoutDriver(
            self.name,
            [LayoutField(f.name, f.type, f.scale, f.offset, f.unit, f.min, f.max, f.counter) for f in self.fields],
            self.endian,
            self.description,
        )
