"""Generate a realistic, deterministic fleet of Guizhou data centers as a site registry."""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from dcpue.registry import CREDIT_CODE_ALPHABET, Cluster, Point, Registry, Site, credit_code_check_char

GUI_AN_CLUSTER = Cluster(id="gui-an", name="Gui'an hub cluster (贵安集群)", latitude=26.40, longitude=106.40)

# city -> (site-id prefix, latitude, longitude); climate comes from data/climate_normals.csv by city name
CITIES: dict[str, tuple[str, float, float]] = {
    "Guiyang": ("gy", 26.58, 106.71),
    "Gui'an": ("ga", 26.40, 106.40),
    "Zunyi": ("zy", 27.70, 106.92),
    "Bijie": ("bj", 27.30, 105.29),
    "Anshun": ("as", 26.25, 105.93),
    "Liupanshui": ("lp", 26.59, 104.83),
    "Kaili": ("kl", 26.58, 107.98),
    "Duyun": ("dy", 26.26, 107.52),
    "Tongren": ("tr", 27.72, 109.19),
    "Xingyi": ("xy", 25.09, 104.90),
}

ARCHETYPE_ORDER = ("liquid", "legacy", "enterprise", "hybrid")
ARCHETYPE_WEIGHTS = {"liquid": 0.25, "hybrid": 0.20, "enterprise": 0.30, "legacy": 0.25}
_CITY_CHOICE = {
    "liquid": ["Gui'an"] * 4 + ["Guiyang"],
    "hybrid": ["Gui'an", "Gui'an", "Guiyang", "Zunyi"],
    "enterprise": ["Guiyang", "Zunyi", "Anshun", "Kaili", "Tongren", "Duyun", "Bijie", "Xingyi"],
    "legacy": ["Guiyang", "Zunyi", "Bijie", "Liupanshui", "Kaili", "Duyun", "Tongren", "Xingyi", "Anshun"],
}
# (racks installed range, kW per rack choices, commissioned range, occupancy range)
_SIZING: dict[str, tuple[tuple[int, int], tuple[float, ...], tuple[int, int], tuple[float, float]]] = {
    "liquid": ((1500, 4000), (15.0, 20.0, 25.0), (2019, 2024), (0.70, 0.92)),
    "hybrid": ((800, 2000), (8.0, 10.0, 12.0), (2017, 2022), (0.60, 0.85)),
    "enterprise": ((200, 800), (4.0, 5.0, 6.0), (2015, 2019), (0.50, 0.75)),
    "legacy": ((30, 300), (2.5,), (2008, 2014), (0.30, 0.50)),
}
_NAMES = {
    "liquid": "Liquid-cooled Compute Campus",
    "hybrid": "Cloud Data Center",
    "enterprise": "Enterprise Data Center",
    "legacy": "Legacy Server Room",
}
_COOLING = {"liquid": "liquid", "hybrid": "hybrid", "enterprise": "air", "legacy": "air"}
COUNTER_ROLLOVER = 99_999_999.0  # an 8-digit kWh register


def archetype_of(site: Site) -> str:
    """The simulator archetype of a site: liquid, hybrid, enterprise (air, ≥ 2015) or legacy (air, < 2015)."""
    if site.cooling.value == "liquid":
        return "liquid"
    if site.cooling.value == "hybrid":
        return "hybrid"
    return "enterprise" if (site.refreshed or site.commissioned) >= 2015 else "legacy"


def _archetypes(n_sites: int, rng: np.random.Generator) -> list[str]:
    kinds = list(ARCHETYPE_ORDER[: min(n_sites, 4)])
    names = list(ARCHETYPE_WEIGHTS)
    weights = np.array([ARCHETYPE_WEIGHTS[k] for k in names])
    kinds += list(rng.choice(names, size=max(n_sites - 4, 0), p=weights / weights.sum()))
    return [str(k) for k in kinds]


def _pt(pid: str, role: str, quantity: str, unit: str, **extra: Any) -> Point:
    return Point(id=pid, role=role, quantity=quantity, unit=unit, collector="simulator", **extra)


