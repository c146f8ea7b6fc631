"""Engine windows of a small simulated fleet, and the reference receiver as a real process, for the feed tests.

The windows come from the PUE engine (:func:`dcpue.analytics.batch.batch_windows`) over one-minute
simulator readings — the figures a report must repeat — computed once per test process. The receiver
is ``dcpue feed receive`` itself, started as a subprocess on 127.0.0.1 and stopped (or killed) by pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import yaml

from dcpue.analytics.batch import batch_windows
from dcpue.feed.config import TlsSettings
from dcpue.feed.sender import tls_context
from dcpue.ingest.simulator import FleetSimulator, generate_fleet
from dcpue.registry import Registry
from dcpue.results import Scope
from dcpue.runtime.store import FileStore
from dcpue.settings import EngineSettings
from tests.factories import filled_file_store, write_registry_file
from tests.servers import _die_with_parent, free_port, stop_process

TZ = "Asia/Shanghai"
START = pd.Timestamp("2024-07-14", tz=TZ)
DAYS = 2
START_MS = int(START.value // 1_000_000)
END_MS = START_MS + DAYS * 86_400_000
API_KEY = "test-api-key-0001"
SECRET = "test-hmac-secret-with-some-length"


@cache
def fleet() -> Registry:
    """Two generated sites (a Gui'an liquid campus and a legacy room) with platform and credit codes."""
    return generate_fleet(2, seed=7)


@cache
def readings_of_two_days() -> pd.DataFrame:
    """One-minute simulator readings of :func:`fleet` from 2024-07-14 to 2024-07-16 (Asia/Shanghai)."""
    sim = FleetSimulator(fleet(), seed=7, start_ms=START_MS, sample_interval_s=60, faults=False)
    sim.setup()
    frames = [f for batch in sim.iter_poll(END_MS - 60_000, step_s=6 * 3600) for _, f in batch]
    return pd.concat(frames, ignore_index=True)


@cache
def engine_windows() -> pd.DataFrame:
    """Site windows ``15m``, ``1h``, ``1d`` of :func:`fleet` over two July days, from one-minute readings."""
    registry = fleet()
    readings = readings_of_two_days()
    settings = EngineSettings(timezone=TZ)
    out = pd.concat([batch_windows(readings, registry, w, settings) for w in ("15m", "1h", "1d")], ignore_index=True)
    out = out[(out["scope"] == Scope.SITE.value) & (out["end_ms"] <= END_MS)]
    return out.reset_index(drop=True)


@cache
def monthly_windows() -> pd.DataFrame:
    """The ``1mo`` site windows of the same readings: July 2024, two days of it covered (``incomplete``)."""
    out = batch_windows(readings_of_two_days(), fleet(), "1mo", EngineSettings(timezone=TZ))
    return out[out["scope"] == Scope.SITE.value].reset_index(drop=True)


def filled_store(path: Path, windows: pd.DataFrame | None = None) -> FileStore:
    """An open file store at ``path`` holding ``windows`` (default: :func:`engine_windows`)."""
    return filled_file_store(path, engine_windows() if windows is None else windows)


def write_registry(path: Path) -> Path:
    return write_registry_file(path, fleet())


def write_keys(path: Path, *keys: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({"keys": list(keys) or [{"api_key": API_KEY, "secret": SECRET}]}), encoding="utf-8")
    return path


class ReceiverProcess:
    """``dcpue feed receive`` on a fixed port and database: start, stop (SIGTERM) or kill (SIGKILL), start again."""

    def __init__(self, workdir: Path, keys: Path | None = None, *, port: int | None = None,
                 extra: tuple[str, ...] = (), scheme: str = "http", tls: TlsSettings | None = None) -> None:
        self.workdir = workdir
        self.keys = keys or write_keys(workdir / "keys.yaml")
        self.db = workdir / "received.sqlite"
        self.port = port or free_port()
        self.extra = extra
        self.scheme = scheme
        self.verify = tls_context(tls) if tls is not None else True
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "receiver.log"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> ReceiverProcess:
        """Start the receiver and wait until it answers; a start that fails leaves no process behind."""
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dcpue.cli", "feed", "receive", "--port", str(self.port), "--db", str(self.db),
                 "--keys", str(self.keys), *self.extra],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=_die_with_parent)  # killed with the test process, even by kill -9
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"receiver exited with {self.proc.returncode}:\n{self.log.read_text()[-2000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{self.url}/healthz", timeout=1, verify=self.verify).status_code == 200:
                        return self
                time.sleep(0.05)
            raise RuntimeError(f"receiver not ready on {self.url}:\n{self.log.read_text()[-2000:]}")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def received(self, **params: str) -> dict[str, Any]:
        """``GET /api/v1/reports``: the accepted reports in arrival order and the count of each answer."""
        response = httpx.get(f"{self.url}/api/v1/reports", params={"limit": "100000", **params},
                             headers={"X-Api-Key": API_KEY}, timeout=30, verify=self.verify)
        response.raise_for_status()
        return response.json()

    def __enter__(self) -> ReceiverProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
