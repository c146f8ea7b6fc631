"""Pure, vectorized plant physics: IT load, cooling plant, power distribution losses, PV, water.

All functions take numpy arrays shaped (S, 1) for per-site parameters and (S, T) or (T,)
for time series and return (S, T) arrays. Powers are in [kW], temperatures in [°C].
Parameter values per archetype are in :data:`ARCHETYPES` and documented in ``docs/simulator.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

KELVIN = 273.15
H_FG_KJ_PER_KG = 2430.0  # latent heat of vaporisation of water near 30 °C [kJ/kg]
CHW_DELTA_T_K = 6.0  # chilled-water return minus supply at design [K]
COIL_APPROACH_K = 6.0  # CRAH coil: supply air minus chilled-water supply, at best [K]
TOWER_APPROACH_K = 4.0  # cooling-tower leaving water minus wet-bulb, fans at full speed, design heat [K]
TOWER_RANGE_K = 5.0  # condenser-water range at design heat rejection [K]
TOWER_MIN_SPEED = 0.2  # the tower fans' lowest speed while the plant runs [-]
REJECT_PER_AIR_HEAT = 1.2  # heat a tower rejects at design / the air-side design heat (chiller work at COP 5)
HX_APPROACH_K = 1.5  # plate heat exchanger approach in free cooling [K]
DRY_COOLER_APPROACH_K = 6.0  # dry-cooler leaving fluid minus dry-bulb at full fan speed [K]
EVAPORATOR_APPROACH_K = 2.5  # chilled-water supply minus refrigerant evaporating temperature [K]
CONDENSER_APPROACH_K = 1.5  # condensing temperature minus leaving condenser water [K]
AIR_CONDENSER_DT_K = 14.0  # air-cooled condensing temperature minus dry-bulb [K]
AIR_CONDENSER_FLOOR_C = 28.0  # head-pressure control keeps condensing at or above this [°C]
WATER_CONDENSER_FLOOR_C = 20.0  # minimum condensing temperature with a cooling tower [°C]
DX_RETURN_RISE_K = 12.0  # return air minus supply air in CRAC units [K]
DX_ECONOMIZER_APPROACH_K = 4.0  # pumped-refrigerant/air economizer: supply air minus dry-bulb [K]
LIFT_MIN_K = 8.0  # compressors need at least this lift [K]
COP_RANGE = (2.0, 15.0)
CAPTURE_PER_K = 0.001  # liquid heat-capture ratio lost per K of facility water above 32 °C [1/K]
CYCLES_OF_CONCENTRATION = 4.0  # cooling-tower makeup = evaporation × C / (C − 1)
TOWER_LATENT_SHARE = 0.8  # share of tower heat rejected by evaporation (rest sensible)
# Server fans speed up as the inlet warms (see docs/simulator.md, "IT fan power"): an all-air server
# draws 1 + FAN_K · max(0, T_inlet − FAN_T0)² times its power at a cool inlet, +1 % at 27 °C, +7 % at 32 °C.
FAN_T0_C = 24.0  # mean server inlet above which fan power rises measurably [°C]
FAN_K_PER_K2 = 0.0011  # relative IT power rise per K² above FAN_T0_C, all-air server [1/K²]


@dataclass(frozen=True)
class Archetype:
    """Physical constants of one kind of site (see docs/simulator.md for the reasoning)."""

    utilization: float  # mean IT draw of an in-service rack / its design power [-]
    daily_amp: float  # relative amplitude of the daily load cycle [-]
    peak_hour: float  # local hour of the daily load peak [h]
    weekend: float  # weekend load / weekday load [-]
    ups_redundancy: float  # installed UPS capacity / design IT [-] (2.0 = 2N)
    ups_c0: float  # UPS no-load loss / capacity [-]
    ups_c1: float  # proportional loss / load [-]
    ups_c2: float  # square-law loss at full load / capacity [-]
    tx_ratio: float  # transformer rating / design IT [-]
    tx_p0: float  # transformer no-load loss / rating [-]
    tx_pk: float  # transformer load loss at rating / rating [-]
    pdu_loss: float  # PDU loss / UPS output [-] (category 1 vs 2)
    light_kw_per_rack: float  # lighting per installed rack, daytime [kW]
    liquid_share: float  # share of IT on liquid-cooled racks [-]
    capture: float  # heat to liquid / IT power of a liquid rack at 32 °C facility water [-]
    fan_frac: float  # CRAH fan power at full airflow / design air heat [-]
    fan_min: float  # share of fan power that does not fall with load (1 = constant speed) [-]
    pump_frac: float  # chilled/condenser-water pumps at design / design air heat [-]
    pump_min: float  # constant-speed share of pump power [-]
    tower_frac: float  # cooling-tower fans at full speed / design heat rejected [-]
    chiller_eta: float  # chiller efficiency relative to Carnot [-]
    dx_eta: float  # CRAC compressor efficiency relative to Carnot [-]
    cdu_frac: float  # CDU pumps at design / design liquid heat [-]
    fw_pump_frac: float  # facility-water pumps at design / design liquid heat [-]
    dc_frac: float  # dry-cooler fans at full speed / design heat [-]
    recirc_k: float  # rack-inlet rise over supply air at full air load (40 % of it at no load) [K]
    hotspot_k: float  # spread of rack-inlet sensor offsets [K]


ARCHETYPES: dict[str, Archetype] = {
    "liquid": Archetype(
        utilization=0.78, daily_amp=0.03, peak_hour=20.0, weekend=1.0,
        ups_redundancy=2.0, ups_c0=0.008, ups_c1=0.018, ups_c2=0.010,
        tx_ratio=1.5, tx_p0=0.0025, tx_pk=0.009, pdu_loss=0.006, light_kw_per_rack=0.008,
        liquid_share=1.0, capture=0.85, fan_frac=0.10, fan_min=0.15, pump_frac=0.0, pump_min=0.3,
        tower_frac=0.0, chiller_eta=0.55, dx_eta=0.40, cdu_frac=0.035, fw_pump_frac=0.03,
        dc_frac=0.05, recirc_k=1.5, hotspot_k=1.0,
    ),
    "hybrid": Archetype(
        utilization=0.70, daily_amp=0.05, peak_hour=19.0, weekend=0.98,
        ups_redundancy=2.0, ups_c0=0.007, ups_c1=0.020, ups_c2=0.010,
        tx_ratio=1.5, tx_p0=0.003, tx_pk=0.010, pdu_loss=0.008, light_kw_per_rack=0.012,
        liquid_share=0.5, capture=0.85, fan_frac=0.06, fan_min=0.15, pump_frac=0.025, pump_min=0.3,
        tower_frac=0.012, chiller_eta=0.52, dx_eta=0.40, cdu_frac=0.025, fw_pump_frac=0.02,
        dc_frac=0.05, recirc_k=2.0, hotspot_k=1.5,
    ),
    "enterprise": Archetype(
        utilization=0.55, daily_amp=0.10, peak_hour=15.0, weekend=0.85,
        ups_redundancy=2.0, ups_c0=0.009, ups_c1=0.022, ups_c2=0.012,
        tx_ratio=1.6, tx_p0=0.003, tx_pk=0.011, pdu_loss=0.010, light_kw_per_rack=0.020,
        liquid_share=0.0, capture=0.0, fan_frac=0.07, fan_min=0.2, pump_frac=0.035, pump_min=0.4,
        tower_frac=0.015, chiller_eta=0.48, dx_eta=0.40, cdu_frac=0.0, fw_pump_frac=0.0,
        dc_frac=0.05, recirc_k=2.5, hotspot_k=2.0,
    ),
    "legacy": Archetype(
        utilization=0.45, daily_amp=0.06, peak_hour=15.0, weekend=0.90,
        ups_redundancy=1.2, ups_c0=0.012, ups_c1=0.030, ups_c2=0.020,
        tx_ratio=1.6, tx_p0=0.004, tx_pk=0.012, pdu_loss=0.015, light_kw_per_rack=0.030,
        liquid_share=0.0, capture=0.0, fan_frac=0.040, fan_min=1.0, pump_frac=0.015, pump_min=1.0,
        tower_frac=0.015, chiller_eta=0.40, dx_eta=0.35, cdu_frac=0.0, fw_pump_frac=0.0,
        dc_frac=0.05, recirc_k=5.0, hotspot_k=3.0,
    ),
}

ARCHETYPE_FIELDS = tuple(f.name for f in fields(Archetype))

# default setpoints per archetype [°C]: supply air, chilled-water supply, facility-water supply
DEFAULT_SETPOINTS: dict[str, dict[str, float]] = {
    "liquid": {"supply_air": 25.0, "fw_supply": 35.0},
    "hybrid": {"supply_air": 24.0, "chw_supply": 18.0, "fw_supply": 32.0},
    "enterprise": {"supply_air": 22.0, "chw_supply": 16.0},
    "legacy": {"supply_air": 18.0, "chw_supply": 7.0},
}
# condenser-water supply setpoint of sites with cooling towers [°C]: cold enough for the free-cooling heat
# exchanger most of the year (a plant holding the classic 29.5 °C design value all year has no economizer)
DEFAULT_CW_SUPPLY_C = 18.0
SETPOINT_LIMITS: dict[str, tuple[float, float]] = {
    "supply_air": (15.0, 32.0),  # ASHRAE A1 allowable inlet range is 15–32 °C
    "chw_supply": (5.0, 25.0),
    "fw_supply": (17.0, 45.0),  # ASHRAE liquid classes W17 … W45
    "cw_supply": (10.0, 35.0),  # condenser water: chillers need a minimum head, towers a wet-bulb margin
}


def it_load_kw(
    design_kw: np.ndarray, occupancy: np.ndarray, utilization: np.ndarray, daily_amp: np.ndarray,
    peak_hour: np.ndarray, weekend: np.ndarray, local_hour: np.ndarray, local_weekday: np.ndarray,
    noise: np.ndarray,
) -> np.ndarray:
    """IT power [kW] = design × occupancy × utilization × daily × weekly shape × (1 + noise), ≤ design."""
    daily = 1.0 + daily_amp * np.cos(2.0 * np.pi * (local_hour - peak_hour) / 24.0)
    weekly = np.where(local_weekday >= 5, weekend, 1.0)
    return np.minimum(design_kw * occupancy * utilization * daily * weekly * (1.0 + noise), design_kw)


def it_fan_factor(inlet_c: np.ndarray, air_share: np.ndarray) -> np.ndarray:
    """IT power multiplier [-] from server fans: 1 + FAN_K · air_share · max(0, T_inlet − FAN_T0)².

    ``inlet_c`` is the mean server inlet [°C]; ``air_share`` [-] the share of the server heat its
    fans carry (1 for air-cooled servers, about 0.15 for cold-plate servers whose chips are on the
    liquid loop). Exactly 1 at or below FAN_T0_C.
    """
    excess = np.maximum(inlet_c - FAN_T0_C, 0.0)
    return 1.0 + FAN_K_PER_K2 * air_share * excess * excess


def ups_loss_kw(load_kw: np.ndarray, capacity_kw: np.ndarray, c0: np.ndarray, c1: np.ndarray,
                c2: np.ndarray) -> np.ndarray:
    """UPS loss [kW] = C·(c0 + c1·x + c2·x²), x = load / capacity C (no-load, proportional, square-law)."""
    x = load_kw / capacity_kw
    return capacity_kw * (c0 + c1 * x + c2 * x * x)


def transformer_loss_kw(load_kw: np.ndarray, rating_kw: np.ndarray, p0: np.ndarray,
                        pk: np.ndarray) -> np.ndarray:
    """Transformer loss [kW] = S·(p0 + pk·(load/S)²): no-load (core) plus load (copper) loss."""
    x = load_kw / rating_kw
    return rating_kw * (p0 + pk * x * x)


def carnot_cop(evap_c: np.ndarray, cond_c: np.ndarray, eta: np.ndarray) -> np.ndarray:
    """Compressor COP = η · T_evap / (T_cond − T_evap) [K/K], lift ≥ LIFT_MIN_K, clipped to COP_RANGE."""
    lift = np.maximum(cond_c - evap_c, LIFT_MIN_K)
    return np.clip(eta * (evap_c + KELVIN) / lift, *COP_RANGE)


def free_cooling_fraction(supply_c: np.ndarray, return_c: np.ndarray, available_c: np.ndarray) -> np.ndarray:
    """Share of the load met without compressors: 1 when the free source is at or below supply,
    0 when it is at or above return, linear in between (partial economizer)."""
    return np.clip((return_c - available_c) / (return_c - supply_c), 0.0, 1.0)


def daylight(local_hour: np.ndarray) -> np.ndarray:
    """1 in the working day (08–20 local), 0 at night, with one-hour ramps."""
    return np.clip(np.minimum(local_hour - 7.5, 20.5 - local_hour), 0.0, 1.0)


def solar_elevation_sin(latitude_deg: np.ndarray, longitude_deg: np.ndarray, ts_ms: np.ndarray) -> np.ndarray:
    """Sine of the solar elevation (Cooper declination, mean solar time; ±1° is enough here)."""
    days = ts_ms / 86_400_000.0
    doy = np.mod(days, 365.2425)
    decl = np.deg2rad(23.44) * np.sin(2.0 * np.pi * (284.0 + doy) / 365.0)
    utc_hour = np.mod(days, 1.0) * 24.0
    hour_angle = np.deg2rad(15.0 * (utc_hour + longitude_deg / 15.0 - 12.0))
    lat = np.deg2rad(latitude_deg)
    return np.sin(lat) * np.sin(decl) + np.cos(lat) * np.cos(decl) * np.cos(hour_angle)


def plant(p: dict[str, np.ndarray], it_kw: np.ndarray, light_kw: np.ndarray, w: dict[str, np.ndarray],
          sp: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Cooling plant, distribution losses and derived temperatures for sites × times.

    ``p`` holds (S, 1) archetype parameters plus ``design_kw``, ``has_chiller``, ``has_tower``,
    ``has_dry_cooler``; ``w`` the weather (``dry_bulb_c``, ``wet_bulb_c``); ``sp`` the (S, 1)
    setpoints ``supply_air``, ``chw_supply``, ``fw_supply`` and optionally ``cw_supply`` (NaN where
    absent; a tower without a condenser-water setpoint runs its fans flat out). Returns (S, T)
    arrays: powers [kW] per subsystem (``crah``, ``chiller``, ``pump``, ``cooling_tower``,
    ``dry_cooler``, ``cdu``), ``ups_loss``, heat flows, temperatures and economizer shares.
    """
    design = p["design_kw"]
    tdb, twb = w["dry_bulb_c"], w["wet_bulb_c"]
    liq = p["liquid_share"]
    has_liq = liq > 0
    has_chiller = p["has_chiller"] > 0
    has_tower = p["has_tower"] > 0
    has_dc = p["has_dry_cooler"] > 0

    ups = ups_loss_kw(it_kw, design * p["ups_redundancy"], p["ups_c0"], p["ups_c1"], p["ups_c2"])

    # liquid loop: dry coolers hold the facility-water setpoint until the weather no longer allows it
    fw_sp = np.where(has_liq, np.nan_to_num(sp["fw_supply"], nan=32.0), 32.0)
    fw_actual = np.maximum(fw_sp, tdb + DRY_COOLER_APPROACH_K)
    capture = np.clip(p["capture"] - CAPTURE_PER_K * (fw_actual - 32.0), 0.5, 0.95)
    q_liq = np.where(has_liq, liq * capture * it_kw, 0.0)
    q_liq_design = np.maximum(liq * p["capture"] * design, 1e-9)
    u_liq = q_liq / q_liq_design
    cdu = p["cdu_frac"] * q_liq_design * (0.3 + 0.7 * u_liq**2) * has_liq
    fw_pump = p["fw_pump_frac"] * q_liq_design * (0.3 + 0.7 * u_liq**2) * has_liq
    dc_speed = np.clip(u_liq * DRY_COOLER_APPROACH_K / np.maximum(fw_sp - tdb, 0.5), 0.15, 1.0)
    dc_liq = p["dc_frac"] * q_liq_design * dc_speed**3 * has_liq

    # air side: the rest of the IT heat, UPS losses and lighting, plus CRAH fan heat
    q_air_design = design * (1.0 - liq * p["capture"]) * 1.05
    q_air0 = it_kw - q_liq + ups + light_kw
    u_air = q_air0 / q_air_design
    fan = p["fan_frac"] * q_air_design * (p["fan_min"] + (1.0 - p["fan_min"]) * np.clip(u_air, 0, 1.2) ** 3)
    q_air = q_air0 + fan

    # chilled-water plant (air and hybrid sites)
    sat_sp = sp["supply_air"]
    chws = np.nan_to_num(sp["chw_supply"], nan=12.0)
    chwr = chws + CHW_DELTA_T_K
    # cooling towers: the fans hold the condenser-water supply setpoint while the wet-bulb allows it.
    # The approach they reach grows with the heat rejected and falls with fan speed (approach ∝ load /
    # speed, fan power ∝ speed³). The same water feeds the free-cooling heat exchanger and the chillers'
    # condensers, so a colder setpoint buys economizer hours and a lower lift at a steeply rising fan
    # cost: the best setpoint follows the wet-bulb and the load. Without a setpoint the fans run flat out.
    u_rej = np.clip(q_air / q_air_design, 0.05, 1.2)
    cw_full = twb + TOWER_APPROACH_K * u_rej  # leaving water with the fans at full speed
    cw_sp = sp.get("cw_supply")
    cw_sp = np.full_like(cw_full, -np.inf) if cw_sp is None else np.nan_to_num(cw_sp, nan=-np.inf)
    cw = np.maximum(cw_sp, cw_full)
    speed = np.clip(TOWER_APPROACH_K * u_rej / np.maximum(cw - twb, 0.1), TOWER_MIN_SPEED, 1.0)
    free_src = np.where(has_tower, cw + HX_APPROACH_K, np.where(has_dc, tdb + DRY_COOLER_APPROACH_K, np.inf))
    ff_chw = free_cooling_fraction(chws, chwr, free_src)
    cond = np.where(has_tower, np.maximum(cw + TOWER_RANGE_K * u_rej + CONDENSER_APPROACH_K, WATER_CONDENSER_FLOOR_C),
                    np.maximum(tdb + AIR_CONDENSER_DT_K, AIR_CONDENSER_FLOOR_C))
    cop_chw = carnot_cop(chws - EVAPORATOR_APPROACH_K, cond, p["chiller_eta"])
    chiller = np.where(has_chiller, (1.0 - ff_chw) * q_air / cop_chw, 0.0)
    chw_pump = np.where(has_chiller, p["pump_frac"] * q_air_design * (p["pump_min"] + (1 - p["pump_min"])
                                                                       * np.clip(u_air, 0, 1.2) ** 2), 0.0)
    q_reject = q_air + chiller
    tower = np.where(has_chiller & has_tower, p["tower_frac"] * REJECT_PER_AIR_HEAT * q_air_design * speed**3, 0.0)
    dc_speed_chw = np.clip(np.clip(u_air, 0, 1.2) * DRY_COOLER_APPROACH_K / np.maximum(chwr + 4.0 - tdb, 0.5),
                           0.15, 1.0)
    dc_chw = np.where(has_chiller & has_dc & ~has_tower, p["dc_frac"] * q_air_design * dc_speed_chw**3, 0.0)

    # CRAC units with compressors and an economizer (auxiliary air on liquid sites without chillers)
    ret = sat_sp + DX_RETURN_RISE_K
    ff_dx = free_cooling_fraction(sat_sp, ret, tdb + DX_ECONOMIZER_APPROACH_K)
    cond_dx = np.maximum(tdb + AIR_CONDENSER_DT_K, AIR_CONDENSER_FLOOR_C)
    cop_dx = carnot_cop(sat_sp - 10.0, cond_dx, p["dx_eta"])
    dx = np.where(has_chiller, 0.0, (1.0 - ff_dx) * q_air / cop_dx)

    supply_air = np.where(has_chiller, np.maximum(sat_sp, chws + COIL_APPROACH_K), sat_sp)
    # hot-air recirculation: some even at low load in rooms without containment, more with load
    rack_inlet = supply_air + p["recirc_k"] * (0.4 + 0.6 * np.clip(u_air, 0.0, 1.5))
    economizer = np.where(has_chiller, ff_chw, ff_dx)
    tower_heat = np.where(has_chiller & has_tower, q_reject, 0.0)
    zero = np.zeros_like(it_kw)
    return {
        "ups_loss": ups,
        "crah": fan + dx,
        "chiller": chiller + zero,
        "pump": chw_pump + fw_pump + zero,
        "cooling_tower": tower + zero,
        "dry_cooler": dc_liq + dc_chw + zero,
        "cdu": cdu + zero,
        "q_liquid": q_liq + zero,
        "q_air": q_air,
        "tower_heat": tower_heat + zero,
        "free_cooling": economizer + zero,
        "supply_air_c": supply_air + zero,
        "rack_inlet_c": rack_inlet + zero,
        "chw_supply_c": chws + zero,
        "fw_supply_c": fw_actual + zero,
        "cw_supply_c": np.where(has_chiller & has_tower, cw, np.nan) + zero,
        "cop": np.where(has_chiller, cop_chw, cop_dx) + zero,
    }


