"""The SNMP collector: profiles, counter unwrapping, value decoding, configuration, and reads over v2c and v3
from snmpsim serving the real Eaton 9PX UPS recording (plus a hand-written test PDU).

Expected values of the Eaton UPS are taken from the ``.snmprec`` recording itself (OID -> raw value,
times the profile's scale), never typed into the test.
"""

from __future__ import annotations

import asyncio
import math
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from dcpue.errors import CollectorError, ConfigError, MissingExtraError
from dcpue.ingest.device import DeviceReader, FieldValue
from dcpue.ingest.snmp import (
    CounterKind,
    CounterUnwrapper,
    Missing,
    SnmpDeviceConfig,
    SnmpReader,
    decode_number,
    entity_sensor_value,
    list_profiles,
    load_profile,
    unwrap_counter,
)
from dcpue.model import UNITS, Quality
from tests.peers.snmp import (
    SnmpAgent,
    V3User,
    free_udp_port,
    parse_snmprec,
    require_privacy_support,
    run_snmpsim,
    standard_recordings,
)

SHIPPED = ("eaton-epdu-mib", "entity-sensor-mib", "ups-mib", "xups-mib")
# units of values that are not dcpue quantities (shown by `dcpue probe`, never convertible to a point)
OTHER_UNITS = {"", "V", "A", "Hz", "VA", "s", "min", "rpm", "m3/min"}
UNIT_SUFFIX = {"W": "_w", "Wh": "_wh", "°C": "_c", "%": "_pct", "V": "_v", "A": "_a", "Hz": "_hz", "VA": "_va",
               "s": "_s", "min": "_min", "rpm": "_rpm", "m3/min": "_m3_min"}
REPO = Path(__file__).resolve().parents[2]
ENERGY_OID = "1.3.6.1.4.1.534.6.6.7.3.5.1.5.0.1"  # inputTotalWh of the test PDU (writable there)
SNMPSIM_PRIV = {"AES256BLMT": "AES256"}  # snmpsim's spelling -> ours (Blumenthal key extension, as net-snmp)


@pytest.fixture(scope="module")
def snmp_agent() -> Iterator[SnmpAgent]:
    """snmpsim serving the Eaton 9PX recording (``eaton``), the test PDU (``pdu``) and ``badpdu``."""
    with run_snmpsim(standard_recordings()) as agent:
        yield agent


def values_by_field(values: list[FieldValue]) -> dict[str, FieldValue]:
    fields = [v.field for v in values]
    assert len(fields) == len(set(fields)), "one value per field"
    return {v.field: v for v in values}


def device(agent: SnmpAgent, **overrides) -> SnmpDeviceConfig:
    settings = {"name": "ups-a1", "site": "dc1", "host": agent.host, "port": agent.port, "community": "eaton",
                "profiles": ["xups-mib"], "timeout_s": 2.0, **overrides}
    return SnmpDeviceConfig(**settings)


def v3_device(agent: SnmpAgent, user: V3User, **overrides) -> SnmpDeviceConfig:
    settings: dict = {"version": "3", "sec_name": user.name, "context_name": "eaton"}
    if user.auth_key:
        settings.update(auth_password=user.auth_key, auth_protocol=user.auth_proto)
    if user.priv_key:
        settings.update(priv_password=user.priv_key, priv_protocol=SNMPSIM_PRIV.get(user.priv_proto, user.priv_proto))
    return device(agent, **{**settings, **overrides})


def read_once(config: SnmpDeviceConfig) -> dict[str, FieldValue]:
    reader = config.make_reader()
    try:
        reader.open()
        return values_by_field(reader.read())
    finally:
        reader.close()


def recorded(agent: SnmpAgent, community: str) -> dict[str, tuple[str, str]]:
    return parse_snmprec(agent.recordings[community])


def expected_xups(records: dict[str, tuple[str, str]]) -> dict[str, float]:
    """Every numeric object of the xups-mib profile present in the recording, as the field it must become."""
    profile = load_profile("xups-mib")
    expected: dict[str, float] = {}
    for spec in profile.scalars:
        if spec.oid in records and records[spec.oid][0] in ("2", "65", "66", "67"):
            expected[spec.field] = int(records[spec.oid][1]) * spec.scale
    for table in profile.tables:
        for spec in table.columns:
            for oid, (tag, value) in records.items():
                if oid.startswith(spec.oid + ".") and tag == "2":
                    index = oid[len(spec.oid) + 1:]
                    expected[spec.field.format(index=index.replace(".", "_"))] = int(value) * spec.scale
    return expected


