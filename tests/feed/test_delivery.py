"""The feed against the reference receiver running as a real HTTP server on 127.0.0.1 (``dcpue feed receive``).

Accepted with valid signatures at two destinations; tampered, stale, replayed, malformed and foreign
reports refused with the reason; a receiver outage backfilled in order with no duplicates (and the
``FeedUndelivered`` alert fired and resolved through a real webhook); a sender killed with SIGKILL
mid-backfill loses nothing; mutual TLS; the file drop; the CLI.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import pandas as pd
import pytest
import yaml

from dcpue.alerting.config import DeliverySettings, Receiver, Route
from dcpue.alerting.delivery import AlertDelivery
from dcpue.analytics.feed import build_reports, json_schemas
from dcpue.feed.cli import _drain
from dcpue.feed.config import FeedSettings, TlsSettings
from dcpue.feed.sender import FeedService
from dcpue.feed.signing import canonical_json, sign
from tests.helpers.feed import (
    API_KEY,
    END_MS,
    SECRET,
    START,
    TZ,
    ReceiverProcess,
    engine_windows,
    filled_store,
    fleet,
    write_keys,
    write_registry,
)
from tests.peers.webhook import webhook_receiver

pytestmark = pytest.mark.integration

TYPES = ("realtime", "hourly", "daily")
WINDOW_OF = {"realtime": "15m", "hourly": "1h", "daily": "1d"}


def expected_ids() -> set[str]:
    w = engine_windows()
    sites = {s.id: s for s in fleet().sites}
    ids = set()
    for t in TYPES:
        rows = w[w["window"] == WINDOW_OF[t]]
        ids |= {r["report_id"] for r in build_reports(t, rows, sites, tz=TZ, generated_ms=END_MS)}
    return ids


def destination(name: str, receiver: ReceiverProcess, **extra: object) -> dict[str, object]:
    return {"name": name, "url": f"{receiver.url}/api/v1/reports", "api_key": API_KEY, "secret": SECRET,
            "max_per_minute": 1_000_000, "burst": 1000, "backoff_max_s": 0.3, **extra}


def settings(tmp_path: Path, *destinations: dict[str, object], **extra: object) -> FeedSettings:
    return FeedSettings.model_validate({"enabled": True, "reports": list(TYPES), "destinations": list(destinations),
                                        "outbox_path": str(tmp_path / "outbox.sqlite"), "start": "2024-07-14",
                                        "interval_s": 0.1, **extra})


def in_period_order(received: list[dict[str, object]]) -> bool:
    ends = [pd.Timestamp(r["report"]["period"]["end"]).value for r in received]  # type: ignore[index]
    return ends == sorted(ends)


@pytest.fixture
def receivers(tmp_path: Path) -> Iterator[tuple[ReceiverProcess, ReceiverProcess]]:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = ReceiverProcess(tmp_path / "a").start()
    b = ReceiverProcess(tmp_path / "b", write_keys(tmp_path / "b" / "keys.yaml",
                                                   {"api_key": API_KEY, "secret": SECRET,
                                                    "algorithms": ["hmac-sm3"]}))
    try:
        b.start()
        yield a, b
    finally:
        a.stop()
        b.stop()


def test_every_report_reaches_two_destinations_once_in_order_with_the_engine_figures(tmp_path, receivers):
    primary, backup = receivers
    store = filled_store(tmp_path / "store.sqlite")
    cfg = settings(tmp_path, destination("primary", primary), destination("backup", backup, algorithm="hmac-sm3"))
    service = FeedService(cfg, store, fleet(), tz=TZ)
    service.open()
    try:
        result = service.tick()
        _drain(service, 120)
        status = service.status()
    finally:
        service.stop()
        store.close()
    ids = expected_ids()
    assert result.reports == {"realtime": 2 * 192, "hourly": 2 * 48, "daily": 2 * 2}
    assert result.enqueued == 2 * len(ids)
    for peer in (primary, backup):
        got = peer.received()
        received = got["reports"]
        assert {r["report"]["report_id"] for r in received} == ids
        assert len(received) == len(ids)
        assert got["answers"] == {"accepted": len(ids)}
        assert in_period_order(received)
    # what the platform stored is what the engine computed for that window
    w = engine_windows()
    day = next(r["report"] for r in primary.received(report_type="daily")["reports"])
    row = w[(w["window"] == "1d") & (w["id"] == day["site"]["site_id"])
            & (w["start_ms"] == pd.Timestamp(day["period"]["start"]).value // 1_000_000)].iloc[0]
    assert day["figures"]["pue"] == row["pue"] and day["figures"]["energy_kwh"]["it"] == row["it_kwh"]
    assert all(d["pending"] == 0 and d["failed"] == 0 and not d["overdue"] for d in status["destinations"])


def _post(receiver: ReceiverProcess, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{receiver.url}/api/v1/reports", content=body,
                      headers={"Content-Type": "application/json", **headers}, timeout=10)


def test_the_receiver_refuses_tampered_stale_replayed_malformed_and_foreign_reports(tmp_path):
    sites = {s.id: s for s in fleet().sites}
    w = engine_windows()
    first, second = fleet().sites
    keys = write_keys(tmp_path / "keys.yaml", {"api_key": API_KEY, "secret": SECRET},
                      {"api_key": "site-two-only", "secret": "other", "sites": [second.platform_site_code]})
    report = build_reports("hourly", w[(w["window"] == "1h") & (w["id"] == first.id)].iloc[[0]], sites, tz=TZ,
                           generated_ms=END_MS)[0]
    body = canonical_json(report)

    def signed(b: bytes, key: str = API_KEY, secret: str = SECRET, now: float | None = None) -> dict[str, str]:
        return sign(b, secret=secret, api_key=key, now=time.time() if now is None else now,
                    report_id=report["report_id"])

    with ReceiverProcess(tmp_path, keys) as peer:
        ok_headers = signed(body)
        assert _post(peer, body, ok_headers).status_code == 201
        replay = _post(peer, body, ok_headers)
        assert replay.status_code == 401 and "already used" in replay.json()["detail"]
        again = _post(peer, body, signed(body))  # a resend: new nonce, same content
        assert again.status_code == 200 and again.json()["status"] == "duplicate"
        # the same period's report made again a day later (a lost outbox, a second sender): other generated_at
        # and timeliness, same figures: a duplicate, not a conflict
        remade = build_reports("hourly", w[(w["window"] == "1h") & (w["id"] == first.id)].iloc[[0]], sites, tz=TZ,
                               generated_ms=END_MS + 86_400_000)[0]
        assert remade["generated_at"] != report["generated_at"]
        remade_body = canonical_json(remade)
        assert _post(peer, remade_body, signed(remade_body)).json()["status"] == "duplicate"
        pue = json.dumps(report["figures"]["pue"]).encode()
        assert pue in body
        tampered = _post(peer, body.replace(pue, b"1.1", 1), signed(body))  # signed, then the PUE changed
        assert tampered.status_code == 401 and "does not match" in tampered.json()["detail"]
        stale = _post(peer, body, signed(body, now=time.time() - 600))
        assert stale.status_code == 401 and "stale" in stale.json()["detail"]
        assert _post(peer, body, signed(body, key="nobody")).status_code == 401
        changed = json.loads(body)
        changed["figures"]["pue"] = 1.0
        conflict = canonical_json(changed)
        answer = _post(peer, conflict, signed(conflict))
        assert answer.status_code == 409 and answer.json()["status"] == "conflict"
        broken = json.loads(body)
        del broken["figures"]["energy_kwh"]
        broken_body = canonical_json(broken)
        answer = _post(peer, broken_body, signed(broken_body))
        assert answer.status_code == 422 and "energy_kwh" in answer.json()["detail"]
        wrong_id = json.loads(body)
        wrong_id["report_id"] = wrong_id["report_id"].replace("hourly", "daily")
        wrong_body = canonical_json(wrong_id)
        answer = _post(peer, wrong_body, signed(wrong_body))
        assert answer.status_code == 422 and "should be" in answer.json()["detail"]
        answer = _post(peer, body, signed(body, key="site-two-only", secret="other"))
        assert answer.status_code == 403 and first.platform_site_code in answer.json()["detail"]
        assert _post(peer, b"{not json", signed(b"{not json")).status_code == 400
        deep = b"[" * 100_000 + b"]" * 100_000  # valid JSON that Python's parser cannot nest
        answer = _post(peer, deep, signed(deep))
        assert answer.status_code == 400 and "nested too deeply" in answer.json()["detail"]
        for field, value in (("start", "the day after tomorrow"), ("start", "2024-13-45T00:00:00+08:00"),
                             ("timezone", "Mars/Olympus_Mons")):
            odd = json.loads(body)
            odd["period"][field] = value
            odd_body = canonical_json(odd)
            answer = _post(peer, odd_body, signed(odd_body))
            # the schema's date-time format is checked where jsonschema has a format checker installed
            detail = answer.json()["detail"]
            assert answer.status_code == 422 and detail.startswith(("period:", "schema hourly: period/")), detail
        unsigned = _post(peer, body, {"X-Api-Key": API_KEY})
        assert unsigned.status_code == 401 and "unsigned" in unsigned.json()["detail"]
        got = peer.received()
        assert [r["report"] for r in got["reports"]] == [report]  # only the first, unchanged
        assert got["answers"]["accepted"] == 1 and got["answers"]["duplicate"] == 2 and got["answers"]["conflict"] == 1
        assert httpx.get(f"{peer.url}/api/v1/reports", timeout=5).status_code == 401


def test_a_day_long_receiver_outage_is_backfilled_in_order_without_duplicates_and_alerts(tmp_path):
    windows = engine_windows()
    store = filled_store(tmp_path / "store.sqlite", windows.iloc[:0])
    peer = ReceiverProcess(tmp_path)  # not started: the platform is down
    cfg = settings(tmp_path, destination("primary", peer, alert_after_s=1.0))
    with webhook_receiver() as hook:
        alerts = AlertDelivery([Receiver(name="oncall", url=hook.url + "/alerts")], [Route(receivers=("oncall",))],
                               DeliverySettings(outbox_path=str(tmp_path / "alerts.sqlite"), poll_interval_s=0.05,
                                                group_by=())).start()
        service = FeedService(cfg, store, fleet(), tz=TZ, alerts=alerts.notify, backoff_base_s=0.05).start()
        try:
            # the engine finalises windows hour by hour; the first simulated day goes by with the platform down
            hours = sorted(set(windows["end_ms"]))
            day1 = [h for h in hours if h <= int(START.value // 1_000_000) + 86_400_000]
            for end in day1:
                store.write_windows(windows[windows["end_ms"] == end])
            deadline = time.monotonic() + 30
            while service.outbox.counts()["pending"] < 2 * (96 + 24 + 1) and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(1.2)  # past alert_after_s
            fired = hook.wait_for(1, timeout_s=10)
            assert "FeedUndelivered" in fired[0].body.decode() and '"firing"' in fired[0].body.decode()
            status = service.status()["destinations"][0]
            assert status["overdue"] and status["delivered"] == 0 and "ConnectError" in (status["last_error"] or "")
            peer.start()
            for end in hours[len(day1):]:  # the second day arrives while the backlog drains
                store.write_windows(windows[windows["end_ms"] == end])
            ids = expected_ids()
            deadline = time.monotonic() + 120
            while service.outbox.counts()["delivered"] < len(ids) and time.monotonic() < deadline:
                time.sleep(0.1)
            resolved = hook.wait_for(2, timeout_s=15)
            assert '"resolved"' in resolved[1].body.decode()
        finally:
            service.stop()
            alerts.stop()
            peer.stop()
            store.close()
    peer.start()
    try:
        got = peer.received()
    finally:
        peer.stop()
    received = got["reports"]
    assert {r["report"]["report_id"] for r in received} == ids and len(received) == len(ids)
    assert got["answers"] == {"accepted": len(ids)}
    assert in_period_order(received)


def _write_config(tmp_path: Path, peer: ReceiverProcess, **feed: object) -> Path:
    cfg = {"registry": str(write_registry(tmp_path / "sites.yaml")),
           "store": {"path": str(tmp_path / "store.sqlite")},
           "engine": {"timezone": TZ},
           "feed": {"enabled": True, "reports": list(TYPES), "start": "2024-07-14", "interval_s": 0.2,
                    "outbox_path": str(tmp_path / "outbox.sqlite"),
                    "destinations": [destination("primary", peer)], **feed}}
    path = tmp_path / "dcpue.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def _dcpue(*args: str) -> list[str]:
    return [sys.executable, "-m", "dcpue.cli", *args]


def test_a_sender_killed_mid_backfill_loses_nothing_and_duplicates_nothing(tmp_path):
    filled_store(tmp_path / "store.sqlite").close()
    peer = ReceiverProcess(tmp_path).start()
    try:
        # a slow platform link (80 reports/s) so the kill lands mid-backfill
        config = _write_config(tmp_path, peer, destinations=[destination("primary", peer, max_per_minute=4800,
                                                                         burst=1)])
        with open(tmp_path / "send.log", "wb") as log:
            proc = subprocess.Popen(_dcpue("feed", "send", "--config", str(config)), stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while len(peer.received()["reports"]) < 60 and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        before = len(peer.received()["reports"])
        ids = expected_ids()
        assert 60 <= before < len(ids), (tmp_path / "send.log").read_text()[-2000:]
        done = subprocess.run(_dcpue("feed", "send", "--once", "--max-seconds", "120", "--config", str(config)),
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "pending      0" in done.stdout and "failed    0" in done.stdout
        got = peer.received()
    finally:
        peer.stop()
    received = got["reports"]
    assert {r["report"]["report_id"] for r in received} == ids and len(received) == len(ids)
    assert got["answers"].get("conflict", 0) == 0 and got["answers"].get("duplicate", 0) <= 1  # ≤ 1 in flight
    assert in_period_order(received)


def test_file_drop_writes_each_final_day_once_as_json_and_csv(tmp_path):
    store = filled_store(tmp_path / "store.sqlite")
    drop = tmp_path / "drop"
    cfg = FeedSettings.model_validate({"enabled": True, "reports": ["daily"], "file_drop": {"directory": str(drop)},
                                       "outbox_path": str(tmp_path / "outbox.sqlite"), "start": "2024-07-14"})
    service = FeedService(cfg, store, fleet(), tz=TZ).open()
    try:
        first = service.sender.run_once()
        again = service.sender.run_once()
    finally:
        service.stop()
        store.close()
    assert first.files == 4 and again.files == 0 and again.enqueued == 0
    validators = {name: jsonschema.Draft202012Validator(schema) for name, schema in json_schemas().items()}
    for site in fleet().sites:
        for day in ("2024-07-14", "2024-07-15"):
            reports = json.loads((drop / site.platform_site_code / f"{day}.json").read_text(encoding="utf-8"))
            assert [r["report_type"] for r in reports].count("realtime") == 96
            assert [r["report_type"] for r in reports].count("hourly") == 24
            assert reports[-1]["report_type"] == "daily" and reports[-1]["period"]["start"].startswith(day)
            for r in reports:
                validators[r["report_type"]].validate(r)
            csv_text = (drop / site.platform_site_code / f"{day}.csv").read_text(encoding="utf-8").splitlines()
            assert len(csv_text) == 1 + 121 and csv_text[0].startswith("report_id,report_type,site_code")
    assert not list(drop.rglob(".*.tmp"))


def _tls_material(tmp_path: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all from that CA (cryptography)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = key()
    ca = (x509.CertificateBuilder().subject_name(name("test platform CA")).issuer_name(name("test platform CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    out = {"ca": tmp_path / "ca.pem"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for who, usage, san in (("server", ExtendedKeyUsageOID.SERVER_AUTH, True),
                            ("client", ExtendedKeyUsageOID.CLIENT_AUTH, False)):
        k = key()
        builder = (x509.CertificateBuilder().subject_name(name(f"test {who}")).issuer_name(ca.subject)
                   .public_key(k.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                  critical=False))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(
                ipaddress.ip_address("127.0.0.1"))]), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        out[f"{who}_cert"] = tmp_path / f"{who}.pem"
        out[f"{who}_key"] = tmp_path / f"{who}.key"
        out[f"{who}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[f"{who}_key"].write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
    return out


def test_mutual_tls_delivers_with_a_client_certificate_and_refuses_without(tmp_path):
    tls = _tls_material(tmp_path)
    store = filled_store(tmp_path / "store.sqlite")
    mutual = {"ca_file": str(tls["ca"]), "cert_file": str(tls["client_cert"]), "key_file": str(tls["client_key"])}
    peer = ReceiverProcess(tmp_path, scheme="https", tls=TlsSettings.model_validate(mutual),
                           extra=("--tls-cert", str(tls["server_cert"]), "--tls-key", str(tls["server_key"]),
                                  "--tls-client-ca", str(tls["ca"]))).start()
    try:
        cfg = FeedSettings.model_validate({
            "enabled": True, "reports": ["daily"], "outbox_path": str(tmp_path / "outbox.sqlite"),
            "start": "2024-07-14",
            "destinations": [destination("mutual", peer, tls=mutual),
                             destination("no-client-cert", peer, tls={"ca_file": str(tls["ca"])}),
                             destination("untrusted", peer)]})
        service = FeedService(cfg, store, fleet(), tz=TZ, backoff_base_s=0.05).open()
        try:
            service.tick()
            _drain(service, 3)
            status = {d["name"]: d for d in service.status()["destinations"]}
        finally:
            service.stop()
        assert status["mutual"]["delivered"] == 4 and status["mutual"]["pending"] == 0
        for name in ("no-client-cert", "untrusted"):
            assert status[name]["delivered"] == 0 and status[name]["pending"] == 4, status[name]
        assert "CERTIFICATE_VERIFY_FAILED" in status["untrusted"]["last_error"]
        assert len(peer.received()["reports"]) == 4
    finally:
        peer.stop()
        store.close()


def test_cli_status_and_bad_feed_config(tmp_path):
    filled_store(tmp_path / "store.sqlite").close()
    peer = ReceiverProcess(tmp_path)  # never started: everything stays pending
    config = _write_config(tmp_path, peer)
    back = subprocess.run(_dcpue("feed", "backfill", "--since", "2024-07-15", "--type", "daily", "--no-send",
                                 "--config", str(config)), capture_output=True, text=True, timeout=120)
    assert back.returncode == 0, back.stderr
    assert "2 reports built, 2 queued" in back.stdout
    status = subprocess.run(_dcpue("feed", "status", "--format", "json", "--config", str(config)),
                            capture_output=True, text=True, timeout=120)
    data = json.loads(status.stdout)
    primary = data["destinations"][0]
    assert primary["pending"] == 2 and primary["next_report"].endswith(".daily.20240715")
    table = subprocess.run(_dcpue("feed", "status", "--config", str(config)), capture_output=True, text=True,
                           timeout=120)
    assert table.returncode == 1 and "pending      2" in table.stdout
    bad = yaml.safe_load(config.read_text())
    bad["feed"]["destinations"][0]["url"] = "http://platform.example.gov.cn/reports"
    config.write_text(yaml.safe_dump(bad), encoding="utf-8")
    refused = subprocess.run(_dcpue("feed", "status", "--config", str(config)), capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 2
    assert "feed.destinations.0" in refused.stderr and "only over HTTPS" in refused.stderr
