"""Config of radio sources, devices and declarative payload layouts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import (
    AwareDatetime,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edgegw.config.base import Duration, _Section, did_you_mean
from edgegw.drivers import DriverRegistry, LayoutDriver, LayoutField

# -- radio sources ----------------------------------------------------------------------------------
# Each source type's config model lives beside its code (edgegw/radio/<family>.py); the registry
# collects the bundled ones and the plugins' into the union the [[sources]] entries are checked against.
from edgegw.radio.registry import SOURCE_TYPES
from edgegw.radio.rylr import RYLR_BANDWIDTH_CODES, RylrSource  # noqa: F401  (kept importable from here)

if TYPE_CHECKING:  # built at run time from the registry (plugins included): a static checker sees any model
    Source = Any
else:
    Source = Annotated[Union[tuple(t.config for t in SOURCE_TYPES.values())], Field(discriminator="type")]  # noqa: UP007


# -- devices and layouts ----------------------------------------------------------------------------

class Device(_Section):
    id: str = Field(pattern=r"^[A-Za-z0-9_.:-]+$", max_length=64)
    address: int = Field(ge=0, le=65535)
    driver: str
    source: str | None = None
    name: str = ""
    location: tuple[float, float] | None = Field(None, description="[latitude, longitude]")
    interval: Duration = Field(3600, description="expected reporting interval")
    rate_limit: int = Field(60, ge=0, description="frames accepted per interval, as a burst or spread out;"
                            " more are rejected and counted (a flood, or a sensor gone wrong); 0: no limit")
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
            raise ValueError(f"unknown driver {v!r}{did_you_mean(v, drivers.names())}; known drivers:"
                             f" {', '.join(drivers.names()) or 'none'}")
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
