"""MQTT collector: payload decoding against a table of cases, then a real Mosquitto with paho publishing."""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml

from dcpue.errors import CollectorError
from dcpue.ingest.device import DeviceReader, FieldValue
from dcpue.ingest.mqtt import (
    DROPPED_FIELD,
    MALFORMED_FIELD,
    MqttDeviceConfig,
    MqttReader,
    MqttSubscription,
    field_name,
    parse_path,
    parse_payload,
    parse_time,
    topic_matches,
)
from dcpue.model import Quality
from tests.peers.mqtt import MqttBroker, mosquitto, restartable_mosquitto
from tests.servers import _missing, free_port, unique_name

__all__ = ["mosquitto", "restartable_mosquitto"]  # fixtures, imported for pytest

META = {DROPPED_FIELD, MALFORMED_FIELD}


# --- decoding: pure functions against hand-checked cases -------------------------------------------------


def _json(value_path: str, time_path: str | None = None) -> MqttSubscription:
    return MqttSubscription(topic="t", field="f", format="json", value_path=value_path, time_path=time_path)


NUMBER = MqttSubscription(topic="t", field="f")

GOOD_CASES = [
    (NUMBER, b"23.5", 23.5, None),
    (NUMBER, b" -4e3\n", -4000.0, None),
    (_json("$.data.power"), b'{"data": {"power": 1234.5}}', 1234.5, None),
    (_json("data.power"), b'{"data": {"power": 7}}', 7.0, None),
    (_json("$.phases[1].w"), b'{"phases": [{"w": 1}, {"w": 2}]}', 2.0, None),
    (_json("$.phases[-1].w"), b'{"phases": [{"w": 1}, {"w": 3}]}', 3.0, None),
    (_json("$['odd key'].v"), b'{"odd key": {"v": 5}}', 5.0, None),
    (_json("$"), b"42", 42.0, None),
    (_json("$.v"), b'{"v": "230.1"}', 230.1, None),  # numbers sent as strings are common
    (_json("$.on"), b'{"on": true}', 1.0, None),
    (_json("$.v", "$.ts"), b'{"v": 1, "ts": 1700000000}', 1.0, 1_700_000_000_000),
    (_json("$.v", "$.ts"), b'{"v": 1, "ts": 1700000000123}', 1.0, 1_700_000_000_123),
    (_json("$.v", "$.ts"), b'{"v": 1, "ts": 1700000000.5}', 1.0, 1_700_000_000_500),
    (_json("$.v", "$.ts"), b'{"v": 1, "ts": "1700000000"}', 1.0, 1_700_000_000_000),
    (_json("$.v", "$.ts"), b'{"v": 1, "ts": 1700000000123456}', 1.0, 1_700_000_000_123),
    (_json("$.v", "$.ts"), b'{"v": 1, "ts": "2024-05-01T12:00:00Z"}', 1.0, 1_714_564_800_000),
    (_json("$.v", "$.ts"), b'{"v": 1, "ts": "2024-05-01T20:00:00.250+08:00"}', 1.0, 1_714_564_800_250),
    (_json("$.v", "$.ts"), b'{"v": 1, "ts": "2024-05-01 12:00:00"}', 1.0, 1_714_564_800_000),  # naive: UTC
]

BAD_CASES = [
    (NUMBER, b"abc", "not a number"),
    (NUMBER, b"", "not a number"),
    (NUMBER, b"nan", "not finite"),
    (NUMBER, b"-Infinity", "not finite"),
    (NUMBER, b"\xff\xfe", "not UTF-8"),
    (_json("$.data.power"), b"{not json", "not JSON"),
    (_json("$.data.power"), b'{"data": {"pow": 1}}', "$.data has no key 'power'"),
    (_json("$.data.power"), b'{"data": [1]}', "$.data has no key 'power'"),
    (_json("$.p[2]"), b'{"p": [1, 2]}', "$.p has no item [2]"),
    (_json("$.v"), b'{"v": null}', "is null"),
    (_json("$.v"), b'{"v": {"a": 1}}', "is an object"),
    (_json("$.v"), b'{"v": "n/a"}', "'n/a', not a number"),
    (_json("$.v"), b'{"v": NaN}', "not finite"),
    (_json("$.v"), b'{"v": 1e999}', "not finite"),
    (_json("$.v", "$.ts"), b'{"v": 1}', "$ has no key 'ts'"),
    (_json("$.v", "$.ts"), b'{"v": 1, "ts": "yesterday"}', "neither epoch"),
    (_json("$.v", "$.ts"), b'{"v": 1, "ts": 3600}', "outside 2000..2100"),  # uptime, clock never set
]