def snmp_set_gauge(agent: SnmpAgent, community: str, oid: str, value: int) -> None:
    """SET a Gauge32 on the simulator (its writecache module keeps it) -- moves the test PDU's energy counter."""
    from pysnmp.hlapi.v3arch.asyncio import (
        CommunityData,
        ContextData,
        Gauge32,
        ObjectIdentity,
        ObjectType,
        SnmpEngine,
        UdpTransportTarget,
        set_cmd,
    )

    async def go() -> None:
        engine = SnmpEngine()
        try:
            target = await UdpTransportTarget.create((agent.host, agent.port), timeout=1, retries=1)
            indication, status, _, _ = await set_cmd(engine, CommunityData(community), target, ContextData(),
                                                     ObjectType(ObjectIdentity(oid), Gauge32(value)), lookupMib=False)
            assert not indication and not status, (indication, status)
        finally:
            engine.close_dispatcher()

    asyncio.run(go())


# --- profiles --------------------------------------------------------------------------------------------


def test_the_shipped_profiles_are_listed():
    assert tuple(list_profiles()) == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_is_valid_and_names_carry_units(name):
    profile = load_profile(name)
    assert profile.name == name
    assert profile.mib and profile.reference and profile.source.startswith("https://")
    fields = list(profile.scalars) + [c for t in profile.tables for c in t.columns]
    assert fields or profile.entity_sensors
    dcpue_units = {u for spellings in UNITS.values() for u in spellings}
    for spec in fields:
        assert spec.unit in dcpue_units | OTHER_UNITS, (spec.field, spec.unit)
        if spec.unit:
            assert spec.field.endswith(UNIT_SUFFIX[spec.unit]), f"{spec.field} should end in {UNIT_SUFFIX[spec.unit]}"
    for table in profile.tables:
        for column in table.columns:
            assert re.fullmatch(r"[0-9.]+", column.oid) and not column.oid.endswith(".0"), column.object
    for spec in profile.scalars:
        assert spec.oid.endswith(".0"), f"{spec.object}: a scalar's OID is its .0 instance"
    for sensors in profile.entity_sensors:
        for sensor_type in sensors.types.values():
            assert sensor_type.unit in dcpue_units | OTHER_UNITS
            if sensor_type.unit:
                assert sensor_type.suffix.endswith(UNIT_SUFFIX[sensor_type.unit].lstrip("_"))


MIB_ROOTS = {  # the module identity of each shipped MIB: every OID of its profile lies below it
    "ups-mib": "1.3.6.1.2.1.33.1.",  # upsObjects (RFC 1628)
    "xups-mib": "1.3.6.1.4.1.534.1.",  # xupsMIB
    "entity-sensor-mib": "1.3.6.1.2.1.99.1.1.1.",  # entPhySensorEntry (RFC 3433)
    "eaton-epdu-mib": "1.3.6.1.4.1.534.6.6.7.",  # eatonEpdu
}


@pytest.mark.parametrize("name", SHIPPED)
def test_every_oid_of_a_profile_is_below_its_mib(name):
    profile = load_profile(name)
    oids = [f.oid for f in profile.scalars] + [c.oid for t in profile.tables for c in t.columns]
    oids += [c.oid for s in profile.entity_sensors for c in s.columns]
    assert oids and all(oid.startswith(MIB_ROOTS[name]) for oid in oids), oids


def test_power_and_energy_fields_use_dcpue_units():
    """What a power or energy point may be mapped to is spelled as dcpue.model.UNITS spells it."""
    for name in SHIPPED:
        for pattern, unit in load_profile(name).field_patterns():
            if pattern.pattern.endswith(("_w", "power_w")):
                assert unit == "W"
            if pattern.pattern.endswith("_wh"):
                assert unit == "Wh"


