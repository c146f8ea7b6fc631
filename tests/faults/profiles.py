"""Profiles of the fault-injection suite: ``short`` (default, part of ``make test``) and ``long``.

Selected with ``FAULTS_PROFILE=short|long``. The variable is deliberately not ``DCPUE_*``:
:func:`dcpue.settings.load_settings` reads every ``DCPUE_*`` variable as a setting and rejects unknown ones.
Long run (see docs/reliability.md)::

    FAULTS_PROFILE=long FAULTS_RESULTS=bench/results/faults-long.json \\
        .venv/bin/pytest tests/faults -q -p no:cacheprovider
"""

from __future__ import annotations

import os
from dataclasses import dataclass

PROFILE_ENV = "FAULTS_PROFILE"
RESULTS_ENV = "FAULTS_RESULTS"
FAULT_ROW = "dcpue_fault_scenario"  # a scenario's result row, as a test report's user property (tests/conftest.py)


@dataclass(frozen=True)
class Profile:
    name: str
    sites: int  # sites of the fleet the test producer sends for
    minutes: int  # minutes of 1-min readings per site
    batch_min: int  # minutes per collector batch
    pace_s: float  # pause between rounds of batches (every site's next batch): the collectors' pace
    kills: int  # (a) times the analytics worker is SIGKILLed and restarted
    broker_restarts: int  # (b) times the broker is killed and restarted
    broker_down_s: float  # (b) how long the broker stays down each time
    sink_down_s: float  # (c) how long the InfluxDB write endpoint stays down
    spool_sites: int  # (d) simulated sites of the collector whose spool fills
    spool_overfill: float  # (d) keep the bus cut until this many spools' worth was dropped (× max_bytes)
    skewed_batches: int  # (e) batches the skewed collector stamps in the future
    duplicate_every: int  # (f) every n-th batch is sent again later
    timeout_s: float  # per test (pytest-timeout)


SHORT = Profile("short", sites=3, minutes=26 * 60, batch_min=30, pace_s=0.03, kills=1, broker_restarts=1,
                broker_down_s=2.0, sink_down_s=5.0, spool_sites=12, spool_overfill=0.3, skewed_batches=6,
                duplicate_every=4, timeout_s=120)
LONG = Profile("long", sites=12, minutes=3 * 24 * 60 + 120, batch_min=30, pace_s=0.15, kills=3, broker_restarts=2,
               broker_down_s=20.0, sink_down_s=180.0, spool_sites=24, spool_overfill=2.0, skewed_batches=24,
               duplicate_every=2, timeout_s=900)

PROFILE_NAME = os.environ.get(PROFILE_ENV, "short")
if PROFILE_NAME not in ("short", "long"):
    raise RuntimeError(f"{PROFILE_ENV}={PROFILE_NAME!r}: use 'short' (default) or 'long'")
PROFILE = SHORT if PROFILE_NAME == "short" else LONG