@pytest.mark.parametrize(("sub", "payload", "value", "ts_ms"), GOOD_CASES)
def test_parse_payload_good(sub, payload, value, ts_ms):
    assert parse_payload(sub, payload) == (pytest.approx(value), ts_ms)


@pytest.mark.parametrize(("sub", "payload", "reason"), BAD_CASES)
def test_parse_payload_bad(sub, payload, reason):
    with pytest.raises(ValueError) as err:
        parse_payload(sub, payload)
    assert reason in str(err.value)


def test_paths_topics_and_field_templates():
    assert parse_path("$") == ()
    assert parse_path("$.a.b[0]['c d']") == ("a", "b", 0, "c d")
    assert parse_path("a.b") == parse_path("$.a.b") == ("a", "b")
    with pytest.raises(ValueError, match="invalid JSON path"):
        parse_path("$.a[x]")
    assert topic_matches("dc/+/rack/+/inlet", "dc/bj1/rack/A01/inlet")
    assert not topic_matches("dc/+/rack/+/inlet", "dc/bj1/rack/A01/inlet/x")
    assert topic_matches("dc/#", "dc") and topic_matches("dc/#", "dc/a/b")
    assert not topic_matches("#", "$SYS/broker/uptime") and topic_matches("$SYS/#", "$SYS/broker/uptime")
    assert field_name("rack_{3}_inlet_temp_c", "dc/bj1/rack/A01/inlet") == "rack_A01_inlet_temp_c"
    assert field_name("{1}_{3}", "dc/bj 1/rack/A+01") == "bj_1_A_01"  # odd characters become _
    assert field_name("{topic}", "dc/bj1/p") == "dc_bj1_p"
    assert field_name("x_{5}", "dc/a") is None
    assert parse_time(1_700_000_000) == 1_700_000_000_000


def _config(**kw) -> MqttDeviceConfig:
    base = {"name": "pdu-1", "site": "bj1", "host": "127.0.0.1", "subscriptions": [{"topic": "a/b", "field": "x"}]}
    return MqttDeviceConfig.model_validate(base | kw)


def test_config_defaults_and_errors():
    cfg = _config()
    assert (cfg.port, cfg.qos, cfg.clean_session, cfg.client_id) == (1883, 1, False, "dcpue-bj1-pdu-1")
    assert _config(tls=True).port == 8883 and _config(qos=0).clean_session is True
    assert isinstance(cfg.make_reader(), DeviceReader)
    for bad, message in [
        ({"subscriptions": [{"topic": "a/#/b", "field": "x"}]}, "'#' must be a whole level and the last"),
        ({"subscriptions": [{"topic": "a/b+", "field": "x"}]}, "'+' must be a whole level"),
        ({"subscriptions": [{"topic": "a/+", "field": "x_{2}"}]}, "has levels 0..1"),
        ({"subscriptions": [{"topic": "a/+", "field": "x_{name}"}]}, "placeholders are {n}"),
        ({"subscriptions": [{"topic": "a", "field": "x", "format": "json"}]}, "needs value_path"),
        ({"subscriptions": [{"topic": "a", "field": "x", "time_path": "$.t"}]}, "need format 'json'"),
        ({"subscriptions": [{"topic": "a", "field": "x", "unit": "Watt"}]}, "accepted: '', '%'"),
        ({"subscriptions": []}, "at least 1"),
        ({"password": "pw"}, "password given without username"),
        ({"ca_file": "/x.pem"}, "need tls: true"),
        ({"protocol": "modbus"}, "'mqtt'"),
    ]:
        with pytest.raises(ValueError) as err:
            _config(**bad)
        assert message in str(err.value), str(err.value)
    assert "pw" not in repr(_config(username="u", password="pw"))


