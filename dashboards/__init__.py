"""Grafana dashboards as code (``dcpue.dashboards``), built with the Grafana Foundation SDK.

* :mod:`dcpue.dashboards.common` — datasource, InfluxQL targets, variables, thresholds, rendering;
* :mod:`dcpue.dashboards.fleet`, :mod:`~dcpue.dashboards.site`, :mod:`~dcpue.dashboards.cooling`,
  :mod:`~dcpue.dashboards.retirement`, :mod:`~dcpue.dashboards.quality` — the five dashboards;
* :mod:`dcpue.dashboards.annotations` — annotation queries over the cooling recommendations;
* :mod:`dcpue.dashboards.build` — ``dcpue dashboards build`` writes (or ``--check`` s) the JSON checked in
  under ``deploy/grafana/provisioning/dashboards/``; :mod:`dcpue.dashboards.push` — ``dcpue dashboards push``
  into a running Grafana with grafana-client.

Builders are pure (they return Grafana dashboard JSON as dicts); only ``build`` and ``push`` do I/O. See
docs/grafana.md.
"""
