"""InfluxDB sink (influxdb-client, v2 write API) for window results, raw readings, the site
inventory, dead letters, alerts, recommendations and retirement assessments; the schema is in docs/influxdb.md.

Writes are synchronous on purpose: the worker commits its Kafka offsets only after a write
returned, so a write must be durable when :meth:`InfluxSink.write_windows` returns. Each call is
sent in HTTP requests of at most ``settings.batch_size`` lines; retries with backoff are the
worker's. Any failure — including HTTP 429/503 — is raised as :class:`~dcpue.errors.SinkError`,
which makes the worker keep its results, stop consuming and retry: backpressure, not a crash.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from dcpue.adapters.lineprotocol import (
    alerts_to_lines,
    dead_letters_to_lines,
    inventory_to_lines,
    readings_to_lines,
    recommendations_to_lines,
    retirement_to_lines,
    windows_to_lines,
)
from dcpue.errors import SinkError, missing_extra
from dcpue.settings import InfluxSettings


def tls_options(settings: InfluxSettings) -> dict[str, Any]:
    """influxdb-client options for ``settings.tls`` (used for https:// URLs only)."""
    tls = settings.tls
    options: dict[str, Any] = {"verify_ssl": tls.verify}
    if tls.ca_file is not None:
        options["ssl_ca_cert"] = str(tls.ca_file)
    if tls.cert_file is not None and tls.key_file is not None:
        options.update(cert_file=str(tls.cert_file), cert_key_file=str(tls.key_file))
    return options


class InfluxSink:
    """:class:`~dcpue.ports.ResultSink` writing to InfluxDB; connect with :meth:`setup`.

    ``sites`` (``Registry.sites_table``) adds the ``cluster``/``city`` tags and is the source of
    :meth:`write_inventory`; ``points`` (``Registry.points_table``) adds the ``role``/``quantity``
    tags of raw readings.
    """

    def __init__(self, settings: InfluxSettings, sites: pd.DataFrame | None = None,
                 points: pd.DataFrame | None = None) -> None:
        self.settings = settings
        self.sites = sites
        self.points = points
        self._client: Any = None
        self._write: Any = None

    def setup(self) -> InfluxSink:
        try:
            from influxdb_client import InfluxDBClient
            from influxdb_client.client.write_api import SYNCHRONOUS
        except ImportError as exc:
            raise missing_extra("influxdb-client", "influx") from exc
        self._client = InfluxDBClient(url=self.settings.url, token=self.settings.token.get_secret_value(),
                                      org=self.settings.org, timeout=int(self.settings.timeout_s * 1000),
                                      **tls_options(self.settings))
        self._write = self._client.write_api(write_options=SYNCHRONOUS)
        return self

    def _send(self, lines: list[str]) -> None:
        """Write ``lines`` in requests of at most ``settings.batch_size`` lines, one after the other.

        The first failed request raises :class:`SinkError`; the requests before it stay written.
        Re-sending all of ``lines`` on retry is harmless: every point is identified by (measurement,
        tags, timestamp), so a point written twice overwrites itself.
        """
        if not lines:
            return
        if self._write is None:
            raise SinkError(f"InfluxDB sink for {self.settings.url} is not connected (call setup())")
        size = self.settings.batch_size
        requests = (len(lines) + size - 1) // size
        for number, start in enumerate(range(0, len(lines), size), 1):
            chunk = lines[start:start + size]
            try:
                # one text, not a list: the client serializes a list line by line (a tenth of a write's time)
                self._write.write(bucket=self.settings.bucket, org=self.settings.org, record="\n".join(chunk),
                                  write_precision="ms")
            except Exception as exc:  # noqa: BLE001 — every client/transport error means "not written"
                status = getattr(exc, "status", None)
                raise SinkError(f"InfluxDB write of {len(chunk)} points (request {number} of {requests}) to "
                                f"{self.settings.url} failed{f' (HTTP {status})' if status else ''}: {exc}") from exc

    def write_windows(self, windows: pd.DataFrame) -> None:
        """Write window results (idempotent: one point per window, timestamp = window end)."""
        self._send(windows_to_lines(windows, self.sites))

    def write_readings(self, readings: pd.DataFrame) -> None:
        """Write raw readings (measurement ``reading``, timestamp = reading time) when ``settings.write_readings``.

        Idempotent: a replayed reading overwrites its own point.
        """
        if self.settings.write_readings and not readings.empty:
            self._send(readings_to_lines(readings, self.points, self.sites))

    def write_inventory(self, ts_ms: int) -> None:
        """Write the sites table given to the constructor (measurement ``site_inventory``) at ``ts_ms`` [ms].

        Pass the start of the current UTC day: writing again the same day overwrites that day's
        snapshot. Writes nothing when the sink has no sites table.
        """
        if self.sites is not None:
            self._send(inventory_to_lines(self.sites, ts_ms))

    def write_alerts(self, events: list[Any]) -> None:
        """Alert state changes (measurement ``alert``; see docs/influxdb.md)."""
        if events:
            self._send(alerts_to_lines(events))

    def write_recommendations(self, records: list[dict[str, Any]]) -> None:
        """Cooling recommendations (measurement ``recommendation``; see docs/influxdb.md)."""
        if records:
            self._send(recommendations_to_lines(records))

    def write_retirement(self, assessment: Any, ts_ms: int) -> None:
        """A retirement assessment (measurement ``retirement``; see docs/influxdb.md), one point per site at
        ``ts_ms`` [ms]: pass the assessment's as-of time, so writing the same assessment again overwrites it."""
        self._send(retirement_to_lines(assessment, ts_ms))

    def write_dead_letters(self, letters: pd.DataFrame) -> None:
        if not letters.empty:
            self._send(dead_letters_to_lines(letters, int(pd.Timestamp.now("UTC").value // 1_000_000)))

    def close(self) -> None:
        if self._client is not None:
            self._write.close()
            self._client.close()
            self._client = None
            self._write = None
