"""No secret reaches a log: real ``dcpue`` processes run at DEBUG with every secret they take set through
``DCPUE_*`` variables, the settings file and secret files; their stdout/stderr and every file they write are
searched for each secret value. Each secret is first shown to have reached the process (the API refuses a wrong
token and accepts the right one; the webhook and feed requests verify with their keys; the Kafka client logs its
SASL username and mechanism), so an empty search means something."""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dcpue.alerting import signing as webhook_signing
from dcpue.errors import ConfigError
from dcpue.feed import signing as feed_signing
from dcpue.settings import load_settings
from dcpue.web.auth import hash_token
from tests.servers import Server, stop_process, tansu_broker  # noqa: F401

pytestmark = pytest.mark.integration

DCPUE = str(Path(sys.executable).with_name("dcpue"))
SECRETS = {  # what each secret is → a value no other text contains
    "api_token": "api-TOKEN-7c1e9f",
    "webhook_secret": "webhook-HMAC-3b8d20",
    "feed_api_key": "feed-APIKEY-51aa07",
    "feed_hmac_key": "feed-HMAC-9e4c6d",
    "dingtalk_signing_secret": "SECding-2f7a11",
    "influx_token": "influx-TOKEN-d40c88",
    "kafka_sasl_password": "kafka-SASL-6b91e3",
}
DINGTALK_ACCESS_TOKEN = "ding-ACCESS-0c55b2"  # a chat robot's token travels in its URL


@dataclass
class Capture(http.server.ThreadingHTTPServer):
    """Records every POST (path, headers, body) and answers 200 with a body the robots' clients accept."""

    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        capture = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                capture.requests.append((self.path, dict(self.headers), body))
                payload = b'{"errcode":0,"code":0,"ok":true}'
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        super().__init__(("127.0.0.1", 0), Handler)


def _scan(texts: dict[str, str], values: list[str]) -> list[str]:
    return [f"{value!r} in {where}" for where, text in texts.items() for value in values if value in text]


def _written_files(workdir: Path, ours: set[Path]) -> dict[str, str]:
    """Every file the process wrote under ``workdir`` (stores, outboxes, logs), as text."""
    return {str(p): p.read_bytes().decode("utf-8", "replace") for p in sorted(workdir.rglob("*"))
            if p.is_file() and p not in ours}


