"""Window results into real servers: influxdb-client → VictoriaMetrics (v2 write API), and the same
line protocol → InfluxDB 1.6, read back with the InfluxQL the dashboards will use."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request

import pandas as pd
import pytest
from dcpue.analytics.batch import batch_windows

from dcpue.adapters.influxdb import InfluxSink
from dcpue.adapters.lineprotocol import windows_to_lines
from dcpue.errors import SinkError
from dcpue.settings import InfluxSettings
from tests.factories import GUI_AN, T0, counter_series, power_series, registry, simple_site
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
