"""Token authentication of the HTTP API (docs/api.md#authentication).

The settings hold SHA-256 hex digests of the accepted tokens (``http.tokens``, ``http.tokens_file``),
never the tokens. A request presents a token as ``Authorization: Bearer <token>`` or ``X-Api-Key:
<token>``; its digest is compared with every accepted digest in constant time (no early exit).
:class:`TokenAuthMiddleware` answers 401 with ``WWW-Authenticate: Bearer`` before any route runs,
except on the open paths (health, readiness, the page's static assets and the OpenAPI document).

With no tokens configured the API is open, which the settings allow only on a loopback host
(:func:`exposure_problem`) unless ``http.allow_anonymous`` says otherwise. Importing this module
needs only the standard library (the settings use it).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from pathlib import Path
from typing import Any

from dcpue.errors import ConfigError

log = logging.getLogger(__name__)

_DIGEST = re.compile(r"[0-9a-f]{64}")
HASH_HINT = "printf %s \"$TOKEN\" | sha256sum"
# paths that carry no data: probes, the page's assets, the published OpenAPI document and its viewer
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/", "/api/openapi.json", "/api/docs"})
OPEN_PREFIXES = ("/static/",)


def hash_token(token: str | bytes) -> str:
    """The SHA-256 hex digest of ``token`` (UTF-8), as ``http.tokens`` and the tokens file hold it."""
    raw = token.encode("utf-8") if isinstance(token, str) else token
    return hashlib.sha256(raw).hexdigest()


def check_digest(value: str, where: str) -> str:
    """``value`` lower-cased if it is a SHA-256 hex digest, else ValueError naming ``where`` (never the value,
    which may be a token pasted by mistake)."""
    digest = value.strip().lower()
    if not _DIGEST.fullmatch(digest):
        raise ValueError(f"{where} is not a SHA-256 hex digest (64 hex digits); store the digest of a token, "
                         f"never the token: {HASH_HINT}")
    return digest


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` reaches this machine only: ``localhost``, 127.0.0.0/8 or ::1."""
    name = host.strip().strip("[]").lower().rstrip(".")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:  # a host name other than localhost: it may resolve anywhere
        return False


def exposure_problem(host: str, has_tokens: bool, allow_anonymous: bool) -> str | None:
    """Why serving on ``host`` with these settings is refused, or None when it is allowed."""
    if has_tokens or allow_anonymous or is_loopback(host):
        return None
    return (f"http.host {host!r} is not a loopback address and neither http.tokens nor http.tokens_file is set: "
            f"anyone who can reach it could read and change the API. Set http.tokens to the SHA-256 digests of "
            f"the accepted tokens ({HASH_HINT}) or http.tokens_file to a file of them, or set "
            f"http.allow_anonymous: true to serve without authentication")