@pytest.mark.parametrize(("change", "message"), [
    ({"tables": [{"table": "t", "index": ["i"], "columns": [
        {"field": "outlet_power_w", "object": "x", "oid": "1.3.6.1.4.1.9.1"}]}]}, "must contain {index}"),
    ({"scalars": [{"field": "a_w", "object": "a", "oid": "1.3.6.1.4.1.9.1.0"},
                  {"field": "a_w", "object": "b", "oid": "1.3.6.1.4.1.9.2.0"}]}, "used twice"),
    ({"scalars": [{"field": "a_w", "object": "a", "oid": "1.3.six.1"}]}, "oid"),
    ({"scalars": [{"field": "a_w", "object": "a", "oid": "1.3.6.1.0", "counter_bits": 16}]}, "counter_bits"),
    ({"scalars": []}, "at least one"),
])
def test_bad_profile_is_refused_with_the_problem(tmp_path, change, message):
    base = {"name": "mine", "mib": "MY-MIB", "reference": "doc", "source": "https://example.invalid/mib",
            "scalars": [{"field": "a_w", "object": "a", "oid": "1.3.6.1.4.1.9.1.0"}]}
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({**base, **change}), encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_profile(str(path))


def test_unknown_profile_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match="shipped: eaton-epdu-mib, entity-sensor-mib, ups-mib, xups-mib"):
        load_profile("apc-powernet")


# --- counters --------------------------------------------------------------------------------------------

MAX32 = 2**32 - 1


@pytest.mark.parametrize(("previous", "current", "bits", "max_delta", "kind", "delta"), [
    (None, 5, 32, None, CounterKind.FIRST, None),
    (100, 100, 32, None, CounterKind.INCREASE, 0),
    (100, 250, 32, None, CounterKind.INCREASE, 150),
    (MAX32 - 10, 20, 32, None, CounterKind.WRAP, 31),  # 11 to reach 0, then 20
    (MAX32, 0, 32, None, CounterKind.WRAP, 1),
    (4294967000, 200, 32, None, CounterKind.WRAP, 496),
    (3_000_000_000, 10, 32, None, CounterKind.RESET, None),  # a wrap would mean 1.29e9 in one poll
    (1_000_000, 10, 32, None, CounterKind.RESET, None),  # device restarted: counter back near zero
    (MAX32 - 10, 20, 32, 10, CounterKind.RESET, None),  # caller's bound: 31 is not plausible
    (MAX32 - 10, 20, 32, 31, CounterKind.WRAP, 31),
    (2**64 - 5, 4, 64, None, CounterKind.WRAP, 9),
    (10**15, 10, 64, None, CounterKind.RESET, None),  # Counter64 dropping is a reset, not a wrap
])
def test_unwrap_counter(previous, current, bits, max_delta, kind, delta):
    step = unwrap_counter(previous, current, bits, max_delta)
    assert (step.kind, step.delta) == (kind, delta)


@pytest.mark.parametrize(("previous", "current", "bits"), [(None, -1, 32), (None, 2**32, 32), (2**32, 0, 32)])
def test_unwrap_counter_refuses_values_outside_the_counter(previous, current, bits):
    with pytest.raises(ValueError, match="outside a 32-bit counter"):
        unwrap_counter(previous, current, bits)


def test_unwrapper_stays_monotonic_across_wraps_and_shows_resets():
    unwrapper = CounterUnwrapper(bits=32)
    raws = [MAX32 - 100, MAX32 - 1, 50, 4_000_000_000, 300, 700]
    totals, kinds = zip(*((total, step.kind) for total, step in map(unwrapper.update, raws)), strict=True)
    assert kinds == (CounterKind.FIRST, CounterKind.INCREASE, CounterKind.WRAP, CounterKind.INCREASE,
                     CounterKind.WRAP, CounterKind.INCREASE)
    assert totals == (MAX32 - 100, MAX32 - 1, 2**32 + 50, 2**32 + 4_000_000_000, 2**33 + 300, 2**33 + 700)
    unwrapper.update(2_000_000_000)
    total, step = unwrapper.update(1_000)  # a big drop far from the top: reset, the total starts over
    assert (total, step.kind) == (1_000, CounterKind.RESET)
    assert unwrapper.update(1_500)[0] == 1_500


