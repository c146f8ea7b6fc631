"""Collector configuration, mapping and `dcpue probe`: what an operator meets first on site."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from dcpue.errors import ConfigError
from dcpue.ingest.device import FieldValue
from dcpue.ingest.devices import device_from_url, redact
from dcpue.ingest.poller import PointTarget, check_devices, down_readings, field_values_to_readings
from dcpue.model import Quality, Quantity
from dcpue.registry import load_registry
from dcpue.settings import load_settings
from tests.ingest.test_collect_devices import meter_image
from tests.peers.modbus import run_modbus_server
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "config" / "collectors.example.yaml"
DEMO_REGISTRY = ROOT / "deploy" / "sites" / "guizhou-demo.yaml"


def dcpue(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dcpue.cli", *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd)


def test_the_example_config_has_one_device_per_protocol_that_fits_the_demo_registry():
    settings = load_settings(EXAMPLE)
    devices = settings.collect.devices
    assert {d.protocol for d in devices} == {"modbus", "snmp", "redfish", "mqtt"}
    check_devices(devices, load_registry(DEMO_REGISTRY), str(EXAMPLE))  # every site, point and unit fits
    for device in devices:
        device.make_reader()  # constructing a reader does no I/O
        assert device.points


def test_a_mapping_in_the_wrong_unit_is_refused_before_anything_is_polled(tmp_path: Path):
    config = tmp_path / "collectors.yaml"
    config.write_text(yaml.safe_dump({"collect": {"devices": [
        {"protocol": "modbus", "name": "m", "site": "ga-01", "host": "127.0.0.1", "profile": "eastron-sdm630",
         "points": {"active_power_total_w": "facility.swgr", "voltage_l1_v": "cool.crah-1"}},
    ]}}))
    run = dcpue("collect", "--config", str(config), "--registry", str(DEMO_REGISTRY), "--duration", "1")
    assert run.returncode == 2
    assert f"{config}: field 'collect.devices.0.points'" in run.stderr
    assert "field 'voltage_l1_v' is in 'V', point 'cool.crah-1' measures power" in run.stderr


@pytest.mark.parametrize(("device", "message"), [
    ({"protocol": "bacnet", "name": "x", "site": "ga-01"}, "'modbus', 'snmp', 'redfish', 'mqtt'"),
    ({"protocol": "modbus", "name": "x", "site": "ga-01", "host": "h", "profile": "no-such-meter"}, "no-such-meter"),
    ({"protocol": "modbus", "name": "x", "site": "ga-01", "host": "h", "profile": "eastron-sdm630",
      "interval_s": 1, "timeout_s": 5}, "timeout_s (5.0) must not exceed interval_s (1.0)"),
])
def test_bad_device_entries_name_the_file_field_and_problem(tmp_path: Path, device: dict, message: str):
    config = tmp_path / "collectors.yaml"
    config.write_text(yaml.safe_dump({"collect": {"devices": [device]}}))
    run = dcpue("collect", "--config", str(config), "--registry", str(DEMO_REGISTRY), "--duration", "1")
    assert run.returncode == 2, run.stderr
    assert str(config) in run.stderr and "collect.devices.0" in run.stderr
    assert message in run.stderr


def test_device_names_must_be_unique_and_devices_need_a_registry(tmp_path: Path):
    entry = {"protocol": "modbus", "name": "m", "site": "ga-01", "host": "h", "profile": "eastron-sdm630"}
    with pytest.raises(ConfigError, match="device name 'm' is used twice"):
        load_settings(None, collect={"devices": [entry, entry]})
    config = tmp_path / "collectors.yaml"
    config.write_text(yaml.safe_dump({"collect": {"devices": [entry]}}))
    run = dcpue("collect", "--config", str(config), "--duration", "1")
    assert run.returncode == 2 and "no site registry is given" in run.stderr


def targets() -> dict[str, PointTarget]:
    return {"p_w": PointTarget("it.ups", Quantity.POWER, "kW"), "e_wh": PointTarget("fac.e", Quantity.ENERGY, "kWh"),
            "t": PointTarget("env.t", Quantity.TEMPERATURE, "°C"), "v": PointTarget("it.pdu", Quantity.POWER, "kW")}


def test_device_values_become_readings_in_the_points_units():
    values = [FieldValue("p_w", 41_250.0, "W"), FieldValue("e_wh", 533_733.0, "Wh"),
              FieldValue("t", float("nan"), "°C", Quality.BAD), FieldValue("v", 231.0, "V"),
              FieldValue("unmapped", 1.0, "W"), FieldValue("t", 24.5, "°C", ts_ms=1_767_225_000_000)]
    frame, rejects = field_values_to_readings("ga-01", values, targets(), ts_ms=1_767_225_600_000)
    assert frame["point"].tolist() == ["it.ups", "fac.e", "env.t", "env.t"]
    assert frame["value"].iloc[0] == pytest.approx(41.25) and frame["value"].iloc[1] == pytest.approx(533.733)
    assert math.isnan(frame["value"].iloc[2]) and frame["quality"].iloc[2] == int(Quality.BAD)
    assert frame["ts"].tolist() == [1_767_225_600_000] * 3 + [1_767_225_000_000]  # a device's own time wins
    assert [(r.field, r.point) for r in rejects] == [("v", "it.pdu")]
    assert "unit 'V' does not fit quantity 'power'" in rejects[0].reason


def test_a_device_that_cannot_be_read_marks_its_points_down_not_zero():
    frame = down_readings("ga-01", targets(), 1_767_225_600_000)
    assert sorted(frame["point"]) == ["env.t", "fac.e", "it.pdu", "it.ups"]
    assert np.isnan(frame["value"]).all() and (frame["quality"] == int(Quality.COLLECTOR_DOWN)).all()


def test_probe_urls_pick_the_protocol_and_never_echo_a_password():
    assert device_from_url("modbus://10.0.0.5:502/3?profile=eastron-sdm630").protocol == "modbus"
    assert device_from_url("redfish+http://127.0.0.1:8000").protocol == "redfish"
    assert redact("redfish://admin:s3cret@10.0.0.5") == "redfish://admin:***@10.0.0.5"
    with pytest.raises(ConfigError) as err:
        device_from_url("bacnet://admin:s3cret@10.0.0.5")
    assert "s3cret" not in str(err.value) and "modbus://" in str(err.value)


def test_probe_reads_a_real_meter_once_and_shows_what_would_be_published(tmp_path: Path):
    with run_modbus_server({1: meter_image()}) as meter:
        url = f"modbus://{meter.host}:{meter.port}/1?profile=eastron-sdm630"
        table = dcpue("probe", url)
        assert table.returncode == 0, table.stderr
        assert "active_power_total_w" in table.stdout and "123456.0000 W" in table.stdout
        as_json = json.loads(dcpue("probe", url, "--format", "json").stdout)
        assert {f["field"]: f["value"] for f in as_json["fields"]}["energy_import_kwh"] == pytest.approx(1000.5)

        config = tmp_path / "collectors.yaml"
        config.write_text(yaml.safe_dump({"collect": {"devices": [
            {"protocol": "modbus", "name": "swgr", "site": "ga-01", "host": meter.host, "port": meter.port,
             "profile": "eastron-sdm630", "points": {"active_power_total_w": "facility.swgr"}}]}}))
        mapped = dcpue("probe", "--config", str(config), "--registry", str(DEMO_REGISTRY), "--device", "swgr")
        assert mapped.returncode == 0, mapped.stderr
        assert "would publish to site ga-01:" in mapped.stdout
        assert "facility.swgr" in mapped.stdout and "123.4560" in mapped.stdout  # converted to the point's kW


def test_probe_of_an_unreachable_device_fails_with_the_devices_error():
    run = dcpue("probe", f"modbus://127.0.0.1:{free_port()}/1?profile=eastron-sdm630", "--timeout", "1")
    assert run.returncode == 1
    assert "refused" in run.stderr and "127.0.0.1" in run.stderr