def read_tokens_file(path: Path) -> tuple[str, ...]:
    """The digests in ``path``: one per line; blank lines, ``#`` comments and text after the digest (as
    ``sha256sum`` prints it) are ignored. Raises ConfigError naming the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"http.tokens_file {str(path)!r} cannot be read: {exc}") from None
    digests = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        try:
            digests.append(check_digest(fields[0], f"http.tokens_file {str(path)!r} line {number}"))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    return tuple(digests)


class TokenAuth:
    """The accepted token digests: ``hashes`` plus those of ``tokens_file``, re-read whenever the file changes.

    A tokens file that cannot be read or holds a bad line after a change is logged and its digests are no
    longer accepted (fail closed) until it is fixed; ``hashes`` stay valid. Build it with :meth:`from_settings`,
    which reads the file once and fails fast.
    """

    def __init__(self, hashes: Iterable[str] = (), tokens_file: Path | None = None) -> None:
        self.hashes = tuple(check_digest(h, f"http.tokens[{i}]") for i, h in enumerate(hashes))
        self.tokens_file = tokens_file
        self.refused = 0  # requests answered 401, for /metrics
        self._file_hashes: tuple[str, ...] = ()
        self._signature: tuple[int, int, int] | None = None

    @classmethod
    def from_settings(cls, http: Any) -> TokenAuth | None:
        """The authentication ``http`` (an :class:`~dcpue.settings.HttpSettings`) asks for; None when it sets
        no tokens (an open API). Reads ``http.tokens_file``; raises ConfigError when it is unusable or when no
        digest is configured at all (no one could use the API)."""
        if not http.tokens and http.tokens_file is None:
            return None
        auth = cls(http.tokens, http.tokens_file)
        if auth.tokens_file is not None:
            auth._file_hashes = read_tokens_file(auth.tokens_file)
            auth._signature = _signature(auth.tokens_file)
        if not auth.hashes and not auth._file_hashes:
            raise ConfigError(f"http.tokens_file {str(http.tokens_file)!r} holds no token digest and http.tokens is "
                              f"empty: no one could use the API; add a line with a digest ({HASH_HINT})")
        return auth

    def accepted(self) -> tuple[str, ...]:
        """Every digest accepted now (re-reads the tokens file if it changed since the last call)."""
        if self.tokens_file is not None:
            signature = _signature(self.tokens_file)
            if signature != self._signature:
                self._signature = signature
                try:
                    self._file_hashes = read_tokens_file(self.tokens_file)
                    log.info("http.tokens_file reloaded path=%s digests=%d", self.tokens_file, len(self._file_hashes))
                except ConfigError as exc:
                    self._file_hashes = ()
                    log.error("%s; its tokens are refused until it is fixed", exc)
        return self.hashes + self._file_hashes

    def verify(self, token: str | bytes) -> bool:
        """Whether ``token`` is accepted; compares its digest with every accepted digest in constant time."""
        digest = hash_token(token)
        match = False
        for accepted in self.accepted():
            match |= hmac.compare_digest(digest, accepted)  # no early exit: the time does not tell which
        return match


def _signature(path: Path) -> tuple[int, int, int] | None:
    """What changes when the file is rewritten or replaced (a Kubernetes Secret swaps a symlink)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def presented_token(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The token of ``Authorization: Bearer <token>``, else of ``X-Api-Key``, as raw bytes; None when neither."""
    bearer = api_key = None
    for name, value in headers:
        name = name.lower()
        if name == b"authorization":
            scheme, _, rest = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and rest.strip():
                bearer = rest.strip()
        elif name == b"x-api-key" and value.strip():
            api_key = value.strip()
    return bearer if bearer is not None else api_key


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class TokenAuthMiddleware:
    """ASGI middleware: every HTTP request outside the open paths needs an accepted token, else 401.

    It runs before routing, so an unauthenticated request learns nothing about the route (not even a 404 or
    422). A refused WebSocket is closed with code 1008.
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], auth: TokenAuth,
                 open_paths: frozenset[str] = OPEN_PATHS, open_prefixes: tuple[str, ...] = OPEN_PREFIXES) -> None:
        self.app = app
        self.auth = auth
        self.open_paths = open_paths
        self.open_prefixes = open_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self._is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        token = presented_token(scope.get("headers", ()))
        if token is not None and self.auth.verify(token):
            await self.app(scope, receive, send)
            return
        self.auth.refused += 1
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await _send_401(send, invalid=token is not None)

    def _is_open(self, path: str) -> bool:
        return path in self.open_paths or path.startswith(self.open_prefixes)


async def _send_401(send: Send, invalid: bool) -> None:
    if invalid:
        detail = "the API token is not accepted"
        challenge = b'Bearer realm="dcpue", error="invalid_token"'
    else:
        detail = "this endpoint needs an API token: send Authorization: Bearer <token> (or X-Api-Key: <token>)"
        challenge = b'Bearer realm="dcpue"'
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": 401, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"www-authenticate", challenge), (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": body})