def test_from_url():
    cfg = MqttDeviceConfig.from_url("mqtt://u%40x:p%3Aw@broker.lan:1884/dc/+/pdu/#?value_path=$.power&unit=W",
                                    timeout_s=2)
    assert (cfg.host, cfg.port, cfg.username, cfg.password.get_secret_value()) == ("broker.lan", 1884, "u@x", "p:w")
    sub = cfg.subscriptions[0]
    assert (sub.topic, sub.format, sub.value_path, sub.unit, sub.field) == ("dc/+/pdu/#", "json", "$.power", "W",
                                                                           "{topic}")
    assert cfg.clean_session and cfg.client_id.startswith("dcpue-probe-") and cfg.read_wait_s == 2
    assert MqttDeviceConfig.from_url("mqtts://h/a%2Fb").port == 8883
    with pytest.raises(ValueError, match="unknown query keys") as err:
        MqttDeviceConfig.from_url("mqtt://u:hunter2@h/t?valu_path=$.x")
    assert "hunter2" not in str(err.value)
    with pytest.raises(ValueError, match="no topic filter"):
        MqttDeviceConfig.from_url("mqtt://h:1883")
    # probing a configured device must not take over (and drain) the collector's persistent session
    configured = _config(username="u", password="pw", timeout_s=2)
    probe = configured.for_probe()
    assert probe.client_id != configured.client_id and probe.clean_session and probe.read_wait_s == 2
    assert (probe.subscriptions, probe.password) == (configured.subscriptions, configured.password)


def test_documented_example_is_valid():
    text = (Path(__file__).parents[2] / "docs" / "collectors" / "mqtt.md").read_text()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    (entry,) = yaml.safe_load(block)["devices"]
    cfg = MqttDeviceConfig.model_validate(entry)
    rack, ups_w, *_ = cfg.subscriptions
    assert field_name(rack.field, "dc/gy01/rack/A01/inlet/top") == "rack_A01_inlet_top_temp_c"
    payload = b'{"ts": 1767225600, "data": {"out_w": 41250.5, "batt": [97]}}'
    assert parse_payload(ups_w, payload) == (41250.5, 1_767_225_600_000)
    assert [parse_payload(s, payload)[0] for s in cfg.subscriptions[1:3]] == [41250.5, 97.0]
    flow = cfg.subscriptions[3]
    assert parse_payload(flow, b'{"flow": "183.4", "time": "2026-01-01T08:00:00+08:00"}') == (183.4, 1_767_225_600_000)


