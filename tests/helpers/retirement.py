"""A small simulated fleet and its stored PUE windows, for the retirement output tests.

The windows are computed by the PUE engine (:func:`dcpue.analytics.batch.batch_windows`) from
simulator readings — the same path the figures take in production, only in batch — once per test
process, and written into a fresh :class:`~dcpue.runtime.store.FileStore` by :func:`filled_store`.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pandas as pd

from dcpue.analytics.batch import batch_windows
from dcpue.ingest.simulator import FleetSimulator, generate_fleet
from dcpue.registry import Registry
from dcpue.runtime.store import FileStore
from dcpue.settings import EngineSettings
from tests.factories import filled_file_store, write_registry_file

TZ = "Asia/Shanghai"
START = pd.Timestamp("2024-11-01", tz=TZ)
AS_OF = pd.Timestamp("2025-02-01", tz=TZ)
START_MS = START.value // 1_000_000
AS_OF_MS = AS_OF.value // 1_000_000
SAMPLE_S = 1800  # [s] a BMS-like half-hourly export keeps the simulation quick


@cache
def fleet() -> Registry:
    """Four generated sites: a Gui'an liquid campus, a legacy room, an enterprise site, a cloud site."""
    return generate_fleet(4, seed=7)


@cache
def simulated_windows() -> pd.DataFrame:
    """``1d`` and ``1h`` window results of :func:`fleet` from 2024-11-01 to 2025-02-01 (Asia/Shanghai)."""
    registry = fleet()
    sim = FleetSimulator(registry, seed=7, start_ms=START_MS, sample_interval_s=SAMPLE_S, faults=False)
    sim.setup()
    frames = [frame for batch in sim.iter_poll(AS_OF_MS, step_s=10 * 86_400) for _, frame in batch]
    readings = pd.concat(frames, ignore_index=True)
    settings = EngineSettings(timezone=TZ)
    return pd.concat([batch_windows(readings, registry, w, settings) for w in ("1d", "1h")], ignore_index=True)


def filled_store(path: Path, windows: pd.DataFrame | None = None) -> FileStore:
    """An open file store at ``path`` holding ``windows`` (default: :func:`simulated_windows`)."""
    return filled_file_store(path, simulated_windows() if windows is None else windows)


def write_registry(path: Path) -> Path:
    return write_registry_file(path, fleet())
