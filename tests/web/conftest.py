"""A small, hand-built fleet and window results for the API and page tests.

Every figure is derived from stated powers, so tests can check numbers by hand:
site ``gy-a`` runs 800 kW IT at PUE 1.25, ``gy-b`` 300 kW at PUE 1.15 (its newest 1m window is
incomplete), ``zy-c`` 150 kW whose newest 1m window is a meter fault, and ``new-d`` has no data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dcpue.registry import Registry, parse_registry
from dcpue.results import conform_windows
from dcpue.runtime.store import FileStore
from dcpue.settings import EngineSettings

NOW = pd.Timestamp("2025-06-01T12:00:00Z")
NOW_MS = int(NOW.value // 1_000_000)
TARGET = 1.2


def _site(site_id: str, name: str, city: str, cluster: str, cooling: str, installed: int, in_service: int,
          design_kw: float) -> dict:
    return {
        "id": site_id, "name": name, "city": city, "cluster": cluster, "cooling": cooling,
        "latitude": 26.6, "longitude": 106.6, "commissioned": 2021,
        "racks_installed": installed, "racks_in_service": in_service, "design_it_kw": design_kw,
        "points": [
            {"id": "facility.main", "role": "facility", "quantity": "energy", "unit": "kWh",
             "source": "revenue_meter"},
            {"id": "it.ups", "role": "it", "quantity": "power", "unit": "kW", "it_category": 1},
        ],
    }


REGISTRY_DOC = {
    "version": 1,
    "clusters": [
        {"id": "guian", "name": "Gui'an 贵安", "latitude": 26.4, "longitude": 106.4},
        {"id": "zunyi", "name": "Zunyi 遵义", "latitude": 27.7, "longitude": 106.9},
    ],
    "sites": [
        _site("gy-a", "Gui'an Alpha 贵安一号", "Guiyang", "guian", "air", 1000, 800, 1000.0),
        _site("gy-b", "Gui'an Beta", "Guiyang", "guian", "liquid", 400, 100, 600.0),
        _site("zy-c", "Zunyi Cloud", "Zunyi", "zunyi", "hybrid", 200, 150, 250.0),
        _site("new-d", "New Build", "Anshun", "zunyi", "air", 0, 0, 500.0),
    ],
}

# site -> (IT kW, PUE); cooling takes 75 % of the overhead, losses 20 %, lighting 5 %
PROFILE = {"gy-a": (800.0, 1.25), "gy-b": (300.0, 1.15), "zy-c": (150.0, 1.32)}

WINDOW_MS = {"1m": 60_000, "15m": 900_000, "1h": 3_600_000, "1d": 86_400_000}
# how many windows of each length the fixtures write (ending at NOW)
HISTORY = {"1m": 360, "1h": 168, "1d": 30}


def window_rows(scope: str, ident: str, window: str, starts_ms: np.ndarray, it_kw: np.ndarray,
                pue: np.ndarray, *, length_ms: int | None = None) -> pd.DataFrame:
    """Self-consistent window rows: energies from powers × hours, PUE = facility / IT, grade from PUE."""
    length_ms = length_ms or WINDOW_MS[window]
    hours = length_ms / 3_600_000
    it_kwh = it_kw * hours
    facility_kwh = it_kwh * pue
    overhead = facility_kwh - it_kwh
    grade = np.where(pue <= 1.2, "1", np.where(pue <= 1.3, "2", np.where(pue <= 1.5, "3", "")))
    return conform_windows(pd.DataFrame({
        "scope": scope, "id": ident, "window": window,
        "start_ms": starts_ms.astype(np.int64), "end_ms": (starts_ms + length_ms).astype(np.int64),
        "final": True, "status": "ok", "coverage": 1.0, "it_category": 1,
        "facility_kwh": facility_kwh, "it_kwh": it_kwh,
        "cooling_kwh": overhead * 0.75, "cooling_crah_kwh": overhead * 0.75,
        "losses_kwh": overhead * 0.20, "lighting_kwh": overhead * 0.05, "total_kwh": facility_kwh,
        "facility_kw": facility_kwh / hours, "it_kw": it_kwh / hours,
        "pue": pue, "pue_gap": pue - TARGET, "grade": grade,
    }))


def _series(window: str, base_it: float, base_pue: float, n: int, rng: np.random.Generator):
    step = WINDOW_MS[window]
    end = NOW_MS - NOW_MS % step
    starts = end - step * np.arange(n, 0, -1)
    hour = (starts / 3_600_000) % 24
    daily = np.sin((hour - 9) / 24 * 2 * np.pi)  # warmest mid-afternoon (UTC+8)
    it = base_it * (1 + 0.06 * daily + 0.01 * rng.standard_normal(n))
    pue = base_pue + 0.04 * daily + 0.005 * rng.standard_normal(n)
    return starts, it, pue


def build_frames() -> pd.DataFrame:
    """All window rows the fixtures store, with the deliberate faults described in the module doc."""
    rng = np.random.default_rng(7)
    frames = []
    for site, (it_kw, pue) in PROFILE.items():
        for window, n in HISTORY.items():
            starts, it, p = _series(window, it_kw, pue, n, rng)
            frames.append(window_rows("site", site, window, starts, it, p))
        frames.append(window_rows("site", site, "12mo", np.array([NOW_MS - 365 * 86_400_000]),
                                  np.array([it_kw * 0.97]), np.array([pue + 0.01]),
                                  length_ms=365 * 86_400_000))
    data = pd.concat(frames, ignore_index=True)
    live = data["window"] == "1m"
    newest = live & (data["start_ms"] == data.loc[live, "start_ms"].max())
    # gy-b: newest minute lost most samples → incomplete, no figures (NaN), never a number
    sel = newest & (data["id"] == "gy-b")
    data.loc[sel, ["status", "coverage", "pue", "pue_gap", "grade", "final"]] = ["incomplete", 0.4, np.nan,
                                                                                  np.nan, "", False]
    # gy-b also has a gap of 20 incomplete minutes an hour ago
    gap = live & (data["id"] == "gy-b") & data["start_ms"].between(NOW_MS - 80 * 60_000, NOW_MS - 60 * 60_000,
                                                                        inclusive="left")
    data.loc[gap, ["status", "coverage", "pue", "pue_gap", "grade"]] = ["incomplete", 0.5, np.nan, np.nan, ""]
    # zy-c: newest minute's IT meter read zero → meter_fault, PUE NaN
    sel = newest & (data["id"] == "zy-c")
    data.loc[sel, ["status", "pue", "pue_gap", "grade", "it_kwh", "it_kw"]] = ["meter_fault", np.nan, np.nan,
                                                                               "", 0.0, 0.0]
    # fleet and cluster rows: energy-weighted (sum of energies), for the summary windows
    agg_frames = []
    ok = data[data["status"] == "ok"]
    cluster_of = {s["id"]: s["cluster"] for s in REGISTRY_DOC["sites"]}
    for window in ("1m", "1h", "1d", "12mo"):
        rows = ok[ok["window"] == window]
        start = rows["start_ms"].max()
        rows = rows[rows["start_ms"] == start]
        length = int(rows["end_ms"].iloc[0] - start)
        groups = [("fleet", "fleet", rows)] + [
            ("cluster", c, rows[rows["id"].map(cluster_of) == c]) for c in ("guian", "zunyi")
        ]
        for scope, ident, g in groups:
            it_kwh, fac_kwh = g["it_kwh"].sum(), g["facility_kwh"].sum()
            hours = length / 3_600_000
            if it_kwh > 0:
                agg_frames.append(window_rows(scope, ident, window, np.array([start]),
                                              np.array([it_kwh / hours]), np.array([fac_kwh / it_kwh]),
                                              length_ms=length))
            else:  # no valid site in this cluster for this window: incomplete, figures NaN
                row = window_rows(scope, ident, window, np.array([start]), np.array([np.nan]),
                                  np.array([np.nan]), length_ms=length)
                row[["status", "coverage", "grade"]] = ["incomplete", 0.0, ""]
                agg_frames.append(row)
    return pd.concat([data, *agg_frames], ignore_index=True)


@pytest.fixture
def registry() -> Registry:
    return parse_registry(REGISTRY_DOC, "<test registry>")


@pytest.fixture
def engine_settings() -> EngineSettings:
    return EngineSettings(target_pue=TARGET)


@pytest.fixture
def frames() -> pd.DataFrame:
    return build_frames()


@pytest.fixture
def store(tmp_path: Path, frames: pd.DataFrame):
    s = FileStore(tmp_path / "results.sqlite").setup()
    s.write_windows(frames)
    s.write_dead_letters(pd.DataFrame({
        "topic": ["dcpue.readings.v1"], "key": ["gy-a"], "reason": ["unknown point 'it.pdu9'"],
        "payload": [{"point": "it.pdu9", "value": float("nan"), "ts_ms": NOW_MS}],
    }))
    yield s
    s.close()


@pytest.fixture
def status_info() -> dict:
    return {"sim_time_ms": NOW_MS, "readings_total": 123456, "dead_letters_total": 1, "lag_s": float("nan")}
