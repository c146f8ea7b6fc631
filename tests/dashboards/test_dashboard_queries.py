"""Every query of every dashboard, run on a real InfluxDB 1.x that the pipeline filled from the simulator.

No Grafana runs here (it cannot be installed). The pipeline is the real analytics worker
(:class:`~dcpue.runtime.worker.AnalyticsWorker` with the alert engine) reading simulator batches from the
in-process bus and writing windows, readings, alerts and dead letters through ``InfluxSink`` — to InfluxDB
1.6 through the v2-write relay of ``tests/servers.py`` — plus the daily registry snapshot, a retirement
assessment of the stored windows (``dcpue retire --influx``'s path) and cooling records. Four sites, two
simulated days ending yesterday, with a degraded cooling plant, a stuck facility meter, a collector outage
and a malformed batch, so that every panel has something to show.

For each panel target and variable, the InfluxQL is interpolated as Grafana does (``$timeFilter``,
``$__interval``, the variables at All or one site) and run; it must answer without error, with at least
one non-empty series, whose columns are the ``AS "…"`` names of the query and whose tags are its
``GROUP BY`` tags.
"""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest

from dcpue.adapters.influxdb import InfluxSink
from dcpue.analytics.alerts.engine import AlertEngine
from dcpue.analytics.cooling import Recommendation
from dcpue.dashboards.build import dashboards
from dcpue.ingest.base import publish_polls
from dcpue.ingest.simulator import FleetSimulator, generate_fleet
from dcpue.model import readings_frame
from dcpue.runtime.alerts import AlertOutput
from dcpue.runtime.bus import InProcessBus
from dcpue.runtime.retirement import assess_store
from dcpue.runtime.sinks import FanoutSink
from dcpue.runtime.store import FileStore
from dcpue.runtime.worker import AnalyticsWorker
from dcpue.settings import InfluxSettings, load_settings
from dcpue.wire import encode_frame
from tests.servers import InfluxV2Relay, influxdb1, unique_name  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

