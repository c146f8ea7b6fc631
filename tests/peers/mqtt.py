"""Mosquitto (Debian ``mosquitto``) as the MQTT peer: real brokers on 127.0.0.1 with a temp config.

Two ways to get one::

    from tests.peers.mqtt import mosquitto, restartable_mosquitto   # pytest fixtures

- ``mosquitto`` (session): an anonymous listener on ``.port``, a password listener on ``.auth_port``
  (user ``.username`` / ``.password``, made with ``mosquitto_passwd -b``) and, when ``openssl`` is
  installed, an anonymous TLS listener on ``.tls_port`` whose self-signed certificate is ``.ca_file``.
- ``restartable_mosquitto`` (per test): one anonymous listener with persistence on disk, which
  ``.restart()`` stops and starts again on the same port, so persistent sessions and their queued QoS 1
  messages survive the restart.

Under ``CI=true`` a missing mosquitto fails the test; elsewhere it skips. Brokers are stopped by pid.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.servers import (
    START_TIMEOUT_S,
    _die_with_parent,
    _log_tail,
    _missing,
    _tcp_ready,
    free_port,
    run_server,
    stop_process,
)

USERNAME = "collector"
PASSWORD = "s3cret-pw"

# `user root`: as root, mosquitto would otherwise drop privileges to `mosquitto`, who cannot read the temp dir
# (ignored when not run as root). Persistence is saved on SIGTERM, so a restart keeps the sessions.
BASE_CONFIG = """\
per_listener_settings true
user root
persistence true
persistence_location {workdir}/
log_dest stdout
log_type error
log_type warning
log_type notice
connection_messages true
"""

ANONYMOUS_LISTENER = """\
listener {port} 127.0.0.1
allow_anonymous true
"""

PASSWORD_LISTENER = """\
listener {port} 127.0.0.1
allow_anonymous false
password_file {passwd}
"""

TLS_LISTENER = """\
listener {port} 127.0.0.1
allow_anonymous true
certfile {cert}
keyfile {key}
"""


def mosquitto_binary() -> str | None:
    """Path of the Mosquitto broker (Debian ``mosquitto``: /usr/sbin/mosquitto), or None."""
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


def _binaries() -> tuple[str, str]:
    broker = mosquitto_binary()
    passwd = shutil.which("mosquitto_passwd")
    if broker is None or passwd is None:
        _missing("Mosquitto (Debian `mosquitto`: /usr/sbin/mosquitto and /usr/bin/mosquitto_passwd)")
    assert broker is not None and passwd is not None
    return broker, passwd


def _self_signed(workdir: Path) -> tuple[Path, Path] | None:
    """A certificate for 127.0.0.1 and its key (EC P-256, one day), or None without ``openssl``."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


def _write_config(workdir: Path, port: int, auth_port: int | None, passwd_tool: str,
                  tls_port: int | None = None) -> Path:
    text = BASE_CONFIG.format(workdir=workdir) + ANONYMOUS_LISTENER.format(port=port)
    if auth_port is not None:
        passwd = workdir / "passwd"
        subprocess.run([passwd_tool, "-c", "-b", str(passwd), USERNAME, PASSWORD], check=True, capture_output=True)
        text += PASSWORD_LISTENER.format(port=auth_port, passwd=passwd)
    if tls_port is not None:
        cert, key = workdir / "cert.pem", workdir / "key.pem"
        text += TLS_LISTENER.format(port=tls_port, cert=cert, key=key)
    config = workdir / "mosquitto.conf"
    config.write_text(text)
    return config


@dataclass(frozen=True)
class MqttBroker:
    """A running Mosquitto: anonymous on ``port``, password on ``auth_port``, TLS on ``tls_port`` (or None)."""

    host: str
    port: int
    auth_port: int
    tls_port: int | None
    pid: int
    workdir: Path
    log_path: Path
    username: str = USERNAME
    password: str = PASSWORD

    @property
    def ca_file(self) -> str:
        """The TLS listener's self-signed certificate (PEM), to verify it with."""
        return str(self.workdir / "cert.pem")


@contextlib.contextmanager
def run_mosquitto() -> Iterator[MqttBroker]:
    """Mosquitto with an anonymous, a password and (with openssl) a TLS listener, persistence in its temp dir."""
    broker, passwd_tool = _binaries()
    auth_ports: dict[int, int] = {}
    tls_ports: dict[int, int | None] = {}

    def command(workdir: Path, port: int) -> list[str]:
        auth_ports[port] = free_port()
        tls_ports[port] = free_port() if _self_signed(workdir) else None
        return [broker, "-c", str(_write_config(workdir, port, auth_ports[port], passwd_tool, tls_ports[port]))]

    def ready(host: str, port: int) -> bool:
        others = [p for p in (auth_ports[port], tls_ports[port]) if p is not None]
        return _tcp_ready(host, port) and all(_tcp_ready(host, p) for p in others)

    with run_server("mosquitto", command, ready) as server:
        yield MqttBroker(server.host, server.port, auth_ports[server.port], tls_ports[server.port], server.pid,
                         server.workdir, server.log_path)


@dataclass
class RestartableMosquitto:
    """A Mosquitto that can be stopped and started again on the same port with the same persistence."""

    workdir: Path
    port: int = 0
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        """The broker's log (all runs appended)."""
        return self.workdir / "server.log"

    def start(self) -> None:
        """Start on ``port`` (a free one when 0) and wait until it accepts connections."""
        broker, passwd_tool = _binaries()
        for _ in range(3 if self.port == 0 else 1):
            port = self.port or free_port()
            config = _write_config(self.workdir, port, None, passwd_tool)
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [broker, "-c", str(config)], cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True,
                    preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
                )
            deadline = time.monotonic() + START_TIMEOUT_S
            while self.proc.poll() is None and time.monotonic() < deadline:
                if _tcp_ready(self.host, port):
                    self.port = port
                    return
                time.sleep(0.02)
            stop_process(self.proc)
        pytest.fail(f"mosquitto did not start on {self.host}:{port}:\n{_log_tail(self.log_path)}", pytrace=False)

    def stop(self) -> None:
        """Stop by pid (SIGTERM: mosquitto saves its persistence file), then SIGKILL if it hangs."""
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def restart(self) -> None:
        """Stop, then start again on the same port."""
        self.stop()
        self.start()


@contextlib.contextmanager
def run_restartable_mosquitto() -> Iterator[RestartableMosquitto]:
    """A :class:`RestartableMosquitto` in a temp dir, stopped and removed on exit."""
    broker = RestartableMosquitto(Path(tempfile.mkdtemp(prefix="dcpue-mosquitto-")))
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(broker.workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[MqttBroker]:
    """Session-wide Mosquitto; use topics unique to the test (see ``tests.servers.unique_name``)."""
    with run_mosquitto() as broker:
        yield broker


@pytest.fixture
def restartable_mosquitto() -> Iterator[RestartableMosquitto]:
    """A Mosquitto of this test alone, with ``.restart()``."""
    with run_restartable_mosquitto() as broker:
        yield broker
