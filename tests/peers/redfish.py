"""Redfish peers: sushy-static serving mockups (HTTP and HTTPS), a small authenticating BMC, a silent port.

- :func:`run_sushy_static` runs ``sushy-static`` (PyPI ``sushy-tools``) from this venv on a free 127.0.0.1 port,
  optionally over TLS with a certificate made by :func:`self_signed_cert`; stopped by its pid (``run_server``).
- :func:`rackmount1_mockup` is the DMTF ``public-rackmount1`` mockup. It is DMTF's (BSD-3) and lives outside the
  repository in ``../shared/data/redfish``; it is not redistributed here. Without it the tests skip, or fail
  under ``CI=true``.
- :data:`CDU1_MOCKUP` is dcpue's own small CDU mockup (``tests/data/redfish/cdu1``).
- :class:`MiniBmc` serves a mockup from a thread of the test process with basic and session authentication,
  ``$expand`` of collection members, and per-path overrides (an HTTP status, a broken body) for error cases.
- :func:`silent_port` listens but never answers, for timeouts.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.servers import Server, _http_ready, _missing, free_port, run_server

REPO = Path(__file__).resolve().parents[2]


def _shared_redfish() -> Path:
    """``DCPUE_REDFISH_MOCKUPS``, else ``../shared/data/redfish`` beside the checkout, else beside the checkout
    it was cloned from (a local clone such as ``git clone . /tmp/fresh`` keeps finding the mockup)."""
    if os.environ.get("DCPUE_REDFISH_MOCKUPS"):
        return Path(os.environ["DCPUE_REDFISH_MOCKUPS"])
    beside = REPO.parent / "shared" / "data" / "redfish"
    if beside.is_dir():
        return beside
    try:
        origin = subprocess.run(["git", "-C", str(REPO), "config", "--get", "remote.origin.url"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        origin = ""
    if origin and Path(origin).is_dir():
        return Path(origin).resolve().parent / "shared" / "data" / "redfish"
    return beside


SHARED_REDFISH = _shared_redfish()
RACKMOUNT1 = SHARED_REDFISH / "public-rackmount1"
CDU1_MOCKUP = REPO / "tests" / "data" / "redfish" / "cdu1"
REDFISH_ROOT = "/redfish/v1"
_REQUEST_LINE = re.compile(r'"(GET|POST|DELETE|PATCH) (\S+) HTTP/[0-9.]+"')


def rackmount1_mockup() -> Path:
    """The DMTF public-rackmount1 mockup folder; skips (fails under CI=true) when it is not there."""
    if not (RACKMOUNT1 / "index.json").is_file():
        message = (f"the DMTF Redfish mockup public-rackmount1 is not at {RACKMOUNT1}: it lives outside the "
                   "repository in ../shared/data/redfish (DMTF, BSD-3) and is not redistributed with dcpue; "
                   "put the DMTF mockup there (see that folder's LICENSE-DMTF.md) to run these tests")
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return RACKMOUNT1


def sushy_static_binary() -> str | None:
    """``sushy-static`` next to this Python (the project venv), else on PATH, else None."""
    local = Path(sys.executable).with_name("sushy-static")
    return str(local) if local.is_file() and os.access(local, os.X_OK) else shutil.which("sushy-static")


# --- TLS ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    """A self-signed certificate for 127.0.0.1 and its key (PEM files)."""

    cert: Path
    key: Path


def self_signed_cert(directory: Path) -> TlsFiles:
    """Make a self-signed EC certificate valid for IP 127.0.0.1 and localhost with the ``openssl`` CLI."""
    openssl = shutil.which("openssl")
    if openssl is None:
        _missing("openssl (Debian `openssl`)")
    cert, key = directory / "bmc-cert.pem", directory / "bmc-key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=dcpue test BMC",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=30,
    )
    return TlsFiles(cert, key)


def _https_ready(path: str) -> Callable[[str, int], bool]:
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE

    def ready(host: str, port: int) -> bool:
        try:
            with urllib.request.urlopen(f"https://{host}:{port}{path}", timeout=1, context=unverified) as resp:
                return resp.status == 200
        except OSError:
            return False

    return ready


# --- sushy-static ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def run_sushy_static(mockup: Path, tls: TlsFiles | None = None) -> Iterator[Server]:
    """sushy-static serving ``mockup`` at ``/redfish/v1``; ``server.url`` is http:// (use https:// with ``tls``)."""
    binary = sushy_static_binary()
    if binary is None:
        _missing("sushy-static (PyPI `sushy-tools`, the `test` extra)")

    def command(workdir: Path, port: int) -> list[str]:
        args = [binary, "--interface", "127.0.0.1", "--port", str(port), "--mockup-files", str(mockup)]
        return args + (["--ssl-certificate", str(tls.cert), "--ssl-key", str(tls.key)] if tls else [])

    ready = _https_ready(f"{REDFISH_ROOT}/") if tls else _http_ready(f"{REDFISH_ROOT}/", 200)
    with run_server("sushy-static-tls" if tls else "sushy-static", command, ready) as server:
        yield server


