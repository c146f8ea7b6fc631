"""(c) The InfluxDB write endpoint (VictoriaMetrics, which speaks the v2 write API) goes down and comes back.

`dcpue analyze` writes every poll's windows to InfluxDB and then to the metrics topic (``FanoutSink``, in
that order). While InfluxDB is down the write fails, the worker keeps the results, pauses its partitions,
retries with backoff and commits nothing, so the metrics topic stalls too; the readings that arrive
meanwhile wait in Kafka. After the endpoint is back the worker catches up: the window rows must be the
clean run's, and InfluxDB must hold every final hour window.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.servers import (  # noqa: F401
    START_TIMEOUT_S,
    _http_ready,
    _missing,
    free_port,
    stop_process,
    tansu_broker,
    unique_name,
    victoria_metrics_binary,
    victoria_metrics_flush,
)

from .harness import Pipeline, clean_reference, compare, fleet, record, wait_complete, wait_for
from .profiles import PROFILE

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(PROFILE.timeout_s + PROFILE.sink_down_s)]


class RestartableVictoriaMetrics:
    """VictoriaMetrics on a fixed port and data directory, so it can be stopped and started again."""

    def __init__(self, workdir: Path) -> None:
        self.binary = victoria_metrics_binary()
        if self.binary is None:
            _missing("VictoriaMetrics (Debian `victoria-metrics`)")
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> float:
        """Start and wait until ``/health`` answers; returns when (monotonic seconds)."""
        log = (self.workdir / "vm.log").open("ab")
        self.proc = subprocess.Popen([self.binary, f"-storageDataPath={self.workdir / 'data'}",
                                      f"-httpListenAddr=127.0.0.1:{self.port}", "-retentionPeriod=100y",
                                      "-search.latencyOffset=0s", "-search.disableCache", "-loggerLevel=WARN"],
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return wait_for(lambda: _http_ready("/health", 200)("127.0.0.1", self.port), START_TIMEOUT_S,
                        "VictoriaMetrics to answer /health", self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)  # SIGTERM: the database shuts down cleanly; its endpoint is gone
            self.proc = None

    def hour_pue(self, until_has: dict[tuple[str, int], float] | None = None,
                 timeout_s: float = 30.0) -> dict[tuple[str, int], list[float]]:
        """Every stored 1 h site PUE sample, (site, window end ms) → values; read again, for up to ``timeout_s``,
        until it holds every key of ``until_has``.

        VictoriaMetrics keeps every sample written at a timestamp (InfluxDB overwrites: same series and
        timestamp), so a window written open and then final has two samples here. Just after its restart, on a
        loaded machine, it once answered without the hours written since, though its data directory held them.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            stored = self._export_hour_pue()
            if until_has is None or set(until_has) <= set(stored) or time.monotonic() > deadline:
                return stored
            time.sleep(0.5)

    def _export_hour_pue(self) -> dict[tuple[str, int], list[float]]:
        victoria_metrics_flush(self.url)
        query = urllib.parse.urlencode({"match[]": '{__name__="pue_pue",window="1h",scope="site"}'})
        with urllib.request.urlopen(f"{self.url}/api/v1/export?{query}", timeout=10) as resp:
            lines = resp.read().decode().splitlines()
        out = {}
        for line in lines:
            series = json.loads(line)
            for ts, value in zip(series["timestamps"], series["values"], strict=True):
                out.setdefault((series["metric"]["site"], ts), []).append(value)
        return out


def final_hours(want) -> dict[tuple[str, int], float]:  # noqa: ANN001
    """(site, hour end ms) → the clean run's 1 h PUE."""
    hours = want.xs("1h", level="window")
    return {(site, int(start) + 3_600_000): float(row["pue"]) for (_, site, start), row in hours.iterrows()}


def test_worker_holds_results_while_influxdb_is_down_then_catches_up(tansu_broker, tmp_path):  # noqa: F811
    f = fleet()
    want = clean_reference()
    vm = RestartableVictoriaMetrics(tmp_path)
    vm.start()
    pipe = Pipeline(tansu_broker.bootstrap_servers, tmp_path, unique_name("sink"), f,
                    extra_env={"DCPUE_STORE__INFLUXDB__TIMEOUT_S": "1"})
    pipe.create_topics()
    reader = None
    try:
        pipe.start_worker("w", "--influx", vm.url)
        pipe.wait_assigned("w")
        producer = pipe.producer()
        third = len(f.rounds) // 3
        for batches in f.rounds[:third]:
            pipe.send(producer, batches)
            time.sleep(PROFILE.pace_s)
        reader = pipe.reader()
        wait_for(lambda: len(reader.read()) > 0, 60, "the first windows on the metrics topic")
        vm.stop()
        down_at = time.monotonic()
        for batches in f.rounds[third:]:  # the collectors keep sending while InfluxDB is away
            pipe.send(producer, batches)
            time.sleep(PROFILE.pace_s)
        producer.close()
        wait_for(lambda: "store write failed" in pipe.log("w").read_text(errors="replace"), 60,
                 "the worker to notice InfluxDB is down")
        stalled = len(reader.read())
        time.sleep(max(0.0, PROFILE.sink_down_s - (time.monotonic() - down_at)))
        # nothing reached the metrics topic while InfluxDB refused writes (results are written in order)
        assert len(reader.read()) == stalled
        back = vm.start()
        done, frames = wait_complete(reader, want, timeout_s=PROFILE.timeout_s)
        stored = vm.hour_pue(until_has=final_hours(want))
        pipe.stop("w")
        frames = reader.read()
    finally:
        if reader is not None:
            reader.close()
        pipe.close()
        vm.stop()
    cmp = compare(frames, want)
    log = pipe.log("w").read_text(errors="replace")
    record("c InfluxDB down + back", done - back, f.reading_count, cmp, down_s=PROFILE.sink_down_s,
           failed_writes=log.count("store write failed"),
           note="recovery: from the endpoint answering again until the last window is written")
    assert cmp.equal, cmp.explain()
    # InfluxDB itself got every final hour of every site with the clean run's PUE (among the open-window
    # samples VictoriaMetrics also keeps at that timestamp)
    expected = final_hours(want)
    assert set(expected) <= set(stored), sorted(set(expected) - set(stored))[:5]
    for key, pue in expected.items():
        assert any(v == pytest.approx(pue, rel=1e-9) for v in stored[key]), (key, pue, stored[key])
