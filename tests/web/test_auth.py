"""Token authentication: the settings (digests only, no anonymous non-loopback API), the token checks, the
tokens file and the middleware, on a real uvicorn server on 127.0.0.1 where it matters."""

from __future__ import annotations

import hmac
import logging
import os
import threading
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from dcpue.errors import ConfigError
from dcpue.runtime.embedded import serve_http
from dcpue.settings import HttpSettings, load_settings
from dcpue.web import auth as auth_module
from dcpue.web.app import create_app
from dcpue.web.auth import TokenAuth, hash_token, is_loopback

from .serving import LiveServer

TOKEN = "correct-horse-battery-staple"
OTHER = "second-token-for-the-noc"
# SHA-256 of "abc" (FIPS 180-2, appendix B.1)
ABC_DIGEST = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


@pytest.fixture(autouse=True)
def _no_dcpue_env(monkeypatch):
    for name in [n for n in os.environ if n.startswith("DCPUE_")]:
        monkeypatch.delenv(name)


def test_hash_token_is_the_sha256_hex_digest():
    assert hash_token("abc") == hash_token(b"abc") == ABC_DIGEST
    assert hash_token("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


# -- settings -----------------------------------------------------------------------------------------------

def test_settings_take_digests_lower_cased_also_from_the_environment(monkeypatch, tmp_path):
    assert load_settings(None, http={"tokens": [ABC_DIGEST.upper()]}).http.tokens == (ABC_DIGEST,)
    monkeypatch.setenv("DCPUE_HTTP__TOKENS", f'["{ABC_DIGEST}", "{hash_token(TOKEN)}"]')
    assert load_settings(None).http.tokens == (ABC_DIGEST, hash_token(TOKEN))
    config = tmp_path / "dcpue.yaml"
    config.write_text(f"http:\n  host: 0.0.0.0\n  tokens:\n    - {ABC_DIGEST}\n")
    monkeypatch.delenv("DCPUE_HTTP__TOKENS")
    assert load_settings(config).http.tokens == (ABC_DIGEST,)
    # a lone digest in the environment, as a compose file or Secret gives it, also when it is all decimal digits
    monkeypatch.setenv("DCPUE_HTTP__TOKENS", ABC_DIGEST)
    assert load_settings(None).http.tokens == (ABC_DIGEST,)
    monkeypatch.setenv("DCPUE_HTTP__TOKENS", "1" * 64)
    assert load_settings(None).http.tokens == ("1" * 64,)


def test_a_plaintext_token_in_the_settings_is_refused_without_echoing_it():
    with pytest.raises(ConfigError) as err:
        load_settings(None, http={"tokens": [ABC_DIGEST, TOKEN]})
    text = str(err.value)
    assert "field 'http.tokens'" in text and "http.tokens[1] is not a SHA-256 hex digest" in text
    assert "sha256sum" in text and TOKEN not in text


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "dcpue.example.net", ""])
def test_a_non_loopback_host_without_tokens_is_refused_naming_http_tokens(host):
    with pytest.raises(ConfigError) as err:
        load_settings(None, http={"host": host})
    text = str(err.value)
    assert "field 'http'" in text and "http.tokens" in text and "http.tokens_file" in text
    assert "http.allow_anonymous" in text and repr(host) in text


def test_the_host_from_the_environment_is_checked_too(monkeypatch):
    monkeypatch.setenv("DCPUE_HTTP__HOST", "0.0.0.0")
    with pytest.raises(ConfigError, match="http.tokens"):
        load_settings(None)
    monkeypatch.setenv("DCPUE_HTTP__ALLOW_ANONYMOUS", "true")
    assert load_settings(None).http.allow_anonymous


@pytest.mark.parametrize("http", [
    {"host": "0.0.0.0", "tokens": [ABC_DIGEST]},
    {"host": "0.0.0.0", "tokens_file": "/run/secrets/dcpue-tokens"},  # read when the server starts
    {"host": "0.0.0.0", "allow_anonymous": True},
    {"host": "127.0.0.1"}, {"host": "127.3.2.1"}, {"host": "::1"}, {"host": "[::1]"}, {"host": "localhost"},
])
def test_allowed_combinations(http):
    assert load_settings(None, http=http).http.host == http["host"]


