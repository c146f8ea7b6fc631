"""snmpsim as an SNMP test peer: real recordings served on a free 127.0.0.1 UDP port.

``snmpsim-command-responder`` runs from its own venv (``.venv-snmpsim``, made by ``scripts/bootstrap
test`` from Debian's ``/usr/bin/python3``): run as root, snmpsim drops privileges to ``nobody``, who
cannot read a Python under ``/root``. Each ``.snmprec`` file is copied into a temporary data
directory as ``<community>.snmprec``: the file name is the v2c community and the v3 context name.
The v3 users of :data:`V3_USERS` are configured, so v3 is tested with real authentication and
privacy. Readiness is a real SNMP GET; the process is stopped by its pid::

    with run_snmpsim(standard_recordings()) as agent:
        ...  # agent.host, agent.port; community "eaton" serves the Eaton 9PX UPS

Under ``CI=true`` a missing snmpsim venv fails the test; elsewhere it skips.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers import _die_with_parent, _missing, _pid_alive, stop_process

REPO = Path(__file__).resolve().parents[2]
TEST_DATA = REPO / "tests" / "data" / "snmp"
START_TIMEOUT_S = 20.0
EATON_RECORDING = Path("snmpsim", "data", "recorded", "eaton-9PX-partial-walk.snmprec")
SYS_OBJECT_ID = "1.3.6.1.2.1.1.2.0"  # present in every recording served here: the readiness probe


@dataclass(frozen=True)
class V3User:
    """An SNMPv3 USM user of the simulator; protocols spelled as snmpsim's ``--v3-*-proto`` options."""

    name: str
    auth_proto: str = "NONE"
    auth_key: str | None = None
    priv_proto: str = "NONE"
    priv_key: str | None = None


V3_USERS = (
    V3User("dcpue-sha-aes", "SHA", "auth-key-sha-1", "AES", "priv-key-aes-1"),
    V3User("dcpue-sha256-aes256", "SHA256", "auth-key-sha256", "AES256BLMT", "priv-key-aes256"),
    V3User("dcpue-md5-des", "MD5", "auth-key-md5-1", "DES", "priv-key-des-1"),
    V3User("dcpue-sha512-nopriv", "SHA512", "auth-key-sha512"),
    V3User("dcpue-noauth"),
)


@dataclass(frozen=True)
class SnmpAgent:
    """A running snmpsim: where to send requests and which recordings answer to which community."""

    host: str
    port: int
    pid: int
    data_dir: Path
    log_path: Path
    recordings: Mapping[str, Path]  # community (= v3 context name) -> original .snmprec file
    v3_users: tuple[V3User, ...]

    def user(self, name: str) -> V3User:
        """The configured v3 user called ``name``."""
        return next(u for u in self.v3_users if u.name == name)


def snmpsim_venv() -> Path:
    """The venv ``scripts/bootstrap test`` makes for snmpsim (``DCPUE_SNMPSIM_VENV`` overrides, as there)."""
    return REPO / os.environ.get("DCPUE_SNMPSIM_VENV", ".venv-snmpsim")


def snmpsim_responder() -> Path | None:
    """Path of ``snmpsim-command-responder`` in the snmpsim venv, or None."""
    path = snmpsim_venv() / "bin" / "snmpsim-command-responder"
    return path if path.is_file() and os.access(path, os.X_OK) else None


def eaton_recording() -> Path | None:
    """The Eaton 9PX UPS recording that ships inside the snmpsim package, or None."""
    found = sorted(snmpsim_venv().glob(f"lib/python3*/site-packages/{EATON_RECORDING}"))
    return found[0] if found else None


def require_privacy_support() -> None:
    """Skip (fail under CI) unless both sides can do SNMPv3 DES/AES: pysnmp needs ``cryptography`` for it."""
    if not sorted(snmpsim_venv().glob("lib/python3*/site-packages/cryptography")):
        _missing(f"cryptography in the snmpsim venv {snmpsim_venv()} (snmpsim needs it for DES/AES privacy)")
    try:
        import cryptography  # noqa: F401
    except ImportError:
        _missing("cryptography (pysnmp needs it for SNMPv3 DES/AES privacy)")


def parse_snmprec(path: Path) -> dict[str, tuple[str, str]]:
    """``OID -> (tag, value)`` of an ``.snmprec`` file (comments and blank lines skipped)."""
    records: dict[str, tuple[str, str]] = {}
    for line in path.read_text(encoding="iso-8859-1").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            oid, tag, value = line.split("|", 2)
            records[oid] = (tag, value)
    return records


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def snmp_get_ready(host: str, port: int, community: str, deadline: float, proc: subprocess.Popen[bytes]) -> bool:
    """Send real SNMP GETs of sysObjectID until one is answered, the deadline passes or the process exits."""
    from pysnmp.hlapi.v3arch.asyncio import (
        CommunityData,
        ContextData,
        ObjectIdentity,
        ObjectType,
        SnmpEngine,
        UdpTransportTarget,
        get_cmd,
    )

    async def probe() -> bool:
        engine = SnmpEngine()
        try:
            target = await UdpTransportTarget.create((host, port), timeout=0.3, retries=0)
            while time.monotonic() < deadline and proc.poll() is None:
                indication, status, _, var_binds = await get_cmd(
                    engine, CommunityData(community), target, ContextData(),
                    ObjectType(ObjectIdentity(SYS_OBJECT_ID)), lookupMib=False)
                if not indication and not status and var_binds:
                    return True
                await asyncio.sleep(0.05)
            return False
        finally:
            engine.close_dispatcher()

    return asyncio.run(probe())


