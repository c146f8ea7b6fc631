"""`dcpue collect --config` reading one real device per protocol into a real Kafka-protocol broker.

Peers, all on 127.0.0.1: a pymodbus server (a power meter), snmpsim serving the real Eaton 9PX
recording (a UPS), sushy-static serving the DMTF public-rackmount1 mockup (a server BMC) and
Mosquitto (rack sensors); plus a device whose port refuses connections and one that accepts and never
answers. The healthy devices must keep their own pace, the broken ones must be reported clearly, and
what is published must be in the registry's units.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from dcpue.model import Quality
from dcpue.registry import load_registry
from tests.ingest.test_collect_outage import readings_of, topic_values
from tests.peers.modbus import encode_value, run_modbus_server, silent_tcp_server
from tests.peers.mqtt import mosquitto
from tests.peers.redfish import rackmount1_mockup, rackmount1_server
from tests.peers.snmp import parse_snmprec, run_snmpsim, standard_recordings
from tests.servers import distributed_env, free_port, tansu_broker, unique_name

__all__ = ["mosquitto", "rackmount1_server", "tansu_broker"]  # fixtures
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

SITE = "lab-1"
POWER_W, ENERGY_KWH, VOLTAGE_V = 123_456.0, 1000.5, 231.5
XUPS_OUTPUT_WATTS_1 = "1.3.6.1.4.1.534.1.4.4.1.4.1"


def registry_file(path: Path) -> Path:
    def point(pid: str, role: str, quantity: str, unit: str, **extra: object) -> dict[str, object]:
        return {"id": pid, "role": role, "quantity": quantity, "unit": unit, **extra}

    site = {
        "id": SITE, "name": "Collector lab", "city": "Guiyang", "latitude": 26.6, "longitude": 106.7,
        "commissioned": 2015, "racks_installed": 10, "racks_in_service": 8, "design_it_kw": 100.0,
        "cooling": "air",
        "points": [
            point("facility.power", "facility", "power", "kW", source="revenue_meter", boundary="grid"),
            point("facility.energy", "facility", "energy", "kWh", source="revenue_meter", boundary="grid-e"),
            point("it.ups", "it", "power", "kW", source="ups", it_category=1),
            point("it.servers", "it", "power", "W", source="bmc", it_category=3),
            point("it.dead-pdu", "it", "power", "kW", source="pdu", it_category=2, boundary="pdu-a"),
            point("it.hung-pdu", "it", "power", "kW", source="pdu", it_category=2, boundary="pdu-b"),
            point("cool.crah", "cooling", "power", "kW", cooling_subsystem="crah"),
            point("sensor.bmc-inlet", "sensor", "temperature", "°C"),
            point("sensor.rack-r1", "sensor", "temperature", "°C"),
        ],
    }
    path.write_text(yaml.safe_dump({"version": 1, "sites": [site]}, allow_unicode=True))
    load_registry(path)  # the test's own registry must be valid
    return path


@pytest.fixture(scope="module")
def snmp_agent():
    with run_snmpsim(standard_recordings()) as agent:
        yield agent


def meter_image() -> dict[str, dict[int, int]]:
    registers: dict[int, int] = {343: 0}  # the SDM630 map runs to 343: the peer serves 0..343, zeros between
    for address, value in ((0, VOLTAGE_V), (52, POWER_W), (72, ENERGY_KWH)):  # SDM630 input registers
        for i, word in enumerate(encode_value(value, "float32")):
            registers[address + i] = word
    return {"input": registers}


def test_collect_reads_every_protocol_and_isolates_broken_devices(tansu_broker, snmp_agent, rackmount1_server,
                                                                  mosquitto, tmp_path: Path):
    prefix = unique_name("devices")
    env = distributed_env(prefix, partitions=2)
    mqtt_root = unique_name("lab")
    with run_modbus_server({1: meter_image()}) as meter, silent_tcp_server() as (hung_host, hung_port):
        devices = [
            {"protocol": "modbus", "name": "meter", "site": SITE, "host": meter.host, "port": meter.port,
             "profile": "eastron-sdm630", "interval_s": 0.5, "timeout_s": 0.5,
             "points": {"active_power_total_w": "facility.power", "energy_import_kwh": "facility.energy"}},
            {"protocol": "snmp", "name": "ups", "site": SITE, "host": snmp_agent.host, "port": snmp_agent.port,
             "community": "eaton", "profiles": ["xups-mib"], "interval_s": 1, "timeout_s": 1,
             "points": {"output_l1_power_w": "it.ups"}},
            {"protocol": "redfish", "name": "bmc", "site": SITE, "url": rackmount1_server.url, "auth": "basic",
             "interval_s": 1, "timeout_s": 1,
             "points": {"chassis.1U.power_consumed_w": "it.servers", "chassis.1U.inlet_temp_c": "sensor.bmc-inlet",
                        # a sensor's unit is known only once read: °C on a power point must be dead-lettered
                        "chassis.1U.sensor.IntakeTemp": "cool.crah"}},
            {"protocol": "mqtt", "name": "racks", "site": SITE, "host": mosquitto.host, "port": mosquitto.port,
             "interval_s": 0.5, "timeout_s": 0.5,
             "subscriptions": [{"topic": f"{mqtt_root}/+/inlet", "field": "rack_{1}_inlet_temp_c", "unit": "°C",
                                "format": "number"}],
             "points": {"rack_r1_inlet_temp_c": "sensor.rack-r1"}},
            {"protocol": "modbus", "name": "dead-pdu", "site": SITE, "host": "127.0.0.1", "port": free_port(),
             "profile": "eastron-sdm630", "interval_s": 1, "timeout_s": 0.5,
             "points": {"active_power_total_w": "it.dead-pdu"}},
            {"protocol": "modbus", "name": "hung-pdu", "site": SITE, "host": hung_host, "port": hung_port,
             "profile": "eastron-sdm630", "interval_s": 5, "timeout_s": 4,
             "points": {"active_power_total_w": "it.hung-pdu"}},
        ]
        config = tmp_path / "collectors.yaml"
        config.write_text(yaml.safe_dump({"collect": {"collector_id": "lab-collector", "devices": devices}}))
        sites = registry_file(tmp_path / "sites.yaml")
        created = subprocess.run([sys.executable, "-m", "dcpue.cli", "topics", "create", "--kafka",
                                  tansu_broker.bootstrap_servers], env=env, capture_output=True, text=True, timeout=60)
        assert created.returncode == 0, created.stderr

        stop_publishing = threading.Event()

        def publish_rack_temperatures() -> None:
            import paho.mqtt.client as mqtt

            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
            client.connect(mosquitto.host, mosquitto.port)
            client.loop_start()
            try:
                while not stop_publishing.wait(0.3):
                    client.publish(f"{mqtt_root}/r1/inlet", "23.5", qos=1)
            finally:
                client.disconnect()
                client.loop_stop()

        publisher = threading.Thread(target=publish_rack_temperatures, daemon=True)
        publisher.start()
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "dcpue.cli", "collect", "--config", str(config), "--registry", str(sites),
                 "--kafka", tansu_broker.bootstrap_servers, "--duration", "10"],
                env=env, capture_output=True, text=True, timeout=120)
        finally:
            stop_publishing.set()
            publisher.join(5)
    assert proc.returncode == 0, proc.stderr
    assert " 0 waiting in " in proc.stdout, proc.stdout

    readings = readings_of(topic_values(tansu_broker.bootstrap_servers, f"{prefix}.readings.v1"))
    good = readings[readings["quality"] == 0]
    latest = good.sort_values("ts").groupby("point")["value"].last()
    eaton = parse_snmprec(standard_recordings()["eaton"])
    mockup = rackmount1_mockup() / "Chassis" / "1U"
    power_control = json.loads((mockup / "Power" / "index.json").read_text())["PowerControl"][0]
    assert latest["facility.power"] == pytest.approx(POWER_W / 1000)  # W on the wire, kW in the registry
    assert latest["facility.energy"] == pytest.approx(ENERGY_KWH)
    assert latest["it.ups"] == pytest.approx(float(eaton[XUPS_OUTPUT_WATTS_1][1]) / 1000)
    assert latest["it.servers"] == pytest.approx(power_control["PowerConsumedWatts"])  # W point stays in W
    assert 10 < latest["sensor.bmc-inlet"] < 40
    assert latest["sensor.rack-r1"] == pytest.approx(23.5)
    assert "cool.crah" not in set(readings["point"])  # never published in a wrong unit

    for point in ("it.dead-pdu", "it.hung-pdu"):  # broken devices: a visible gap, never a zero
        marks = readings[readings["point"] == point]
        assert len(marks) >= 1
        assert marks["value"].isna().all()
        assert (marks["quality"] & int(Quality.COLLECTOR_DOWN)).all()

    health: dict[str, dict] = {}
    for value in topic_values(tansu_broker.bootstrap_servers, f"{prefix}.health.v1"):
        record = json.loads(value)
        health[record.get("device") or record["collector"]] = record  # newest wins
    for name in ("meter", "ups", "bmc", "racks"):
        assert health[name]["up"] and health[name]["last_error"] is None, health[name]
    assert not health["dead-pdu"]["up"] and "refused" in health["dead-pdu"]["last_error"]
    assert not health["hung-pdu"]["up"] and "no response" in health["hung-pdu"]["last_error"]
    # the hung device held one worker for 4 s per read; the meter (every 0.5 s) kept its pace regardless
    assert health["meter"]["reads_ok"] >= 10, health["meter"]
    assert health["lab-collector"]["kind"] == "collector" and health["lab-collector"]["devices_down"] == 2

    letters = topic_values(tansu_broker.bootstrap_servers, f"{prefix}.dead_letters.v1")
    reasons = [json.loads(v) for v in letters]
    assert any(r["field"] == "chassis.1U.sensor.IntakeTemp" and r["point"] == "cool.crah" and r["unit"] == "°C"
               and r["device"] == "bmc" for r in reasons), reasons
    assert not math.isnan(reasons[0]["value"])