def test_loopback_addresses():
    assert all(map(is_loopback, ["127.0.0.1", "127.255.0.9", "::1", "[::1]", "localhost", "LOCALHOST."]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.0.0.1", "example.org", "", "127.0.0.1.nip.io"]))


# -- tokens and the tokens file -----------------------------------------------------------------------------

def test_every_accepted_digest_is_compared_without_early_exit(monkeypatch):
    calls: list[tuple[str, str]] = []
    compare = hmac.compare_digest

    def counting(a, b):
        calls.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(auth_module.hmac, "compare_digest", counting)
    auth = TokenAuth([hash_token(TOKEN), hash_token(OTHER), ABC_DIGEST])
    assert auth.verify(TOKEN) and auth.verify(OTHER) and auth.verify("abc")
    assert not auth.verify("wrong") and not auth.verify("")
    assert len(calls) == 5 * 3  # each check compares with all three, the first match included


def test_tokens_file_is_read_at_start_and_again_when_it_changes(tmp_path, caplog):
    path = tmp_path / "tokens"
    path.write_text(f"# NOC\n{hash_token(TOKEN)}  -\n\n{hash_token(OTHER).upper()} grafana # comment\n")
    auth = TokenAuth.from_settings(HttpSettings(tokens_file=path))
    assert auth is not None and auth.verify(TOKEN) and auth.verify(OTHER)

    path.write_text(f"{hash_token(OTHER)}\n")  # TOKEN revoked
    _touch_later(path)
    assert not auth.verify(TOKEN) and auth.verify(OTHER)

    with caplog.at_level(logging.ERROR, logger="dcpue.web.auth"):
        path.write_text(f"{hash_token(OTHER)}\n{OTHER}\n")  # a token pasted instead of its digest
        _touch_later(path)
        assert not auth.verify(OTHER)  # fail closed until the file is fixed
    assert "line 2 is not a SHA-256 hex digest" in caplog.text and OTHER not in caplog.text

    path.unlink()
    assert not auth.verify(OTHER)
    path.write_text(f"{hash_token(TOKEN)}\n")
    assert auth.verify(TOKEN)


def test_tokens_in_the_settings_stay_valid_whatever_the_file_says(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"{hash_token(OTHER)}\n")
    auth = TokenAuth.from_settings(HttpSettings(tokens=(hash_token(TOKEN),), tokens_file=path))
    path.unlink()
    assert auth.verify(TOKEN) and not auth.verify(OTHER)


def test_an_unusable_tokens_file_fails_at_start_naming_file_and_line(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(ConfigError, match=f"http.tokens_file '{missing}' cannot be read"):
        TokenAuth.from_settings(HttpSettings(tokens_file=missing))
    bad = tmp_path / "bad"
    bad.write_text(f"{ABC_DIGEST}\n{TOKEN}\n")
    with pytest.raises(ConfigError, match=r"line 2 is not a SHA-256 hex digest") as err:
        TokenAuth.from_settings(HttpSettings(tokens_file=bad))
    assert TOKEN not in str(err.value)
    empty = tmp_path / "empty"
    empty.write_text("# nobody yet\n")
    with pytest.raises(ConfigError, match="holds no token digest"):
        TokenAuth.from_settings(HttpSettings(tokens_file=empty))


def test_no_tokens_means_no_authentication():
    assert TokenAuth.from_settings(HttpSettings()) is None


def _touch_later(path: Path) -> None:
    """Make sure the rewrite is seen even on a file system with coarse modification times."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


# -- the app ----------------------------------------------------------------------------------------------

@pytest.fixture
def secured(store, registry, engine_settings, status_info):
    app = create_app(store, registry, engine_settings, status=lambda: status_info,
                     auth=TokenAuth([hash_token(TOKEN), hash_token(OTHER)]))
    with LiveServer(app) as server:
        yield server.url


@pytest.mark.integration
def test_the_api_answers_only_with_an_accepted_token(secured):
    with httpx.Client(base_url=secured, timeout=10) as client:
        for headers in ({"Authorization": f"Bearer {TOKEN}"}, {"authorization": f"bearer  {OTHER}"},
                        {"X-Api-Key": TOKEN}):
            r = client.get("/api/v1/sites", headers=headers)
            assert r.status_code == 200 and len(r.json()["sites"]) == 4, headers
        missing = client.get("/api/v1/sites")
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == 'Bearer realm="dcpue"'
        assert "Authorization: Bearer" in missing.json()["detail"]
        for headers in ({"Authorization": "Bearer nope"}, {"X-Api-Key": "nope"},
                        {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer"}):
            r = client.get("/api/v1/sites", headers=headers)
            assert r.status_code == 401, headers
        wrong = client.get("/api/v1/sites", headers={"Authorization": "Bearer nope"})
        assert wrong.headers["www-authenticate"] == 'Bearer realm="dcpue", error="invalid_token"'
        # refused before routing: an unknown path or a bad parameter tells nothing without a token
        assert client.get("/api/v1/nowhere").status_code == 401
        assert client.get("/api/v1/sites/gy-a/windows?limit=0").status_code == 401
        assert client.post("/api/v1/silences", content=b"not json").status_code == 401
        # open: probes, the page and its assets, the OpenAPI document and its viewer
        for path in ("/healthz", "/readyz", "/", "/static/app.js", "/static/style.css", "/api/openapi.json",
                     "/api/docs"):
            assert client.get(path).status_code == 200, path
        assert client.get("/static/../api/v1/sites").status_code in (401, 404)  # no way around via /static/


def test_the_openapi_document_declares_the_token_and_the_401(store, registry, engine_settings):
    document = TestClient(create_app(store, registry, engine_settings, auth=TokenAuth([ABC_DIGEST]))).get(
        "/api/openapi.json").json()
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKey"]["name"] == "X-Api-Key" and schemes["apiKey"]["in"] == "header"
    for path, item in document["paths"].items():
        for operation in item.values():
            if path in ("/healthz", "/readyz"):
                assert "security" not in operation and "401" not in operation["responses"], path
            else:
                assert operation["security"] == [{"bearer": []}, {"apiKey": []}], path
                assert "401" in operation["responses"], path
    open_document = TestClient(create_app(store, registry, engine_settings)).get("/api/openapi.json").json()
    assert "securitySchemes" not in open_document.get("components", {})


# -- serve_http: what dcpue demo and dcpue serve start ------------------------------------------------------

def _serve(settings, store, registry):
    stop, errors = threading.Event(), []
    server, thread, port = serve_http(settings, store, registry, lambda: {"mode": "test"}, stop, errors)
    assert not errors, errors
    return server, thread, port


@pytest.mark.integration
def test_serve_http_requires_the_configured_tokens(tmp_path, store, registry):
    tokens = tmp_path / "tokens"
    tokens.write_text(hash_token(TOKEN) + "\n")
    settings = load_settings(None, http={"port": 0, "tokens_file": str(tokens)})
    server, thread, port = _serve(settings, store, registry)
    try:
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/api/v1/status", timeout=10).status_code == 401
        assert httpx.get(f"{url}/api/v1/status", headers={"X-Api-Key": TOKEN}, timeout=10).json()["mode"] == "test"
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
    finally:
        server.should_exit = True
        thread.join(10)


def test_serve_http_refuses_a_host_set_past_the_settings_check(store, registry):
    # `dcpue serve --host` replaces the host on the loaded settings, past HttpSettings' own check
    settings = load_settings(None, http={"port": 0})
    exposed = settings.model_copy(update={"http": settings.http.model_copy(update={"host": "0.0.0.0"})})
    with pytest.raises(ConfigError, match="http.tokens"):
        serve_http(exposed, store, registry, dict, threading.Event(), [])
    missing = settings.model_copy(update={"http": settings.http.model_copy(
        update={"tokens_file": Path("/nonexistent/dcpue-tokens")})})
    with pytest.raises(ConfigError, match="cannot be read"):
        serve_http(missing, store, registry, dict, threading.Event(), [])