COOLING_POWERS = ("crah", "chiller", "pump", "cooling_tower", "dry_cooler", "cdu")  # subsystem keys of plant()


def degrade_cooling(st: dict[str, np.ndarray], factor: np.ndarray) -> dict[str, np.ndarray]:
    """The plant of :func:`plant` drawing ``factor`` × its normal power [-] (fouled coils, a failed
    economizer): every cooling subsystem scales, the effective COP falls by the same factor and
    the extra chiller work is rejected by the cooling towers. Heat removed and temperatures are
    unchanged (the plant still does its job, at a higher price). Returns a new dict."""
    out = dict(st)
    for name in COOLING_POWERS:
        out[name] = st[name] * factor
    out["cop"] = st["cop"] / factor
    towers = st["tower_heat"] > 0.0  # tower_heat = q_air + chiller where a tower rejects the heat
    out["tower_heat"] = np.where(towers, st["tower_heat"] + (factor - 1.0) * st["chiller"], st["tower_heat"])
    return out


def tower_makeup_l(tower_heat_kw: np.ndarray, dt_s: float) -> np.ndarray:
    """Cooling-tower makeup water per sample [L]: evaporation (latent share of heat / h_fg) plus blowdown."""
    evap_kg_s = TOWER_LATENT_SHARE * tower_heat_kw / H_FG_KJ_PER_KG
    return evap_kg_s * CYCLES_OF_CONCENTRATION / (CYCLES_OF_CONCENTRATION - 1.0) * dt_s