# --- decoding --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "scale", "valid_min", "value", "quality"), [
    (231, 1.0, None, 231.0, Quality.GOOD),
    (2310, 0.1, None, 231.0, Quality.GOOD),
    (944, 0.001, 0, 0.944, Quality.GOOD),
    (230100, 0.001, None, 230.1, Quality.GOOD),
    (-1, 1.0, 0, math.nan, Quality.BAD),  # "a negative value indicates that this object is not available"
    (b" 231.5 ", 1.0, None, 231.5, Quality.GOOD),  # numbers sent as text
    (b"", 1.0, None, math.nan, Quality.BAD),
    (Missing("noSuchObject"), 1.0, None, math.nan, Quality.BAD),
    (Missing("noSuchInstance"), 1.0, None, math.nan, Quality.BAD),
    (Missing("endOfMibView"), 1.0, None, math.nan, Quality.BAD),
])
def test_decode_number(raw, scale, valid_min, value, quality):
    got, flag = decode_number(raw, scale, valid_min)
    assert flag == quality
    assert (math.isnan(got) and math.isnan(value)) or got == value


def test_decode_number_refuses_text_that_is_no_number():
    with pytest.raises(ValueError, match="expected a number"):
        decode_number(b"n/a")


@pytest.mark.parametrize(("value", "scale", "precision", "expected"), [
    (123, 10, 2, 1230.0),  # kilo, 2 decimals: 1.23 kW
    (235, 9, 1, 23.5),  # units, 1 decimal
    (230, 9, 0, 230.0),
    (4500, 8, 0, 4.5),  # milli
    (7, 11, 0, 7e6),  # mega
    (42, 9, -2, 42.0),  # negative precision: accurate digits, not decimals
])
def test_entity_sensor_value(value, scale, precision, expected):
    assert entity_sensor_value(value, scale, precision) == pytest.approx(expected, rel=1e-12)


# --- configuration ---------------------------------------------------------------------------------------

BASE = {"name": "ups-a1", "site": "dc1", "host": "192.0.2.7", "profiles": ["ups-mib"]}


def test_v2c_defaults_and_secret_community():
    cfg = SnmpDeviceConfig(**BASE, community="s3cret")
    assert (cfg.protocol, cfg.port, cfg.version, cfg.retries) == ("snmp", 161, "2c", 1)
    assert "s3cret" not in repr(cfg) and cfg.community.get_secret_value() == "s3cret"
    assert isinstance(cfg.make_reader(), DeviceReader)


@pytest.mark.parametrize(("given", "level"), [
    ({}, "noAuthNoPriv"),
    ({"auth_password": "12345678"}, "authNoPriv"),
    ({"auth_password": "12345678", "priv_password": "abcdefgh"}, "authPriv"),
])
def test_v3_security_level_follows_the_passwords(given, level):
    cfg = SnmpDeviceConfig(**BASE, version="3", sec_name="nms", **given)
    assert cfg.effective_sec_level == level


def test_v3_protocol_spellings():
    cfg = SnmpDeviceConfig(**BASE, version="v3", sec_name="nms", sec_level="authpriv", auth_protocol="sha-256",
                           auth_password="12345678", priv_protocol="aes-128", priv_password="abcdefgh")
    assert (cfg.version, cfg.sec_level, cfg.auth_protocol, cfg.priv_protocol) == ("3", "authPriv", "SHA256", "AES")
    assert "12345678" not in repr(cfg)