@dataclass
class DemoRun:
    output: dict[str, str]
    requests: list[tuple[str, dict[str, str], bytes]]
    api_status: dict[str, int]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    """``dcpue demo`` at DEBUG for a few seconds with alert receivers, the feed and API tokens configured."""
    work = tmp_path_factory.mktemp("demo")
    capture = Capture()
    threading.Thread(target=capture.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{capture.server_address[1]}"
    (work / "feed-api-key").write_text(SECRETS["feed_api_key"] + "\n")
    (work / "feed-hmac").write_text(SECRETS["feed_hmac_key"] + "\n")
    (work / "api-tokens").write_text(hash_token(SECRETS["api_token"]) + "  # ops\n")
    (work / "webhook-key").write_text(SECRETS["webhook_secret"] + "\n")
    config = {
        "http": {"tokens_file": str(work / "api-tokens")},
        "alerts": {
            "receivers": [
                {"name": "noc", "kind": "webhook", "url": f"{base}/hook", "secret_file": str(work / "webhook-key")},
                {"name": "ding", "kind": "dingtalk", "url": f"{base}/robot/send?access_token={DINGTALK_ACCESS_TOKEN}",
                 "secret": SECRETS["dingtalk_signing_secret"]},
            ],
            "routes": [{"receivers": ["noc", "ding"]}],
            "delivery": {"outbox_path": str(work / "alert-outbox.sqlite")},
        },
        "feed": {"enabled": True, "interval_s": 1, "outbox_path": str(work / "feed-outbox.sqlite"),
                 "destinations": [{"name": "province", "url": f"{base}/reports",
                                   "api_key_file": str(work / "feed-api-key"),
                                   "secret_file": str(work / "feed-hmac")}]},
    }
    (work / "dcpue.yaml").write_text(json.dumps(config))  # JSON is YAML
    env = {k: v for k, v in os.environ.items() if not k.startswith("DCPUE_")}
    env.update(DCPUE_LOG_LEVEL="DEBUG", DCPUE_STORE__INFLUXDB__TOKEN=SECRETS["influx_token"],
               DCPUE_BUS__KAFKA__SASL_MECHANISM="SCRAM-SHA-512", DCPUE_BUS__KAFKA__SASL_USERNAME="dcpue",
               DCPUE_BUS__KAFKA__SASL_PASSWORD=SECRETS["kafka_sasl_password"])
    ours = {work / n for n in ("feed-api-key", "feed-hmac", "webhook-key", "api-tokens", "dcpue.yaml", "stdout",
                               "stderr")}
    with open(work / "stdout", "wb") as out, open(work / "stderr", "wb") as err:
        proc = subprocess.Popen([DCPUE, "demo", "--config", str(work / "dcpue.yaml"), "--duration", "5", "--port", "0",
                                 "--quiet", "--store", str(work / "dcpue.sqlite")],
                                cwd=work, env=env, stdout=out, stderr=err)
        try:
            deadline = time.monotonic() + 30
            while not (m := re.search(r"live page at (http://\S+/)", (work / "stdout").read_text())):
                assert proc.poll() is None and time.monotonic() < deadline, (work / "stderr").read_text()[-3000:]
                time.sleep(0.1)
            status = {}
            for name, token in (("none", None), ("wrong", "api-TOKEN-wrong"), ("right", SECRETS["api_token"])):
                request = urllib.request.Request(m.group(1) + "api/v1/fleet",
                                                 headers={"Authorization": f"Bearer {token}"} if token else {})
                try:
                    with urllib.request.urlopen(request, timeout=10) as resp:
                        status[name] = resp.status
                except urllib.error.HTTPError as exc:
                    status[name] = exc.code
            assert proc.wait(40) == 0, (work / "stderr").read_text()[-3000:]
        finally:
            stop_process(proc)
            capture.shutdown()
    output = {"stdout": (work / "stdout").read_text(), "stderr": (work / "stderr").read_text(),
              **_written_files(work, ours)}
    yield DemoRun(output, list(capture.requests), status)


def test_demo_secrets_reached_the_process(demo_run: DemoRun) -> None:
    assert demo_run.api_status == {"none": 401, "wrong": 401, "right": 200}
    assert "level=DEBUG" in demo_run.output["stderr"]  # the log level took effect
    now = time.time()
    hooks = [(h, b) for p, h, b in demo_run.requests if p == "/hook"]
    assert hooks, "no webhook was delivered: cannot show the webhook secret was used"
    for headers, body in hooks:
        webhook_signing.check(body, headers, SECRETS["webhook_secret"], now, tolerance_s=120)
    reports = [(h, b) for p, h, b in demo_run.requests if p == "/reports"]
    assert reports, "no feed report was delivered: cannot show the feed keys were used"
    for headers, body in reports:
        assert feed_signing.header(headers, feed_signing.API_KEY_HEADER) == SECRETS["feed_api_key"]
        feed_signing.verify(body, headers, SECRETS["feed_hmac_key"], now, tolerance_s=120)
    assert any(p.startswith("/robot/send?access_token=") and "&sign=" in p for p, _, _ in demo_run.requests)


def test_demo_logs_and_files_hold_no_secret(demo_run: DemoRun) -> None:
    assert not _scan(demo_run.output, list(SECRETS.values()))


def test_demo_logs_hold_no_robot_access_token(demo_run: DemoRun) -> None:
    """httpx logs every request URL; a robot's token is in its query, which the CLI's log filter blanks."""
    assert "/robot/send?<redacted>" in demo_run.output["stderr"]  # the request was logged, without its query
    assert not _scan({k: demo_run.output[k] for k in ("stdout", "stderr")}, [DINGTALK_ACCESS_TOKEN])


def test_topics_create_at_debug_does_not_log_the_sasl_password(tansu_broker: Server, tmp_path: Path) -> None:  # noqa: F811
    """kafka-python's admin client logs its whole configuration at DEBUG; the adapter blanks the password.
    (Tansu refuses every SASL mechanism, so the process is stopped once its SCRAM handshake was logged.)"""
    password = SECRETS["kafka_sasl_password"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DCPUE_")}
    env.update(DCPUE_LOG_LEVEL="DEBUG", DCPUE_BUS__KAFKA__SECURITY_PROTOCOL="SASL_PLAINTEXT",
               DCPUE_BUS__KAFKA__SASL_MECHANISM="SCRAM-SHA-512", DCPUE_BUS__KAFKA__SASL_USERNAME="dcpue-topics",
               DCPUE_BUS__KAFKA__SASL_PASSWORD=password)
    log = tmp_path / "stderr"
    with open(log, "wb") as err:
        proc = subprocess.Popen([DCPUE, "topics", "create", "--kafka", tansu_broker.bootstrap_servers], cwd=tmp_path,
                                env=env, stdout=err, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 20
            while "mechanism='SCRAM-SHA-512'" not in log.read_text(errors="replace"):
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.1)
        finally:
            stop_process(proc)
    text = log.read_text(errors="replace")
    # the SASL settings reached the real client, and it logged its configuration
    assert "Starting KafkaAdminClient with configuration" in text
    assert "'sasl_plain_username': 'dcpue-topics'" in text
    assert password not in text
    assert "'sasl_plain_password': '**********'" in text


def test_settings_repr_dump_and_errors_hide_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("DCPUE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DCPUE_STORE__INFLUXDB__TOKEN", SECRETS["influx_token"])
    monkeypatch.setenv("DCPUE_BUS__KAFKA__SASL_PASSWORD", SECRETS["kafka_sasl_password"])
    config = tmp_path / "dcpue.yaml"
    receivers = [{"name": "noc", "url": "https://noc.example/hook", "secret": SECRETS["webhook_secret"]}]
    feed = {"destinations": [{"name": "p", "url": "https://platform.example/r", "api_key": SECRETS["feed_api_key"],
                              "secret": SECRETS["feed_hmac_key"]}]}
    config.write_text(json.dumps({"alerts": {"receivers": receivers}, "feed": feed}))
    settings = load_settings(config)
    assert settings.bus.kafka.sasl_password.get_secret_value() == SECRETS["kafka_sasl_password"]
    assert settings.store.influxdb.token.get_secret_value() == SECRETS["influx_token"]
    shown = {"repr": repr(settings), "str": str(settings), "dump": repr(settings.model_dump()),
             "json": settings.model_dump_json()}
    assert not _scan(shown, list(SECRETS.values()))
    # a settings error next to the secrets, and a raw token pasted where its digest belongs
    monkeypatch.setenv("DCPUE_HTTP__TOKENS", SECRETS["api_token"])
    monkeypatch.setenv("DCPUE_BUS__KAFKA__SECURITY_PROTOCOL", "SASL_TLS")
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    message = str(caught.value)
    assert "http.tokens" in message and "security_protocol" in message
    assert not _scan({"error": message}, list(SECRETS.values()))
