"""Alerts on the distributed path, as separate processes on a real broker and a real webhook receiver.

`dcpue analyze` evaluates the rules of its sites and publishes events on the alerts topic; `dcpue notify`
delivers them; `dcpue serve` shows them and publishes a silence that the workers apply. The worker is
SIGKILLed right after it published a firing: its successor restores the sites' alert state from the
state topic and replays, and the receiver still gets that firing once and its resolve once, each
under one idempotency key.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from dcpue.adapters.kafka import KafkaProducerAdapter, connection_config
from dcpue.ingest.poller import DeviceHealth
from dcpue.ingest.simulator import FleetSimulator, generate_fleet
from dcpue.registry import dump_registry
from dcpue.settings import Settings
from dcpue.wire import encode_frame
from tests.peers.webhook import webhook_receiver
from tests.servers import distributed_env, stop_process, tansu_broker, unique_name  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MIN = 60_000
DAY = 86_400_000
SECRET = "distributed-secret"
REGISTRY = generate_fleet(4, seed=7)


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "dcpue.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=log.open("wb"), text=True)


def wait_for(condition, timeout_s: float, what: str, logs: dict[str, Path] = {}) -> None:  # noqa: ANN001, B006
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {n}:\n{p.read_text(errors='replace')[-3000:]}" for n, p in logs.items()
                              if p.exists())
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}\n{tails}")
        time.sleep(0.2)


class AlertsTopic:
    """Every record of the alerts topic so far (from the start, all partitions)."""

    def __init__(self, settings: Settings) -> None:
        import kafka

        self.consumer = kafka.KafkaConsumer(**connection_config(settings.bus.kafka), enable_auto_commit=False,
                                            group_id=None)
        topic = settings.bus.topics.alerts
        tps = [kafka.TopicPartition(topic, p) for p in sorted(self.consumer.partitions_for_topic(topic))]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self.records: list[dict] = []

    def read(self) -> list[dict]:
        for records in self.consumer.poll(timeout_ms=300, max_records=5000).values():
            self.records += [json.loads(r.value) for r in records]
        return self.records

    def close(self) -> None:
        self.consumer.close(autocommit=False)


def test_alerts_survive_a_killed_worker_reach_the_receiver_once_and_obey_a_silence(tansu_broker, tmp_path):  # noqa: F811
    prefix = unique_name("alerts")
    start_ms = (int(time.time() * 1000) // DAY - 2) * DAY  # two days ago, 00:00 UTC: nothing is "in the future"
    sites_file = tmp_path / "sites.yaml"
    sites_file.write_text(dump_registry(REGISTRY), encoding="utf-8")
    config = tmp_path / "dcpue.yaml"
    # readings arrive 15 simulated minutes per producer flush: a flush whose first partition reaches the worker
    # a step before the other makes the other's sites look silent for 15 min. As `dcpue demo` does at speed,
    # "no data" waits three such steps, so only a real silence (none here) raises it
    config.write_text(json.dumps({"alerts": {  # JSON is YAML
        "no_data_after_s": 3 * 15 * 60,
        "water_class": "W40",
        "receivers": [{"name": "noc", "url": "http://127.0.0.1:{port}/hook", "secret": SECRET}],
        "routes": [{"receivers": ["noc"]}],
        "delivery": {"outbox_path": str(tmp_path / "outbox.sqlite"), "poll_interval_s": 0.1, "group_by": []},
    }}), encoding="utf-8")
    env = distributed_env(prefix, partitions=2, DCPUE_BUS__COMMIT_INTERVAL_S="5",
                          DCPUE_STORE__PATH=str(tmp_path / "analyze.sqlite"))
    topics = {k[len("DCPUE_BUS__TOPICS__"):].lower(): v for k, v in env.items() if k.startswith("DCPUE_BUS__TOPICS__")}
    settings = Settings(bus={"kind": "kafka", "topics": topics,
                             "kafka": {"bootstrap_servers": tansu_broker.bootstrap_servers, "partitions": 2}})
    common = ["--kafka", tansu_broker.bootstrap_servers, "--registry", str(sites_file), "--config", str(config)]

    with webhook_receiver(secret=SECRET) as hook:
        config.write_text(config.read_text().replace("{port}", hook.url.rsplit(":", 1)[1]), encoding="utf-8")
        created = subprocess.run([sys.executable, "-m", "dcpue.cli", "topics", "create", *common], env=env,
                                 capture_output=True, text=True, timeout=60)
        assert created.returncode == 0, created.stderr
        logs = {name: tmp_path / f"{name}.log" for name in ("analyze", "analyze2", "notify", "serve")}
        procs = {
            "analyze": start(["analyze", *common], env, logs["analyze"]),
            "notify": start(["notify", *common, "--history", str(tmp_path / "history.sqlite"), "--metrics-port", "0"],
                            env, logs["notify"]),
            "serve": start(["serve", *common, "--port", "0", "--store", str(tmp_path / "view.sqlite")], env,
                           logs["serve"]),
        }
        topic = AlertsTopic(settings)
        try:
            api = procs["serve"].stdout.readline().split(" at ", 1)[1].split(" ", 1)[0] + "api/v1"
            metrics_url = procs["notify"].stdout.readline().split(" at ", 1)[1].strip()
            # a silence set through the API, for the site whose aisle will run hot
            silence = httpx.post(f"{api}/silences", timeout=10, json={
                "matchers": [["site", "=", "tr-02"]], "starts_at_ms": start_ms, "ends_at_ms": start_ms + 7 * DAY,
                "created_by": "test", "comment": "containment work"})
            assert silence.status_code == 201, silence.text
            wait_for(lambda: "assigned partitions [0, 1]" in logs["analyze"].read_text(errors="replace"), 60,
                     "the worker to own both partitions", logs)

            sim = FleetSimulator(REGISTRY, seed=7, start_ms=start_ms, sample_interval_s=60, faults=False)
            sim.inject("ga-01", None, "cooling_degraded", start_ms + 60 * MIN, duration_s=2 * 3600, magnitude=3.5)
            sim.inject("tr-02", None, "hot_aisle", start_ms + 60 * MIN, duration_s=90 * 60, magnitude=13.0)
            sim.setup()
            producer = KafkaProducerAdapter(settings.bus.kafka).setup()
            killed = False
            for minute in range(15, 6 * 60 + 1, 15):
                now = start_ms + minute * MIN
                for site, frame in sim.poll(now):
                    producer.send(topics["readings"], encode_frame(site, frame), key=site)
                for m in range(minute - 14, minute + 1):  # a PDU of gy-04 unreachable from minute 30 to 44
                    up = not 30 <= m < 45
                    record = DeviceHealth("pdu-7", "modbus", "gy-04", up=up, consecutive_failures=0 if up else m - 29,
                                          last_error=None if up else "timed out").record("gy-col", start_ms + m * MIN)
                    producer.send(topics["health"], json.dumps(record).encode(), key="gy-col/pdu-7")
                producer.flush()
                time.sleep(0.3)
                if not killed and minute >= 150:
                    fired = lambda: any(r["site"] == "ga-01" and r["alertname"] == "PueAboveTarget"  # noqa: E731
                                        for r in topic.read())
                    wait_for(fired, 60, "ga-01's firing on the alerts topic", logs)
                    procs["analyze"].send_signal(signal.SIGKILL)  # right after publishing: no last checkpoint
                    procs["analyze"].wait(10)
                    procs["analyze2"] = start(["analyze", *common], env, logs["analyze2"])
                    killed = True
            producer.close()

            def resolved() -> bool:
                return any(r.json()["commonLabels"].get("site") == "ga-01" and r.json()["status"] == "resolved"
                           for r in hook.requests)

            wait_for(resolved, 120, "ga-01's resolve at the receiver", logs)
            # a worker's cooling recommendation on its topic reaches `dcpue serve`'s API too
            advice = {"site": "ga-01", "ts_ms": start_ms + 6 * 60 * MIN, "ok": True, "action": "keep",
                      "reason": "keep: …", "current": {"supply_air": 25.0}, "recommended": {"supply_air": 25.0},
                      "model_version": "v1"}
            producer = KafkaProducerAdapter(settings.bus.kafka).setup()
            producer.send(topics["recommendations"], json.dumps(advice).encode(), key="ga-01")
            producer.close()
            wait_for(lambda: httpx.get(f"{api}/recommendations", timeout=10).json()["count"] == 1, 30,
                     "the recommendation in serve's view", logs)
            time.sleep(2.0)  # anything still to come (a duplicate) has time to arrive
            view = httpx.get(f"{api}/alerts", params={"limit": 1000}, timeout=10).json()
            metrics = httpx.get(metrics_url, timeout=10).text
        finally:
            for name in ("analyze2", "notify", "serve"):
                if name in procs:
                    stop_process(procs[name])
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
            records = topic.read()
            topic.close()

        requests = hook.requests
    assert all(r.signature_ok for r in requests)
    keys = [r.header("Idempotency-Key") for r in requests]
    assert len(keys) == len(set(keys)), keys  # nothing delivered twice
    delivered = [(a["labels"]["site"], a["labels"]["alertname"], a["status"], a["startsAt"])
                 for r in requests for a in r.json()["alerts"]]
    ga01 = [d for d in delivered if d[:2] == ("ga-01", "PueAboveTarget")]
    assert [d[2] for d in ga01] == ["firing", "resolved"], delivered
    assert ga01[0][3] == ga01[1][3]  # one episode: the successor resolved the alert its predecessor fired
    pdu = [d[2] for d in delivered if d[:2] == ("gy-04", "CollectorDeviceDown")]
    assert pdu == ["firing", "resolved"], delivered  # health records reached the device rule
    assert not any(name == "NoData" for _, name, *_ in delivered), delivered  # every site reported throughout
    assert not any(site == "tr-02" for site, *_ in delivered)  # silenced through the API …
    hot = [r for r in records if r["site"] == "tr-02" and r["family"] == "safety"]
    assert hot and all(r["silenced"] for r in hot)  # … and applied by the workers, which still record them

    # on the alerts topic a replayed event has the key it had: one key per (fingerprint, sequence)
    by_event: dict[tuple[str, int], set[str]] = {}
    for r in records:
        by_event.setdefault((r["fingerprint"], r["sequence"]), set()).add(r["idempotency_key"])
    assert all(len(k) == 1 for k in by_event.values()), by_event
    restored = procs["analyze2"].stdout.read() if procs["analyze2"].stdout else ""
    assert "sites restored" in restored, restored

    # notify's Prometheus endpoint counts what the receiver got
    sent = [line for line in metrics.splitlines() if line.startswith("dcpue_alert_deliveries_total{")
            and 'outcome="sent"' in line and 'receiver="noc"' in line]
    assert sent and float(sent[0].rsplit(" ", 1)[1]) == len(requests), sent

    # `dcpue serve` shows what the workers published
    assert {(e["site"], e["alertname"], e["status"]) for e in view["events"]} >= {
        ("ga-01", "PueAboveTarget", "firing"), ("ga-01", "PueAboveTarget", "resolved")}
    assert not any(a["labels"]["site"] == "ga-01" and a["labels"]["alertname"] == "PueAboveTarget"
                   for a in view["active"])
