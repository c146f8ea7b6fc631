"""Push the dashboards to a running Grafana with grafana-client: ``dcpue dashboards push --url --token``.

Idempotent: the folder (uid ``dcpue``) is created when missing; the InfluxDB datasource (uid
``dcpue-influxdb`` unless given) is created, or updated when its settings differ; each dashboard is
created, updated when its JSON differs from Grafana's copy, or left alone. The report says which.
For Grafana that provisions from files (deploy/grafana/provisioning) nothing needs pushing; this is for
a Grafana someone else runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dcpue.dashboards.build import dashboards
from dcpue.dashboards.common import DATASOURCE_TYPE, DEFAULT_DATASOURCE_UID

FOLDER_UID = "dcpue"
FOLDER_TITLE = "dcpue"
_VOLATILE = ("id", "version", "iteration")  # Grafana's bookkeeping, not content


@dataclass
class PushReport:
    """What a push did: ``created``, ``updated`` and ``unchanged`` names (folder, datasource, dashboards)."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [f"{what}: {', '.join(names)}" for what, names in
                (("created", self.created), ("updated", self.updated), ("unchanged", self.unchanged)) if names]


def datasource_model(influx_url: str, database: str, token: str | None, uid: str = DEFAULT_DATASOURCE_UID,
                     name: str = "dcpue InfluxDB") -> dict[str, Any]:
    """An InfluxQL datasource: 1.x database, 2.x bucket through its DBRP mapping, or 3.x database.

    ``token`` goes in an ``Authorization: Token …`` header (2.x/3.x), kept encrypted by Grafana."""
    model: dict[str, Any] = {"uid": uid, "name": name, "type": DATASOURCE_TYPE, "access": "proxy", "url": influx_url,
                             "isDefault": False, "jsonData": {"version": "InfluxQL", "dbName": database,
                                                              "httpMode": "POST", "timeInterval": "1m"}}
    if token:
        model["jsonData"]["httpHeaderName1"] = "Authorization"
        model["secureJsonData"] = {"httpHeaderValue1": f"Token {token}"}
    return model


def _content(dashboard: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in dashboard.items() if k not in _VOLATILE}


def _not_found(exc: Exception) -> bool:
    from grafana_client.client import GrafanaClientError

    return isinstance(exc, GrafanaClientError) and getattr(exc, "status_code", None) == 404


def push(api: Any, influx_url: str, database: str, token: str | None = None,
         datasource_uid: str = DEFAULT_DATASOURCE_UID) -> PushReport:
    """Create or update folder, datasource and dashboards through ``api`` (a ``grafana_client.GrafanaApi``)."""
    report = PushReport()
    try:
        api.folder.get_folder(FOLDER_UID)
        report.unchanged.append(f"folder {FOLDER_TITLE}")
    except Exception as exc:
        if not _not_found(exc):
            raise
        api.folder.create_folder(FOLDER_TITLE, uid=FOLDER_UID)
        report.created.append(f"folder {FOLDER_TITLE}")

    wanted = datasource_model(influx_url, database, token, datasource_uid)
    try:
        existing = api.datasource.get_datasource_by_uid(datasource_uid)
    except Exception as exc:
        if not _not_found(exc):
            raise
        api.datasource.create_datasource(wanted)
        report.created.append(f"datasource {datasource_uid}")
    else:
        same = all(existing.get(k) == wanted[k] for k in ("name", "type", "url")) and all(
            existing.get("jsonData", {}).get(k) == v for k, v in wanted["jsonData"].items())
        if same and not token:
            report.unchanged.append(f"datasource {datasource_uid}")
        else:  # a token cannot be compared (Grafana never returns it): sent again whenever given
            api.datasource.update_datasource_by_uid(datasource_uid, wanted)
            report.updated.append(f"datasource {datasource_uid}")

    for dashboard in dashboards(datasource_uid).values():
        uid = dashboard["uid"]
        try:
            current = api.dashboard.get_dashboard(uid)["dashboard"]
        except Exception as exc:
            if not _not_found(exc):
                raise
            current = None
        if current is not None and _content(current) == _content(dashboard):
            report.unchanged.append(f"dashboard {uid}")
            continue
        api.dashboard.update_dashboard({"dashboard": {**dashboard, "id": None}, "folderUid": FOLDER_UID,
                                        "overwrite": True, "message": "dcpue dashboards push"})
        (report.created if current is None else report.updated).append(f"dashboard {uid}")
    return report
