"""Grafana annotations for cooling recommendations: InfluxQL annotation queries on ``recommendation``.

Grafana reads the annotations itself from InfluxDB, the same way it reads a panel, so nothing needs Grafana
write credentials: dcpue writes its records to InfluxDB (``InfluxSink.write_recommendations``, one point per
record and setpoint, schema in docs/influxdb.md) and the dashboard carries the queries below.

Two annotations, so operators can switch them separately and tell them apart by colour:

* **Cooling recommendations** (green): one marker per setpoint a ``change`` recommendation moves (by more
  than :data:`MIN_MOVE_K`), tagged with its site, loop and setpoint. ``keep`` records are not annotated (the
  setpoints stay as they are; the panels show them) — one every 15 minutes would bury the rest.
* **Cooling: no recommendation** (orange): every refusal (``ok = false``), so a site whose advice stopped is
  visible; its text starts with ``no recommendation:`` and says why. A refusal is written once per setpoint
  of the site, so it shows as that many markers at the same instant, one per setpoint tag.

The text of both is the record's ``reason``: plain words that already name the setpoint moves (``raise
fw_supply 33.0 → 34.0 °C``), the predicted facility power and saving in kW and percent, and the predicted
hottest rack inlet against its limit — or, for a refusal, why there is none. InfluxQL cannot join strings,
so the reason is the one text column.

Grafana turns each row into an event: the ``time`` column is the marker, the ``textColumn`` the text and
every column named in ``tagsColumn`` a tag (its value, e.g. ``ga-01``, ``facility_water``, ``fw_supply``).
Its backend query path drops a row in which any selected column is null, so the queries select only columns
every point has (``reason`` and the tags). ``$timeFilter`` becomes ``time >= <from>ms and time <= <to>ms``
and ``$site`` the dashboard's site variable (``/^$site$/`` takes one site, several, or All).
"""

from __future__ import annotations

from typing import Any

from dcpue.adapters.lineprotocol import RECOMMENDATION_MEASUREMENT, RECOMMENDATION_TAGS

DATASOURCE_TYPE = "influxdb"
TEXT_COLUMN = "reason"
TAG_COLUMNS: tuple[str, ...] = RECOMMENDATION_TAGS  # site, loop, setpoint
MIN_MOVE_K = 0.01  # [K] a setpoint that moves less is not annotated (float noise; setpoints are on a 0.1 K grid)
LIMIT = 1000  # newest rows per annotation and dashboard time range
CHANGE_NAME = "Cooling recommendations"
REFUSAL_NAME = "Cooling: no recommendation"
CHANGE_COLOR = "green"
REFUSAL_COLOR = "orange"


def _select(condition: str, site_variable: str) -> str:
    """The annotation query: text and tag columns of the points matching ``condition`` at the chosen sites."""
    columns = ", ".join(f'"{c}"' for c in (TEXT_COLUMN, *TAG_COLUMNS))
    return (f'SELECT {columns} FROM "{RECOMMENDATION_MEASUREMENT}" '
            f'WHERE "site" =~ /^${site_variable}$/ AND {condition} AND $timeFilter '
            f"ORDER BY time DESC LIMIT {LIMIT}")


def change_query(site_variable: str = "site") -> str:
    """InfluxQL of the recommendations annotation: points of ``change`` records whose setpoint moves."""
    moves = f'("recommended" - "current" > {MIN_MOVE_K} OR "current" - "recommended" > {MIN_MOVE_K})'
    return _select(f""""ok" = true AND "action" = 'change' AND {moves}""", site_variable)


def refusal_query(site_variable: str = "site") -> str:
    """InfluxQL of the refusals annotation: every point of a record that gave no recommendation."""
    return _select('"ok" = false', site_variable)


def _annotation(name: str, color: str, query: str, datasource_uid: str) -> dict[str, Any]:
    # The shape Grafana 10/11 saves from the InfluxQL annotation editor: the query and its field mappings
    # in `target` (a `target` without `query` would be migrated from legacy top-level fields instead).
    return {
        "name": name,
        "datasource": {"type": DATASOURCE_TYPE, "uid": datasource_uid},
        "enable": True,
        "hide": False,
        "iconColor": color,
        "target": {
            "refId": "Anno",
            "query": query,
            "rawQuery": True,
            "fromAnnotations": True,
            "textEditor": True,
            "textColumn": TEXT_COLUMN,
            "tagsColumn": ",".join(TAG_COLUMNS),  # no spaces: Grafana splits on "," after removing one space
        },
    }


def recommendation_annotations(datasource_uid: str, *, site_variable: str = "site") -> list[dict[str, Any]]:
    """Grafana annotation definitions (dashboard JSON ``annotations.list`` entries) for cooling advice.

    ``datasource_uid`` is the uid of an InfluxDB datasource in InfluxQL mode that reads dcpue's bucket
    (``dcpue-influxdb`` in deploy/grafana/provisioning/datasources/influxdb.yaml). ``site_variable`` is the
    name of the dashboard variable holding the site ids (default ``site``, used as ``/^$site$/``).
    Returns the recommendations annotation, then the refusals annotation; both are enabled.
    """
    if not datasource_uid:
        raise ValueError("datasource_uid is empty: give the uid of the InfluxDB (InfluxQL) datasource, "
                         "e.g. 'dcpue-influxdb'")
    if not site_variable.isidentifier():
        raise ValueError(f"site_variable {site_variable!r} is not a Grafana variable name (letters, digits, _)")
    return [
        _annotation(CHANGE_NAME, CHANGE_COLOR, change_query(site_variable), datasource_uid),
        _annotation(REFUSAL_NAME, REFUSAL_COLOR, refusal_query(site_variable), datasource_uid),
    ]