# --- against Mosquitto ----------------------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0, what: str = "condition") -> None:
    """Poll ``condition`` every 10 ms until it holds; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.01)


def collect(reader: MqttReader, count: int, timeout_s: float = 5.0) -> list[FieldValue]:
    """Read until ``count`` device values (not the counters) have arrived."""
    got: list[FieldValue] = []

    def enough() -> bool:
        got.extend(v for v in reader.read() if v.field not in META)
        return len(got) >= count

    wait_until(enough, timeout_s, f"{count} values (have {len(got)})")
    return got


class Publisher:
    """A paho client publishing to the broker; every publish waits for the broker's PUBACK (QoS 1)."""

    def __init__(self, host: str, port: int) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=unique_name("pub"))
        self.client.connect(host, port)
        self.client.loop_start()

    def __call__(self, topic: str, payload: str | bytes, qos: int = 1, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def publish(mosquitto: MqttBroker) -> Iterator[Publisher]:
    pub = Publisher(mosquitto.host, mosquitto.port)
    yield pub
    pub.close()


@pytest.fixture
def root() -> str:
    """A topic prefix no other test uses (the broker is shared by the session)."""
    return unique_name("dcpue")


def device(port: int, subscriptions: list[dict], **kw) -> MqttDeviceConfig:
    return MqttDeviceConfig.model_validate({"name": unique_name("dev"), "site": "bj1", "host": "127.0.0.1",
                                            "port": port, "timeout_s": 3, "subscriptions": subscriptions} | kw)


@pytest.fixture
def opened() -> Iterator[Callable[[MqttDeviceConfig], MqttReader]]:
    """Open readers and close them all at the end."""
    readers: list[MqttReader] = []

    def make(cfg: MqttDeviceConfig) -> MqttReader:
        reader = cfg.make_reader()
        reader.open()
        readers.append(reader)
        return reader

    yield make
    for reader in readers:
        reader.close()


@pytest.mark.integration
def test_number_payloads_with_topic_segment_fields(mosquitto, publish, root, opened):
    reader = opened(device(mosquitto.port, [
        {"topic": f"{root}/+/rack/+/inlet", "field": "rack_{3}_inlet_temp_c", "unit": "°C"},
        {"topic": f"{root}/+/pdu/+/power", "field": "{1}_pdu_{3}_power_kw", "unit": "kW"},
    ]))
    assert reader.connected and reader.session_present is False
    before = time.time_ns() // 1_000_000
    publish(f"{root}/hall1/rack/A01/inlet", "23.5")
    publish(f"{root}/hall1/rack/A02/inlet", b"24")
    publish(f"{root}/hall2/pdu/P7/power", "3.25")
    publish(f"{root}/hall2/other/P7/power", "99")  # matches no subscription
    values = collect(reader, 3)
    assert [(v.field, v.value, v.unit, v.quality) for v in values] == [
        ("rack_A01_inlet_temp_c", 23.5, "°C", Quality.GOOD),
        ("rack_A02_inlet_temp_c", 24.0, "°C", Quality.GOOD),
        ("hall2_pdu_P7_power_kw", 3.25, "kW", Quality.GOOD),
    ]
    assert all(before <= v.ts_ms <= time.time_ns() // 1_000_000 for v in values)  # arrival time
    last = reader.read()
    assert [(v.field, v.value) for v in last] == [(DROPPED_FIELD, 0.0), (MALFORMED_FIELD, 0.0)]


@pytest.mark.integration
def test_json_payloads_with_value_and_time_paths(mosquitto, publish, root, opened):
    topic = f"{root}/ups/1/state"
    reader = opened(device(mosquitto.port, [  # two fields from one payload: two subscriptions, same topic
        {"topic": topic, "field": "output_power_w", "format": "json", "value_path": "$.data.power",
         "time_path": "$.ts", "unit": "W"},
        {"topic": topic, "field": "battery_pct", "format": "json", "value_path": "data.batt[0]", "unit": "%"},
    ]))
    publish(topic, '{"data": {"power": 1234.5, "batt": [97]}, "ts": 1714564800}')
    publish(topic, '{"data": {"power": 1200, "batt": [96]}, "ts": "2024-05-01T12:00:10.5Z"}')
    values = collect(reader, 4)
    assert [(v.field, v.value, v.unit, v.ts_ms) for v in values[::2]] == [
        ("output_power_w", 1234.5, "W", 1_714_564_800_000),
        ("output_power_w", 1200.0, "W", 1_714_564_810_500),
    ]
    assert [(v.field, v.value, v.unit) for v in values[1::2]] == [("battery_pct", 97.0, "%"),
                                                                  ("battery_pct", 96.0, "%")]
    assert values[1].ts_ms > 1_714_564_810_500  # no time_path: arrival time


@pytest.mark.integration
def test_malformed_payloads_are_bad_nan_and_kept_with_reason(mosquitto, publish, root, opened):
    reader = opened(device(mosquitto.port, [
        {"topic": f"{root}/n/+", "field": "n_{2}", "unit": "W"},
        {"topic": f"{root}/j/#", "field": "j_{3}", "format": "json", "value_path": "$.v", "unit": "W"},
    ], malformed_keep=3))
    for topic, payload in [(f"{root}/n/a", "abc"), (f"{root}/n/b", "NaN"), (f"{root}/j/x/y", '{"w": 1}'),
                           (f"{root}/j/x", '{"v": 5}'), (f"{root}/n/c", "7")]:
        publish(topic, payload)
    values = collect(reader, 4)
    assert [(v.field, v.quality) for v in values] == [
        ("n_a", Quality.BAD), ("n_b", Quality.BAD), ("j_y", Quality.BAD), ("n_c", Quality.GOOD)]
    assert all(math.isnan(v.value) for v in values[:3]) and values[3].value == 7.0
    # the 4th malformed payload has no field: its topic lacks level 3; kept, and the oldest of 4 makes room
    kept = reader.malformed()
    assert [(m.topic.removeprefix(root), m.field) for m in kept] == [("/n/b", "n_b"), ("/j/x/y", "j_y"), ("/j/x", None)]
    assert "not finite" in kept[0].reason and "$ has no key 'v'" in kept[1].reason and "no level" in kept[2].reason
    assert kept[1].payload == b'{"w": 1}' and reader.malformed_total == 4
    letters = reader.take_malformed()
    assert [reason for reason, _ in letters] == [m.reason for m in kept]
    assert letters[1][1] == {"topic": f"{root}/j/x/y", "field": "j_y", "ts": kept[1].received_ms, "payload": '{"w": 1}'}
    assert reader.take_malformed() == [] and len(reader.malformed()) == 3  # taken once; still shown
    assert {v.field: v.value for v in reader.read()}[MALFORMED_FIELD] == 4.0


@pytest.mark.integration
def test_messages_published_while_closed_arrive_with_persistent_session(mosquitto, publish, root, opened):
    cfg = device(mosquitto.port, [{"topic": f"{root}/p", "field": "p_w", "unit": "W"}])
    first = opened(cfg)
    publish(f"{root}/p", "1")
    assert [v.value for v in collect(first, 1)] == [1.0]
    first.close()
    for value in ("2", "3", "4"):  # nobody connected: the broker queues them in the session
        publish(f"{root}/p", value)
    second = opened(cfg)  # same client_id, clean_session false
    assert second.session_present is True
    assert [v.value for v in collect(second, 3)] == [2.0, 3.0, 4.0]
    # a clean session is the opposite: what was published while away is gone
    clean = device(mosquitto.port, cfg.model_dump()["subscriptions"], clean_session=True)
    opened(clean).close()
    publish(f"{root}/p", "5")
    again = opened(clean)
    assert again.session_present is False
    publish(f"{root}/p", "6")
    assert [v.value for v in collect(again, 1)] == [6.0]


@pytest.mark.integration
def test_broker_restart_returns_buffered_then_raises_then_delivers_queued(restartable_mosquitto):
    broker = restartable_mosquitto
    topic = unique_name("dcpue") + "/p"
    cfg = device(broker.port, [{"topic": topic, "field": "p_w", "unit": "W"}], reconnect_min_s=2, timeout_s=2)
    reader = cfg.make_reader()
    reader.open()
    try:
        pub = Publisher(broker.host, broker.port)
        pub(topic, "1")
        pub.close()
        wait_until(lambda: reader.buffered == 1, what="the first message")
        broker.stop()
        wait_until(lambda: not reader.connected, what="the reader to notice the broker is gone")
        assert [v.value for v in reader.read() if v.field not in META] == [1.0]  # arrived before: returned first
        with pytest.raises(CollectorError) as err:
            reader.read()
        message = str(err.value)
        assert cfg.name in message and f"127.0.0.1:{broker.port}" in message and "lost" in message

        broker.start()  # same port, same persistence file: the reader's session is still there
        pub = Publisher(broker.host, broker.port)
        for value in ("2", "3"):
            pub(topic, value)
        pub.close()
        assert not reader.connected  # proven queued by the broker, not delivered live (first retry after 2 s)
        wait_until(lambda: reader.connected, timeout_s=8, what="the automatic reconnect")
        assert reader.session_present is True
        assert [v.value for v in collect(reader, 2)] == [2.0, 3.0]
    finally:
        reader.close()


@pytest.mark.integration
def test_wrong_password_is_a_clear_collector_error(mosquitto, root):
    sub = [{"topic": f"{root}/p", "field": "p"}]
    good = device(mosquitto.auth_port, sub, username=mosquitto.username, password=mosquitto.password)
    with good.make_reader() as reader:
        assert reader.connected
    for kw, expected in [({"username": mosquitto.username, "password": "wrong-pw"},
                          "not authorised: bad user name or password"),
                         ({}, "not authorised: anonymous login refused")]:
        cfg = device(mosquitto.auth_port, sub, **kw)
        reader = cfg.make_reader()
        with pytest.raises(CollectorError) as err:
            reader.open()
        message = str(err.value)
        assert expected in message and cfg.name in message and f"127.0.0.1:{mosquitto.auth_port}" in message
        assert "wrong-pw" not in message
        assert not reader.connected
        with pytest.raises(CollectorError, match="not open"):
            reader.read()


@pytest.mark.integration
def test_refused_port_is_a_clear_collector_error():
    port = free_port()
    cfg = device(port, [{"topic": "a", "field": "a"}])
    reader = cfg.make_reader()
    started = time.monotonic()
    with pytest.raises(CollectorError) as err:
        reader.open()
    assert time.monotonic() - started < 2
    assert str(err.value) == (f"MQTT device {cfg.name!r} (site 'bj1'): broker 127.0.0.1:{port} unreachable: "
                              "connection refused")
    reader.close()
    reader.close()  # idempotent


def test_silent_peer_times_out_within_timeout_s():
    with socket.socket() as silent:  # accepts TCP (kernel backlog) but never answers CONNECT
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        cfg = device(silent.getsockname()[1], [{"topic": "a", "field": "a"}], timeout_s=0.5)
        started = time.monotonic()
        with pytest.raises(CollectorError, match=r"did not answer within 0.5 s"):
            cfg.make_reader().open()
        assert time.monotonic() - started < 1.5


@pytest.mark.integration
def test_full_buffer_drops_oldest_and_counts(mosquitto, publish, root, opened):
    reader = opened(device(mosquitto.port, [{"topic": f"{root}/p", "field": "p"}], buffer_size=5))
    for i in range(12):
        publish(f"{root}/p", str(i))
    wait_until(lambda: reader.dropped == 7, what="7 drops")
    values = reader.read()
    assert [v.value for v in values if v.field == "p"] == [7.0, 8.0, 9.0, 10.0, 11.0]
    assert {v.field: v.value for v in values}[DROPPED_FIELD] == 7.0


@pytest.mark.integration
def test_retained_replays_and_probe_url(mosquitto, publish, root, opened):
    publish(f"{root}/a", "1.5", retain=True)
    publish(f"{root}/b", '{"v": 2.5, "ts": 1714564800}', retain=True)
    # a collector skips a retained replay (its arrival time is not its measurement time) unless it is timed
    reader = opened(device(mosquitto.port, [
        {"topic": f"{root}/a", "field": "a"},
        {"topic": f"{root}/b", "field": "b", "format": "json", "value_path": "$.v", "time_path": "$.ts"}]))
    assert [(v.field, v.value, v.ts_ms) for v in collect(reader, 1)] == [("b", 2.5, 1_714_564_800_000)]
    wait_until(lambda: reader.read() is not None and reader.retained_skipped == 1, what="the skipped replay")
    # dcpue probe: a throwaway session that shows what is there, retained or not, for timeout_s
    probe = MqttDeviceConfig.from_url(f"mqtt://127.0.0.1:{mosquitto.port}/{root}/#?unit=W", timeout_s=0.5)
    started = time.monotonic()
    with probe.make_reader() as reader:
        values = reader.read()
    assert 0.5 <= time.monotonic() - started < 3
    got = {v.field: v for v in values if v.field not in META}
    assert got[f"{root}_a"].value == 1.5 and got[f"{root}_a"].unit == "W"
    assert got[f"{root}_b"].quality == Quality.BAD  # a JSON payload read as a plain number
    for topic in ("a", "b"):  # clear the retained messages
        publish(f"{root}/{topic}", b"", retain=True)


@pytest.mark.integration
def test_tls_verifies_the_broker_certificate(mosquitto, root, opened):
    if mosquitto.tls_port is None:
        _missing("openssl (Debian `openssl`, for the TLS listener's certificate)")
    sub = [{"topic": f"{root}/p", "field": "p_w", "unit": "W"}]
    reader = opened(device(mosquitto.tls_port, sub, tls=True, ca_file=mosquitto.ca_file))
    pub = Publisher(mosquitto.host, mosquitto.port)  # plain listener, same broker
    pub(f"{root}/p", "12.5")
    pub.close()
    assert [v.value for v in collect(reader, 1)] == [12.5]
    with pytest.raises(CollectorError, match="TLS certificate not accepted"):
        opened(device(mosquitto.tls_port, sub, tls=True))  # the system CAs do not know the self-signed one
    assert opened(device(mosquitto.tls_port, sub, tls=True, verify_tls=False)).connected