def site_points(kind: str, rng: np.random.Generator, design_kw: float, flags: dict[str, bool]) -> list[Point]:
    """The metering points of one site of archetype ``kind`` (ids stable and dotted)."""
    rated = round(design_kw * 2.5, -1) or 10.0  # facility draw never exceeds this [kW]
    pts: list[Point] = [
        _pt("facility.main", "facility", "energy", "kWh", source="revenue_meter", boundary="grid",
            rated_kw=rated, rollover=COUNTER_ROLLOVER if flags["rollover"] else None),
    ]
    if kind != "legacy":
        pts.append(_pt("facility.swgr", "facility", "power", "kW", source="switchgear", boundary="grid"))
    for feed in ("a", "b"):
        pts.append(_pt(f"it.ups-{feed}", "it", "power", "kW", source="ups", it_category=1))
    if kind != "legacy":
        for feed in ("a", "b"):
            pts.append(_pt(f"it.pdu-{feed}", "it", "power", "kW", source="pdu", it_category=2))

    def cool(pid: str, subsystem: str) -> None:
        pts.append(_pt(pid, "cooling", "power", "kW", source="switchgear", cooling_subsystem=subsystem))

    liquid = kind in ("liquid", "hybrid")
    chilled = kind in ("hybrid", "enterprise", "legacy")
    for i in (1, 2):
        cool(f"cool.crah-{i}", "crah")
    if chilled:
        for i in range(1, 3 if kind != "legacy" else 2):
            cool(f"cool.chiller-{i}", "chiller")
    if liquid:
        for i in (1, 2):
            cool(f"cool.cdu-{i}", "cdu")
    cool("cool.pump-1", "pump")
    if flags["tower"]:
        cool("cool.tower-1", "cooling_tower")
    if flags["dry_cooler"]:
        for i in range(1, 3 if kind == "liquid" else 2):
            cool(f"cool.drycooler-{i}", "dry_cooler")

    pts.append(_pt("losses.ups", "losses", "power", "kW", source="ups", tags={"component": "ups"}))
    pts.append(_pt("losses.transformer", "losses", "power", "kW", source="switchgear",
                   tags={"component": "transformer"}))
    lighting_unit = "W" if kind == "legacy" else "kW"  # old BMS meters report lighting in W
    pts.append(_pt("lighting.main", "lighting", "power", lighting_unit, source="switchgear"))
    if flags["tower"]:
        pts.append(_pt("water.makeup", "water", "water_volume", "m3" if kind == "hybrid" else "L",
                       source="revenue_meter"))
    if flags["pv"]:
        pts.append(_pt("renewable.pv", "renewable", "power", "kW", source="revenue_meter", boundary="pv"))
    if flags["heat_reuse"]:
        pts.append(_pt("reused_heat.export", "reused_heat", "power", "kW", source="sensor"))

    def sensor(pid: str, quantity: str, unit: str, location: str) -> None:
        pts.append(_pt(pid, "sensor", quantity, unit, tags={"location": location}))

    sensor("env.outdoor-temp", "temperature", "°C", "outdoor")
    sensor("env.outdoor-rh", "humidity", "%", "outdoor")
    for i in range(1, 5 if kind != "legacy" else 4):
        sensor(f"env.rack-inlet-{i}", "temperature", "°C", "rack_inlet")
    sensor("env.supply-air", "temperature", "°C", "supply_air")
    sensor("sp.supply-air", "setpoint", "°C", "supply_air")
    if chilled:
        sensor("env.chw-supply", "temperature", "°C", "chw_supply")
        sensor("sp.chw-supply", "setpoint", "°C", "chw_supply")
    if liquid:
        sensor("env.fw-supply", "temperature", "°C", "fw_supply")
        sensor("sp.fw-supply", "setpoint", "°C", "fw_supply")
    if flags["tower"]:
        sensor("env.cw-supply", "temperature", "°C", "cw_supply")
        sensor("sp.cw-supply", "setpoint", "°C", "cw_supply")
    return pts


def demo_credit_code(seed: int, site_id: str) -> str:
    """A made-up but well-formed unified social credit code for a simulated operator: "91" (a company),
    Guizhou's division code 520000, nine characters from the site, and the GB 32100 check character."""
    h = zlib.crc32(f"{seed}:{site_id}".encode())
    org = "".join(CREDIT_CODE_ALPHABET[(h >> (3 * k)) % 31] for k in range(9))
    first17 = f"91520000{org}"
    return first17 + credit_code_check_char(first17)


def generate_fleet(n_sites: int, seed: int) -> Registry:
    """A deterministic fleet of ``n_sites`` Guizhou data centers.

    Whenever ``n_sites >= 4`` there is at least one of each archetype: liquid-cooled hyperscale
    campus (Gui'an hub cluster), hybrid cloud site, mid-size air-cooled enterprise site and old
    small air-cooled room. Design IT power = racks × kW per rack (2.5 kW standard racks for old
    rooms, 4–6 kW enterprise, 8–12 kW hybrid, 15–25 kW liquid). Same ``(n_sites, seed)``, same registry.
    """
    if n_sites < 1:
        raise ValueError(f"n_sites must be at least 1, got {n_sites}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5171E]))
    sites: list[Site] = []
    for i, kind in enumerate(_archetypes(n_sites, rng)):
        city = str(rng.choice(_CITY_CHOICE[kind]))
        prefix, lat, lon = CITIES[city]
        (r_lo, r_hi), kw_choices, (c_lo, c_hi), (o_lo, o_hi) = _SIZING[kind]
        racks = int(round(rng.integers(r_lo, r_hi + 1), -1 if r_hi > 500 else 0))
        kw_per_rack = float(rng.choice(kw_choices))
        in_service = int(round(racks * rng.uniform(o_lo, o_hi)))
        design_kw = racks * kw_per_rack
        flags = {
            "rollover": bool(rng.random() < 0.3),
            "tower": kind in ("hybrid", "enterprise") and (kind == "hybrid" or rng.random() < 0.7),
            "pv": kind == "liquid" and rng.random() < 0.7,
            "heat_reuse": kind == "liquid" and rng.random() < 0.5,
        }
        flags["dry_cooler"] = kind in ("liquid", "hybrid") or (kind == "enterprise" and not flags["tower"])
        site_id = f"{prefix}-{i + 1:02d}"
        sites.append(
            Site(
                id=site_id,
                name=f"{city} {_NAMES[kind]} {i + 1:02d}",
                city=city,
                # spread sites a few km around the city centre
                latitude=round(lat + rng.uniform(-0.05, 0.05), 4),
                longitude=round(lon + rng.uniform(-0.05, 0.05), 4),
                cluster="gui-an" if city == "Gui'an" and kind in ("liquid", "hybrid") else None,
                commissioned=int(rng.integers(c_lo, c_hi + 1)),
                racks_installed=racks,
                racks_in_service=in_service,
                design_it_kw=design_kw,
                cooling=_COOLING[kind],
                operator_credit_code=demo_credit_code(seed, site_id),
                platform_site_code=f"GZ520000-{i + 1:04d}",
                points=tuple(site_points(kind, rng, design_kw, flags)),
            )
        )
    clusters = (GUI_AN_CLUSTER,) if any(s.cluster for s in sites) else ()
    return Registry(clusters=clusters, sites=tuple(sites))
