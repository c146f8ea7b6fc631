"""The site registry: every data center, its metadata and its metering points.

Loaded from YAML (see ``deploy/sites/guizhou-demo.yaml``) with :func:`load_registry`,
which validates it completely before anything starts and raises :class:`ConfigError`
naming the file, the site/point and the problem.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dcpue.errors import ConfigError
from dcpue.model import (
    COUNTER_QUANTITIES,
    ROLE_QUANTITIES,
    SOURCE_PRECEDENCE,
    CoolingArchitecture,
    CoolingSubsystem,
    Quantity,
    Role,
    Source,
    unit_factor,
)
from dcpue.yamlio import read_yaml

# China's national average electricity CO2 emission factor for 2022, 0.5366 kgCO2/kWh, as published
# by the Ministry of Ecology and Environment and the National Bureau of Statistics (2024). Earlier
# reporting rules used 0.5703 (MEE 2023 notice on power-sector reporting). Override per site.
DEFAULT_GRID_EMISSION_FACTOR = 0.5366

# GB 32100-2015 unified social credit code (统一社会信用代码): 18 characters of this alphabet (no I, O, S,
# V, Z), the last a check character over the first 17 with these weights (3^i mod 31).
CREDIT_CODE_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_CREDIT_CODE_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)


def credit_code_check_char(first17: str) -> str:
    """The GB 32100-2015 check character of the first 17 characters of a unified social credit code."""
    total = sum(CREDIT_CODE_ALPHABET.index(c) * w for c, w in zip(first17, _CREDIT_CODE_WEIGHTS, strict=True))
    return CREDIT_CODE_ALPHABET[(31 - total % 31) % 31]


def credit_code_problem(code: str) -> str | None:
    """Why ``code`` is not a valid unified social credit code, or None when it is."""
    if len(code) != 18:
        return f"must have 18 characters, has {len(code)}"
    bad = sorted({c for c in code if c not in CREDIT_CODE_ALPHABET})
    if bad:
        return f"has characters outside the GB 32100 alphabet: {''.join(bad)!r} (upper case, no I, O, S, V, Z)"
    expected = credit_code_check_char(code[:17])
    if code[17] != expected:
        return f"check character is {code[17]!r}, GB 32100-2015 gives {expected!r}: a typing error?"
    return None


class _Frozen(BaseModel):
    # allow_inf_nan: .inf/.nan pass gt/ge bounds (design_it_kw: .inf) and would reach every figure silently
    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False, allow_inf_nan=False)


class Point(_Frozen):
    """A meter or sensor of one site.

    ``boundary`` groups points that measure the same energy flow (redundant meters);
    within a boundary the :class:`~dcpue.model.Source` precedence picks one. Points with
    distinct boundaries in the same role are summed.
    """

    id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:/-]+$")
    role: Role
    quantity: Quantity
    unit: str
    source: Source = Source.SENSOR
    it_category: Literal[1, 2, 3] | None = None
    cooling_subsystem: CoolingSubsystem | None = None
    boundary: str | None = None
    rated_kw: float | None = Field(default=None, gt=0)  # bounds a plausible energy delta
    rollover: float | None = Field(default=None, gt=0)  # counter maximum before it wraps, in ``unit``
    collector: str | None = None  # which collector feeds it (simulator, modbus, snmp, …)
    tags: dict[str, str] = Field(default_factory=dict)  # e.g. {"location": "rack_inlet"}
    # the meter behind the point, for regulators' meter registries (all optional)
    meter_serial: str | None = Field(default=None, max_length=64)
    accuracy_class: str | None = Field(default=None, max_length=16)  # e.g. "0.5S" (GB/T 17215)
    calibrated: date | None = None  # last calibration (检定) date
    calibration_due: date | None = None  # next calibration due

    @model_validator(mode="after")
    def _check(self) -> Point:
        try:
            unit_factor(self.quantity, self.unit)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        if self.quantity not in ROLE_QUANTITIES[self.role]:
            allowed = ", ".join(sorted(q.value for q in ROLE_QUANTITIES[self.role]))
            raise ValueError(
                f"role {self.role.value!r} cannot carry quantity {self.quantity.value!r} (allowed: {allowed})"
            )
        if self.role is Role.IT and self.it_category is None:
            raise ValueError("an IT point needs it_category: 1 (UPS output), 2 (PDU output) or 3 (IT input)")
        if self.role is not Role.IT and self.it_category is not None:
            raise ValueError("it_category is only valid on role 'it'")
        if self.role is Role.COOLING and self.cooling_subsystem is None:
            allowed = ", ".join(s.value for s in CoolingSubsystem)
            raise ValueError(f"a cooling point needs cooling_subsystem (one of: {allowed})")
        if self.role is not Role.COOLING and self.cooling_subsystem is not None:
            raise ValueError("cooling_subsystem is only valid on role 'cooling'")
        if self.rated_kw is not None and self.quantity not in (Quantity.POWER, Quantity.ENERGY):
            raise ValueError("rated_kw is only valid on power and energy points")
        if self.rollover is not None and self.quantity not in COUNTER_QUANTITIES:
            raise ValueError("rollover is only valid on counter quantities (energy, water_volume)")
        return self

    @property
    def factor(self) -> float:
        """Factor from the point's unit to the canonical unit of its quantity."""
        return unit_factor(self.quantity, self.unit)

    @property
    def is_counter(self) -> bool:
        return self.quantity in COUNTER_QUANTITIES