def https_url(server: Server) -> str:
    """The https:// base URL of a TLS server."""
    return f"https://{server.host}:{server.port}"


def request_lines(server: Server) -> list[tuple[str, str]]:
    """The requests sushy-static logged so far, as ``(method, path)`` (its stderr access log)."""
    return _REQUEST_LINE.findall(server.log_path.read_text(errors="replace"))


# --- an authenticating BMC -----------------------------------------------------------------------------------------


@dataclass
class Override:
    """What the MiniBmc answers on one path instead of the mockup file."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"


@dataclass
class MiniBmc:
    """A Redfish service over a mockup folder with basic and session auth (``POST .../Sessions``).

    The service root is readable without credentials (as the Redfish spec wants); everything else needs a
    valid ``Authorization: Basic`` or ``X-Auth-Token``. ``overrides`` maps a path (without query) to an
    :class:`Override`; ``requests`` logs ``(method, path, how authenticated)``; ``tokens`` holds live sessions.
    """

    mockup: Path
    username: str = "admin"
    password: str = "secret"
    overrides: dict[str, Override] = field(default_factory=dict)
    requests: list[tuple[str, str, str]] = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=dict)  # token -> session path
    url: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def expire_sessions(self) -> None:
        """Forget every session, as a rebooted BMC does."""
        with self._lock:
            self.tokens.clear()

    def document(self, path: str) -> dict | None:
        """The mockup resource at ``path`` (e.g. ``/redfish/v1/Chassis``), or None."""
        rel = path.rstrip("/")[len(REDFISH_ROOT):].strip("/")
        file = self.mockup / rel / "index.json"
        return json.loads(file.read_text()) if path.startswith(REDFISH_ROOT) and file.is_file() else None


def _handler(bmc: MiniBmc) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as BMCs do
        disable_nagle_algorithm = True  # else header and body writes meet delayed ACKs: +40 ms per request
        wbufsize = 1 << 16  # one write per answer

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
            pass

        def _answer(self, status: int, body: bytes = b"", content_type: str = "application/json",
                    headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if body:
                self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, doc: object, headers: dict[str, str] | None = None) -> None:
            self._answer(status, json.dumps(doc).encode(), headers=headers)

        def _who(self) -> str:
            token = self.headers.get("X-Auth-Token")
            with bmc._lock:
                if token and token in bmc.tokens:
                    return "token"
            auth = self.headers.get("Authorization", "")
            if auth.startswith("Basic "):
                try:
                    user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
                except ValueError:
                    return "none"
                if (user, password) == (bmc.username, bmc.password):
                    return "basic"
            return "none"

        def _path(self) -> tuple[str, str]:
            parts = urlsplit(self.path)
            return parts.path.rstrip("/") or "/", parts.query

        def _refuse(self) -> None:
            self._json(401, {"error": {"code": "Base.1.0.InsufficientPrivilege", "message": "log in first"}},
                       headers={"WWW-Authenticate": 'Basic realm="dcpue test BMC"'})

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path, query = self._path()
            who = self._who()
            bmc.requests.append(("GET", self.path, who))
            if path != REDFISH_ROOT and who == "none":
                return self._refuse()
            override = bmc.overrides.get(path)
            if override is not None:
                return self._answer(override.status, override.body, override.content_type)
            doc = bmc.document(path)
            if doc is None:
                return self._json(404, {"error": {"code": "Base.1.0.ResourceMissingAtURI", "message": path}})
            if "$expand" in query and isinstance(doc.get("Members"), list):
                doc["Members"] = [bmc.document(m["@odata.id"]) or m for m in doc["Members"]]
            self._json(200, doc)

        def do_POST(self) -> None:  # noqa: N802
            path, _ = self._path()
            bmc.requests.append(("POST", self.path, self._who()))
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if path != f"{REDFISH_ROOT}/SessionService/Sessions":
                return self._json(405, {"error": {"message": "not allowed"}})
            try:
                creds = json.loads(raw)
            except ValueError:
                return self._json(400, {"error": {"message": "malformed JSON"}})
            if (creds.get("UserName"), creds.get("Password")) != (bmc.username, bmc.password):
                return self._json(401, {"error": {"message": "wrong credentials"}})
            token = secrets.token_hex(16)
            session = f"{REDFISH_ROOT}/SessionService/Sessions/{token[:8]}"
            with bmc._lock:
                bmc.tokens[token] = session
            self._json(201, {"@odata.id": session, "Id": token[:8], "UserName": bmc.username},
                       headers={"X-Auth-Token": token, "Location": session})

        def do_DELETE(self) -> None:  # noqa: N802
            path, _ = self._path()
            token = self.headers.get("X-Auth-Token", "")
            bmc.requests.append(("DELETE", self.path, self._who()))
            with bmc._lock:
                owned = bmc.tokens.get(token) == path
                if owned:
                    del bmc.tokens[token]
            self._answer(204 if owned else 401)

    return Handler


@contextlib.contextmanager
def run_mini_bmc(mockup: Path, username: str = "admin", password: str = "secret") -> Iterator[MiniBmc]:
    """A :class:`MiniBmc` on a free 127.0.0.1 port, in a thread of this process; shut down on exit."""
    bmc = MiniBmc(mockup, username, password)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(bmc))
    httpd.daemon_threads = True
    bmc.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), name="mini-bmc", daemon=True)
    thread.start()
    try:
        yield bmc
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@contextlib.contextmanager
def silent_port() -> Iterator[int]:
    """A 127.0.0.1 port that accepts TCP connections (kernel backlog) but never answers: requests time out."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