@pytest.mark.parametrize(("given", "message"), [
    ({"version": "3"}, "needs sec_name"),
    ({"version": "3", "sec_name": "nms", "sec_level": "authPriv", "auth_password": "12345678"}, "needs priv_password"),
    ({"version": "3", "sec_name": "nms", "auth_password": "short"}, "at least 8 characters"),
    ({"version": "3", "sec_name": "nms", "auth_password": "12345678", "auth_protocol": "SHA3"}, "auth_protocol"),
    ({"sec_name": "nms"}, "only apply to SNMP version '3'"),
    ({"profiles": ["apc-powernet"]}, "shipped: eaton-epdu-mib"),
    ({"profiles": []}, "profiles"),
    ({"points": {"output_power_w": "ups1.out"}}, "not produced by profiles ['ups-mib']"),
    ({"timeout_s": 30, "interval_s": 10}, "timeout_s"),
])
def test_bad_config_fails_fast_naming_the_problem(given, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        SnmpDeviceConfig(**{**BASE, **given})


def test_points_may_name_table_rows_and_entity_sensors():
    cfg = SnmpDeviceConfig(**{**BASE, "profiles": ["ups-mib", "entity-sensor-mib", "eaton-epdu-mib"]},
                           points={"output_l1_power_w": "ups1.out", "sensor12_power_w": "pdu.inlet",
                                   "unit0_outlet7_energy_wh": "rack7.energy"})
    assert set(cfg.points) == {"output_l1_power_w", "sensor12_power_w", "unit0_outlet7_energy_wh"}


def test_from_url_v2c():
    cfg = SnmpDeviceConfig.from_url("snmp://s3cret@10.0.0.20:1161?profile=ups-mib,xups-mib&timeout_s=2")
    assert (cfg.host, cfg.port, cfg.version, cfg.profiles) == ("10.0.0.20", 1161, "2c", ["ups-mib", "xups-mib"])
    assert cfg.community.get_secret_value() == "s3cret" and cfg.timeout_s == 2
    assert (cfg.name, cfg.site) == ("snmp-10.0.0.20-1161", "probe")
    assert SnmpDeviceConfig.from_url(SnmpDeviceConfig.example_url).profiles == ["ups-mib", "xups-mib"]


def test_from_url_v3_with_secrets_as_options():
    cfg = SnmpDeviceConfig.from_url("snmp://nms@ups7.example?version=3&profile=xups-mib&auth_protocol=SHA512",
                                    auth_password="12345678", priv_password="abcdefgh", priv_protocol="AES256",
                                    name="ups7", site="dc2")
    assert (cfg.sec_name, cfg.effective_sec_level, cfg.auth_protocol, cfg.priv_protocol) == (
        "nms", "authPriv", "SHA512", "AES256")
    assert (cfg.name, cfg.site, cfg.port) == ("ups7", "dc2", 161)
    with pytest.raises(ValueError, match="expected snmp://"):
        SnmpDeviceConfig.from_url("snmp:///?profile=ups-mib")


def test_missing_pysnmp_gives_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "pysnmp.hlapi.v3arch.asyncio", None)
    reader = SnmpDeviceConfig(**BASE).make_reader()
    with pytest.raises(MissingExtraError, match=re.escape("pip install 'dcpue[collectors]'")):
        reader.open()
    reader.close()


# --- reads from snmpsim ----------------------------------------------------------------------------------

@pytest.mark.integration
def test_eaton_9px_over_v2c_reads_the_recorded_values(snmp_agent):
    records = recorded(snmp_agent, "eaton")
    profile = load_profile("xups-mib")
    column = {c.object: c for t in profile.tables for c in t.columns}
    scalar = {s.object: s for s in profile.scalars}
    watts = int(records[column["xupsOutputWatts"].oid + ".1"][1])
    volts = int(records[column["xupsOutputVoltage"].oid + ".1"][1])
    load = int(records[scalar["xupsOutputLoad"].oid][1])

    values = read_once(device(snmp_agent, points={"output_l1_power_w": "ups-a1.output"}))

    assert (values["output_l1_power_w"].value, values["output_l1_power_w"].unit) == (watts, "W")
    assert (values["output_l1_voltage_v"].value, values["output_l1_voltage_v"].unit) == (volts, "V")
    assert (values["output_load_pct"].value, values["output_load_pct"].unit) == (load, "%")
    for name in ("output_l1_power_w", "output_l1_voltage_v", "output_load_pct"):
        assert values[name].quality == Quality.GOOD and values[name].ts_ms is None
    expected = expected_xups(records)
    assert len(expected) > 20
    assert {name: values[name].value for name in expected} == pytest.approx(expected)


@pytest.mark.integration
@pytest.mark.parametrize("user", ["dcpue-sha-aes", "dcpue-sha256-aes256", "dcpue-md5-des", "dcpue-sha512-nopriv",
                                  "dcpue-noauth"])
def test_eaton_9px_over_v3(snmp_agent, user):
    v3_user = snmp_agent.user(user)
    if v3_user.priv_key:
        require_privacy_support()
    values = read_once(v3_device(snmp_agent, v3_user))
    expected = expected_xups(recorded(snmp_agent, "eaton"))
    assert {name: values[name].value for name in expected} == pytest.approx(expected)