def _command(responder: Path, data_dir: Path, cache_dir: Path, port: int, users: tuple[V3User, ...]) -> list[str]:
    command = [str(responder), f"--data-dir={data_dir}", f"--cache-dir={cache_dir}",
               f"--agent-udpv4-endpoint=127.0.0.1:{port}", "--log-level=error"]
    if os.geteuid() == 0:  # snmpsim insists on dropping root privileges
        command += ["--process-user=nobody", "--process-group=nogroup"]
    for user in users:
        command += [f"--v3-user={user.name}"]
        if user.auth_key:
            command += [f"--v3-auth-key={user.auth_key}", f"--v3-auth-proto={user.auth_proto}"]
        if user.priv_key:
            command += [f"--v3-priv-key={user.priv_key}", f"--v3-priv-proto={user.priv_proto}"]
    return command


def _prepare_dirs(workdir: Path, recordings: Mapping[str, Path]) -> tuple[Path, Path]:
    """Data and cache dirs that ``nobody`` can read (data) and write (cache)."""
    data_dir, cache_dir = workdir / "data", workdir / "cache"
    data_dir.mkdir()
    cache_dir.mkdir()
    for community, source in recordings.items():
        shutil.copyfile(source, data_dir / f"{community}.snmprec")
        (data_dir / f"{community}.snmprec").chmod(0o644)
    workdir.chmod(0o755)
    data_dir.chmod(0o755)
    if os.geteuid() == 0:
        os.chown(cache_dir, pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid)
    return data_dir, cache_dir


@contextlib.contextmanager
def run_snmpsim(recordings: Mapping[str, Path], v3_users: tuple[V3User, ...] = V3_USERS,
                attempts: int = 3) -> Iterator[SnmpAgent]:
    """Serve ``recordings`` (community -> .snmprec) on a free UDP port of 127.0.0.1 until the block ends."""
    responder = snmpsim_responder()
    if responder is None:
        _missing(f"snmpsim (venv {snmpsim_venv()} with snmpsim and pysmi)")
    community = next(iter(recordings))
    last_error = ""
    for _ in range(attempts):
        workdir = Path(tempfile.mkdtemp(prefix="dcpue-snmpsim-"))
        log_path = workdir / "snmpsim.log"
        proc: subprocess.Popen[bytes] | None = None
        try:
            data_dir, cache_dir = _prepare_dirs(workdir, recordings)
            port = free_udp_port()
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(
                    _command(responder, data_dir, cache_dir, port, v3_users),
                    cwd=workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
                )
            if not snmp_get_ready("127.0.0.1", port, community, time.monotonic() + START_TIMEOUT_S, proc):
                status = f"exited with {proc.poll()}" if proc.poll() is not None else "did not answer"
                tail = log_path.read_text(errors="replace").splitlines()[-20:]
                last_error = f"snmpsim {status} on 127.0.0.1:{port}:\n" + "\n".join(tail)
                continue
            agent = SnmpAgent("127.0.0.1", port, proc.pid, data_dir, log_path, dict(recordings), v3_users)
            try:
                yield agent
            finally:
                stop_process(proc, signal.SIGTERM)
                if _pid_alive(proc.pid):
                    raise RuntimeError(f"snmpsim (pid {proc.pid}) is still running after stop")
            return
        finally:
            if proc is not None:
                stop_process(proc, signal.SIGTERM)
            shutil.rmtree(workdir, ignore_errors=True)
    pytest.fail(last_error, pytrace=False)


def standard_recordings() -> dict[str, Path]:
    """Community -> recording: ``eaton`` (the real Eaton 9PX recording shipped with snmpsim), ``pdu`` (the
    hand-written test PDU with ENTITY-SENSOR and EATON-EPDU objects) and ``badpdu`` (a value of the wrong type)."""
    if snmpsim_responder() is None:
        _missing(f"snmpsim (venv {snmpsim_venv()} with snmpsim and pysmi)")
    eaton = eaton_recording()
    if eaton is None:
        _missing(f"snmpsim's Eaton 9PX recording (venv {snmpsim_venv()})")
    return {"eaton": eaton, "pdu": TEST_DATA / "test-pdu.snmprec", "badpdu": TEST_DATA / "bad-pdu.snmprec"}