TZ = "Asia/Shanghai"
DAY = 86_400_000
HOUR = 3_600_000
# two whole local days ending at yesterday's midnight, so dead letters (stamped when written) are just after
START = int((pd.Timestamp.now(tz=TZ).normalize() - pd.Timedelta(days=3)).value // 1_000_000)
END = START + 2 * DAY
SINGLE_SITE = "xy-03"  # the site dashboard takes one site: an air-cooled room with chillers and a water meter


@pytest.fixture(scope="module")
def loaded(influxdb1, tmp_path_factory) -> Iterator[dict[str, Any]]:  # noqa: F811
    """A fresh InfluxDB 1.x database the pipeline filled, and what went in."""
    db = unique_name("dash")
    _query(influxdb1.url, f"CREATE DATABASE {db}")
    registry = generate_fleet(4, seed=7)
    sites = [s.id for s in registry.sites]
    # ten-minute samples keep the load quick (the gap limit follows them); commit every step, so the
    # bus's lag says when the worker has everything; criteria a two-day store can meet, so a plan exists
    settings = load_settings(None, engine={"timezone": TZ, "max_gap_s": 900}, bus={"commit_interval_s": 0},
                             retirement={"criteria": {"min_pue_months": 0.05}})
    sim = FleetSimulator(registry, seed=7, start_ms=START, sample_interval_s=600, faults=False)
    sim.inject(sites[1], None, "cooling_degraded", START + 10 * HOUR, duration_s=4 * 3600, magnitude=3.0)
    sim.inject(sites[2], "facility.main", "stuck", START + 30 * HOUR, duration_s=3 * 3600)
    sim.inject(sites[3], None, "outage", START + 33 * HOUR, duration_s=4 * 3600)  # silent at the 36 h poll
    store = FileStore(tmp_path_factory.mktemp("dash") / "store.sqlite").setup()
    bus = InProcessBus(100_000)
    producer = bus.producer()
    topic = settings.bus.topics.readings
    now = [START]
    with InfluxV2Relay(influxdb1.url) as relay:
        influx = InfluxSink(InfluxSettings(url=relay.url, token="u:p", org="-", bucket=f"{db}/autogen"),
                            registry.sites_table, registry.points_table).setup()
        worker = AnalyticsWorker(registry, settings, bus.consumer([topic], "dash"), FanoutSink(influx, store),
                                 clock=lambda: now[0], emit_groups=True,
                                 alerts=AlertEngine(registry, settings.engine, settings.alerts),
                                 alert_output=AlertOutput(sinks=[influx]))
        sim.setup()
        for t in range(START + 6 * HOUR, END + 6 * HOUR, 6 * HOUR):
            now[0] = t
            publish_polls(sim, producer, topic, lambda: now[0])
            if t == START + 6 * HOUR:  # a batch naming a point no registry knows: a dead letter
                bad = readings_frame([sites[0]], ["no.such-point"], [t - 60_000], [1.0])
                producer.send(topic, encode_frame(sites[0], bad), key=sites[0])
            while bus.lag("dash", topic):
                worker.step(timeout_s=0.05)
        worker.checkpoint()
        for day in range(START, END + DAY, DAY):  # the registry snapshot of each UTC day
            influx.write_inventory(day // DAY * DAY)
        assessment = assess_store(store, registry, settings.retirement, as_of_ms=END, tz=TZ)
        influx.write_retirement(assessment, END)
        influx.write_recommendations(_recommendations(sim, registry))
        influx.close()
    store.close()
    yield {"url": influxdb1.url, "db": db, "sites": sites}


def _recommendations(sim: FleetSimulator, registry) -> list[dict[str, Any]]:
    """One advisory record per site and hour of the second day: keep the setpoints the simulator ran."""
    records = []
    for site in registry.sites:
        current = sim.get_setpoints(site.id)
        for t in range(START + DAY, END, HOUR):
            raised = {k: v + 0.5 for k, v in current.items()}
            records.append(Recommendation(
                site=site.id, ts_ms=t, current=current, recommended=raised, ok=True, action="change",
                reason="change: raise every setpoint 0.5 K (test record)", model_version="test",
                saving_kw=12.5, saving_pct=0.3, predicted_pue=1.3, facility_kw_recommended=1000.0,
                rack_inlet_c_hi=25.0).as_dict())
    return records


def _query(url: str, q: str, db: str | None = None) -> dict[str, Any]:
    data = urllib.parse.urlencode({"q": q, "epoch": "ms", **({"db": db} if db else {})}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"{url}/query", data=data, method="POST"), timeout=30) as r:
        result = json.loads(r.read())["results"][0]
    assert "error" not in result, f"{result['error']}\n{q}"
    return result


def interpolate(query: str, values: dict[str, str], start_ms: int, end_ms: int, interval: str = "1h") -> str:
    """``query`` as Grafana sends it for an absolute range; ``values`` are the variables' regex values."""
    q = query.replace("$timeFilter", f"time >= {start_ms}ms and time <= {end_ms}ms").replace("$__interval", interval)
    for name, value in values.items():
        q = q.replace(f"${name}", value)
    assert "$" not in q.replace("/^", "").replace("$/", ""), f"an uninterpolated variable in {q}"
    return q


def expected_columns(query: str) -> list[str]:
    """The columns InfluxDB names for the outermost SELECT: ``AS "name"``, else the function, else the field."""
    select = query.removeprefix("SELECT ").split(" FROM ", 1)[0]
    columns = []
    for item in select.split(", "):
        alias = re.search(r'AS "([^"]+)"$', item)
        call = re.match(r"(\w+)\(", item)
        columns.append(alias.group(1) if alias else call.group(1) if call else item.strip('"'))
    return columns


def expected_tags(query: str) -> set[str]:
    tail = query.rsplit(" GROUP BY ", 1)
    if len(tail) == 1 or ")" in tail[1].split(" fill(")[0].replace("time($__interval)", "").replace("time(1d)", ""):
        return set()
    return set(re.findall(r'"(\w+)"', tail[1]))


def _targets() -> list[tuple[str, str, str, str]]:
    """(dashboard uid, panel title, ref id, query) of every panel target of every dashboard."""
    out = []
    for d in dashboards().values():
        for panel in d["panels"]:
            for target in panel.get("targets", []):
                out.append((d["uid"], panel["title"], target["refId"], target["query"]))
    return out


def _values(uid: str, sites: list[str]) -> dict[str, str]:
    site = SINGLE_SITE if uid == "dcpue-site" else ".*"
    return {"site": site, "city": ".*", "cluster": ".*"}


@pytest.mark.parametrize("uid,title,ref,query", _targets(), ids=lambda v: v if len(str(v)) < 40 else None)
def test_every_panel_query_returns_series_of_the_expected_shape(loaded, uid, title, ref, query) -> None:
    q = interpolate(query, _values(uid, loaded["sites"]), START, int(pd.Timestamp.now(tz=TZ).value // 1e6) + HOUR)
    series = _query(loaded["url"], q, loaded["db"]).get("series", [])
    assert series and all(s["values"] for s in series), f"{uid} / {title} / {ref}: no rows for\n{q}"
    columns = expected_columns(query)
    tags = expected_tags(query)
    for s in series:
        assert s["columns"][0] == "time" and s["columns"][1:] == columns, (title, s["columns"], columns)
        assert set(s.get("tags", {})) == tags, (title, s.get("tags"), tags)
        assert any(v is not None for row in s["values"] for v in row[1:]), f"{title}: only nulls"


def test_the_site_table_has_every_site_and_the_fleet_pue_is_energy_weighted(loaded) -> None:
    fleet = dashboards()["dcpue-fleet.json"]
    (table,) = [p for p in fleet["panels"] if p["title"] == "Sites"]
    q = interpolate(table["targets"][0]["query"], {"site": ".*", "city": ".*", "cluster": ".*"}, START, END)
    rows = {s["tags"]["site"]: dict(zip(s["columns"], s["values"][0], strict=True))
            for s in _query(loaded["url"], q, loaded["db"])["series"]}
    assert set(rows) == set(loaded["sites"])
    for row in rows.values():
        assert 1.0 < row["pue"] < 2.5 and row["gap"] == pytest.approx(row["pue"] - 1.2)
        assert row["grade"] in ("1", "2", "3", "beyond_limit") and 0 < row["occupancy"] <= 1
    # the city filter narrows the table to that city's sites
    one = _query(loaded["url"], interpolate(table["targets"][0]["query"], {"site": ".*", "city": "Guiyang",
                                                                           "cluster": ".*"}, START, END), loaded["db"])
    assert {s["tags"]["city"] for s in one.get("series", [])} <= {"Guiyang"}


def test_every_variable_query_lists_values(loaded) -> None:
    for d in dashboards().values():
        for v in d["templating"]["list"]:
            q = interpolate(v["query"], {"site": ".*", "city": ".*", "cluster": ".*"}, START, END)
            result = _query(loaded["url"], q, loaded["db"])
            values = [row[1] for s in result.get("series", []) for row in s["values"]]
            assert values, f"{d['uid']}: variable {v['name']} lists nothing"
            if v["name"] == "site":
                assert set(values) <= set(loaded["sites"]) and SINGLE_SITE in values
