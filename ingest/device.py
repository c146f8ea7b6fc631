"""The device contract every protocol module (Modbus, SNMP, Redfish, MQTT) follows.

A protocol module provides a pydantic config class derived from :class:`DeviceConfig` (with a
``protocol: Literal["<name>"]`` field, so a config file's ``devices:`` list is a discriminated
union) whose :meth:`~DeviceConfig.make_reader` returns a :class:`DeviceReader`::

    reader = config.make_reader()   # no I/O here
    reader.open()                   # connect, log in, subscribe
    values = reader.read()          # one poll: FieldValue list; CollectorError on failure
    reader.close()                  # idempotent

The polling engine (:mod:`dcpue.ingest.poller`) calls ``read`` with the device's own interval and
timeout. ``read`` is never called concurrently for one reader, but successive calls may come from
different threads. Device values keep the device's own unit; the engine converts them to the unit
the registry declares for the point they are mapped to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dcpue.model import Quality

NAME_PATTERN = r"^[A-Za-z0-9_.:-]+$"


@dataclass(frozen=True, slots=True)
class FieldValue:
    """One value a device reported.

    ``field`` is the profile's canonical name, carrying its unit (``output_power_w``,
    ``inlet_temp_c``); ``unit`` spells the unit as :data:`dcpue.model.UNITS` does (``W``, ``kWh``,
    ``°C``, ``%``, ``m3/h``, ``L/min``) or is ``""`` for a unitless value (a status or count).
    ``value`` is NaN when the device answered without a usable number; ``quality`` then says why.
    ``ts_ms`` is the device's own timestamp [ms, UTC] when it sends one (MQTT), else None: poll time.
    """

    field: str
    value: float
    unit: str
    quality: Quality = Quality.GOOD
    ts_ms: int | None = None

    def __post_init__(self) -> None:
        if math.isnan(self.value) and not self.quality & (Quality.BAD | Quality.COLLECTOR_DOWN):
            object.__setattr__(self, "quality", self.quality | Quality.BAD)


@runtime_checkable
class DeviceReader(Protocol):
    """A connection to one device."""

    def open(self) -> None:
        """Connect (and authenticate/subscribe); raise :class:`~dcpue.errors.CollectorError` on failure."""

    def read(self) -> list[FieldValue]:
        """Read the device once; raise :class:`~dcpue.errors.CollectorError` naming the problem."""

    def close(self) -> None:
        """Release the connection; idempotent, never raises."""


class DeviceConfig(BaseModel):
    """What every device entry of a collector configuration has, whatever its protocol.

    ``points`` maps the device's field names to registry point ids of ``site``; fields not listed
    are read but not published (``dcpue probe`` shows them all).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    protocol: str
    name: str = Field(min_length=1, max_length=128, pattern=NAME_PATTERN)
    site: str = Field(min_length=1)
    interval_s: float = Field(10.0, gt=0, le=86_400)
    timeout_s: float = Field(5.0, gt=0, le=300)
    # spread the first and every later poll by up to this much, so a thousand devices configured with
    # the same interval do not all hit the network in the same instant; default: 10 % of the interval
    jitter_s: float | None = Field(None, ge=0)
    enabled: bool = True
    points: dict[str, str] = Field(default_factory=dict)

    example_url: ClassVar[str] = ""  # quoted in the error for a malformed probe URL

    @model_validator(mode="after")
    def _check_timing(self) -> Self:
        if self.timeout_s > self.interval_s:
            raise ValueError(f"timeout_s ({self.timeout_s}) must not exceed interval_s ({self.interval_s})")
        return self

    @property
    def effective_jitter_s(self) -> float:
        """The jitter actually applied [s]."""
        return self.interval_s * 0.1 if self.jitter_s is None else min(self.jitter_s, self.interval_s)

    def declared_unit(self, field: str) -> str | None:
        """The unit ``field`` will be reported in, when the configuration already says so (profiles,
        subscriptions), else None (known only once read). Lets a wrong mapping fail at start-up."""
        return None

    def make_reader(self) -> DeviceReader:
        """A reader for this device (no I/O until :meth:`DeviceReader.open`)."""
        raise NotImplementedError

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """A config for ``dcpue probe URL``: everything the URL and ``options`` say, defaults otherwise."""
        raise NotImplementedError
