"""Small builders shared by tests: registries and reading series whose figures are checkable by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dcpue.model import readings_frame
from dcpue.registry import Registry, dump_registry, parse_registry
from dcpue.runtime.store import FileStore

# 2025-01-06 00:00 Asia/Shanghai (a Monday), so hour/day windows start on round timestamps
T0 = int(pd.Timestamp("2025-01-06T00:00:00+08:00").value // 1_000_000)
MIN = 60_000


def point(pid: str, role: str, quantity: str = "power", unit: str = "kW", **extra: Any) -> dict[str, Any]:
    return {"id": pid, "role": role, "quantity": quantity, "unit": unit, **extra}


def site(sid: str, points: list[dict[str, Any]], cluster: str | None = None, **extra: Any) -> dict[str, Any]:
    doc = {
        "id": sid, "name": sid.upper(), "city": "Guiyang", "latitude": 26.65, "longitude": 106.63,
        "commissioned": 2020, "racks_installed": 100, "racks_in_service": 80, "design_it_kw": 500.0,
        "cooling": "air", "points": points, **extra,
    }
    if cluster:
        doc["cluster"] = cluster
    return doc


def simple_site(sid: str, cluster: str | None = None, **extra: Any) -> dict[str, Any]:
    """Facility counter (revenue meter, rated 1000 kW), one IT power meter (cat. 1) and a CRAH."""
    return site(sid, [
        point("facility.main", "facility", "energy", "kWh", source="revenue_meter", rated_kw=1000),
        point("it.ups", "it", it_category=1, source="ups"),
        point("cool.crah", "cooling", cooling_subsystem="crah"),
    ], cluster=cluster, **extra)


def registry(*sites: dict[str, Any], clusters: list[dict[str, Any]] | None = None) -> Registry:
    return parse_registry({"clusters": clusters or [], "sites": list(sites)})


GUI_AN = {"id": "gui-an", "name": "Gui'an", "latitude": 26.4, "longitude": 106.4}


def power_series(sid: str, pid: str, kw: float | np.ndarray, minutes: int, start_ms: int = T0,
                 step_min: float = 1.0) -> pd.DataFrame:
    """Samples every ``step_min`` minutes from ``start_ms`` for ``minutes`` minutes (inclusive end)."""
    ts = start_ms + (np.arange(0, minutes / step_min + 1) * step_min * MIN).astype(np.int64)
    values = np.broadcast_to(np.asarray(kw, dtype=float), ts.shape)
    return readings_frame(sid, pid, ts, values)


def counter_series(sid: str, pid: str, kw: float, minutes: int, start_kwh: float = 1000.0,
                   start_ms: int = T0) -> pd.DataFrame:
    """An energy counter read every minute while ``kw`` flows."""
    ts = start_ms + np.arange(0, minutes + 1, dtype=np.int64) * MIN
    return readings_frame(sid, pid, ts, start_kwh + kw * np.arange(0, minutes + 1) / 60.0)


def filled_file_store(path: Path, windows: pd.DataFrame) -> FileStore:
    """An open file store at ``path`` holding ``windows``."""
    store = FileStore(path).setup()
    store.write_windows(windows)
    return store


def write_registry_file(path: Path, registry: Registry) -> Path:
    """``registry`` as YAML at ``path``."""
    path.write_text(dump_registry(registry), encoding="utf-8")
    return path
