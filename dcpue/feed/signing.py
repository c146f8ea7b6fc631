"""Signatures on feed requests: HMAC-SHA256 (default) or HMAC-SM3 over timestamp, nonce and canonical body.

Every request carries::

    X-Api-Key: <the platform-issued key>
    X-Dcpue-Feed-Timestamp: 1764082210                 # unix time of this attempt [s]
    X-Dcpue-Feed-Nonce: 6f1c…                          # 32 hex digits, new on every attempt
    X-Dcpue-Feed-Signature: hmac-sm3=<hex HMAC(secret, f"{timestamp}\\n{nonce}\\n".encode() + body)>
    Idempotency-Key: GZ520000-0001.daily.20240714      # the report id, the same on every attempt

The body is canonical JSON (:func:`canonical_json`: keys sorted, no insignificant whitespace, UTF-8),
so the platform can re-serialise and still verify. A receiver rejects a timestamp more than
``tolerance_s`` away from its clock and a nonce it has seen within that window (replay). SM3
(GB/T 32905-2016) comes from the OpenSSL behind Python's ``hashlib``; where that lacks it, from
the ``gmssl`` package if installed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import secrets
from collections.abc import Callable, Iterable, Mapping
from typing import Any

API_KEY_HEADER = "X-Api-Key"
TIMESTAMP_HEADER = "X-Dcpue-Feed-Timestamp"
NONCE_HEADER = "X-Dcpue-Feed-Nonce"
SIGNATURE_HEADER = "X-Dcpue-Feed-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
ALGORITHMS = ("hmac-sha256", "hmac-sm3")
DEFAULT_TOLERANCE_S = 300.0


class SignatureError(ValueError):
    """A feed request's signature is missing, malformed, stale, replayed or does not match."""


def canonical_json(obj: Any) -> bytes:
    """Canonical UTF-8 JSON: sorted keys, ``,``/``:`` separators, non-ASCII kept, NaN refused."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _sm3() -> Callable[..., Any]:
    if "sm3" in hashlib.algorithms_available:
        return lambda data=b"": hashlib.new("sm3", data)
    try:  # pragma: no cover - only where OpenSSL was built without SM3
        from gmssl import func, sm3  # type: ignore[import-not-found]
    except ImportError:  # pragma: no cover
        raise SignatureError("hmac-sm3 needs SM3: this Python's OpenSSL lacks it; pip install gmssl") from None

    class _Gmssl:  # pragma: no cover
        digest_size, block_size = 32, 64

        def __init__(self, data: bytes = b"") -> None:
            self._data = bytearray(data)

        def update(self, data: bytes) -> None:
            self._data += data

        def digest(self) -> bytes:
            return bytes.fromhex(sm3.sm3_hash(func.bytes_to_list(bytes(self._data))))

        def copy(self) -> _Gmssl:
            return _Gmssl(bytes(self._data))

    return _Gmssl


def _digestmod(algorithm: str) -> Any:
    if algorithm == "hmac-sha256":
        return hashlib.sha256
    if algorithm == "hmac-sm3":
        return _sm3()
    raise SignatureError(f"unknown signature algorithm {algorithm!r} (valid: {', '.join(ALGORITHMS)})")


def sm3_hex(data: bytes) -> str:
    """SM3 digest of ``data`` as hex (GB/T 32905-2016)."""
    h = _sm3()(data)
    return h.hexdigest() if hasattr(h, "hexdigest") else h.digest().hex()


def signature(body: bytes, secret: str, timestamp: int, nonce: str, algorithm: str = "hmac-sha256") -> str:
    """``<algorithm>=<hex>`` of HMAC(secret, f"{timestamp}\\n{nonce}\\n" + body)."""
    mac = hmac.new(secret.encode(), f"{timestamp}\n{nonce}\n".encode() + body, _digestmod(algorithm))
    return f"{algorithm}={mac.hexdigest()}"


def sign(body: bytes, *, secret: str | None, api_key: str | None, now: float, report_id: str,
         algorithm: str = "hmac-sha256", nonce: str | None = None) -> dict[str, str]:
    """The headers of one attempt to send ``body`` at ``now`` [unix s] (a fresh nonce unless given)."""
    headers = {IDEMPOTENCY_HEADER: report_id}
    if api_key:
        headers[API_KEY_HEADER] = api_key
    if secret:
        timestamp, nonce = int(now), nonce or secrets.token_hex(16)
        headers.update({TIMESTAMP_HEADER: str(timestamp), NONCE_HEADER: nonce,
                        SIGNATURE_HEADER: signature(body, secret, timestamp, nonce, algorithm)})
    return headers


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header's value, whatever the case of its name."""
    wanted = name.lower()
    return next((v for k, v in headers.items() if k.lower() == wanted), None)


def verify(body: bytes, headers: Mapping[str, str], secrets_: str | Iterable[str], now: float, *,
           tolerance_s: float = DEFAULT_TOLERANCE_S, algorithms: Iterable[str] = ALGORITHMS,
           nonce_seen: Callable[[str, int], bool] | None = None) -> tuple[int, str]:
    """Check a request; returns (timestamp, nonce) or raises :class:`SignatureError` saying why.

    ``secrets_`` may hold several keys (rotation). ``nonce_seen(nonce, timestamp)`` answers whether the
    nonce was used before and records it; it is called only for a request whose signature matched.
    """
    raw_ts, nonce, sig = (header(headers, h) for h in (TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER))
    if not (raw_ts and nonce and sig):
        missing = [h for h, v in ((TIMESTAMP_HEADER, raw_ts), (NONCE_HEADER, nonce), (SIGNATURE_HEADER, sig)) if not v]
        raise SignatureError(f"unsigned request: missing {', '.join(missing)}")
    try:
        timestamp = int(raw_ts)
    except ValueError:
        raise SignatureError(f"{TIMESTAMP_HEADER} {raw_ts[:40]!r} is not a unix time in seconds") from None
    if not (8 <= len(nonce) <= 64 and nonce.isalnum()):
        raise SignatureError(f"{NONCE_HEADER} must be 8–64 letters or digits")
    skew = now - timestamp
    if not math.isfinite(skew) or abs(skew) > tolerance_s:
        raise SignatureError(f"timestamp {timestamp} is {skew:+.0f} s from the receiver's clock "
                             f"(allowed ±{tolerance_s:g} s): stale or replayed request")
    algorithm = sig.partition("=")[0]
    if algorithm not in set(algorithms):
        raise SignatureError(f"signature algorithm {algorithm!r} is not accepted here "
                             f"(accepted: {', '.join(algorithms)})")
    keys = [secrets_] if isinstance(secrets_, str) else list(secrets_)
    if not any(hmac.compare_digest(signature(body, k, timestamp, nonce, algorithm), sig) for k in keys if k):
        raise SignatureError("signature does not match the body (tampered, or signed with another key)")
    if nonce_seen is not None and nonce_seen(nonce, timestamp):
        raise SignatureError(f"nonce {nonce} was already used: replayed request")
    return timestamp, nonce