def refused_port() -> int:
    """A 127.0.0.1 port nothing listens on (free a moment ago)."""
    return free_port()


# --- pytest fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def rackmount1_server() -> Iterator[Server]:
    """sushy-static serving the DMTF public-rackmount1 mockup over plain HTTP."""
    with run_sushy_static(rackmount1_mockup()) as server:
        yield server


@pytest.fixture(scope="session")
def cdu1_server() -> Iterator[Server]:
    """sushy-static serving dcpue's CDU mockup (tests/data/redfish/cdu1) over plain HTTP."""
    with run_sushy_static(CDU1_MOCKUP) as server:
        yield server


@pytest.fixture(scope="session")
def bmc_tls() -> Iterator[TlsFiles]:
    """A self-signed certificate for 127.0.0.1, in a temp dir removed at the end."""
    with tempfile.TemporaryDirectory(prefix="dcpue-tls-") as tmp:
        yield self_signed_cert(Path(tmp))


@pytest.fixture(scope="session")
def rackmount1_tls_server(bmc_tls: TlsFiles) -> Iterator[Server]:
    """sushy-static serving public-rackmount1 over HTTPS with the self-signed ``bmc_tls`` certificate."""
    with run_sushy_static(rackmount1_mockup(), tls=bmc_tls) as server:
        yield server


@pytest.fixture
def mini_bmc() -> Iterator[MiniBmc]:
    """A fresh authenticating BMC over the cdu1 mockup (user ``admin``, password ``secret``)."""
    with run_mini_bmc(CDU1_MOCKUP) as bmc:
        yield bmc