@pytest.mark.integration
def test_missing_objects_read_as_nan_bad_and_the_rest_is_kept(snmp_agent):
    # the 9PX recording has no UPS-MIB objects and no xupsOutputTotal group
    values = read_once(device(snmp_agent, profiles=["ups-mib"], points={"output_l1_power_w": "ups-a1.output"}))
    for name in ("battery_status", "battery_temp_c", "output_source", "output_l1_power_w"):
        assert math.isnan(values[name].value) and values[name].quality == Quality.BAD, name
    assert values["output_l1_power_w"].unit == "W"  # a mapped row the agent lacks is still reported, as missing
    values = read_once(device(snmp_agent))
    assert math.isnan(values["output_power_w"].value) and values["output_power_w"].quality == Quality.BAD
    assert values["output_l1_power_w"].quality == Quality.GOOD and values["output_l1_power_w"].value > 0


@pytest.mark.integration
def test_first_profile_with_a_good_value_wins(snmp_agent):
    records = recorded(snmp_agent, "eaton")
    charge = next(s for s in load_profile("xups-mib").scalars if s.object == "xupsBatCapacity")
    values = read_once(device(snmp_agent, profiles=["ups-mib", "xups-mib"]))
    # UPS-MIB's upsEstimatedChargeRemaining is absent, so XUPS-MIB's xupsBatCapacity fills the field
    assert values["battery_charge_pct"].value == int(records[charge.oid][1])
    assert values["battery_charge_pct"].quality == Quality.GOOD
    assert math.isnan(values["battery_runtime_min"].value)  # only UPS-MIB has it, and the agent does not


@pytest.mark.integration
def test_pdu_entity_sensors_and_eaton_epdu_tables(snmp_agent):
    values = read_once(device(snmp_agent, name="pdu-7", community="pdu",
                              profiles=["entity-sensor-mib", "eaton-epdu-mib"]))
    got = {name: (fv.value, fv.unit) for name, fv in values.items() if fv.quality == Quality.GOOD}
    assert got["sensor1_power_w"] == (pytest.approx(1230.0), "W")  # 123, kilo, 2 decimals
    assert got["sensor2_temp_c"] == (23.5, "°C")
    assert got["sensor3_voltage_ac_v"] == (230.0, "V")
    assert got["sensor4_humidity_pct"] == (45.0, "%")
    for name in ("sensor5_temp_c", "sensor6_power_w"):  # unavailable(2); overflow marker
        assert math.isnan(values[name].value) and values[name].quality == Quality.BAD
    assert got["unit0_input1_power_w"] == (1180.0, "W")
    assert got["unit0_input1_v1_voltage_v"] == (230.1, "V")
    assert got["unit0_input1_i1_current_a"] == (5.2, "A")
    assert got["unit0_input1_power_factor"] == (0.944, "")
    assert got["unit0_input1_frequency_hz"] == (50.0, "Hz")
    assert (got["unit0_outlet1_power_w"], got["unit0_outlet3_power_w"]) == ((400.0, "W"), (780.0, "W"))
    assert math.isnan(values["unit0_outlet2_power_w"].value)  # -1: not available, never a negative power
    assert values["unit0_outlet2_power_w"].quality == Quality.BAD
    assert got["unit0_outlet3_energy_wh"] == (654321.0, "Wh")


@pytest.mark.integration
def test_energy_counter_stays_monotonic_across_the_32_bit_wrap(snmp_agent):
    config = device(snmp_agent, name="pdu-wrap", community="pdu", profiles=["eaton-epdu-mib"])
    field = "unit0_input1_energy_wh"
    start = int(recorded(snmp_agent, "pdu")[ENERGY_OID][1].split("=")[1])
    readers = [config.make_reader()]
    published = []
    try:
        snmp_set_gauge(snmp_agent, "pdu", ENERGY_OID, start)
        for raw in (None, 200, 100_000, 5, 900):  # wrap, increase, reset (far from the top), increase
            if raw is not None:
                snmp_set_gauge(snmp_agent, "pdu", ENERGY_OID, raw)
            if raw == 100_000:  # the engine makes a new reader after a failed read: the unwrap state stays
                readers[-1].close()
                readers.append(config.make_reader())
            value = values_by_field(readers[-1].read())[field]
            published.append((value.value, value.quality))
    finally:
        readers[-1].close()
        snmp_set_gauge(snmp_agent, "pdu", ENERGY_OID, start)
    assert published == [
        (start, Quality.GOOD),
        (2**32 + 200, Quality.GOOD),
        (2**32 + 100_000, Quality.GOOD),
        (5, Quality.UNCERTAIN),  # the reset is published as the decrease it is
        (900, Quality.GOOD),
    ]
    assert readers[-1].counter_resets == 1


