"""Tests of the Redfish collector (dcpue.ingest.redfish).

Integration tests read the DMTF public-rackmount1 mockup and dcpue's CDU mockup (tests/data/redfish/cdu1)
served by sushy-static over HTTP and HTTPS, and an authenticating test BMC (tests/peers/redfish.py) for
auth and error cases. Expected values come from the mockup files themselves.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from dcpue.errors import CollectorError, MissingExtraError
from dcpue.ingest.device import DeviceReader, FieldValue
from dcpue.ingest.redfish import (
    RedfishDeviceConfig,
    detector_state_code,
    health_code,
    parse_environment,
    parse_power,
    parse_thermal,
    reading_unit,
    sensor_role,
)
from dcpue.model import Quality
from tests.peers.redfish import (
    CDU1_MOCKUP,
    MiniBmc,
    Override,
    bmc_tls,
    cdu1_server,
    https_url,
    mini_bmc,
    rackmount1_mockup,
    rackmount1_server,
    rackmount1_tls_server,
    refused_port,
    request_lines,
    silent_port,
)

__all__ = ["bmc_tls", "cdu1_server", "mini_bmc", "rackmount1_server", "rackmount1_tls_server"]  # fixtures

REPO = Path(__file__).resolve().parents[2]
integration = pytest.mark.integration
CDU = "/redfish/v1/ThermalEquipment/CDUs/1"


def load(mockup: Path, path: str) -> dict:
    """A mockup resource by its path below /redfish/v1."""
    return json.loads((mockup / path / "index.json").read_text())


def fields(values: list[FieldValue]) -> dict[str, FieldValue]:
    names = [v.field for v in values]
    assert len(names) == len(set(names)), "a field was reported twice"
    return {v.field: v for v in values}


def config(url: str, **overrides) -> RedfishDeviceConfig:
    data = {"name": "bmc-a01", "site": "dc1", "url": url, "auth": "basic", "timeout_s": 2.0, **overrides}
    return RedfishDeviceConfig(**data)


def read_once(cfg: RedfishDeviceConfig) -> dict[str, FieldValue]:
    with cfg.make_reader() as reader:
        return fields(reader.read())


def is_bad(value: FieldValue) -> bool:
    return math.isnan(value.value) and bool(value.quality & Quality.BAD)


# --- configuration --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "base", "username", "password"), [
    ("redfish://admin:s%40cret@10.0.0.5:8443", "https://10.0.0.5:8443", "admin", "s@cret"),
    ("redfish://root:calvin@bmc-a01.example", "https://bmc-a01.example", "root", "calvin"),
    ("redfish+https://ops@[fd00::5]:443/redfish/v1/", "https://[fd00::5]:443", "ops", ""),
    ("redfish+http://127.0.0.1:8000", "http://127.0.0.1:8000", "", ""),
])
def test_from_url(url, base, username, password):
    cfg = RedfishDeviceConfig.from_url(url)
    assert (cfg.url, cfg.username, cfg.password.get_secret_value()) == (base, username, password)
    assert cfg.protocol == "redfish" and cfg.auth == "session" and cfg.verify_tls
    assert password not in repr(cfg) or not password
    assert isinstance(cfg.make_reader(), DeviceReader)  # no I/O: nothing listens there


def test_from_url_options_win():
    cfg = RedfishDeviceConfig.from_url("redfish://a:b@10.0.0.5", auth="basic", name="cdu-1", site="dc9",
                                       username="c", verify_tls=False, chassis=["1U"])
    assert (cfg.name, cfg.site, cfg.username, cfg.auth, cfg.verify_tls, cfg.chassis) == (
        "cdu-1", "dc9", "c", "basic", False, ["1U"])


@pytest.mark.parametrize("url", ["http://10.0.0.5", "redfish+ftp://10.0.0.5", "redfish:///redfish/v1"])
def test_from_url_rejects_with_the_accepted_forms(url):
    with pytest.raises(ValueError, match=r"redfish\+http"):
        RedfishDeviceConfig.from_url(url)


@pytest.mark.parametrize(("changes", "message"), [
    ({"url": "https://10.0.0.5/api"}, "without a path"),
    ({"url": "ftp://10.0.0.5"}, "base URL"),
    ({"url": "https://u:p@10.0.0.5"}, "username/password"),
    ({"ca_file": "/etc/bmc-ca.pem", "verify_tls": False}, "ca_file is set but verify_tls is false"),
    ({"auth": "digest"}, "session"),
    ({"timeout_s": 20, "interval_s": 10}, "timeout_s"),
])
def test_config_validation(changes, message):
    with pytest.raises(ValidationError, match=message):
        RedfishDeviceConfig(**{"name": "b", "site": "s", "url": "https://10.0.0.5", **changes})


def test_docs_example_is_a_valid_device_entry():
    text = (REPO / "docs" / "collectors" / "redfish.md").read_text()
    block = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert block, "docs/collectors/redfish.md has a yaml example"
    devices = yaml.safe_load(block.group(1))["devices"]
    cfgs = [RedfishDeviceConfig.model_validate(d) for d in devices]
    assert cfgs[0].auth == "session" and cfgs[0].verify_tls and cfgs[0].points
    assert all(name.startswith(("chassis.", "cdu.", "cooling_loop.")) for c in cfgs for name in c.points)


# --- pure decoding ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("units", "reading_type", "expected"), [
    ("W", "Power", "W"), ("kW", None, "kW"), ("kW.h", "EnergykWh", "kWh"), ("W.h", None, "Wh"),
    ("Cel", None, "°C"), ("Cel", "Temperature", "°C"), ("%", "Percent", "%"), ("L/min", None, "L/min"),
    ("kPa", "PressurekPa", "kPa"), ("{rev}/min", "Rotational", "rpm"), ("V", None, "V"), ("A", None, "A"),
    (None, "Temperature", "°C"), (None, "EnergykWh", "kWh"), (None, "LiquidFlowLPM", "L/min"), ("", "Power", "W"),
    ("furlong", None, "furlong"), (None, None, ""), (None, "SomethingNew", ""),
])
def test_reading_unit(units, reading_type, expected):
    assert reading_unit(units, reading_type) == expected


@pytest.mark.parametrize(("state", "code"), [
    ("OK", 0.0), ("Warning", 1.0), ("Critical", 1.0), (None, math.nan), ("Unavailable", math.nan),
    ("Absent", math.nan), ("ok", math.nan), (1, math.nan),
])
def test_detector_state_code(state, code):
    assert detector_state_code(state) == code or (math.isnan(code) and math.isnan(detector_state_code(state)))


@pytest.mark.parametrize(("health", "code"), [("OK", 0.0), ("Warning", 1.0), ("Critical", 2.0), (None, math.nan)])
def test_health_code(health, code):
    assert health_code(health) == code or (math.isnan(code) and math.isnan(health_code(health)))


@pytest.mark.parametrize(("doc", "role"), [
    ({"ReadingType": "Power", "PhysicalContext": "Chassis", "ElectricalContext": "Total"}, "power_w"),
    ({"ReadingType": "Power", "PhysicalContext": "Chassis"}, "power_w"),
    ({"ReadingType": "Power", "PhysicalContext": "PowerSupply"}, None),
    ({"ReadingType": "Power", "PhysicalContext": "Chassis", "ElectricalContext": "Line1"}, None),
    ({"ReadingType": "EnergykWh", "PhysicalContext": "Chassis"}, "energy_kwh"),
    ({"ReadingUnits": "Cel", "PhysicalContext": "Intake"}, "inlet_temp_c"),
    ({"ReadingType": "Temperature", "PhysicalContext": "Exhaust"}, None),
    ({"ReadingType": "Humidity", "PhysicalContext": "Intake"}, None),
])
def test_sensor_role(doc, role):
    assert sensor_role(doc) == role


def test_parsers_mark_missing_readings_bad_and_keep_the_rest():
    env = fields(parse_environment({"PowerWatts": {"Reading": 512.5}, "EnergykWh": {"DataSourceUri": "/x"},
                                    "TemperatureCelsius": {"Reading": None}}, "chassis.A.environment").values)
    assert env["chassis.A.environment.power_w"] == FieldValue("chassis.A.environment.power_w", 512.5, "W")
    assert is_bad(env["chassis.A.environment.energy_kwh"]) and env["chassis.A.environment.energy_kwh"].unit == "kWh"
    assert is_bad(env["chassis.A.environment.temp_c"])
    assert "chassis.A.environment.humidity_pct" not in env  # absent from the resource: not a field at all

    power = parse_power({"PowerControl": [{"MemberId": "0", "PowerConsumedWatts": 610},
                                          {"MemberId": "1", "PowerConsumedWatts": "n/a"}],
                         "PowerSupplies": [{"MemberId": "PS1", "PowerInputWatts": 330, "PowerOutputWatts": 300},
                                           {"MemberId": "PS2", "LastPowerOutputWatts": 290}]}, "chassis.A")
    got = {v.field: v.value for v in power.values}
    assert got["chassis.A.power_consumed_w"] == 610 and math.isnan(got["chassis.A.power_control.1.power_consumed_w"])
    assert got["chassis.A.power_supply.PS1.input_power_w"] == 330
    assert got["chassis.A.power_supply.PS1.output_power_w"] == 300
    assert got["chassis.A.power_supply.PS2.output_power_w"] == 290
    assert "chassis.A.power_supply.PS2.input_power_w" not in got
    assert power.roles == {"power_w": "chassis.A.power_consumed_w"}

    by_name = parse_thermal({"Temperatures": [{"MemberId": "0", "Name": "CPU", "ReadingCelsius": 51},
                                              {"MemberId": "1", "Name": "Front Inlet Temp", "ReadingCelsius": 22.5}]},
                            "chassis.A")
    assert fields(by_name.values)["chassis.A.thermal.inlet_temp_c"].value == 22.5


def test_open_without_httpx_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "httpx", None)
    reader = config("http://127.0.0.1:9").make_reader()
    with pytest.raises(MissingExtraError, match=re.escape("pip install 'dcpue[collectors]'")):
        reader.open()
    reader.close()


# --- the DMTF mockup ----------------------------------------------------------------------------------------------


@integration
def test_rackmount1_values_equal_the_mockup(rackmount1_server):
    mockup = rackmount1_mockup()
    power, env, thermal = (load(mockup, f"Chassis/1U/{r}") for r in ("Power", "EnvironmentMetrics", "Thermal"))
    # by URI, the collector's naming (the sensor at .../CPU1Temp says Id CPUTemp1); CPU1Power is not a member
    members = [m["@odata.id"] for m in load(mockup, "Chassis/1U/Sensors")["Members"]]
    sensors = {m.rsplit("/", 1)[1]: load(mockup, m.removeprefix("/redfish/v1/")) for m in members}
    f = read_once(config(rackmount1_server.url))

    legacy = power["PowerControl"][0]["PowerConsumedWatts"]
    assert f["chassis.1U.power_consumed_w"] == FieldValue("chassis.1U.power_consumed_w", legacy, "W")
    assert f["chassis.1U.environment.power_w"].value == env["PowerWatts"]["Reading"]
    assert legacy != env["PowerWatts"]["Reading"]  # the two schema paths disagree in this mockup ...
    assert f["chassis.1U.power_w"].value == env["PowerWatts"]["Reading"]  # ... and EnvironmentMetrics wins
    supply = power["PowerSupplies"][0]
    assert f[f"chassis.1U.power_supply.{supply['MemberId']}.output_power_w"].value == supply["LastPowerOutputWatts"]

    intake = [s for s in sensors.values() if s.get("PhysicalContext") == "Intake"]
    assert len(intake) == 1
    assert f["chassis.1U.inlet_temp_c"] == FieldValue("chassis.1U.inlet_temp_c", intake[0]["Reading"], "°C")
    legacy_inlet = next(t for t in thermal["Temperatures"] if t.get("PhysicalContext") == "Intake")
    assert f["chassis.1U.thermal.inlet_temp_c"].value == legacy_inlet["ReadingCelsius"]

    chassis_energy = [s for s in sensors.values() if s.get("ReadingType") == "EnergykWh"
                      and s.get("PhysicalContext") == "Chassis"]
    if "EnergykWh" in env:
        assert f["chassis.1U.environment.energy_kwh"].value == env["EnergykWh"]["Reading"]
        assert f["chassis.1U.energy_kwh"].value == env["EnergykWh"]["Reading"]
    else:  # public-rackmount1: energy only as a Sensor
        assert "chassis.1U.environment.energy_kwh" not in f
        assert f["chassis.1U.energy_kwh"] == FieldValue("chassis.1U.energy_kwh", chassis_energy[0]["Reading"], "kWh")

    for sid, sensor in sensors.items():
        value = f[f"chassis.1U.sensor.{sid}"]
        if "Reading" in sensor:
            assert value.value == sensor["Reading"] and value.quality == Quality.GOOD, sid
        else:  # the absent second power supply
            assert is_bad(value) and sensor["Status"]["State"] == "Absent", sid
    assert f["chassis.1U.sensor.TotalPower"].unit == "W"
    assert f["chassis.1U.sensor.TotalEnergy"].unit == "kWh"
    assert f["chassis.1U.sensor.IntakeTemp"].unit == "°C"


@integration
def test_a_poll_is_a_handful_of_gets(rackmount1_server):
    points = {"chassis.1U.power_w": "it_power", "chassis.1U.inlet_temp_c": "inlet",
              "chassis.1U.power_consumed_w": "it_power_legacy"}
    cfg = config(rackmount1_server.url, points=points, rediscover_polls=3)
    with cfg.make_reader() as reader:
        before = len(request_lines(rackmount1_server))
        f = fields(reader.read())
        polled = request_lines(rackmount1_server)[before:]
        assert sorted(path for _, path in polled) == ["/redfish/v1/Chassis/1U/EnvironmentMetrics",
                                                      "/redfish/v1/Chassis/1U/Power",
                                                      "/redfish/v1/Chassis/1U/Sensors/IntakeTemp"]
        assert set(points) <= set(f) and reader.problems == ()
        counts = []
        for _ in range(3):
            n = reader.requests
            reader.read()
            counts.append(reader.requests - n)
        assert counts[:2] == [3, 3] and counts[2] > 20  # every rediscover_polls polls: rediscovered


@integration
def test_unknown_mapped_field_is_bad_with_a_suggestion(rackmount1_server):
    with config(rackmount1_server.url, points={"chassis.1U.power_wats": "p"}).make_reader() as reader:
        f = fields(reader.read())
    assert is_bad(f["chassis.1U.power_wats"])
    assert any("did you mean chassis.1U.power_w" in p for p in reader.problems)


@integration
def test_chassis_filter_lists_what_exists(rackmount1_server):
    with pytest.raises(CollectorError, match=r"chassis 2U not found; the service has: 1U"):
        read_once(config(rackmount1_server.url, chassis=["2U"]))
    assert all(name.startswith("chassis.1U.") for name in read_once(config(rackmount1_server.url, chassis=["1U"])))


# --- TLS -----------------------------------------------------------------------------------------------------------


@integration
def test_tls_is_verified_by_default(rackmount1_tls_server):
    url = https_url(rackmount1_tls_server)
    with pytest.raises(CollectorError) as info:
        read_once(config(url))
    message = str(info.value)
    assert "'bmc-a01'" in message and f"{url}/redfish/v1/" in message
    assert "TLS certificate verification failed" in message and "self-signed" in message
    assert "ca_file" in message and "verify_tls: false" in message


@integration
def test_tls_with_ca_file_or_verification_off(rackmount1_tls_server, bmc_tls):
    url = https_url(rackmount1_tls_server)
    assert read_once(config(url, ca_file=bmc_tls.cert))["chassis.1U.power_w"].quality == Quality.GOOD
    assert read_once(config(url, verify_tls=False))["chassis.1U.power_w"].quality == Quality.GOOD


def test_unreadable_ca_file(tmp_path):
    with pytest.raises(CollectorError, match=r"'bmc-a01': https://127\.0\.0\.1:9: ca_file '.*nope.pem' cannot be"):
        read_once(config("https://127.0.0.1:9", ca_file=tmp_path / "nope.pem"))


@integration
def test_plain_http_to_a_tls_port_is_explained(rackmount1_tls_server):
    with pytest.raises(CollectorError, match=r"bmc-a01.*http://127\.0\.0\.1"):
        read_once(config(f"http://127.0.0.1:{rackmount1_tls_server.port}"))


# --- dcpue's CDU mockup ---------------------------------------------------------------------------------------------


@integration
def test_cdu_loop_and_leak_fields_equal_the_mockup(cdu1_server):
    f = read_once(config(cdu1_server.url))
    unit = load(CDU1_MOCKUP, "ThermalEquipment/CDUs/1")
    env = load(CDU1_MOCKUP, "ThermalEquipment/CDUs/1/EnvironmentMetrics")
    assert f["cdu.1.health"] == FieldValue("cdu.1.health", {"OK": 0, "Warning": 1}[unit["Status"]["Health"]], "")
    assert f["cdu.1.power_w"] == FieldValue("cdu.1.power_w", env["PowerWatts"]["Reading"], "W")
    assert f["cdu.1.energy_kwh"] == FieldValue("cdu.1.energy_kwh", env["EnergykWh"]["Reading"], "kWh")

    names = {"SupplyTemperatureCelsius": ("supply_temp_c", "°C"), "ReturnTemperatureCelsius": ("return_temp_c", "°C"),
             "DeltaTemperatureCelsius": ("delta_temp_c", "°C"), "FlowLitersPerMinute": ("flow_lpm", "L/min"),
             "SupplyPressurekPa": ("supply_pressure_kpa", "kPa"), "ReturnPressurekPa": ("return_pressure_kpa", "kPa"),
             "DeltaPressurekPa": ("delta_pressure_kpa", "kPa"), "HeatRemovedkW": ("heat_removed_kw", "kW")}
    for side in ("Primary", "Secondary"):
        connector = load(CDU1_MOCKUP, f"ThermalEquipment/CDUs/1/{side}CoolantConnectors/1")
        for prop, (suffix, unit_) in names.items():
            name = f"cdu.1.{side.lower()}.1.{suffix}"
            assert f[name] == FieldValue(name, connector[prop]["Reading"], unit_)

    for pid in ("1", "2"):
        pump = load(CDU1_MOCKUP, f"ThermalEquipment/CDUs/1/Pumps/{pid}")
        assert f[f"cdu.1.pump.{pid}.speed_pct"].value == pump["PumpSpeedPercent"]["Reading"]
        assert f[f"cdu.1.pump.{pid}.health"].value == 0

    detectors = load(CDU1_MOCKUP, "ThermalEquipment/CDUs/1/LeakDetection/LeakDetectors")["Members"]
    states = {}
    for member in detectors:
        detector = load(CDU1_MOCKUP, member["@odata.id"].removeprefix("/redfish/v1/"))
        states[detector["Id"]] = detector["DetectorState"]
    assert states == {"Moisture": "OK", "TrayLeft": "Critical", "TrayRight": None}
    assert f["cdu.1.leak_detector.Moisture"] == FieldValue("cdu.1.leak_detector.Moisture", 0, "")
    assert f["cdu.1.leak_detector.TrayLeft"] == FieldValue("cdu.1.leak_detector.TrayLeft", 1, "")
    assert is_bad(f["cdu.1.leak_detector.TrayRight"]) and f["cdu.1.leak_detector.TrayRight"].unit == ""
    assert f["cdu.1.leak_detected"].value == 1  # one leak is enough, the unknown detector does not hide it

    loop = load(CDU1_MOCKUP, "ThermalEquipment/CoolingLoops/Secondary")
    assert f["cooling_loop.Secondary.coolant_level_pct"].value == loop["CoolantLevelPercent"]["Reading"]
    assert f["cooling_loop.Secondary.coolant_level_status"].value == 0  # OK
    assert f["cooling_loop.Secondary.coolant_quality"].value == 1  # Warning
    assert f["cooling_loop.Secondary.health"].value == 0

    chassis_env = load(CDU1_MOCKUP, "Chassis/CDU1/EnvironmentMetrics")
    assert f["chassis.CDU1.energy_kwh"].value == chassis_env["EnergykWh"]["Reading"]  # EnvironmentMetrics wins
    assert f["chassis.CDU1.sensor.SecondaryFlow"].unit == "L/min"
    assert f["chassis.CDU1.sensor.SecondarySupplyPressure"].unit == "kPa"


@integration
def test_leak_state_unknown_everywhere_is_bad_not_ok(mini_bmc: MiniBmc):
    path = f"{CDU}/LeakDetection/LeakDetectors/TrayLeft"
    doc = mini_bmc.document(path)
    mini_bmc.overrides[path] = Override(body=json.dumps({**doc, "DetectorState": "OK"}).encode())
    with config(mini_bmc.url, username="admin", password="secret").make_reader() as reader:
        assert fields(reader.read())["cdu.1.leak_detected"].quality & Quality.BAD  # one detector unknown, no leak
        mini_bmc.overrides[path] = Override(body=json.dumps({**doc, "DetectorState": "OK",
                                                             "Status": {"State": "Absent"}}).encode())
        assert is_bad(fields(reader.read())["cdu.1.leak_detector.TrayLeft"])


@integration
def test_expanded_collections_save_requests(mini_bmc: MiniBmc, cdu1_server):
    cfg = config(mini_bmc.url, username="admin", password="secret")
    with cfg.make_reader() as reader:
        expanded = fields(reader.read())
        discovery_with_expand = sum(1 for _, path, _ in mini_bmc.requests)
    with config(cdu1_server.url).make_reader() as plain:  # sushy-static ignores $expand: one GET per member
        assert {k: (v.value, v.unit) for k, v in fields(plain.read()).items() if not math.isnan(v.value)} == {
            k: (v.value, v.unit) for k, v in expanded.items() if not math.isnan(v.value)}
    assert any("$expand" in path for _, path, _ in mini_bmc.requests)
    assert any("$expand" in path for _, path in request_lines(cdu1_server))
    assert discovery_with_expand < plain.requests


# --- authentication --------------------------------------------------------------------------------------------------


@integration
def test_basic_auth(mini_bmc: MiniBmc):
    f = read_once(config(mini_bmc.url, username="admin", password="secret"))
    assert f["cdu.1.power_w"].quality == Quality.GOOD
    assert {who for _, path, who in mini_bmc.requests if path.rstrip("/") != "/redfish/v1"} == {"basic"}


@integration
@pytest.mark.parametrize("auth", ["basic", "session"])
def test_wrong_credentials(mini_bmc: MiniBmc, auth):
    with pytest.raises(CollectorError) as info:
        read_once(config(mini_bmc.url, username="admin", password="letmein", auth=auth))
    message = str(info.value)
    assert "'bmc-a01'" in message and mini_bmc.url in message and "HTTP 401" in message
    assert "wrong credentials" in message and "letmein" not in message
    if auth == "session":
        assert "/redfish/v1/SessionService/Sessions" in message


@integration
def test_session_auth_logs_in_again_once_and_logs_out(mini_bmc: MiniBmc):
    cfg = config(mini_bmc.url, username="admin", password="secret", auth="session")
    reader = cfg.make_reader()
    reader.open()
    assert len(mini_bmc.tokens) == 1
    assert fields(reader.read())["cdu.1.leak_detected"].value == 1
    gets = [who for method, path, who in mini_bmc.requests if method == "GET" and path.rstrip("/") != "/redfish/v1"]
    assert set(gets) == {"token"}  # no password on the wire after the login

    mini_bmc.expire_sessions()  # the BMC rebooted: the token is refused once, the reader logs in again
    assert fields(reader.read())["cdu.1.power_w"].quality == Quality.GOOD
    assert [m for m, _, _ in mini_bmc.requests].count("POST") == 2 and len(mini_bmc.tokens) == 1

    reader.close()
    reader.close()  # idempotent
    assert mini_bmc.tokens == {} and mini_bmc.requests[-1][0] == "DELETE"
    assert fields(reader.read())["cdu.1.power_w"].quality == Quality.GOOD  # read after close opens again
    reader.close()


@integration
def test_session_auth_on_a_service_without_sessions(cdu1_server):
    with pytest.raises(CollectorError, match=r"without an X-Auth-Token header; try auth: basic"):
        read_once(config(cdu1_server.url, username="admin", password="x", auth="session"))


# --- failures -------------------------------------------------------------------------------------------------------


@integration
def test_refused_port():
    port = refused_port()
    with pytest.raises(CollectorError, match=rf"'bmc-a01': http://127\.0\.0\.1:{port}/redfish/v1/: connection refused"):
        read_once(config(f"http://127.0.0.1:{port}"))


@integration
def test_timeout_is_bounded():
    with silent_port() as port:
        started = time.monotonic()
        with pytest.raises(CollectorError, match=r"'bmc-a01': .*timed out after 0\.5 s \(timeout_s\)"):
            read_once(config(f"http://127.0.0.1:{port}", timeout_s=0.5))
        assert time.monotonic() - started < 3


@integration
def test_broken_service_root(mini_bmc: MiniBmc):
    mini_bmc.overrides["/redfish/v1"] = Override(body=b"<html>BMC is starting</html>", content_type="text/html")
    with pytest.raises(CollectorError, match=r"'bmc-a01': http://.*/redfish/v1/: malformed JSON"):
        read_once(config(mini_bmc.url, username="admin", password="secret"))
    mini_bmc.overrides["/redfish/v1"] = Override(status=503, body=b'{"error": {}}')
    with pytest.raises(CollectorError, match=r"/redfish/v1/: HTTP 503 Service Unavailable"):
        read_once(config(mini_bmc.url, username="admin", password="secret"))


@integration
def test_one_broken_resource_spoils_only_its_fields(mini_bmc: MiniBmc):
    with config(mini_bmc.url, username="admin", password="secret").make_reader() as reader:
        reader.read()
        mini_bmc.overrides[f"{CDU}/EnvironmentMetrics"] = Override(body=b'{"PowerWatts": {"Reading": 42')
        connector = mini_bmc.document(f"{CDU}/PrimaryCoolantConnectors/1")
        del connector["FlowLitersPerMinute"]
        mini_bmc.overrides[f"{CDU}/PrimaryCoolantConnectors/1"] = Override(body=json.dumps(connector).encode())
        f = fields(reader.read())
    assert is_bad(f["cdu.1.power_w"]) and is_bad(f["cdu.1.energy_kwh"]) and f["cdu.1.power_w"].unit == "W"
    assert is_bad(f["cdu.1.primary.1.flow_lpm"]) and f["cdu.1.primary.1.flow_lpm"].unit == "L/min"
    assert f["cdu.1.primary.1.supply_temp_c"].quality == Quality.GOOD
    assert f["cdu.1.secondary.1.flow_lpm"].quality == Quality.GOOD
    problems = " | ".join(reader.problems)
    assert f"{mini_bmc.url}{CDU}/EnvironmentMetrics: malformed JSON" in problems
    assert f"{mini_bmc.url}{CDU}/PrimaryCoolantConnectors/1: no cdu.1.primary.1.flow_lpm" in problems


@integration
def test_every_resource_failing_raises(mini_bmc: MiniBmc):
    points = {"cdu.1.power_w": "cdu_power", "cdu.1.secondary.1.supply_temp_c": "supply"}
    with config(mini_bmc.url, username="admin", password="secret", points=points).make_reader() as reader:
        reader.read()
        for path in (f"{CDU}/EnvironmentMetrics", f"{CDU}/SecondaryCoolantConnectors/1"):
            mini_bmc.overrides[path] = Override(status=500, body=b'{"error": {"message": "sensor bus hung"}}')
        with pytest.raises(CollectorError, match=r"'bmc-a01': all 2 resources failed, first .*HTTP 500"):
            reader.read()


@integration
def test_404_rediscovers(mini_bmc: MiniBmc):
    with config(mini_bmc.url, username="admin", password="secret").make_reader() as reader:
        assert "cdu.1.pump.2.speed_pct" in fields(reader.read())
        pumps = mini_bmc.document(f"{CDU}/Pumps")  # pump 2 is taken out: its URI answers 404
        pumps["Members"] = pumps["Members"][:1]
        mini_bmc.overrides[f"{CDU}/Pumps"] = Override(body=json.dumps(pumps).encode())
        mini_bmc.overrides[f"{CDU}/Pumps/2"] = Override(status=404, body=b"{}")
        f = fields(reader.read())
        assert is_bad(f["cdu.1.pump.2.speed_pct"]) and f["cdu.1.pump.1.speed_pct"].quality == Quality.GOOD
        assert any(p.endswith(f"{CDU}/Pumps/2: HTTP 404 Not Found") for p in reader.problems)
        before = len(mini_bmc.requests)
        f = fields(reader.read())  # rediscovered from the service root: the pump is gone from the plan
        assert ("GET", "/redfish/v1/", "basic") in mini_bmc.requests[before:]
        assert "cdu.1.pump.2.speed_pct" not in f and f["cdu.1.pump.1.speed_pct"].quality == Quality.GOOD
        before = len(mini_bmc.requests)
        f = fields(reader.read())  # the plan is settled: no rediscovery, no problem
        assert ("GET", "/redfish/v1/", "basic") not in mini_bmc.requests[before:] and reader.problems == ()
