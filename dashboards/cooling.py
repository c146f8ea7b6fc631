"""The "dcpue cooling" Grafana dashboard: setpoints (current and recommended), predicted saving, and the
cooling annotations of :mod:`dcpue.dashboards.annotations`, filtered by a ``$site`` variable.

A first, small dashboard that carries the annotations; the full set (fleet, site, cooling, retirement, data
quality) is issue #9. Queries are InfluxQL on the ``recommendation`` measurement (docs/influxdb.md).
"""

from __future__ import annotations

from typing import Any

from dcpue.adapters.lineprotocol import RECOMMENDATION_MEASUREMENT
from dcpue.dashboards.annotations import DATASOURCE_TYPE, recommendation_annotations

DASHBOARD_UID = "dcpue-cooling"
DASHBOARD_TITLE = "dcpue cooling"
# the uid of the datasource provisioned in deploy/grafana/provisioning/datasources/influxdb.yaml
DEFAULT_DATASOURCE_UID = "dcpue-influxdb"
SCHEMA_VERSION = 39  # Grafana 11.2 (deploy/docker-compose.yml pins grafana/grafana-oss:11.2.0)

SITE_QUERY = f'SHOW TAG VALUES FROM "{RECOMMENDATION_MEASUREMENT}" WITH KEY = "site"'
SETPOINT_QUERY = (f'SELECT last("current") AS "current", last("recommended") AS "recommended" '
                  f'FROM "{RECOMMENDATION_MEASUREMENT}" WHERE "site" =~ /^$site$/ AND $timeFilter '
                  f'GROUP BY time($__interval), "site", "setpoint" fill(none)')
SAVING_QUERY = (f'SELECT last("expected_saving_kw") AS "saving" FROM "{RECOMMENDATION_MEASUREMENT}" '
                f'WHERE "site" =~ /^$site$/ AND "ok" = true AND $timeFilter '
                f'GROUP BY time($__interval), "site" fill(none)')


def site_variable(datasource_uid: str) -> dict[str, Any]:
    """The ``site`` dashboard variable: sites with recommendations; several or All may be chosen."""
    return {
        "name": "site",
        "label": "Site",
        "type": "query",
        "datasource": {"type": DATASOURCE_TYPE, "uid": datasource_uid},
        "query": SITE_QUERY,
        "definition": SITE_QUERY,
        "refresh": 1,  # on dashboard load
        "multi": True,
        "includeAll": True,
        "allValue": ".*",  # inside /^$site$/: every site, without listing them all in the query
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "regex": "",
        "sort": 1,
        "hide": 0,
    }


def _timeseries(panel_id: int, title: str, description: str, query: str, alias: str, unit: str,
                y: int, datasource_uid: str, overrides: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    datasource = {"type": DATASOURCE_TYPE, "uid": datasource_uid}
    return {
        "id": panel_id,
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": datasource,
        "gridPos": {"h": 10, "w": 24, "x": 0, "y": y},
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "decimals": 1,
                # a setpoint holds until the next record changes it
                "custom": {"drawStyle": "line", "lineInterpolation": "stepAfter", "showPoints": "auto",
                           "spanNulls": False},
            },
            "overrides": overrides or [],
        },
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "none"},
        },
        "targets": [{
            "refId": "A",
            "datasource": datasource,
            "query": query,
            "rawQuery": True,
            "resultFormat": "time_series",
            "alias": alias,
        }],
    }


def cooling_dashboard(datasource_uid: str = DEFAULT_DATASOURCE_UID) -> dict[str, Any]:
    """The "dcpue cooling" dashboard as Grafana dashboard JSON (a dict), reading ``datasource_uid``."""
    dashed = {"matcher": {"id": "byRegexp", "options": ".*recommended$"},
              "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}]}
    panels = [
        _timeseries(1, "Setpoints: current and recommended [°C]",
                    "Per site and setpoint: the setpoint the recommender saw (solid) and the one it advised "
                    "(dashed; absent when it refused). Green markers: changes it advised; orange: refusals.",
                    SETPOINT_QUERY, "$tag_site $tag_setpoint $col", "celsius", 0, datasource_uid, [dashed]),
        _timeseries(2, "Predicted facility power saving [kW]",
                    "Predicted facility power at the current setpoints minus at the recommended ones (0 for "
                    "keep; refusals left out). The saving in percent is in each recommendation's text.",
                    SAVING_QUERY, "$tag_site", "kwatt", 10, datasource_uid),
    ]
    builtin = {
        "builtIn": 1,
        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
        "enable": True,
        "hide": True,
        "iconColor": "rgba(0, 211, 255, 1)",
        "name": "Annotations & Alerts",
        "type": "dashboard",
    }
    return {
        "uid": DASHBOARD_UID,
        "title": DASHBOARD_TITLE,
        "description": "Cooling setpoint recommendations (advisory): setpoints, predicted saving, and the "
                       "recommendations and refusals as annotations. Generated by python -m dcpue.dashboards.build.",
        "tags": ["dcpue", "cooling"],
        "editable": False,
        "graphTooltip": 1,  # shared crosshair
        "timezone": "browser",
        "time": {"from": "now-7d", "to": "now"},
        "refresh": "",
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "links": [],
        "annotations": {"list": [builtin, *recommendation_annotations(datasource_uid)]},
        "templating": {"list": [site_variable(datasource_uid)]},
        "panels": panels,
    }
