"""dcpue's webhook signature: sign, verify, replay rejection, and the standalone example in the docs."""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path

import pytest

from dcpue.alerting import signing

BODY = '{"receiver":"noc","status":"firing","note":"告警"}'.encode()
SECRET = "whsec-test"
NOW = 1_764_082_210.7
DOC = Path(__file__).resolve().parents[2] / "docs" / "alerting-delivery.md"


def test_signature_is_hex_hmac_sha256_of_timestamp_dot_body() -> None:
    headers = signing.sign(BODY, SECRET, NOW, idempotency_key="abc-1")
    expected = hmac.new(SECRET.encode(), b"1764082210." + BODY, hashlib.sha256).hexdigest()
    assert headers == {"X-Dcpue-Timestamp": "1764082210", "X-Dcpue-Signature": f"sha256={expected}",
                       "Idempotency-Key": "abc-1"}


def test_verify_accepts_the_signed_request_with_any_header_case() -> None:
    headers = signing.sign(BODY, SECRET, NOW)
    assert signing.verify(BODY, headers, SECRET, NOW)
    assert signing.verify(BODY.decode(), {k.lower(): v for k, v in headers.items()}, SECRET, NOW + 299)
    assert signing.verify(BODY, headers, ["old-secret", SECRET], NOW)  # rotation: any listed secret


@pytest.mark.parametrize(("body", "secret", "now", "reason"), [
    (BODY + b" ", SECRET, NOW, "does not match"),
    (BODY, "other", NOW, "does not match"),
    (BODY, SECRET, NOW + 301, "stale or replayed"),  # a captured request replayed later
    (BODY, SECRET, NOW - 301, "stale or replayed"),  # a timestamp from the future
])
def test_verify_rejects_tampering_wrong_keys_and_replays(body: bytes, secret: str, now: float, reason: str) -> None:
    headers = signing.sign(BODY, SECRET, NOW)
    assert not signing.verify(body, headers, secret, now)
    with pytest.raises(signing.SignatureError, match=reason):
        signing.check(body, headers, secret, now)


def test_verify_rejects_missing_or_malformed_headers() -> None:
    headers = signing.sign(BODY, SECRET, NOW)
    with pytest.raises(signing.SignatureError, match="missing"):
        signing.check(BODY, {"X-Dcpue-Timestamp": headers["X-Dcpue-Timestamp"]}, SECRET, NOW)
    with pytest.raises(signing.SignatureError, match="not an integer"):
        signing.check(BODY, {**headers, "X-Dcpue-Timestamp": "soon"}, SECRET, NOW)
    assert not signing.verify(BODY, {**headers, "X-Dcpue-Signature": "sha1=" + "0" * 40}, SECRET, NOW)
    assert signing.verify(BODY, headers, SECRET, NOW + 20, tolerance_s=30)
    assert not signing.verify(BODY, headers, SECRET, NOW + 40, tolerance_s=30)


def test_the_standalone_example_in_the_docs_verifies_dcpue_requests() -> None:
    text = DOC.read_text(encoding="utf-8")
    match = re.search(r"<!-- verify-example -->\s*```python\n(.*?)```", text, re.S)
    assert match, "docs/alerting-delivery.md lost its verification example"
    code = match.group(1)
    assert len(code.strip().splitlines()) <= 10
    namespace: dict[str, object] = {}
    exec(compile(code, str(DOC), "exec"), namespace)
    verify_dcpue = namespace["verify_dcpue"]
    import time

    headers = signing.sign(BODY, SECRET, time.time())
    assert verify_dcpue(BODY, headers, SECRET)  # type: ignore[operator]
    assert not verify_dcpue(BODY + b"x", headers, SECRET)  # type: ignore[operator]
    assert not verify_dcpue(BODY, signing.sign(BODY, SECRET, time.time() - 600), SECRET)  # type: ignore[operator]
