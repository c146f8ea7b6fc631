"""Feed signatures: SM3 against the standard's vectors, HMAC-SM3 against its definition, every rejection."""

from __future__ import annotations

import hashlib
import json

import pytest

from dcpue.feed import signing
from dcpue.feed.signing import SignatureError, canonical_json, sign, signature, sm3_hex, verify

BODY = canonical_json({"report_id": "S.daily.20240714", "figures": {"pue": 1.19, "名称": "贵安"}})
NOW = 1_764_082_210.0


def test_sm3_matches_the_gb_t_32905_examples():
    # GB/T 32905-2016 Appendix A: "abc" and "abcd" × 16
    assert sm3_hex(b"abc") == "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
    assert sm3_hex(b"abcd" * 16) == "debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732"


def _hmac_by_definition(key: bytes, msg: bytes) -> str:
    """RFC 2104 HMAC with SM3 (64-byte blocks), written out: H((K ⊕ opad) ‖ H((K ⊕ ipad) ‖ m))."""
    def h(data: bytes) -> bytes:
        return bytes.fromhex(sm3_hex(data))
    key = key.ljust(64, b"\0") if len(key) <= 64 else h(key).ljust(64, b"\0")
    inner = h(bytes(b ^ 0x36 for b in key) + msg)
    return h(bytes(b ^ 0x5C for b in key) + inner).hex()


@pytest.mark.parametrize("secret", ["k", "a-secret-longer-than-one-block-" * 4])
def test_hmac_sm3_is_rfc_2104_over_timestamp_nonce_and_body(secret):
    got = signature(BODY, secret, 1700000000, "abcdef0123456789", "hmac-sm3")
    message = b"1700000000\nabcdef0123456789\n" + BODY
    assert got == "hmac-sm3=" + _hmac_by_definition(secret.encode(), message)
    import hmac as _hmac
    assert signature(BODY, secret, 1700000000, "abcdef0123456789") == (
        "hmac-sha256=" + _hmac.new(secret.encode(), message, hashlib.sha256).hexdigest())


def test_canonical_json_sorts_keys_keeps_unicode_and_refuses_nan():
    assert canonical_json({"b": 1, "a": [1.5, "贵"]}) == '{"a":[1.5,"贵"],"b":1}'.encode()
    assert json.loads(BODY) == {"report_id": "S.daily.20240714", "figures": {"pue": 1.19, "名称": "贵安"}}
    with pytest.raises(ValueError):
        canonical_json({"pue": float("nan")})


@pytest.mark.parametrize("algorithm", signing.ALGORITHMS)
def test_a_signed_request_verifies_and_every_tampering_is_refused(algorithm):
    seen: set[str] = set()

    def nonce_seen(nonce: str, _ts: int) -> bool:
        if nonce in seen:
            return True
        seen.add(nonce)
        return False

    headers = sign(BODY, secret="s3cret", api_key="key", now=NOW, report_id="S.daily.20240714", algorithm=algorithm)
    assert headers["Idempotency-Key"] == "S.daily.20240714" and headers["X-Api-Key"] == "key"
    assert verify(BODY, headers, "s3cret", NOW + 10, nonce_seen=nonce_seen) == (int(NOW), headers[signing.NONCE_HEADER])
    with pytest.raises(SignatureError, match="already used"):  # the same request again
        verify(BODY, headers, "s3cret", NOW + 11, nonce_seen=nonce_seen)
    fresh = sign(BODY, secret="s3cret", api_key="key", now=NOW, report_id="x", algorithm=algorithm)
    with pytest.raises(SignatureError, match="does not match"):
        verify(BODY.replace(b"1.19", b"1.09"), fresh, "s3cret", NOW)
    with pytest.raises(SignatureError, match="does not match"):
        verify(BODY, fresh, "another", NOW)
    with pytest.raises(SignatureError, match=r"-301 s from the receiver's clock"):
        verify(BODY, fresh, "s3cret", NOW - 301)
    with pytest.raises(SignatureError, match=r"\+301 s"):
        verify(BODY, fresh, "s3cret", NOW + 301)
    verify(BODY, fresh, ["old-key", "s3cret"], NOW + 300)  # key rotation: either key; the window edge is inside
    lower = {k.lower(): v for k, v in fresh.items()}
    verify(BODY, lower, "s3cret", NOW)  # header names are case-insensitive
    with pytest.raises(SignatureError, match="missing X-Dcpue-Feed-Signature"):
        verify(BODY, {k: v for k, v in fresh.items() if k != signing.SIGNATURE_HEADER}, "s3cret", NOW)
    only = "hmac-sha256" if algorithm == "hmac-sm3" else "hmac-sm3"
    with pytest.raises(SignatureError, match="not accepted here"):
        verify(BODY, fresh, "s3cret", NOW, algorithms=(only,))
    with pytest.raises(SignatureError, match="not a unix time"):
        verify(BODY, {**fresh, signing.TIMESTAMP_HEADER: "yesterday"}, "s3cret", NOW)


def test_a_new_nonce_on_every_attempt():
    nonces = {sign(BODY, secret="s", api_key=None, now=NOW, report_id="r")[signing.NONCE_HEADER] for _ in range(50)}
    assert len(nonces) == 50
    assert signing.API_KEY_HEADER not in sign(BODY, secret="s", api_key=None, now=NOW, report_id="r")