class Cluster(_Frozen):
    """A national hub data-center cluster (e.g. Gui'an)."""

    id: str = Field(min_length=1)
    name: str
    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)


class Site(_Frozen):
    """One data center."""

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    name: str
    city: str
    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)
    cluster: str | None = None
    commissioned: int = Field(ge=1950, le=2100)
    refreshed: int | None = Field(default=None, ge=1950, le=2100)
    racks_installed: int = Field(ge=0)
    racks_in_service: int = Field(ge=0)
    design_it_kw: float = Field(gt=0)
    cooling: CoolingArchitecture
    grid_emission_factor: float = Field(default=DEFAULT_GRID_EMISSION_FACTOR, ge=0)  # [kgCO2/kWh]
    operator_credit_code: str | None = None  # the operator's unified social credit code (GB 32100-2015)
    platform_site_code: str | None = Field(default=None, min_length=1, max_length=64,
                                           pattern=r"^[A-Za-z0-9_.-]+$")  # assigned by the provincial platform
    points: tuple[Point, ...]

    @field_validator("operator_credit_code")
    @classmethod
    def _credit_code(cls, value: str | None) -> str | None:
        if value is not None:
            problem = credit_code_problem(value)
            if problem:
                raise ValueError(f"operator_credit_code {value!r} {problem}")
        return value

    @model_validator(mode="after")
    def _check(self) -> Site:
        if self.racks_in_service > self.racks_installed:
            raise ValueError(
                f"racks_in_service ({self.racks_in_service}) exceeds racks_installed ({self.racks_installed})"
            )
        seen: set[str] = set()
        for point in self.points:
            if point.id in seen:
                raise ValueError(f"point {point.id!r}: duplicate point id")
            seen.add(point.id)
        roles = {p.role for p in self.points}
        missing = [r.value for r in (Role.FACILITY, Role.IT) if r not in roles]
        if missing:
            raise ValueError(f"site has no {' and no '.join(missing)} metering; PUE cannot be computed")
        return self

    @cached_property
    def point_map(self) -> dict[str, Point]:
        return {p.id: p for p in self.points}


