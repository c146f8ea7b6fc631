"""Grafana dashboards as code (``dcpue.dashboards``): plain dicts in Grafana's dashboard JSON schema.

* :mod:`dcpue.dashboards.annotations` — annotation queries over what dcpue writes to InfluxDB
  (cooling recommendations and refusals), reusable by any dashboard;
* :mod:`dcpue.dashboards.cooling` — the provisioned "dcpue cooling" dashboard;
* :mod:`dcpue.dashboards.build` — ``python -m dcpue.dashboards.build`` writes (or ``--check`` s) the
  dashboard JSON checked in under ``deploy/grafana/provisioning/dashboards/``.

Everything here is pure: functions return dicts, only ``build`` reads or writes files. See docs/grafana.md.
"""
