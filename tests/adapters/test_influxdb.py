"""Window results, raw readings and the site inventory into real servers: influxdb-client → VictoriaMetrics
(v2 write API), and the same line protocol → InfluxDB 1.6, read back with the InfluxQL the dashboards will
use. Request batching is checked against a small recording HTTP server on 127.0.0.1."""

from __future__ import annotations

import http.server
import json
import re
import threading
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dcpue.adapters.influxdb import InfluxSink
from dcpue.adapters.lineprotocol import (
    alerts_to_lines,
    dead_letters_to_lines,
    inventory_to_lines,
    readings_to_lines,
    recommendations_to_lines,
    windows_to_lines,
)
from dcpue.analytics.alerts.model import AlertEvent
from dcpue.analytics.alerts.model import Status as AlertStatus
from dcpue.analytics.batch import batch_windows
from dcpue.errors import SinkError
from dcpue.model import Quality, readings_frame
from dcpue.settings import InfluxSettings
from tests.factories import GUI_AN, MIN, T0, counter_series, point, power_series, registry, simple_site, site
from tests.servers import influxdb1, unique_name, victoria_metrics, victoria_metrics_flush  # noqa: F401

pytestmark = pytest.mark.integration


@pytest.fixture
def windows():
    reg = registry(simple_site("a", cluster="gui-an"), simple_site("b"), clusters=[GUI_AN])
    readings = pd.concat([
        counter_series("a", "facility.main", 150, 120), power_series("a", "it.ups", 100, 120),
        counter_series("b", "facility.main", 240, 120), power_series("b", "it.ups", 200, 120),
    ])
    return reg, batch_windows(readings, reg, "1h")


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_influxdb_client_writes_reach_the_v2_write_api(victoria_metrics, windows):  # noqa: F811
    reg, rows = windows
    sink = InfluxSink(InfluxSettings(url=victoria_metrics.url, token="t", org="o", bucket=unique_name("b")),
                      reg.sites_table).setup()
    sink.write_windows(rows)
    sink.write_windows(rows)  # a replay overwrites the same points
    sink.close()
    victoria_metrics_flush(victoria_metrics.url)
    query = urllib.parse.urlencode({"query": 'pue_pue{site="a",window="1h"}', "time": str((T0 + 7_200_000) / 1000)})
    result = get(f"{victoria_metrics.url}/api/v1/query?{query}")["data"]["result"]
    assert len(result) == 1
    assert result[0]["metric"]["cluster"] == "gui-an" and result[0]["metric"]["scope"] == "site"
    assert float(result[0]["value"][1]) == pytest.approx(1.5)


def test_sink_errors_become_sink_error_for_backpressure():
    sink = InfluxSink(InfluxSettings(url="http://127.0.0.1:9", timeout_s=1)).setup()  # nothing listens
    with pytest.raises(SinkError, match="InfluxDB write of"):
        sink.write_windows(pd.DataFrame({"scope": ["site"], "id": ["a"], "window": ["1h"], "start_ms": [T0],
                                         "end_ms": [T0 + 3_600_000], "pue": [1.5]}))
    sink.close()


