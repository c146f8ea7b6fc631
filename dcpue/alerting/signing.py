"""dcpue's HMAC-SHA256 signature on webhook (Alertmanager-format) requests; receivers may import or copy it.

Every signed request carries three headers::

    X-Dcpue-Timestamp: 1764082210                  # unix time of the attempt [s]
    X-Dcpue-Signature: sha256=<hex HMAC-SHA256(secret, f"{timestamp}.{body}")>
    Idempotency-Key: 3f2a…-1                       # same on every attempt of one delivery

The timestamp is signed with the body, so a captured request replayed later than ``tolerance_s`` is
rejected; within that window, a receiver drops repeats by ``Idempotency-Key`` (which dcpue itself resends
on every retry of one delivery: delivery is at-least-once).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping

TIMESTAMP_HEADER = "X-Dcpue-Timestamp"
SIGNATURE_HEADER = "X-Dcpue-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
SCHEME = "sha256="
DEFAULT_TOLERANCE_S = 300.0


class SignatureError(ValueError):
    """A request's dcpue signature is missing, malformed, stale, from the future or does not match."""


def _bytes(body: bytes | str) -> bytes:
    return body.encode() if isinstance(body, str) else bytes(body)


def signature(body: bytes | str, secret: str, timestamp: int) -> str:
    """``sha256=<hex>`` over ``f"{timestamp}.".encode() + body`` with key ``secret``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + _bytes(body), hashlib.sha256)
    return SCHEME + mac.hexdigest()


def sign(body: bytes | str, secret: str, now: float, idempotency_key: str | None = None) -> dict[str, str]:
    """The headers that sign ``body`` at ``now`` [unix s] (plus ``Idempotency-Key`` when given)."""
    timestamp = int(now)
    headers = {TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: signature(body, secret, timestamp)}
    if idempotency_key is not None:
        headers[IDEMPOTENCY_HEADER] = idempotency_key
    return headers


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    wanted = name.lower()
    return next((v for k, v in headers.items() if k.lower() == wanted), None)


def check(body: bytes | str, headers: Mapping[str, str], secret: str | Iterable[str], now: float,
          tolerance_s: float = DEFAULT_TOLERANCE_S) -> None:
    """Raise :class:`SignatureError` unless ``headers`` sign ``body`` within ``tolerance_s`` [s] of ``now``.

    ``secret`` may be several secrets (rotation): any one matching is enough. Header names are
    case-insensitive; the comparison is constant-time.
    """
    raw_ts, given = _header(headers, TIMESTAMP_HEADER), _header(headers, SIGNATURE_HEADER)
    if raw_ts is None or given is None:
        raise SignatureError(f"missing {TIMESTAMP_HEADER} or {SIGNATURE_HEADER} header")
    try:
        timestamp = int(raw_ts)
    except ValueError:
        raise SignatureError(f"{TIMESTAMP_HEADER} is not an integer: {raw_ts[:32]!r}") from None
    if abs(now - timestamp) > tolerance_s:
        skew = now - timestamp
        raise SignatureError(f"timestamp {timestamp} is {skew:+.0f} s off, over {tolerance_s:g} s: stale or replayed")
    secrets = [secret] if isinstance(secret, str) else list(secret)
    if not any(hmac.compare_digest(signature(body, s, timestamp), given.strip()) for s in secrets):
        raise SignatureError("signature does not match")


def verify(body: bytes | str, headers: Mapping[str, str], secret: str | Iterable[str], now: float,
           tolerance_s: float = DEFAULT_TOLERANCE_S) -> bool:
    """True if ``headers`` sign ``body`` within ``tolerance_s`` [s] of ``now`` [unix s]; see :func:`check`."""
    try:
        check(body, headers, secret, now, tolerance_s)
    except SignatureError:
        return False
    return True