class Registry(_Frozen):
    """All sites and hub clusters."""

    version: Literal[1] = 1
    clusters: tuple[Cluster, ...] = ()
    sites: tuple[Site, ...] = Field(min_length=1)  # none: the site and point tables (and the worker) fail later

    @field_validator("sites")
    @classmethod
    def _unique_sites(cls, sites: tuple[Site, ...]) -> tuple[Site, ...]:
        seen: set[str] = set()
        for site in sites:
            if site.id in seen:
                raise ValueError(f"site {site.id!r}: duplicate site id")
            seen.add(site.id)
        return sites

    @model_validator(mode="after")
    def _known_clusters(self) -> Registry:
        known = {c.id for c in self.clusters}
        for site in self.sites:
            if site.cluster is not None and site.cluster not in known:
                raise ValueError(
                    f"site {site.id!r}: unknown cluster {site.cluster!r} (known: {', '.join(sorted(known)) or 'none'})"
                )
        return self

    @cached_property
    def site_map(self) -> dict[str, Site]:
        return {s.id: s for s in self.sites}

    def site(self, site_id: str) -> Site:
        try:
            return self.site_map[site_id]
        except KeyError:
            raise KeyError(f"unknown site {site_id!r}") from None

    @cached_property
    def points_table(self) -> pd.DataFrame:
        """One row per (site, point) with the metadata the analytics need, vectorization-ready."""
        rows = [
            {
                "site": s.id,
                "point": p.id,
                "role": p.role.value,
                "quantity": p.quantity.value,
                "factor": p.factor,
                "is_counter": p.is_counter,
                # a time integral of flow [m3/h × h] is m3; water flows are booked in L
                "integral_factor": 1000.0 if p.quantity is Quantity.FLOW else 1.0,
                "source": p.source.value,
                "precedence": SOURCE_PRECEDENCE[p.source],
                "it_category": p.it_category or 0,
                "cooling_subsystem": p.cooling_subsystem.value if p.cooling_subsystem else "",
                "boundary": p.boundary or p.id,
                "rated_kw": p.rated_kw if p.rated_kw is not None else float("nan"),
                "rollover": p.rollover * p.factor if p.rollover is not None else float("nan"),
                "location": p.tags.get("location", ""),
            }
            for s in self.sites
            for p in s.points
        ]
        return pd.DataFrame(rows).set_index(["site", "point"]).sort_index()

    @cached_property
    def sites_table(self) -> pd.DataFrame:
        """One row per site with its registry metadata."""
        rows = [
            {
                "site": s.id,
                "name": s.name,
                "city": s.city,
                "cluster": s.cluster or "",
                "latitude": s.latitude,
                "longitude": s.longitude,
                "commissioned": s.commissioned,
                "racks_installed": s.racks_installed,
                "racks_in_service": s.racks_in_service,
                "design_it_kw": s.design_it_kw,
                "cooling": s.cooling.value,
                "grid_emission_factor": s.grid_emission_factor,
            }
            for s in self.sites
        ]
        return pd.DataFrame(rows).set_index("site")


def _describe_location(loc: tuple[Any, ...], raw: dict[str, Any]) -> str:
    """Turn a pydantic error location into "site 'x' point 'y' field 'z'" using ids from the raw data."""
    parts: list[str] = []
    node: Any = raw
    i = 0
    while i < len(loc):
        key = loc[i]
        if key in ("sites", "points", "clusters") and i + 1 < len(loc) and isinstance(loc[i + 1], int):
            try:
                node = node[key][loc[i + 1]]
                label = node.get("id") if isinstance(node, dict) else None
            except (KeyError, IndexError, TypeError):
                label = None
            kind = {"sites": "site", "points": "point", "clusters": "cluster"}[key]
            parts.append(f"{kind} {label!r}" if label else f"{kind} #{loc[i + 1] + 1}")
            i += 2
            continue
        if isinstance(key, str) and not key.startswith(("function-", "literal")):
            parts.append(f"field {key!r}")
        i += 1
    return " ".join(parts) or "top level"


def parse_registry(raw: object, source: str = "<registry>") -> Registry:
    """Validate an already-parsed registry document; errors name ``source``, the site/point and the problem."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the registry must be a mapping with a 'sites' list")
    try:
        return Registry.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = _describe_location(tuple(err["loc"]), raw)
            message = err["msg"].removeprefix("Value error, ")
            lines.append(f"{source}: {where}: {message}")
        raise ConfigError("invalid site registry:\n  " + "\n  ".join(lines)) from None


def load_registry(path: str | Path) -> Registry:
    """Read and validate a YAML site registry from ``path``."""
    path = Path(path)
    return parse_registry(read_yaml(path, "site registry file"), str(path))


def dump_registry(registry: Registry) -> str:
    """Serialise a registry back to YAML (used to write generated fleets)."""
    data = registry.model_dump(mode="json", exclude_none=True, exclude_defaults=False)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def registry_from_sites(sites: Iterable[Site], clusters: Iterable[Cluster] = ()) -> Registry:
    """Build a registry from already-validated sites."""
    return Registry(sites=tuple(sites), clusters=tuple(clusters))
