"""A real HTTP webhook receiver on 127.0.0.1 for the alert-delivery tests (stdlib ``http.server`` on a thread).

It records every request (method, path, headers, body, arrival time), answers with scripted responses
(``script(500, 500)`` then the default 200 ``{"errcode":0,"errmsg":"ok"}``, which DingTalk/WeCom/Feishu
clients also read as success), can ``hold()`` requests — recorded, but unanswered until ``release()``
(a receiver that hangs, or one a test kills the sender under) — and can be stopped and started again on
the same port (``down()``). When built with a ``secret`` it checks the dcpue signature of each request
with its own implementation (the one in docs/alerting-delivery.md), not dcpue's::

    with webhook_receiver(secret="s3cret") as hook:
        ...  # send to hook.url + "/alerts"
        [request] = hook.wait_for(1)
        assert request.signature_ok
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.servers import free_port

HOST = "127.0.0.1"
OK_BODY = b'{"errcode":0,"errmsg":"ok"}'
BIND_TIMEOUT_S = 5.0


def dcpue_signature_ok(body: bytes, headers: dict[str, str], secret: str, now: float, tolerance_s: float = 300) -> bool:
    """The receiver side of the dcpue signature, written from the docs (independent of dcpue.alerting)."""
    lower = {k.lower(): v for k, v in headers.items()}
    timestamp, given = lower.get("x-dcpue-timestamp", ""), lower.get("x-dcpue-signature", "")
    if not timestamp.isdigit() or abs(now - int(timestamp)) > tolerance_s:
        return False
    expected = "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, given)


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it."""

    method: str
    path: str  # with the query string
    headers: dict[str, str]
    body: bytes
    at: float  # arrival [unix s]
    signature_ok: bool | None  # None: the receiver has no secret

    def header(self, name: str) -> str | None:
        """A header by case-insensitive name."""
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Reply:
    """A scripted response."""

    status: int = 200
    body: bytes = OK_BODY
    headers: dict[str, str] = field(default_factory=dict)


class _Server(ThreadingHTTPServer):
    allow_reuse_address = True  # restart on the same port while old connections sit in TIME_WAIT
    daemon_threads = True
    owner: WebhookReceiver

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a sender killed mid-request leaves a broken pipe: expected here


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        owner = self.server.owner
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        reply = owner._record(self.command, self.path, dict(self.headers.items()), body)
        owner._wait_while_held()
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    do_PUT = do_POST

    def log_message(self, format: str, *args: Any) -> None:
        pass


class WebhookReceiver:
    """See the module docstring. ``start()`` binds ``port`` (a free one when None); ``stop()`` frees it."""

    def __init__(self, secret: str | None = None, port: int | None = None) -> None:
        self.secret = secret
        self.port = port or free_port()
        self.default = Reply()
        self._requests: list[Received] = []
        self._script: list[Reply] = []
        self._cond = threading.Condition()
        self._open = threading.Event()
        self._open.set()
        self._closing = False
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    # --- lifecycle ---

    def start(self) -> WebhookReceiver:
        deadline = time.monotonic() + BIND_TIMEOUT_S
        while True:
            try:
                server = _Server((HOST, self.port), _Handler)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        server.owner = self
        self._closing = False
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"webhook-peer-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening (held requests are answered first); the port stays this receiver's for ``start()``."""
        if self._server is None:
            return
        self._closing = True
        self._open.set()
        self._server.shutdown()
        self._server.server_close()
        assert self._thread is not None
        self._thread.join(5)
        if self._thread.is_alive():
            raise RuntimeError(f"webhook peer on port {self.port} did not stop")
        self._server = None
        self._thread = None

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """Not listening inside the block (connections refused), listening again on the same port after it."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    # --- behaviour ---

    def script(self, *replies: Reply | int) -> None:
        """Answer the next requests with these replies (a bare int is that status, empty body), then the default."""
        with self._cond:
            self._script.extend(r if isinstance(r, Reply) else Reply(r, b"") for r in replies)

    def hold(self) -> None:
        """Record but do not answer requests until :meth:`release` (or :meth:`stop`)."""
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def _wait_while_held(self) -> None:
        while not self._open.wait(0.05):
            if self._closing:
                return

    def _record(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        now = time.time()
        ok = None if self.secret is None else dcpue_signature_ok(body, headers, self.secret, now)
        with self._cond:
            self._requests.append(Received(method, path, headers, body, now, ok))
            reply = self._script.pop(0) if self._script else self.default
            self._cond.notify_all()
        return reply

    # --- what arrived ---

    @property
    def requests(self) -> list[Received]:
        with self._cond:
            return list(self._requests)

    def wait_for(self, count: int, timeout_s: float = 10.0) -> list[Received]:
        """Block until at least ``count`` requests arrived; all of them. AssertionError on timeout."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._requests) >= count, timeout_s):
                raise AssertionError(f"webhook peer got {len(self._requests)} requests, expected {count} "
                                     f"within {timeout_s} s")
            return list(self._requests)


@contextlib.contextmanager
def webhook_receiver(secret: str | None = None) -> Iterator[WebhookReceiver]:
    """A started :class:`WebhookReceiver`, stopped (and checked stopped) on exit."""
    hook = WebhookReceiver(secret=secret).start()
    try:
        yield hook
    finally:
        hook.stop()
