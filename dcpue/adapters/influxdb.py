"""InfluxDB sink (influxdb-client, v2 write API) for window results and dead letters.

Writes are synchronous on purpose: the worker commits its Kafka offsets only after a write
returned, so a write must be durable when :meth:`InfluxSink.write_windows` returns. Batching
happens one level up (one write per worker step); retries with backoff are the worker's. Any
failure — including HTTP 429/503 — is raised as :class:`~dcpue.errors.SinkError`, which makes
the worker keep its results, stop consuming and retry: backpressure, not a crash.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from dcpue.adapters.lineprotocol import windows_to_lines
from dcpue.errors import SinkError, missing_extra
from dcpue.settings import InfluxSettings

DEAD_LETTER_MEASUREMENT = "dead_letter"


def _escape_tag(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def dead_letters_to_lines(letters: pd.DataFrame, now_ms: int) -> list[str]:
    """Dead letters as line protocol (measurement ``dead_letter``, tag ``site``); one ms apart so none collide."""
    lines = []
    for i, row in enumerate(letters.itertuples(index=False)):
        site = "" if row.key is None else str(row.key)
        tags = f",site={_escape_tag(site)}" if site else ""
        payload = json.dumps(row.payload, ensure_ascii=False, default=str)
        lines.append(f"{DEAD_LETTER_MEASUREMENT}{tags} reason={_quote(str(row.reason))},"
                     f"topic={_quote(str(row.topic))},payload={_quote(payload)} {now_ms + i}")
    return lines


class InfluxSink:
    """:class:`~dcpue.ports.ResultSink` writing to InfluxDB; connect with :meth:`setup`."""

    def __init__(self, settings: InfluxSettings, sites: pd.DataFrame | None = None) -> None:
        self.settings = settings
        self.sites = sites
        self._client: Any = None
        self._write: Any = None

    def setup(self) -> InfluxSink:
        try:
            from influxdb_client import InfluxDBClient
            from influxdb_client.client.write_api import SYNCHRONOUS
        except ImportError as exc:
            raise missing_extra("influxdb-client", "influx") from exc
        self._client = InfluxDBClient(url=self.settings.url, token=self.settings.token.get_secret_value(),
                                      org=self.settings.org, timeout=int(self.settings.timeout_s * 1000))
        self._write = self._client.write_api(write_options=SYNCHRONOUS)
        return self

    def _send(self, lines: list[str]) -> None:
        if not lines:
            return
        try:
            self._write.write(bucket=self.settings.bucket, org=self.settings.org, record=lines,
                              write_precision="ms")
        except Exception as exc:  # noqa: BLE001 — every client/transport error means "not written"
            status = getattr(exc, "status", None)
            raise SinkError(f"InfluxDB write of {len(lines)} points to {self.settings.url} failed"
                            f"{f' (HTTP {status})' if status else ''}: {exc}") from exc

    def write_windows(self, windows: pd.DataFrame) -> None:
        """Write window results (idempotent: one point per window, timestamp = window end)."""
        self._send(windows_to_lines(windows, self.sites))

    def write_dead_letters(self, letters: pd.DataFrame) -> None:
        if not letters.empty:
            self._send(dead_letters_to_lines(letters, int(pd.Timestamp.now("UTC").value // 1_000_000)))

    def close(self) -> None:
        if self._client is not None:
            self._write.close()
            self._client.close()
            self._client = None