@pytest.mark.integration
def test_reads_work_from_any_thread(snmp_agent):
    reader = device(snmp_agent).make_reader()
    reader.open()
    results: list[int] = []
    try:
        for _ in range(3):  # a fresh thread each time, as a pool may do
            thread = threading.Thread(target=lambda: results.append(len(reader.read())))
            thread.start()
            thread.join(10)
        assert len(results) == 3 and len(set(results)) == 1 and results[0] > 20
    finally:
        reader.close()
        reader.close()  # idempotent


@pytest.mark.integration
def test_wrong_community_is_a_clear_timeout_fast(snmp_agent):
    reader = device(snmp_agent, community="not-eaton", timeout_s=0.5, retries=0).make_reader()
    started = time.monotonic()
    with pytest.raises(CollectorError) as caught:
        reader.read()
    reader.close()
    assert time.monotonic() - started < 3
    message = str(caught.value)
    assert f"'ups-a1' ({snmp_agent.host}:{snmp_agent.port})" in message
    assert "no response" in message and "wrong community or unreachable" in message


@pytest.mark.integration
def test_nothing_listening_is_a_clear_error(snmp_agent):
    port = free_udp_port()
    reader = device(snmp_agent, port=port, timeout_s=0.5, retries=1).make_reader()
    with pytest.raises(CollectorError, match=rf"127\.0\.0\.1:{port}\): no response after 0\.5 s and 1 retries"):
        reader.read()
    reader.close()


@pytest.mark.integration
@pytest.mark.parametrize(("overrides", "message"), [
    ({"auth_password": "not-the-auth-key"}, "authentication failure: wrong digest"),
    ({"sec_name": "ghost"}, "authentication failure: unknown user 'ghost'"),
    ({"priv_password": "not-the-priv-key"}, "decryption failure"),
    ({"auth_protocol": "MD5"}, "authentication failure: wrong digest (auth_password or auth_protocol MD5"),
])
def test_wrong_v3_credentials_are_named(snmp_agent, overrides, message):
    require_privacy_support()
    config = v3_device(snmp_agent, snmp_agent.user("dcpue-sha-aes"), timeout_s=1.0, retries=0, **overrides)
    with pytest.raises(CollectorError, match=re.escape(message)) as caught:
        read_once(config)
    assert f"({snmp_agent.host}:{snmp_agent.port})" in str(caught.value)


@pytest.mark.integration
def test_a_value_of_the_wrong_type_is_an_error_naming_the_object(snmp_agent):
    config = device(snmp_agent, name="pdu-9", community="badpdu", profiles=["eaton-epdu-mib"])
    with pytest.raises(CollectorError, match=r"'pdu-9' .*inputTotalWatts .*expected a number, got the text 'n/a'"):
        read_once(config)


def test_reader_is_lazy_and_close_is_safe_before_open():
    reader = SnmpReader(SnmpDeviceConfig(**BASE))
    reader.close()  # never opened: nothing to release, no error
    reader.close()


def test_the_documented_examples_are_valid(tmp_path):
    text = (REPO / "docs" / "collectors" / "snmp.md").read_text(encoding="utf-8")
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, flags=re.S)]
    devices = [d for b in blocks if isinstance(b, dict) and "devices" in b for d in b["devices"]]
    assert len(devices) == 3
    for entry in devices:
        config = SnmpDeviceConfig.model_validate(entry)
        assert config.points
    assert [SnmpDeviceConfig.model_validate(d).version for d in devices] == ["2c", "2c", "3"]
    own = next(b for b in blocks if isinstance(b, dict) and b.get("name") == "my-pdu")
    path = tmp_path / "my-pdu.yaml"
    path.write_text(yaml.safe_dump(own, allow_unicode=True), encoding="utf-8")
    assert load_profile(str(path)).field_names() == ["input_power_w", "outlet{index}_energy_wh"]
