"""A worker that has run for a year: its live step and its checkpoints, on the first day and with 366 days held.

    PYTHONPATH=. .venv/bin/python bench/long_history.py --sites 1000 --json bench/results/long-history.json

``--sites`` sites (the simulator's site meters, one-minute samples) run 30 minutes through one engine (no
cluster or fleet rows, as a worker of a consumer group). Then, in real time's shape, each site's one-minute
batch arrives ``--per-step`` sites at a time (1,000 sites: about 17 batches a second, a few per poll) for
four minutes, and the CPU of each step (``add`` + ``advance``) is taken; then a checkpoint of every site
(``snapshot_sites``: its CPU and bytes), as the worker writes it at every commit once each site's days are in
a record of their own (state version 4), and as it wrote it before (every day in every checkpoint), and
the days records themselves (``snapshot_complete``, written once a day per site). Then every site is given
a year of complete days and 13 months (its current day's and month's sums copied back in time: what a year of running leaves in the engine,
made in seconds instead of a year; it goes into the running sums, and the first step after, not timed,
sorts it as the engine would have) and the same is measured again.

The year is put into the engine's state directly (``_acc``: a frame, or rows per site from the eighth series
on), which makes this benchmark white-box; it runs the same way against the code of any revision (``bench/`` of
this tree, ``dcpue`` of another checkout).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dcpue.analytics.stream import StreamEngine, snapshot_sites

try:
    from dcpue.analytics.stream import snapshot_complete
except ImportError:  # a revision before state version 4: every checkpoint carries the days
    snapshot_complete = None
from dcpue.ingest.simulator import FleetSimulator, generate_fleet

START = int(pd.Timestamp("2025-07-01", tz="Asia/Shanghai").value // 1_000_000)
DAY_MS = 86_400_000
MIN_MS = 60_000


class Fleet:
    """The engine and the simulator feeding it, one simulated minute at a time."""

    def __init__(self, sites: int) -> None:
        self.registry = generate_fleet(sites, seed=7)
        self.sim = FleetSimulator(self.registry, seed=7, start_ms=START, sample_interval_s=60, faults=False)
        self.sim.setup()
        self.engine = StreamEngine(self.registry, emit_groups=False)
        self.now = START

    def minute(self) -> list[pd.DataFrame]:
        self.now += MIN_MS
        return [frame.assign(site=site) if "site" not in frame else frame for site, frame in self.sim.poll(self.now)]

    def step(self, frames: list[pd.DataFrame]) -> float:
        """CPU seconds of one worker step over ``frames``."""
        readings = pd.concat(frames, ignore_index=True)
        started = time.process_time()
        self.engine.add(readings)
        self.engine.advance()
        return time.process_time() - started


def live(fleet: Fleet, per_step: int, minutes: int) -> dict[str, Any]:
    """Each site's minute arriving ``per_step`` sites at a time: the CPU of each step [ms]."""
    times = []
    for _ in range(minutes):
        frames = fleet.minute()
        for i in range(0, len(frames), per_step):
            times.append(fleet.step(frames[i:i + per_step]) * 1000)
    return {"steps": len(times), "step_cpu_ms_p50": round(float(np.median(times)), 1),
            "step_cpu_ms_p90": round(float(np.percentile(times, 90)), 1),
            "step_cpu_ms_max": round(float(np.max(times)), 1)}


def _timed(what: str, make: Any) -> dict[str, Any]:
    """CPU [ms] and bytes of ``make()``'s blobs (a dict of bytes, or of (mark, bytes))."""
    started = time.process_time()
    blobs = make()
    cpu_ms = (time.process_time() - started) * 1000
    sizes = [len(b if isinstance(b, bytes) else b[1]) for b in blobs.values()]
    return {f"{what}_cpu_ms": round(cpu_ms), f"{what}_bytes": sum(sizes),
            f"{what}_bytes_per_site_median": int(np.median(sizes)) if sizes else 0}


def checkpoint(fleet: Fleet) -> dict[str, Any]:
    """A checkpoint of every site carrying its days, and (state version 4) one leaving them to a record of their
    own, and those records: CPU [ms] and bytes of each."""
    sites = set(fleet.registry.sites_table.index)
    out = _timed("checkpoint", lambda: snapshot_sites(fleet.engine, sites))
    if snapshot_complete is not None:
        saved = {site: mark for site in sites if (mark := fleet.engine.newest_complete(site)) is not None}
        out |= _timed("checkpoint_days_apart", lambda: snapshot_sites(fleet.engine, sites, saved_through=saved))
        out |= _timed("days_record", lambda: snapshot_complete(fleet.engine, sites))
    return out


def age_a_year(engine: StreamEngine) -> None:
    """Give every site 366 complete days and 13 complete months before its current ones (copies of those)."""
    for label, count, period_ms in (("1d", 366, DAY_MS), ("1mo", 13, 31 * DAY_MS)):
        held = engine._acc[label]
        per_site = not isinstance(held, pd.DataFrame)  # revisions from 2026-12-07's eighth series keep rows per site
        current = held.frame() if per_site else held
        sites = current.index.get_level_values("site")
        starts = current.index.get_level_values("start_ms").to_numpy(np.int64)
        past = [pd.DataFrame(current.to_numpy(), columns=current.columns,
                             index=pd.MultiIndex.from_arrays([sites, starts - k * period_ms],
                                                             names=current.index.names))
                for k in range(count, 0, -1)]
        aged = pd.concat([*past, current]).sort_index()
        if per_site:
            held.put(aged)
            engine._prune_due.update(held.frame().index.get_level_values("site").unique())
        else:
            engine._acc[label] = aged


def run(sites: int, per_step: int, minutes: int) -> dict[str, Any]:
    fleet = Fleet(sites)
    for _ in range(30):  # warm-up: every site's windows open and closing
        fleet.step(fleet.minute())
    first_day = {**live(fleet, per_step, minutes), **checkpoint(fleet)}
    age_a_year(fleet.engine)
    held = {label: len(acc) for label, acc in fleet.engine._acc.items()}
    fleet.step(fleet.minute()[:per_step])  # not timed: the first step after sorts the year (see the docstring)
    a_year = {**live(fleet, per_step, minutes), **checkpoint(fleet)}
    return {"sites": sites, "per_step": per_step, "live_minutes": minutes, "first_day": first_day,
            "with_a_year": a_year, "sums_held_after_aging": held}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sites", type=int, default=1000)
    parser.add_argument("--per-step", type=int, default=5, help="sites' one-minute batches per worker step")
    parser.add_argument("--minutes", type=int, default=4, help="simulated minutes of live steps measured")
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args()
    result = run(args.sites, args.per_step, args.minutes)
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    result["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