def test_influxql_reads_what_was_written(influxdb1, windows):  # noqa: F811
    reg, rows = windows
    db = unique_name("db")
    get(f"{influxdb1.url}/query?" + urllib.parse.urlencode({"q": f"CREATE DATABASE {db}"}))
    body = "\n".join(windows_to_lines(rows, reg.sites_table)).encode()
    request = urllib.request.Request(f"{influxdb1.url}/write?db={db}&precision=ms", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 204
    q = ("SELECT last(pue) AS pue, last(grade) AS grade FROM pue "
         "WHERE scope = 'site' AND \"window\" = '1h' AND status = 'ok' GROUP BY site")
    series = get(f"{influxdb1.url}/query?" + urllib.parse.urlencode({"db": db, "q": q}))["results"][0]["series"]
    by_site = {s["tags"]["site"]: dict(zip(s["columns"], s["values"][0], strict=True)) for s in series}
    assert by_site["a"]["pue"] == pytest.approx(1.5) and by_site["a"]["grade"] == "3"
    assert by_site["b"]["pue"] == pytest.approx(1.2) and by_site["b"]["grade"] == "1"
    fleet_q = "SELECT pue FROM pue WHERE scope = 'fleet' AND \"window\" = '1h' AND status = 'ok'"
    fleet = get(f"{influxdb1.url}/query?" + urllib.parse.urlencode({"db": db, "q": fleet_q}))
    values = [v[1] for v in fleet["results"][0]["series"][0]["values"]]
    assert values == [pytest.approx(390 / 300)] * 2  # two closed hours, energy-weighted


# --- batching: one HTTP request per `batch_size` lines -------------------------------------------------


class _RecordingHandler(http.server.BaseHTTPRequestHandler):
    """A write endpoint that records every request and answers with the next queued status (204 by default)."""

    def do_POST(self) -> None:  # noqa: N802 — http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        self.server.requests.append((self.path, body))  # type: ignore[attr-defined]
        statuses = self.server.statuses  # type: ignore[attr-defined]
        status = statuses.pop(0) if statuses else 204
        payload = b"" if status == 204 else json.dumps({"code": "unavailable", "message": "busy"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 — keep pytest output clean
        pass


@pytest.fixture
def recorder():
    """A real HTTP peer on 127.0.0.1 standing in for InfluxDB's /api/v2/write; ``.requests`` = [(path, body)]."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RecordingHandler)
    server.requests = []  # type: ignore[attr-defined]
    server.statuses = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def ten_readings(site_id: str = "a") -> pd.DataFrame:
    return readings_frame(site_id, "it.ups", T0 + np.arange(10, dtype=np.int64) * MIN, 100.0 + np.arange(10))


def test_each_request_carries_at_most_batch_size_lines(recorder):
    sink = InfluxSink(InfluxSettings(url=recorder.url, bucket="bk", org="o", batch_size=3)).setup()
    readings = ten_readings()
    sink.write_readings(readings)
    sink.close()
    bodies = [body.split("\n") for _, body in recorder.requests]
    assert [len(lines) for lines in bodies] == [3, 3, 3, 1]
    assert [line for lines in bodies for line in lines] == readings_to_lines(readings)  # all, in order, once
    for path, _ in recorder.requests:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
        assert urllib.parse.urlsplit(path).path == "/api/v2/write"
        assert query["bucket"] == ["bk"] and query["precision"] == ["ms"]


def test_a_failed_request_raises_sink_error_and_sends_nothing_after_it(recorder):
    recorder.statuses.extend([204, 503])
    sink = InfluxSink(InfluxSettings(url=recorder.url, batch_size=3, timeout_s=5)).setup()
    with pytest.raises(SinkError, match=r"InfluxDB write of 3 points \(request 2 of 4\).*HTTP 503"):
        sink.write_readings(ten_readings())
    assert len(recorder.requests) == 2
    # the retry re-sends everything: the first chunk twice, which InfluxDB overwrites (same series + time)
    sink.write_readings(ten_readings())
    sink.close()
    assert [len(body.split("\n")) for _, body in recorder.requests[2:]] == [3, 3, 3, 1]


def test_readings_are_not_sent_when_write_readings_is_off(recorder):
    sink = InfluxSink(InfluxSettings(url=recorder.url, write_readings=False)).setup()
    sink.write_readings(ten_readings())
    sink.write_windows(pd.DataFrame({"scope": ["site"], "id": ["a"], "window": ["1h"], "start_ms": [T0],
                                     "end_ms": [T0 + 3_600_000], "pue": [1.5]}))
    sink.close()
    assert [body.split(",", 1)[0] for _, body in recorder.requests] == ["pue"]  # only the window


def test_a_sink_that_was_not_set_up_raises_sink_error():
    with pytest.raises(SinkError, match="call setup"):
        InfluxSink(InfluxSettings()).write_readings(ten_readings())


# --- readings and inventory into VictoriaMetrics (influxdb-client, v2 write API) -----------------------


def vm_export(url: str, selector: str) -> dict[tuple[tuple[str, str], ...], dict]:
    """Every series matching ``selector`` (all time), keyed by its sorted labels."""
    query = urllib.parse.urlencode({"match[]": selector, "start": "0"})
    with urllib.request.urlopen(f"{url}/api/v1/export?{query}", timeout=10) as response:
        rows = [json.loads(line) for line in response.read().splitlines() if line.strip()]
    return {tuple(sorted(row["metric"].items())): row for row in rows}


def test_batched_readings_all_reach_victoria_metrics(victoria_metrics):  # noqa: F811
    site_id = unique_name("s")
    readings = ten_readings(site_id)
    sink = InfluxSink(InfluxSettings(url=victoria_metrics.url, bucket=unique_name("b"), batch_size=3)).setup()
    sink.write_readings(readings)
    sink.close()
    victoria_metrics_flush(victoria_metrics.url)
    (series,) = vm_export(victoria_metrics.url, f'reading_value{{site="{site_id}"}}').values()
    assert series["timestamps"] == readings["ts"].tolist()
    assert series["values"] == readings["value"].tolist()


def test_readings_reach_victoria_metrics_with_registry_tags(victoria_metrics):  # noqa: F811
    site_id = unique_name("s")
    reg = registry(site(site_id, [point("facility.main", "facility", "energy", "Wh"),
                                  point("it.pdu", "it", "power", "W", it_category=2)], cluster="gui-an",
                        city="Gui'an New Area"), clusters=[GUI_AN])
    readings = pd.concat([counter_series(site_id, "facility.main", 150_000, 4, start_kwh=1e6),
                          power_series(site_id, "it.pdu", 100_000.0, 4)])
    readings.loc[readings.index[-1], "quality"] = 1  # substituted
    sink = InfluxSink(InfluxSettings(url=victoria_metrics.url, bucket=unique_name("b")), reg.sites_table,
                      points=reg.points_table).setup()
    sink.write_readings(readings)
    sink.close()
    victoria_metrics_flush(victoria_metrics.url)
    values = vm_export(victoria_metrics.url, f'reading_value{{site="{site_id}"}}')
    quality = vm_export(victoria_metrics.url, f'reading_quality{{site="{site_id}"}}')
    assert len(values) == len(quality) == 2
    for (site_id_, point_id), rows in readings.groupby(["site", "point"]):
        meta = reg.points_table.loc[(site_id_, point_id)]
        labels = (("__name__", "reading_value"), ("city", "Gui'an New Area"), ("cluster", "gui-an"),
                  ("point", point_id), ("quantity", meta["quantity"]), ("role", meta["role"]), ("site", site_id))
        assert values[labels]["timestamps"] == rows["ts"].tolist()
        # written in the canonical unit of the quantity: the registry's factor applied
        assert values[labels]["values"] == pytest.approx((rows["value"] * meta["factor"]).tolist())
        q_labels = tuple((k, "reading_quality" if k == "__name__" else v) for k, v in labels)
        assert quality[q_labels]["values"] == rows["quality"].tolist()


def test_inventory_reaches_victoria_metrics(victoria_metrics):  # noqa: F811
    ids = [unique_name("s"), unique_name("s")]
    reg = registry(simple_site(ids[0], cluster="gui-an", racks_installed=120, racks_in_service=90),
                   simple_site(ids[1], design_it_kw=750.5, cooling="liquid"), clusters=[GUI_AN])
    day = T0 - T0 % 86_400_000  # start of the UTC day
    sink = InfluxSink(InfluxSettings(url=victoria_metrics.url, bucket=unique_name("b")), reg.sites_table).setup()
    sink.write_inventory(day)
    sink.close()
    victoria_metrics_flush(victoria_metrics.url)
    selector = f'{{__name__=~"site_inventory_.+",site=~"{ids[0]}|{ids[1]}"}}'
    exported = vm_export(victoria_metrics.url, selector).values()
    got = {(row["metric"]["site"], row["metric"]["__name__"].removeprefix("site_inventory_")): row
           for row in exported}
    for site_id, meta in reg.sites_table.iterrows():
        for column in ("racks_installed", "racks_in_service", "design_it_kw", "commissioned", "latitude",
                       "longitude", "grid_emission_factor"):
            row = got[(site_id, column)]
            assert row["timestamps"] == [day]
            assert row["values"] == [pytest.approx(float(meta[column]))]
            assert row["metric"]["city"] == meta["city"] and row["metric"]["cooling"] == meta["cooling"]
            assert row["metric"].get("cluster", "") == meta["cluster"]


# --- InfluxQL read-back from InfluxDB 1.x -----------------------------------------------------------------


def influx1_database(server) -> str:
    db = unique_name("db")
    get(f"{server.url}/query?" + urllib.parse.urlencode({"q": f"CREATE DATABASE {db}"}))
    return db


def influx1_write(server, db: str, lines: list[str]) -> None:
    request = urllib.request.Request(f"{server.url}/write?db={db}&precision=ms", data="\n".join(lines).encode(),
                                     method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 204


def influxql(server, db: str, q: str) -> list[dict]:
    """The series of an InfluxQL query (timestamps in ms); raises on a query error."""
    result = get(f"{server.url}/query?" + urllib.parse.urlencode({"db": db, "q": q, "epoch": "ms"}))["results"][0]
    assert "error" not in result, result
    return result.get("series", [])


def test_influxql_reads_raw_readings(influxdb1):  # noqa: F811
    reg = registry(simple_site("a", cluster="gui-an", city="Gui'an New Area, 贵安"), clusters=[GUI_AN])
    readings = pd.concat([
        power_series("a", "it.ups", np.array([100.0, 101.5, 99.25, 100.125]), 3),
        counter_series("a", "facility.main", 150, 3),
        readings_frame("dc 1,north", "meter=1 x", [T0], [7.5], [2]),  # not in the registry: escaped tags
    ], ignore_index=True)
    readings.loc[1, ["value", "quality"]] = [np.nan, int(Quality.BAD | Quality.COLLECTOR_DOWN)]
    db = influx1_database(influxdb1)
    influx1_write(influxdb1, db, readings_to_lines(readings, reg.points_table, reg.sites_table))
    series = influxql(influxdb1, db, "SELECT value, quality FROM reading GROUP BY *")
    got = {(s["tags"]["site"], s["tags"]["point"]): s for s in series}
    assert set(got) == set(zip(readings["site"], readings["point"], strict=True))
    for (site_id, point_id), rows in readings.groupby(["site", "point"]):
        s = got[(site_id, point_id)]
        known = (site_id, point_id) in reg.points_table.index
        expected_tags = {"site": site_id, "point": point_id, "role": "", "quantity": "", "cluster": "", "city": ""}
        if known:
            meta = reg.points_table.loc[(site_id, point_id)]
            expected_tags.update(role=meta["role"], quantity=meta["quantity"],
                                 cluster=reg.sites_table.loc[site_id, "cluster"],
                                 city=reg.sites_table.loc[site_id, "city"])
        assert s["tags"] == expected_tags
        assert [v[0] for v in s["values"]] == rows["ts"].tolist()
        assert [v[1] for v in s["values"]] == [None if np.isnan(x) else pytest.approx(x) for x in rows["value"]]
        assert [v[2] for v in s["values"]] == rows["quality"].tolist()  # integers
    # quality is an integer field, value a float field
    fields = {row[0]: row[1] for row in influxql(influxdb1, db, "SHOW FIELD KEYS FROM reading")[0]["values"]}
    assert fields == {"quality": "integer", "value": "float"}


def test_influxql_reads_the_site_inventory_and_a_same_day_rewrite_overwrites(influxdb1):  # noqa: F811
    before = registry(simple_site("a", cluster="gui-an", city="Gui'an New Area", name='Campus "A", 贵安'),
                      simple_site("b", racks_in_service=50), clusters=[GUI_AN])
    after = registry(simple_site("a", cluster="gui-an", city="Gui'an New Area", name='Campus "A", 贵安',
                                 racks_in_service=95),
                     simple_site("b", racks_in_service=50), clusters=[GUI_AN])
    day = T0 - T0 % 86_400_000
    db = influx1_database(influxdb1)
    influx1_write(influxdb1, db, inventory_to_lines(before.sites_table, day))
    influx1_write(influxdb1, db, inventory_to_lines(after.sites_table, day))  # same day: overwrites
    series = influxql(influxdb1, db, "SELECT * FROM site_inventory GROUP BY site")
    assert {s["tags"]["site"] for s in series} == set(after.sites_table.index)
    for s in series:
        assert len(s["values"]) == 1  # one snapshot per site and day
        row = dict(zip(s["columns"], s["values"][0], strict=True))
        meta = after.sites_table.loc[s["tags"]["site"]]
        assert row["time"] == day
        assert row["site_name"] == meta["name"] and row["city"] == meta["city"] and row["cooling"] == meta["cooling"]
        assert (row["cluster"] or "") == meta["cluster"]
        for column in ("racks_installed", "racks_in_service", "commissioned"):
            assert row[column] == int(meta[column])
        for column in ("design_it_kw", "latitude", "longitude", "grid_emission_factor"):
            assert row[column] == pytest.approx(float(meta[column]))
    fields = {row[0]: row[1] for row in influxql(influxdb1, db, "SHOW FIELD KEYS FROM site_inventory")[0]["values"]}
    assert fields["racks_installed"] == "integer" and fields["design_it_kw"] == "float"
    assert fields["site_name"] == "string"


def test_documented_influxql_queries_run(influxdb1):  # noqa: F811
    """Every query in docs/influxdb.md runs on InfluxDB 1.6 and finds the data dcpue wrote."""
    docs = (Path(__file__).parents[2] / "docs" / "influxdb.md").read_text(encoding="utf-8")
    queries = [" ".join(line for line in block.splitlines() if not line.startswith("--"))
               for block in re.findall(r"```sql\n(.*?)```", docs, flags=re.S)]
    measurements = {re.search(r"\bFROM (\w+)", q).group(1) for q in queries}
    assert measurements == {"pue", "reading", "site_inventory", "dead_letter", "alert", "recommendation"}

    day = T0  # a whole (Asia/Shanghai) day of data, so the 1d windows are complete
    reg = registry(site("ga-01", [
        point("facility.main", "facility", "energy", "kWh", source="revenue_meter", rated_kw=1000),
        point("it.ups", "it", it_category=1, source="ups"),
        point("cool.crah", "cooling", cooling_subsystem="crah"),
        point("env.supply-air", "sensor", "temperature", "°C"),
    ], cluster="gui-an"), simple_site("tr-02", city="Tongren"), clusters=[GUI_AN])
    readings = pd.concat([
        counter_series("ga-01", "facility.main", 150, 1440, start_ms=day),
        power_series("ga-01", "it.ups", 100, 1440, start_ms=day),
        power_series("ga-01", "cool.crah", 30, 1440, start_ms=day),
        power_series("ga-01", "env.supply-air", 22.5, 1440, start_ms=day),
        counter_series("tr-02", "facility.main", 240, 1440, start_ms=day),
        power_series("tr-02", "it.ups", 200, 1440, start_ms=day),
    ], ignore_index=True)
    now = day + 86_400_000 + 3_600_000
    today = now - now % 86_400_000  # start of the UTC day, as the inventory writer passes it
    letters = pd.DataFrame({"topic": ["dcpue.readings.v1"], "key": ["ga-01"], "reason": ["value is not a number"],
                            "payload": [{"v": "x"}]})
    windows = pd.concat([batch_windows(readings, reg, w) for w in ("1h", "1d")], ignore_index=True)
    lines = [*windows_to_lines(windows, reg.sites_table),
             *readings_to_lines(readings, reg.points_table, reg.sites_table),
             *inventory_to_lines(reg.sites_table, today),
             *dead_letters_to_lines(letters, today),
             # the alert and recommendation schemas as written by dcpue
             *alerts_to_lines([AlertEvent(
                 fingerprint="f1", status=AlertStatus.FIRING, value=1.27, sequence=1, starts_at_ms=today,
                 ends_at_ms=None, labels={"alertname": "PueAboveTarget", "site": "ga-01", "family": "efficiency",
                                          "severity": "warning"},
                 annotations={"summary": "PUE 1.270 above target 1.20 at ga-01",
                              "threshold": "fire > 1.250, clear < 1.220"})]),
             *recommendations_to_lines([{
                 "site": "ga-01", "ts_ms": today, "ok": True, "action": "change", "model_version": "abc123",
                 "reason": "change: supply air 22 → 23 °C saves 12.5 kW", "current": {"supply_air": 22.0},
                 "recommended": {"supply_air": 23.0}, "saving_kw": 12.5, "confidence": 0.8,
                 "predicted_pue": 1.18, "rack_inlet_c_hi": 25.2}])]
    db = influx1_database(influxdb1)
    influx1_write(influxdb1, db, lines)
    literal = "'" + pd.Timestamp(now, unit="ms", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ") + "'"
    results = {}
    for q in queries:
        results[q] = influxql(influxdb1, db, q.replace("now()", literal))
        assert results[q], f"no data for: {q}"
    # the documented energy weighting over the day's 24 hourly windows gives the engine's own 1d PUE
    (weighted,) = [series for q, series in results.items() if "sum(total_kwh) / sum(it_kwh)" in q]
    day_pue = windows.query("scope == 'site' and id == 'ga-01' and window == '1d' and status == 'ok'")["pue"]
    assert len(day_pue) == 1
    assert weighted[0]["values"][0][1] == pytest.approx(day_pue.iloc[0])
