"""The fleet simulator: a :class:`~dcpue.ingest.base.Collector` that produces the telemetry of a
whole registry of sites from weather, IT load and plant physics.

Everything random is a pure function of (seed, site, point, timestamp), so the same seed and
the same sample times give identical readings however the time range is split into polls.
Counters are the only state: they integrate the true power of each sample exactly.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dcpue.ingest.simulator import _noise, climate, plant
from dcpue.ingest.simulator.faults import (
    DEFAULT_MAGNITUDE,
    PLANT_EVENTS,
    SPIKE_FACTOR,
    FaultEvent,
    FaultKind,
    random_faults,
)
from dcpue.ingest.simulator.fleet import archetype_of
from dcpue.model import CoolingSubsystem, Quantity, Role, readings_frame
from dcpue.registry import Point, Registry, Site

MS_PER_DAY = 86_400_000
METER_NOISE_REL = 0.002  # power meters: relative standard deviation [-]
TEMPERATURE_NOISE_K = 0.1  # temperature sensors [K]
RH_NOISE_PCT = 1.0  # humidity sensors [%]
IT_NOISE_HOURLY = 0.02  # hourly AR(1) IT-load variation, relative [-]
IT_NOISE_SAMPLE = 0.003  # sample-to-sample IT-load variation, relative [-]
PV_KWP_PER_DESIGN_KW = 0.02  # rooftop PV peak power per kW of design IT [kWp/kW]
PV_PERFORMANCE_RATIO = 0.8
HEAT_REUSE_SHARE = 0.08  # share of IT heat exported in mid-winter [-]
SETPOINT_NAMES = ("supply_air", "chw_supply", "fw_supply", "cw_supply")
_JITTERED = ("utilization", "chiller_eta", "dx_eta", "fan_frac", "pump_frac", "ups_c0", "ups_c1",
             "light_kw_per_rack", "cdu_frac", "dc_frac")
_JITTER = 0.08  # ± relative spread of per-site constants around the archetype


def _crc(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


@dataclass(frozen=True)
class _Signal:
    """How one registry point is produced from the simulated site state."""

    point: str
    quantity: Quantity
    source: str  # key of the site state, e.g. "it_kw", "crah", "dry_bulb_c", "sp:supply_air"
    share: float  # fraction of the source this point measures
    factor: float  # canonical unit per point unit
    noise: str  # "rel", "temp", "rh" or "none"
    offset: float = 0.0  # constant sensor offset (rack-inlet hot spots) [canonical unit]
    rollover: float | None = None  # in the point's unit
    initial: float = 0.0  # counter reading at the start, in canonical units


def _weights(seed: int, site: str, ids: list[str]) -> list[float]:
    """Deterministic, slightly unequal shares that sum to 1 (A/B feeds are never perfectly balanced)."""
    raw = [1.0 + 0.06 * (float(_noise.uniform(seed, 0x3E, site, pid)) - 0.5) for pid in ids]
    total = sum(raw)
    return [r / total for r in raw]


def _signals(seed: int, site: Site, arch: plant.Archetype) -> list[_Signal]:
    """Map every registry point of ``site`` to a simulated source (unknown sensors are not simulated)."""
    groups: dict[tuple[str, ...], list[Point]] = {}
    signals: list[_Signal] = []
    for p in site.points:
        if p.role is Role.SENSOR:
            loc = p.tags.get("location", "")
            if p.quantity is Quantity.SETPOINT and loc in SETPOINT_NAMES:
                src, noise = f"sp:{loc}", "none"
            elif p.quantity is Quantity.TEMPERATURE and loc in ("outdoor", "rack_inlet", "supply_air",
                                                                   "chw_supply", "fw_supply", "cw_supply"):
                src = {"outdoor": "dry_bulb_c", "rack_inlet": "rack_inlet_c", "supply_air": "supply_air_c",
                       "chw_supply": "chw_supply_c", "fw_supply": "fw_supply_c", "cw_supply": "cw_supply_c"}[loc]
                noise = "temp"
            elif p.quantity is Quantity.HUMIDITY and loc == "outdoor":
                src, noise = "rh_pct", "rh"
            else:
                continue
            offset = 0.0
            if loc == "rack_inlet":
                offset = arch.hotspot_k * float(_noise.uniform(seed, 0x41, site.id, p.id))
            signals.append(_Signal(p.id, p.quantity, src, 1.0, p.factor, noise, offset))
            continue
        if p.role is Role.IT:
            src = "it_kw" if p.it_category == 1 else "it_pdu_kw"
            gkey: tuple[str, ...] = ("it", str(p.it_category))
        elif p.role is Role.COOLING:
            assert p.cooling_subsystem is not None
            src, gkey = p.cooling_subsystem.value, ("cooling", p.cooling_subsystem.value)
        elif p.role is Role.LOSSES:
            comp = p.tags.get("component", "")
            src = {"ups": "ups_loss", "transformer": "tx_loss"}.get(comp, "losses_kw")
            gkey = ("losses", src)
        elif p.role is Role.WATER:
            src, gkey = "makeup_l_per_s", ("water",)
        else:
            src = {Role.FACILITY: "facility_kw", Role.LIGHTING: "lighting_kw", Role.RENEWABLE: "pv_kw",
                   Role.REUSED_HEAT: "reused_heat_kw"}[p.role]
            gkey = (p.role.value,)
        groups.setdefault(gkey + (src,), []).append(p)
    for (*_, src), pts in groups.items():
        boundaries = sorted({p.boundary or p.id for p in pts})
        shares = dict(zip(boundaries, _weights(seed, site.id, boundaries), strict=True))
        if src == "facility_kw" or src == "pv_kw":
            shares = {b: 1.0 / len(boundaries) for b in boundaries}
        for p in pts:
            initial = 0.0
            if p.is_counter:
                span = p.rollover or (5e7 if p.quantity is Quantity.ENERGY else 1e6)
                initial = float(_noise.uniform(seed, 0x1C, site.id, p.id)) * span * p.factor
            noise = "none" if p.is_counter else "rel"
            signals.append(_Signal(p.id, p.quantity, src, shares[p.boundary or p.id], p.factor, noise,
                                   rollover=p.rollover, initial=initial))
    return signals


class FleetSimulator:
    """Simulated telemetry for every site of ``registry``; implements the collector contract.

    ``start_ms`` [ms, UTC] is the first sample time; samples follow every ``sample_interval_s``
    [s] of simulated time. :meth:`poll` returns every sample in (last poll, ``now_ms``]; the
    caller maps wall time to simulated time. With ``faults=True`` rare faults are injected
    at random (deterministic by ``seed``); :meth:`inject` adds faults on demand and
    :attr:`faults_log` lists every fault that has started, as ground truth.
    """

    def __init__(self, registry: Registry, seed: int, start_ms: int, sample_interval_s: float = 60,
                 faults: bool = True) -> None:
        if sample_interval_s <= 0:
            raise ValueError(f"sample_interval_s must be positive, got {sample_interval_s}")
        self.registry = registry
        self.seed = int(seed)
        self.start_ms = int(start_ms)
        self.dt_ms = int(round(sample_interval_s * 1000))
        self.faults = faults
        self._sites = list(registry.sites)
        self._site_ids = [s.id for s in self._sites]
        self._kinds = [archetype_of(s) for s in self._sites]
        self._params = self._site_params()
        self._climates, self._city_index = self._site_climates()
        self._signals = [_signals(self.seed, s, plant.ARCHETYPES[k]) for s, k in zip(self._sites, self._kinds,
                                                                                      strict=True)]
        self._setpoints: list[dict[str, float]] = [
            {**plant.DEFAULT_SETPOINTS[k], **({"cw_supply": plant.DEFAULT_CW_SUPPLY_C} if tower else {})}
            for k, tower in zip(self._kinds, self._params["has_tower"][:, 0] > 0, strict=True)]
        self._next_k = 0  # index of the next sample to emit
        self._counters: dict[tuple[str, str], float] = {}  # canonical cumulative at sample _next_k − 1
        self._manual: list[FaultEvent] = []
        self._random_days: dict[int, list[FaultEvent]] = {}
        self._event_state: dict[FaultEvent, float] = {}  # stuck value or counter-reset base
        self._open = False

    # -- collector contract -------------------------------------------------------------------
    def setup(self) -> None:
        """Nothing to connect; warms the psychrometric tables."""
        for c in self._climates:
            climate.wet_bulb_c(np.array([20.0]), np.array([50.0]), c.pressure_pa)
        self._open = True

    def close(self) -> None:
        self._open = False

    def poll(self, now_ms: int) -> list[tuple[str, pd.DataFrame]]:
        """Readings of every sample time in (previous poll, ``now_ms``], one DataFrame per site.

        Sites with no readings in the range (e.g. during a collector outage) are left out.
        Poll in steps of at most a simulated day or so: the result holds every reading.
        """
        k_end = (int(now_ms) - self.start_ms) // self.dt_ms
        if k_end < self._next_k:
            return []
        ks = np.arange(self._next_k - 1, k_end + 1, dtype=np.int64)  # one leading sample for context
        ts = self.start_ms + ks * self.dt_ms
        state = self._physics(ts)
        out: list[tuple[str, pd.DataFrame]] = []
        for s, site in enumerate(self._sites):
            frame = self._site_frame(s, site, ts, state)
            if len(frame):
                out.append((site.id, frame))
        self._next_k = k_end + 1
        return out

    def iter_poll(self, end_ms: int, step_s: float = 3600) -> Iterator[list[tuple[str, pd.DataFrame]]]:
        """Poll up to ``end_ms`` in steps of ``step_s`` simulated seconds (for catching up on a backlog)."""
        t = self.start_ms + (self._next_k - 1) * self.dt_ms
        while t < end_ms:
            t = min(t + int(step_s * 1000), int(end_ms))
            yield self.poll(t)

    @property
    def last_polled_ms(self) -> int:
        """Timestamp of the newest sample returned so far (``start_ms − interval`` before the first poll)."""
        return self.start_ms + (self._next_k - 1) * self.dt_ms

    # -- setpoints --------------------------------------------------------------------------------
    def get_setpoints(self, site_id: str) -> dict[str, float]:
        """Current setpoints of ``site_id`` [°C] by name (``supply_air``, ``chw_supply``, ``fw_supply``,
        ``cw_supply``: those of its plant)."""
        return dict(self._setpoints[self._index(site_id)])

    def set_setpoints(self, site_id: str, **values: float) -> None:
        """Change setpoints of ``site_id`` [°C] from the next sample on.

        Keys are setpoint names (``supply_air``, ``chw_supply``, ``fw_supply``, ``cw_supply``) or setpoint point
        ids with ``-``/``.`` spelled ``_`` (``sp_supply_air``). Raises ``ValueError`` for names the
        site does not have or values outside the plausible range.
        """
        s = self._index(site_id)
        current = self._setpoints[s]
        updates: dict[str, float] = {}
        for raw_name, value in values.items():
            name = raw_name.removeprefix("sp_").replace("-", "_")
            if name not in current:
                valid = ", ".join(sorted(current))
                raise ValueError(f"site {site_id!r} has no setpoint {raw_name!r} (valid: {valid})")
            lo, hi = plant.SETPOINT_LIMITS[name]
            if not lo <= float(value) <= hi:
                raise ValueError(f"setpoint {name!r} = {value} °C is outside {lo}..{hi} °C")
            updates[name] = float(value)
        current.update(updates)

    # -- faults -----------------------------------------------------------------------------------
    def inject(self, site: str, point: str | None, kind: str | FaultKind, start_ms: int,
               duration_s: float = 0, magnitude: float | None = None) -> FaultEvent:
        """Schedule a fault on ``site`` from ``start_ms`` [ms] for ``duration_s`` [s].

        Meter and collector faults (``stuck``, ``gap``, ``spike``, ``counter_reset``, ``outage``):
        ``point`` is ignored (use ``None``) for ``outage``; ``counter_reset`` needs a counter point.

        Plant events change the physics, consistently in every meter of the site, and need a
        positive duration; ``magnitude`` defaults to ``DEFAULT_MAGNITUDE`` of the kind:

        * ``cooling_degraded`` (``point=None``): the cooling plant draws ``magnitude`` × its normal
          power [-] (default 1.6); facility meters, the energy counter and transformer losses follow.
        * ``hot_aisle``: rack-inlet sensors read ``magnitude`` [K] above normal (default 6 K);
          every rack-inlet sensor of the site with ``point=None``, else only that sensor.
        * ``fw_supply_high`` (liquid and hybrid sites): the facility-water supply reads
          ``magnitude`` [K] above normal (default 8 K); ``point`` is ``None`` or that sensor.

        Samples already returned are not changed: a fault starting earlier takes effect from the
        next sample. Raises ``ValueError`` for a point, duration or magnitude that does not fit.
        """
        try:
            kind = FaultKind(kind)
        except ValueError:
            valid = ", ".join(k.value for k in FaultKind)
            raise ValueError(f"unknown fault kind {kind!r} (valid: {valid})") from None
        s = self._index(site)
        if kind in PLANT_EVENTS:
            point = self._plant_event_point(s, kind, point)
            magnitude = self._plant_event_magnitude(kind, magnitude)
            if not duration_s > 0:
                raise ValueError(f"{kind.value} needs a positive duration_s, got {duration_s}")
        elif magnitude is not None:
            plant_kinds = ", ".join(sorted(k.value for k in PLANT_EVENTS))
            raise ValueError(f"magnitude applies to plant events only ({plant_kinds}), not to {kind.value}")
        elif kind is FaultKind.OUTAGE:
            point = None
        else:
            pmap = self._sites[s].point_map
            if point not in pmap:
                raise ValueError(f"site {site!r} has no point {point!r}")
            if kind is FaultKind.COUNTER_RESET and not pmap[point].is_counter:
                raise ValueError(f"point {point!r} is not a counter; counter_reset needs energy or "
                                 "water_volume")
        start = max(int(start_ms), self.last_polled_ms + 1)
        end = start + max(int(duration_s * 1000), self.dt_ms if kind is FaultKind.SPIKE else 0)
        event = FaultEvent(site, point, kind, start, end, "manual", math.nan if magnitude is None else magnitude)
        self._manual.append(event)
        return event

    def _plant_event_point(self, s: int, kind: FaultKind, point: str | None) -> str | None:
        """Check the target of a plant event: ``None`` (site-wide) or a sensor the event affects."""
        site = self._sites[s].id
        if kind is FaultKind.COOLING_DEGRADED:
            if point is not None:
                raise ValueError(f"cooling_degraded affects the whole plant of {site!r}: pass point=None, "
                                 f"not {point!r}")
            return None
        source = "rack_inlet_c" if kind is FaultKind.HOT_AISLE else "fw_supply_c"
        sensors = sorted(sig.point for sig in self._signals[s] if sig.source == source)
        location = "rack_inlet" if kind is FaultKind.HOT_AISLE else "fw_supply"
        if not sensors:
            raise ValueError(f"site {site!r} has no {location} temperature sensor for {kind.value}")
        if point is not None and point not in sensors:
            raise ValueError(f"{kind.value} on {site!r} needs point=None or a {location} temperature sensor "
                             f"(valid: {', '.join(sensors)}), got {point!r}")
        return point

    @staticmethod
    def _plant_event_magnitude(kind: FaultKind, magnitude: float | None) -> float:
        value = DEFAULT_MAGNITUDE[kind] if magnitude is None else float(magnitude)
        if not math.isfinite(value) or (kind is FaultKind.COOLING_DEGRADED and value <= 0.0):
            need = "a positive power ratio" if kind is FaultKind.COOLING_DEGRADED else "a finite rise [K]"
            raise ValueError(f"{kind.value} magnitude must be {need}, got {magnitude}")
        return value

    @property
    def faults_log(self) -> list[FaultEvent]:
        """Every fault (random and manual) that started at or before the newest polled sample."""
        last = self.last_polled_ms
        events = [e for day in self._random_days.values() for e in day] + self._manual
        started = (e for e in events if e.start_ms <= last)
        return sorted(started, key=lambda e: (e.start_ms, e.site, e.point or ""))

    # -- ground truth -----------------------------------------------------------------------------
    def true_state(self, ts_ms: np.ndarray | list[int],
                   setpoints: Mapping[str, Mapping[str, float | np.ndarray]] | None = None,
                   sites: Sequence[str] | None = None) -> pd.DataFrame:
        """The noise-free simulated state at ``ts_ms`` with the current setpoints and the injected
        plant events (one row per site and time).

        ``setpoints`` overrides setpoints for this call only (the simulator's own are unchanged):
        ``{site_id: {name: value}}`` with names as in :meth:`set_setpoints` and each value a scalar
        or an array with one value per ``ts_ms`` [°C], so a schedule, or a grid of candidate
        setpoints over repeated times, is evaluated in one vectorised call. Raises ``ValueError``
        like :meth:`set_setpoints` for unknown names or values outside the plausible range.
        ``sites`` limits the call to those sites (same values as in a call for all, at less cost).

        Columns include ``it_kw`` (UPS output, category 1), ``facility_kw`` (grid import), ``pv_kw``,
        ``cooling_kw`` and each cooling subsystem [kW], ``ups_loss``, ``tx_loss``, ``lighting_kw``,
        ``dry_bulb_c``, ``wet_bulb_c``, ``rh_pct``, ``rack_inlet_c``, ``free_cooling`` [0..1].
        ``(facility_kw + pv_kw) / it_kw`` is the site's true PUE. A ``hot_aisle`` event on a single
        sensor shows in that sensor's readings only, not in the room's ``rack_inlet_c``.
        """
        ts = np.asarray(ts_ms, dtype=np.int64)
        rows = None if sites is None else np.array([self._index(s) for s in sites], dtype=np.int64)
        state = self._physics(ts, self._override_arrays(setpoints, len(ts)) if setpoints else None, rows)
        columns = {k: v.reshape(-1) for k, v in state.items() if v.ndim == 2}
        frame = pd.DataFrame(columns)
        ids = self._site_ids if rows is None else [self._site_ids[i] for i in rows]
        frame.insert(0, "ts", np.tile(ts, len(ids)))
        frame.insert(0, "site", np.repeat(ids, len(ts)))
        return frame

    # -- internals --------------------------------------------------------------------------------
    def _index(self, site_id: str) -> int:
        try:
            return self._site_ids.index(site_id)
        except ValueError:
            raise KeyError(f"unknown site {site_id!r}") from None

    def _site_params(self) -> dict[str, np.ndarray]:
        cols: dict[str, list[float]] = {name: [] for name in plant.ARCHETYPE_FIELDS}
        extra: dict[str, list[float]] = {k: [] for k in ("design_kw", "occupancy", "racks", "has_chiller",
                                                         "has_tower", "has_dry_cooler", "pv_kwp",
                                                         "heat_reuse", "site_key", "latitude", "longitude")}
        for site, kind in zip(self._sites, self._kinds, strict=True):
            arch = plant.ARCHETYPES[kind]
            for name in plant.ARCHETYPE_FIELDS:
                value = getattr(arch, name)
                if name in _JITTERED:
                    u = float(_noise.uniform(self.seed, 0x1A, site.id, name))
                    value *= 1.0 + _JITTER * (2.0 * u - 1.0)
                cols[name].append(value)
            subsystems = {p.cooling_subsystem for p in site.points if p.cooling_subsystem is not None}
            roles = {p.role for p in site.points}
            extra["design_kw"].append(site.design_it_kw)
            extra["occupancy"].append(site.racks_in_service / max(site.racks_installed, 1))
            extra["racks"].append(site.racks_installed)
            extra["has_chiller"].append(float(CoolingSubsystem.CHILLER in subsystems))
            extra["has_tower"].append(float(CoolingSubsystem.COOLING_TOWER in subsystems))
            extra["has_dry_cooler"].append(float(CoolingSubsystem.DRY_COOLER in subsystems))
            has_pv = Role.RENEWABLE in roles
            extra["pv_kwp"].append(PV_KWP_PER_DESIGN_KW * site.design_it_kw if has_pv else 0.0)
            extra["heat_reuse"].append(float(Role.REUSED_HEAT in roles))
            extra["site_key"].append(float(_crc(site.id)))
            extra["latitude"].append(site.latitude)
            extra["longitude"].append(site.longitude)
        params = {k: np.asarray(v, dtype=float)[:, None] for k, v in {**cols, **extra}.items()}
        params["site_key"] = params["site_key"].astype(np.int64)
        return params

    def _site_climates(self) -> tuple[list[climate.CityClimate], np.ndarray]:
        known = climate.known_cities()
        names: list[str] = []
        index: list[int] = []
        for site in self._sites:
            city = site.city if site.city in known else self._nearest_city(site)
            if city not in names:
                names.append(city)
            index.append(names.index(city))
        return [climate.city_climate(n) for n in names], np.asarray(index, dtype=np.int64)

    @staticmethod
    def _nearest_city(site: Site) -> str:
        table = climate.read_climate_normals().drop_duplicates("city")
        d2 = (table["latitude"] - site.latitude) ** 2 + (table["longitude"] - site.longitude) ** 2
        return str(table.iloc[int(np.argmin(d2.to_numpy()))]["city"])

    def rack_inlet_offsets(self, site_id: str) -> dict[str, float]:
        """Fixed offset [K] of each rack-inlet sensor of ``site_id`` over the room's ``rack_inlet_c``
        (the hot spots; sensors also add noise). The hottest rack inlet is ``rack_inlet_c`` + the
        largest offset."""
        return {sig.point: sig.offset for sig in self._signals[self._index(site_id)]
                if sig.source == "rack_inlet_c"}

    def plant_parameter(self, site_id: str, name: str) -> float:
        """The value of plant parameter ``name`` (a field of :class:`~.plant.Archetype`) at ``site_id``."""
        if name not in plant.ARCHETYPE_FIELDS:
            raise ValueError(f"unknown plant parameter {name!r} (valid: {', '.join(plant.ARCHETYPE_FIELDS)})")
        return float(self._params[name][self._index(site_id), 0])

    def set_plant_parameter(self, site_id: str, name: str, value: float) -> None:
        """Change a plant parameter of ``site_id`` from now on: a plant that drifts away from its history
        (e.g. ``recirc_k`` up when blanking panels come out), for testing what a model trained before does."""
        self.plant_parameter(site_id, name)  # validates the name and the site
        self._params[name][self._index(site_id), 0] = float(value)

    def _setpoint_arrays(self) -> dict[str, np.ndarray]:
        return {name: np.array([sp.get(name, np.nan) for sp in self._setpoints])[:, None]
                for name in SETPOINT_NAMES}

    def _override_arrays(self, setpoints: Mapping[str, Mapping[str, float | np.ndarray]],
                         n_t: int) -> dict[str, np.ndarray]:
        """(S, T) setpoint arrays: the current setpoints with ``setpoints`` overriding (see true_state)."""
        out = {name: np.repeat(arr, n_t, axis=1) for name, arr in self._setpoint_arrays().items()}
        for site_id, values in setpoints.items():
            s = self._index(site_id)
            for raw_name, value in values.items():
                name = raw_name.removeprefix("sp_").replace("-", "_")
                if name not in self._setpoints[s]:
                    valid = ", ".join(sorted(self._setpoints[s]))
                    raise ValueError(f"site {site_id!r} has no setpoint {raw_name!r} (valid: {valid})")
                row = np.broadcast_to(np.asarray(value, dtype=float), (n_t,))
                lo, hi = plant.SETPOINT_LIMITS[name]
                if not ((row >= lo) & (row <= hi)).all():
                    raise ValueError(f"setpoint {name!r} has values outside {lo}..{hi} °C")
                out[name][s] = row
        return out

    def _physics(self, ts: np.ndarray, sp: dict[str, np.ndarray] | None = None,
                 rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The true state of all sites (or the site indices ``rows``) at times ``ts`` [(S, T) arrays,
        canonical units]; ``sp``: (S, T) setpoint arrays of all sites instead of the current (S, 1) ones."""
        p = self._params if rows is None else {k: v[rows] for k, v in self._params.items()}
        keys = p["site_key"]
        city_index = self._city_index if rows is None else self._city_index[rows]
        w = climate.weather(self.seed, self._climates, city_index, ts)
        local = ts + climate.LOCAL_OFFSET_MS
        hour = ((local % MS_PER_DAY) / 3_600_000.0)[None, :]
        weekday = ((local // MS_PER_DAY + 3) % 7)[None, :]  # 1970-01-01 was a Thursday (weekday 3)
        noise = (_noise.smooth_ar1(ts, 3_600_000, 0.9, IT_NOISE_HOURLY, self.seed, 0x17, keys)
                 + IT_NOISE_SAMPLE * _noise.normal(self.seed, 0x18, keys, ts[None, :]))
        it_cool = plant.it_load_kw(p["design_kw"], p["occupancy"], p["utilization"], p["daily_amp"],
                                   p["peak_hour"], p["weekend"], hour, weekday, noise)  # at a cool inlet
        light = p["racks"] * p["light_kw_per_rack"] * (0.35 + 0.65 * plant.daylight(hour))
        if sp is None:
            sp = self._setpoint_arrays()
        if rows is not None:
            sp = {name: arr[rows] for name, arr in sp.items()}
        # server fans speed up with the inlet, which itself warms with the load (recirculation): one
        # fixed-point step, solving the plant at the cool-inlet load first (the fans then follow an inlet
        # a few hundredths of a K, at most ≈ 0.1 K at 32 °C, below the final one)
        first = plant.plant(p, it_cool, light, w, sp)
        fan = plant.it_fan_factor(first["rack_inlet_c"] + 0.5 * p["hotspot_k"], 1.0 - p["liquid_share"] * p["capture"])
        it = it_cool * fan
        st = plant.plant(p, it, light, w, sp)
        st["it_fan_kw"] = it - it_cool
        st = self._apply_plant_events(st, ts, rows)
        cooling = st["crah"] + st["chiller"] + st["pump"] + st["cooling_tower"] + st["dry_cooler"] + st["cdu"]
        load = it + cooling + st["ups_loss"] + light
        tx = plant.transformer_loss_kw(load, p["design_kw"] * p["tx_ratio"], p["tx_p0"], p["tx_pk"])
        sin_el = plant.solar_elevation_sin(p["latitude"], p["longitude"], ts[None, :])
        cloud = np.clip(0.45 + _noise.smooth_ar1(local, MS_PER_DAY, 0.6, 0.2, self.seed, 0x50, keys),
                        0.1, 0.95)  # share of clear-sky output, persistent over days
        pv = p["pv_kwp"] * PV_PERFORMANCE_RATIO * cloud * np.clip(sin_el, 0.0, None) ** 1.15
        _, _, doy = climate.local_time(ts)
        season = np.clip(0.5 + np.cos(2.0 * np.pi * (doy - 15.0) / 365.25), 0.0, 1.0)[None, :]
        reused = p["heat_reuse"] * HEAT_REUSE_SHARE * it * season
        losses = st["ups_loss"] + tx
        facility = load + tx - pv
        makeup = plant.tower_makeup_l(st["tower_heat"], 1.0)  # [L/s]
        st.update(
            it_kw=it, it_pdu_kw=it * (1.0 - p["pdu_loss"]), cooling_kw=cooling, tx_loss=tx, losses_kw=losses,
            lighting_kw=light + 0.0 * it, pv_kw=pv + 0.0 * it, reused_heat_kw=reused, facility_kw=facility,
            makeup_l_per_s=makeup, **w,
        )
        for name, arr in sp.items():
            st[f"sp:{name}"] = np.broadcast_to(arr, it.shape)
        return st

    def _apply_plant_events(self, st: dict[str, np.ndarray], ts: np.ndarray,
                            rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The plant state with the site-wide plant events active at ``ts`` (manual only: their random
        rate is 0). Builds (S, T) factor and offset arrays from each event's site row and time
        window, so the rest of :meth:`_physics` (facility power, transformer loss, counters) follows."""
        events = [e for e in self._manual if e.kind in PLANT_EVENTS and e.start_ms <= ts[-1] and e.end_ms > ts[0]]
        if not events:  # leave the arrays untouched: identical to a simulator without plant events
            return st
        shape = st["rack_inlet_c"].shape
        factor, inlet_rise, fw_rise = np.ones(shape), np.zeros(shape), np.zeros(shape)
        for e in events:
            s = self._index(e.site)
            if rows is not None:
                if s not in rows:
                    continue
                s = int(np.flatnonzero(rows == s)[0])
            window = (ts >= e.start_ms) & (ts < e.end_ms)
            if e.kind is FaultKind.COOLING_DEGRADED:
                factor[s, window] *= e.magnitude
            elif e.kind is FaultKind.HOT_AISLE and e.point is None:  # one sensor: see _site_frame
                inlet_rise[s, window] += e.magnitude
            elif e.kind is FaultKind.FW_SUPPLY_HIGH:
                fw_rise[s, window] += e.magnitude
        st = plant.degrade_cooling(st, factor)
        st["rack_inlet_c"] = st["rack_inlet_c"] + inlet_rise
        st["fw_supply_c"] = st["fw_supply_c"] + fw_rise
        return st

    def _events_for(self, s: int, site: Site, ts: np.ndarray) -> list[FaultEvent]:
        events = [e for e in self._manual if e.site == site.id]
        if self.faults:
            first_day = int(ts[0] // MS_PER_DAY) - 1
            for day in range(first_day, int(ts[-1] // MS_PER_DAY) + 1):
                events += [e for e in self._random_day(day) if e.site == site.id]
        return sorted((e for e in events if e.start_ms >= self.start_ms), key=lambda e: e.start_ms)

    def _random_day(self, day: int) -> list[FaultEvent]:
        if day in self._random_days:
            return self._random_days[day]
        events: list[FaultEvent] = []
        for site, sigs in zip(self._sites, self._signals, strict=True):
            meters = sorted(sig.point for sig in sigs if not sig.source.startswith("sp:"))
            counters = sorted(p.id for p in site.points if p.is_counter)
            events += random_faults(self.seed, site.id, day, meters, counters)
        self._random_days[day] = [e for e in events if e.start_ms >= self.start_ms]
        return self._random_days[day]

    def _site_frame(self, s: int, site: Site, ts: np.ndarray, state: dict[str, np.ndarray]) -> pd.DataFrame:
        """Readings of site ``s`` for samples ``ts[1:]`` (``ts[0]`` is the previous poll's last sample)."""
        sigs = self._signals[s]
        n_t = len(ts)
        values = np.empty((len(sigs), n_t))
        events = self._events_for(s, site, ts)
        row_of = {sig.point: i for i, sig in enumerate(sigs)}
        dt_h = self.dt_ms / 3_600_000.0
        point_keys = np.array([_crc(sig.point) for sig in sigs], dtype=np.int64)[:, None]
        meter_noise = _noise.normal(self.seed, 0x40, site.id, point_keys, ts[None, :])  # (P, T)
        # a hot aisle at one rack: only that sensor reads warmer (site-wide ones are in _physics)
        hot_spots = [e for e in self._manual if e.kind is FaultKind.HOT_AISLE and e.site == site.id
                     and e.point is not None]
        for i, sig in enumerate(sigs):
            series = state[sig.source][s] * sig.share
            for e in hot_spots:
                if e.point == sig.point:
                    series[(ts >= e.start_ms) & (ts < e.end_ms)] += e.magnitude
            if sig.quantity in (Quantity.ENERGY, Quantity.WATER_VOLUME):
                per_hour = series * (3600.0 if sig.quantity is Quantity.WATER_VOLUME else 1.0)  # L/s -> L/h
                values[i] = self._counter(site.id, sig, per_hour * dt_h, ts, events)
                continue
            if sig.quantity is Quantity.FLOW:  # water flow [m3/h] from L/s
                series = series * 3.6
            if sig.noise == "rel":
                series = series * (1.0 + METER_NOISE_REL * meter_noise[i])
            elif sig.noise in ("temp", "rh"):
                sd = TEMPERATURE_NOISE_K if sig.noise == "temp" else RH_NOISE_PCT
                series = series + sig.offset + sd * meter_noise[i]
                if sig.noise == "rh":
                    series = np.clip(series, 0.0, 100.0)
            values[i] = series / sig.factor
        keep = np.ones_like(values, dtype=bool)
        keep[:, 0] = False
        # stuck first (it freezes the clean value before it), then spikes, then missing samples
        for e in events:
            in_window = (ts >= e.start_ms) & (ts < e.end_ms)
            if e.kind is FaultKind.STUCK and e.point in row_of and in_window.any():
                r = row_of[e.point]
                if e not in self._event_state:  # the value just before the fault, remembered across polls
                    self._event_state[e] = float(values[r, max(int(np.argmax(in_window)) - 1, 0)])
                values[r, in_window] = self._event_state[e]
        for e in events:
            if e.kind is FaultKind.SPIKE and e.point in row_of:
                hit = int(np.searchsorted(ts, e.start_ms))
                if 1 <= hit < n_t and ts[hit] < e.start_ms + self.dt_ms:
                    r = row_of[e.point]
                    values[r, hit] = values[r, hit] * SPIKE_FACTOR + SPIKE_FACTOR
        for e in events:
            in_window = (ts >= e.start_ms) & (ts < e.end_ms)
            if e.kind is FaultKind.OUTAGE:
                keep[:, in_window] = False
            elif e.kind is FaultKind.GAP and e.point in row_of:
                keep[row_of[e.point], in_window] = False
        rows, cols = np.nonzero(keep)
        return readings_frame(
            site.id,
            np.asarray([sig.point for sig in sigs], dtype=object)[rows],
            ts[cols],
            values[rows, cols],
            0,
        )

    def _counter(self, site_id: str, sig: _Signal, increments: np.ndarray, ts: np.ndarray,
                 events: list[FaultEvent]) -> np.ndarray:
        """Cumulative counter readings in the point's unit; ``increments`` [canonical] per sample."""
        ckey = (site_id, sig.point)
        previous = self._counters.get(ckey, sig.initial)
        steps = increments.copy()
        steps[0] = previous  # ts[0] is the last sample already counted
        cumulative = np.add.accumulate(steps)  # sequential: identical however polls are chunked
        self._counters[ckey] = float(cumulative[-1])
        reading = cumulative / sig.factor
        for e in events:
            if e.kind is not FaultKind.COUNTER_RESET or e.point != sig.point or e.start_ms > ts[-1]:
                continue
            after = ts >= e.start_ms
            if e not in self._event_state:  # raw reading just before the reset, remembered across polls
                first = int(np.argmax(after))
                self._event_state[e] = float(cumulative[max(first - 1, 0)] / sig.factor)
            restart = float(_noise.uniform(self.seed, 0x5E, site_id, sig.point, e.start_ms)) * 5.0
            reading = np.where(after, cumulative / sig.factor - self._event_state[e] + restart, reading)
        if sig.rollover is not None:
            reading = np.mod(reading, sig.rollover)
        return reading
