"""The reading model: what a measurement is, which quantities and units exist, and each point's role.

A reading is ``(site, point, timestamp, value, quality)``. In bulk, readings travel as a
pandas DataFrame with the columns of :data:`READING_COLUMNS` (``ts`` is ``int64``
milliseconds since the Unix epoch, UTC). Values are in the unit the point declares in the
site registry; :func:`unit_factor` converts them to the canonical unit of the quantity.
"""

from __future__ import annotations

from enum import IntFlag, StrEnum

import numpy as np
import pandas as pd


class Quantity(StrEnum):
    """What a point measures."""

    POWER = "power"  # canonical [kW]
    ENERGY = "energy"  # monotonic counter, canonical [kWh]
    TEMPERATURE = "temperature"  # [°C]
    HUMIDITY = "humidity"  # relative humidity [%]
    FLOW = "flow"  # volumetric flow [m3/h]
    WATER_VOLUME = "water_volume"  # monotonic counter, canonical [L]
    SETPOINT = "setpoint"  # a controllable temperature setpoint [°C]


class Role(StrEnum):
    """A point's place in the site energy balance (ISO/IEC 30134-2)."""

    FACILITY = "facility"  # total facility input from the grid
    IT = "it"  # IT equipment energy, with its measurement category
    COOLING = "cooling"  # cooling plant, with its subsystem
    LOSSES = "losses"  # power-distribution losses (transformers, UPS, PDU)
    LIGHTING = "lighting"  # lighting and other non-IT, non-cooling load
    RENEWABLE = "renewable"  # on-site renewable generation used by the site
    REUSED_HEAT = "reused_heat"  # heat exported for reuse (ISO/IEC 30134-6)
    WATER = "water"  # site water consumption (ISO/IEC 30134-9)
    SENSOR = "sensor"  # outside the energy balance: temperatures, humidity, flows, setpoints


class CoolingSubsystem(StrEnum):
    CHILLER = "chiller"
    CRAH = "crah"  # CRAH/CRAC units
    CDU = "cdu"
    PUMP = "pump"
    COOLING_TOWER = "cooling_tower"
    DRY_COOLER = "dry_cooler"


class Source(StrEnum):
    """The class of meter behind a point, in precedence order (first wins for one boundary)."""

    REVENUE_METER = "revenue_meter"
    SWITCHGEAR = "switchgear"
    UPS = "ups"
    PDU = "pdu"
    BMC = "bmc"
    SENSOR = "sensor"


SOURCE_PRECEDENCE: dict[Source, int] = {source: rank for rank, source in enumerate(Source)}


class CoolingArchitecture(StrEnum):
    AIR = "air"
    LIQUID = "liquid"
    HYBRID = "hybrid"


class Quality(IntFlag):
    """Per-reading quality flags. ``BAD`` readings are kept for audit but never enter a figure."""

    GOOD = 0
    SUBSTITUTED = 1  # value filled in by a collector or operator
    UNCERTAIN = 2  # device reported a questionable value
    BAD = 4  # device or collector says the value is wrong
    COLLECTOR_DOWN = 8  # synthetic marker: the collector could not reach the device


# quantity -> {accepted unit spelling: factor to the canonical unit}
UNITS: dict[Quantity, dict[str, float]] = {
    Quantity.POWER: {"kW": 1.0, "W": 1e-3, "MW": 1e3},
    Quantity.ENERGY: {"kWh": 1.0, "Wh": 1e-3, "MWh": 1e3},
    Quantity.TEMPERATURE: {"°C": 1.0, "degC": 1.0, "C": 1.0},
    Quantity.HUMIDITY: {"%": 1.0, "%RH": 1.0},
    Quantity.FLOW: {"m3/h": 1.0, "L/s": 3.6, "L/min": 0.06},
    Quantity.WATER_VOLUME: {"L": 1.0, "m3": 1e3},
    Quantity.SETPOINT: {"°C": 1.0, "degC": 1.0, "C": 1.0},
}

# which quantities a role may carry
ROLE_QUANTITIES: dict[Role, frozenset[Quantity]] = {
    Role.FACILITY: frozenset({Quantity.POWER, Quantity.ENERGY}),
    Role.IT: frozenset({Quantity.POWER, Quantity.ENERGY}),
    Role.COOLING: frozenset({Quantity.POWER, Quantity.ENERGY}),
    Role.LOSSES: frozenset({Quantity.POWER, Quantity.ENERGY}),
    Role.LIGHTING: frozenset({Quantity.POWER, Quantity.ENERGY}),
    Role.RENEWABLE: frozenset({Quantity.POWER, Quantity.ENERGY}),
    Role.REUSED_HEAT: frozenset({Quantity.POWER, Quantity.ENERGY}),
    Role.WATER: frozenset({Quantity.WATER_VOLUME, Quantity.FLOW}),
    Role.SENSOR: frozenset(Quantity),
}

COUNTER_QUANTITIES = frozenset({Quantity.ENERGY, Quantity.WATER_VOLUME})


def unit_factor(quantity: Quantity, unit: str) -> float:
    """Factor that converts a value in ``unit`` to the canonical unit of ``quantity``.

    Raises ``ValueError`` naming the accepted units when ``unit`` does not fit ``quantity``.
    """
    try:
        return UNITS[quantity][unit]
    except KeyError:
        accepted = ", ".join(UNITS[quantity])
        raise ValueError(f"unit {unit!r} does not fit quantity {quantity.value!r} (accepted: {accepted})") from None


READING_COLUMNS = ("site", "point", "ts", "value", "quality")


def readings_frame(
    site: object, point: object, ts_ms: object, value: object, quality: object = 0
) -> pd.DataFrame:
    """Build a readings DataFrame with the canonical column order and dtypes."""
    frame = pd.DataFrame({"site": site, "point": point, "ts": ts_ms, "value": value, "quality": quality})
    return frame.astype({"ts": np.int64, "value": np.float64, "quality": np.int64})[list(READING_COLUMNS)]


def empty_readings() -> pd.DataFrame:
    """A readings DataFrame with no rows and the canonical dtypes."""
    return readings_frame([], [], np.array([], dtype=np.int64), np.array([], dtype=np.float64), 0)
