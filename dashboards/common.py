"""What every dcpue dashboard shares: the datasource, InfluxQL targets, variables, thresholds, rendering.

Dashboards are built with the Grafana Foundation SDK (``grafana-foundation-sdk``, Grafana Labs' generated
types and builders). The SDK has no InfluxDB query type, so :class:`InfluxQL` is one: a raw InfluxQL target
as Grafana's InfluxDB datasource stores it (``query``, ``rawQuery``, ``resultFormat``, ``alias``). Queries
use only InfluxQL, so the dashboards work on InfluxDB 1.x, on 2.x through a DBRP mapping and on 3.x
(docs/grafana.md).

Variables filter by regex (``"site" =~ /^$site$/``): one value, several or All (``allValue`` ``.*``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from grafana_foundation_sdk.builders import dashboard as sdk
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as model

# DEFAULT_DATASOURCE_UID: the uid of the datasource provisioned in deploy/grafana/provisioning/datasources/
# influxdb.yaml, defined where the CLI can read it without the SDK
from dcpue.dashboards.cli import DEFAULT_DATASOURCE_UID

__all__ = ["DEFAULT_DATASOURCE_UID"]  # and the rest of this module
DATASOURCE_TYPE = "influxdb"
TARGET_PUE = 1.2  # Guizhou 2023–2025 plan
# GB 40879-2021 grades of PUE: 1 ≤ 1.20 < 2 ≤ 1.30 < 3 ≤ 1.50 (the limit) < beyond the limit
PUE_STEPS = ((None, "green"), (1.2, "yellow"), (1.3, "orange"), (1.5, "red"))
SITE_FILTER = '"site" =~ /^$site$/'
PLACE_FILTER = '"city" =~ /^$city$/ AND "cluster" =~ /^$cluster$/'
INVENTORY = "site_inventory"


class InfluxQL(cogvariants.Dataquery):
    """A raw InfluxQL target of Grafana's InfluxDB datasource."""

    def __init__(self, ref_id: str, query: str, result_format: str = "time_series", alias: str | None = None,
                 datasource_uid: str = DEFAULT_DATASOURCE_UID) -> None:
        self.ref_id = ref_id
        self.query = query
        self.result_format = result_format
        self.alias = alias
        self.datasource_uid = datasource_uid

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"refId": self.ref_id, "datasource": datasource(self.datasource_uid).to_json(),
                                  "query": self.query, "rawQuery": True, "resultFormat": self.result_format}
        if self.alias:
            out["alias"] = self.alias
        return out


class Query(cogbuilder.Builder[InfluxQL]):
    """Builder of an :class:`InfluxQL` target, for ``panel.with_target(...)``."""

    def __init__(self, query: str, ref_id: str = "A", *, table: bool = False, alias: str | None = None,
                 datasource_uid: str = DEFAULT_DATASOURCE_UID) -> None:
        self._query = InfluxQL(ref_id, query, "table" if table else "time_series", alias, datasource_uid)

    def build(self) -> InfluxQL:
        return self._query


def datasource(uid: str = DEFAULT_DATASOURCE_UID) -> model.DataSourceRef:
    return model.DataSourceRef(type_val=DATASOURCE_TYPE, uid=uid)


def variable(name: str, label: str, query: str, *, multi: bool = True, include_all: bool = True,
             uid: str = DEFAULT_DATASOURCE_UID) -> sdk.QueryVariable:
    """A query variable read on dashboard load; with All, ``.*`` inside ``/^$name$/`` takes every value."""
    v = (sdk.QueryVariable(name).label(label).datasource(datasource(uid)).query(query)
         .refresh(model.VariableRefresh.ON_DASHBOARD_LOAD).sort(model.VariableSort.ALPHABETICAL_ASC).multi(multi)
         .include_all(include_all))
    if include_all:
        v = v.all_value(".*").current(model.VariableOption(selected=True, text="All", value="$__all"))
    return v


def place_variables(uid: str = DEFAULT_DATASOURCE_UID, site_multi: bool = True) -> list[sdk.QueryVariable]:
    """City, hub cluster and site, each narrowing the next, from the daily registry snapshot."""
    return [
        variable("city", "City", f'SHOW TAG VALUES FROM "{INVENTORY}" WITH KEY = "city"', uid=uid),
        variable("cluster", "Hub cluster", f'SHOW TAG VALUES FROM "{INVENTORY}" WITH KEY = "cluster" '
                 f'WHERE "city" =~ /^$city$/', uid=uid),
        variable("site", "Site", f'SHOW TAG VALUES FROM "{INVENTORY}" WITH KEY = "site" WHERE {PLACE_FILTER}',
                 multi=site_multi, include_all=site_multi, uid=uid),
    ]


def thresholds(*steps: tuple[float | None, str]) -> sdk.ThresholdsConfig:
    return sdk.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE).steps(
        [model.Threshold(value=v, color=c) for v, c in steps])


def pue_thresholds() -> sdk.ThresholdsConfig:
    """Green up to the 1.2 target, then the GB 40879 grades: yellow (2), orange (3), red beyond the limit."""
    return thresholds(*PUE_STEPS)


def grid(h: int, w: int, x: int, y: int) -> model.GridPos:
    return model.GridPos(h=h, w=w, x=x, y=y)


def dashboard(uid: str, title: str, description: str, tags: list[str]) -> sdk.Dashboard:
    """A read-only dashboard shell: browser time zone, last 7 days, refreshed every minute, shared crosshair."""
    return (sdk.Dashboard(title).uid(uid).description(description).tags(["dcpue", *tags]).readonly()
            .timezone("browser").time("now-7d", "now").refresh("1m").tooltip(model.DashboardCursorSync.CROSSHAIR))


def begin(uid: str, title: str, description: str, tags: list[str], datasource_uid: str,
          variables: list[sdk.QueryVariable] | None = None,
          ) -> tuple[sdk.Dashboard, model.DataSourceRef, Callable[..., Query]]:
    """(dashboard shell with its variables, datasource ref, query maker) for a dashboard reading ``datasource_uid``;
    ``variables`` default to city, cluster and site."""

    def query(text: str, ref: str = "A", **kw: Any) -> Query:
        return Query(text, ref, datasource_uid=datasource_uid, **kw)

    d = dashboard(uid, title, description, tags)
    for v in place_variables(datasource_uid) if variables is None else variables:
        d = d.with_variable(v)
    return d, datasource(datasource_uid), query


def render(builder: sdk.Dashboard) -> dict[str, Any]:
    """The dashboard as Grafana JSON (a dict), panels numbered 1, 2, … in order."""
    data = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    for i, panel in enumerate(data.get("panels", []), start=1):
        panel["id"] = i
    return data
