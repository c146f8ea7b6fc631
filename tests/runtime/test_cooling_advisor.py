"""Cooling advice in the analytics worker: table from the stream, a model trained on schedule, a
recommendation per new interval in the store, and a restarted advisor that resumes from model_dir."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dcpue.ingest.base import publish_polls
from dcpue.ingest.simulator import FleetSimulator, generate_fleet
from dcpue.registry import Registry
from dcpue.runtime.bus import InProcessBus
from dcpue.runtime.cooling import CoolingAdvisor, recommendation_writer
from dcpue.runtime.store import FileStore
from dcpue.runtime.worker import AnalyticsWorker
from dcpue.settings import CoolingSettings, load_settings

SITE = "xy-03"
START_MS = 1_751_328_000_000  # 2025-07-01T00:00Z
HOUR = 3_600_000
FLEET = generate_fleet(4, seed=7)
REGISTRY = Registry(clusters=FLEET.clusters, sites=tuple(s for s in FLEET.sites if s.id == SITE))


def feed(tmp_path: Path, sim: FleetSimulator, hours: range, rng: np.random.Generator) -> tuple[CoolingAdvisor,
                                                                                               FileStore]:
    """A worker with an advisor on ``tmp_path``, fed 6 h at a time; setpoints stepped every 6 h (step tests)."""
    cooling = CoolingSettings(enabled=True, model_dir=str(tmp_path / "models"), table_every_h=6,
                              min_history_days=5.5, retrain_every_h=96)
    settings = load_settings(None, cooling=cooling.model_dump())
    store = FileStore(tmp_path / "dcpue.sqlite").setup()
    bus = InProcessBus(10_000)
    advisor = CoolingAdvisor(REGISTRY, settings.cooling, train_in_background=False)
    worker = AnalyticsWorker(REGISTRY, settings, bus.consumer([settings.bus.topics.readings], "a"), store,
                             clock=lambda: START_MS + 400 * HOUR, state=store, cooling=advisor,
                             recommendation_output=recommendation_writer([store]))
    producer = bus.producer()
    for hour in hours:
        sim.set_setpoints(SITE, supply_air=float(rng.choice([20, 21, 22, 23])),
                          chw_supply=float(rng.choice([12, 14, 16, 18])), cw_supply=float(rng.choice([16, 19, 22, 25])))
        publish_polls(sim, producer, settings.bus.topics.readings, lambda h=hour: START_MS + (h + 6) * HOUR)
        while worker.step(timeout_s=0.01):
            pass
    assert worker.checkpoint()
    advisor.close()
    return advisor, store


def test_the_advisor_trains_on_schedule_recommends_per_interval_and_resumes(tmp_path: Path):
    sim = FleetSimulator(REGISTRY, seed=7, start_ms=START_MS, sample_interval_s=300, faults=False)
    sim.setup()
    rng = np.random.default_rng(5)
    advisor, store = feed(tmp_path, sim, range(0, 8 * 24, 6), rng)
    assert advisor.trainings == 1 and SITE in advisor.models  # trained once the table held 5.5 days
    model = advisor.models[SITE]
    assert model.training_window[1] - model.training_window[0] >= 5.5 * 24 * HOUR - 6 * HOUR
    records = store.recommendations(SITE, limit=1000)
    assert records, "no recommendation after the model was trained"
    stamps = sorted(r["ts_ms"] for r in records)
    assert stamps[0] > model.training_window[1]  # advice only for intervals after the training data
    # one per complete 15-min table row, none twice (an interval with too little coverage is skipped)
    assert np.all(np.diff(stamps) > 0) and all(t % (15 * 60_000) == 0 for t in stamps)
    expected = (stamps[-1] - stamps[0]) // (15 * 60_000) + 1
    assert len(stamps) >= 0.8 * expected, (len(stamps), expected)
    assert all(r["site"] == SITE and r["model_version"] == model.version and 0 <= r["confidence"] <= 1
               for r in records)
    assert (tmp_path / "models" / f"table-{SITE}.csv").exists()
    store.close()

    # a new worker resumes with the saved model and table and goes on advising where the last one stopped
    again, store = feed(tmp_path, sim, range(8 * 24, 8 * 24 + 12, 6), rng)
    assert again.trainings == 0 and again.models[SITE].version == model.version
    newer = [r["ts_ms"] for r in store.recommendations(SITE, limit=1000) if r["ts_ms"] > stamps[-1]]
    assert newer and min(newer) > stamps[-1]
    store.close()


def test_table_rows_survive_a_crash_and_a_torn_append(tmp_path: Path):
    """Every conversion appends its rows to the site's file at once: a worker killed before close() (no
    training, no save) loses none, and a torn last line from a crash inside the append is dropped."""
    sim = FleetSimulator(REGISTRY, seed=7, start_ms=START_MS, sample_interval_s=300, faults=False)
    sim.setup()
    cooling = CoolingSettings(enabled=True, model_dir=str(tmp_path / "models"), table_every_h=2,
                              min_history_days=30)
    advisor = CoolingAdvisor(REGISTRY, cooling, train_in_background=False)
    for hours in (3, 5, 9):
        advisor.observe(pd.concat([f for _, f in sim.poll(START_MS + hours * HOUR)], ignore_index=True))
    made = advisor.tables[SITE]
    assert len(made) >= 30  # 8 hours of 15-minute rows (the first may be partial)
    path = tmp_path / "models" / f"table-{SITE}.csv"
    # no close(): the process "died" here
    restarted = CoolingAdvisor(REGISTRY, cooling, train_in_background=False)
    pd.testing.assert_frame_equal(restarted.tables[SITE], made, check_dtype=False)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(f"{int(made['ts'].iloc[-1]) + 900_000},33")  # an append cut short
    again = CoolingAdvisor(REGISTRY, cooling, train_in_background=False)
    pd.testing.assert_frame_equal(again.tables[SITE], made, check_dtype=False)
    # and it carries on from where the table ended, appending after the torn line was dropped
    again.observe(pd.concat([f for _, f in sim.poll(START_MS + 12 * HOUR)], ignore_index=True))
    assert len(again.tables[SITE]) > len(made)
    final = CoolingAdvisor(REGISTRY, cooling, train_in_background=False)
    pd.testing.assert_frame_equal(final.tables[SITE], again.tables[SITE], check_dtype=False)
    # a file written by an older dcpue, without a column this one writes: rewritten whole, nothing lost
    final.tables[SITE].drop(columns=["rack_inlet_mean_c"]).to_csv(path, index=False)
    old = CoolingAdvisor(REGISTRY, cooling, train_in_background=False)
    old.observe(pd.concat([f for _, f in sim.poll(START_MS + 15 * HOUR)], ignore_index=True))
    assert path.read_text(encoding="utf-8").splitlines()[0] == ",".join(old.tables[SITE].columns)
    reread = CoolingAdvisor(REGISTRY, cooling, train_in_background=False).tables[SITE]
    assert len(reread) == len(old.tables[SITE]) > len(final.tables[SITE])
    pd.testing.assert_frame_equal(reread.drop(columns=["rack_inlet_mean_c"]),
                                  old.tables[SITE].drop(columns=["rack_inlet_mean_c"]), check_dtype=False)


def test_each_liquid_site_is_advised_within_its_own_water_class(tmp_path: Path):
    """alerts.sites.<id>.water_class (the site's IT design) wins over cooling.water_class and the fleet's class."""
    from dcpue.runtime.cooling import site_water_classes

    fleet = generate_fleet(4, seed=7)
    settings = load_settings(None, alerts={"water_class": "W40", "sites": {"ga-01": {"water_class": "W32"}}},
                             cooling={"enabled": True, "model_dir": str(tmp_path / "m")})
    assert site_water_classes(settings) == {"ga-01": "W32"}
    advisor = CoolingAdvisor(fleet, settings.cooling, water_class=settings.alerts.water_class,
                             site_water_classes=site_water_classes(settings))
    limits = {site: env.fw_limit_c for site, env in advisor.envelopes.items()}
    assert limits == {"ga-01": 32.0, "tr-02": 40.0, "xy-03": 40.0, "gy-04": 40.0}
    forced = load_settings(None, alerts={"sites": {"ga-01": {"water_class": "W32"}}},
                           cooling={"enabled": True, "model_dir": str(tmp_path / "m"), "water_class": "W27"})
    advisor = CoolingAdvisor(fleet, forced.cooling, water_class=forced.alerts.water_class,
                             site_water_classes=site_water_classes(forced))
    assert advisor.envelopes["ga-01"].fw_limit_c == 32.0 and advisor.envelopes["gy-04"].fw_limit_c == 27.0
