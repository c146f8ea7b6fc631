"""Collector response parsers under hostile device answers: Modbus registers, SNMP values, Redfish JSON,
MQTT payloads and BACnet addresses.

The property everywhere: a value published ``GOOD`` is a finite number (within the field's plausible range
where one is configured); anything else is NaN flagged ``BAD``, a dead letter with its reason, or the
parser's documented error (``ValueError`` / :class:`CollectorError` with a message) — never another
exception, which would fail the whole device's read (or, for MQTT, lose every buffered message).
tests/ingest/* check each parser against real peers and hand-picked cases; these generate the answers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from pyasn1.type import univ
from pysnmp.proto import rfc1902

from dcpue.errors import CollectorError
from dcpue.ingest.bacnet import MAX_INSTANCE, parse_device_address, parse_local_address, parse_object_id
from dcpue.ingest.device import FieldValue
from dcpue.ingest.modbus import (
    BYTE_ORDERS,
    DTYPES,
    ModbusDeviceConfig,
    ModbusReader,
    decode_registers,
    encode_registers,
    register_count,
)
from dcpue.ingest.mqtt import MqttDeviceConfig, MqttSubscription, parse_path, parse_payload, parse_time
from dcpue.ingest.redfish import PARSERS
from dcpue.ingest.snmp import Missing, SnmpDeviceConfig, decode_number, entity_sensor_value
from dcpue.model import Quality

from .profiles import fuzz

EARLIEST_MS, LATEST_MS = 946_684_800_000, 4_102_444_800_000


def _honest(values: list[FieldValue]) -> None:
    """Values not flagged BAD/COLLECTOR_DOWN are finite floats (a BAD value may be kept for audit, e.g. Modbus's
    implausible ones: the wire format then dead-letters it unless it is NaN, see tests/fuzz/test_wire_fuzz.py)."""
    for v in values:
        assert isinstance(v.value, float), v
        if not v.quality & (Quality.BAD | Quality.COLLECTOR_DOWN):
            assert math.isfinite(v.value), v


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """Silence a collector's per-read warnings (thousands of them would dominate the run time)."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


# -- Modbus ------------------------------------------------------------------------------------------------

REGISTER = st.integers(0, 0xFFFF)


@fuzz(100)
@given(st.sampled_from(sorted(DTYPES)), st.sampled_from(sorted(BYTE_ORDERS)),
       st.lists(st.integers(-3, 0x10002), max_size=5), st.floats(), st.floats())
def test_modbus_decoding_gives_a_float_or_a_value_error(data_type, order, registers, scale, offset):
    try:
        with np.errstate(all="ignore"):  # an infinite scale overflows, which is the caller's (validated) choice
            value = decode_registers(registers, data_type, order, scale, offset)
    except ValueError as exc:
        words = register_count(data_type)
        assert len(registers) != words or any(not 0 <= r <= 0xFFFF for r in registers), exc
        return
    assert isinstance(value, float)


@fuzz(100)
@given(st.sampled_from(["int16", "uint16", "int32", "uint32", "int64", "uint64"]), st.sampled_from(sorted(BYTE_ORDERS)),
       st.data())
def test_modbus_integer_registers_survive_a_decode_encode_round_trip(data_type, order, data):
    registers = data.draw(st.lists(REGISTER, min_size=register_count(data_type), max_size=register_count(data_type)))
    value = decode_registers(registers, data_type, order)
    assume(abs(value) < 2**53)  # beyond 2**53 the float64 result cannot carry every integer (documented)
    assert encode_registers(value, data_type, order) == registers


FIELD = st.fixed_dictionaries(
    {"name": st.sampled_from(["power_w", "energy_wh", "temp_c", "freq_hz"]),
     "register_type": st.sampled_from(["holding", "input"]), "address": st.integers(0, 40),
     "type": st.sampled_from(sorted(DTYPES)), "scale": st.sampled_from([1.0, 0.1, 0.001, 10.0, 1e300, -1.0])},
    optional={"range": st.tuples(st.floats(-1e6, 0), st.floats(0, 1e6)),
              "byte_order": st.sampled_from(["ABCD", "CDAB", "BADC", "DCBA"]),
              "offset": st.floats(-1e3, 1e3)})


class _FakeModbus:
    """Answers every read with the registers hypothesis drew (a device sending anything 16-bit)."""

    def __init__(self, answers: st.DataObject) -> None:
        self.answers = answers

    def _answer(self, address: int, count: int, **_: Any) -> Any:
        regs = self.answers.draw(st.lists(REGISTER, min_size=count, max_size=count))
        return type("R", (), {"registers": regs, "isError": lambda self: False})()

    read_holding_registers = read_input_registers = _answer

    def close(self) -> None:
        pass


@fuzz(80)
@given(st.lists(FIELD, min_size=1, max_size=4, unique_by=lambda f: f["name"]), st.data())
def test_modbus_reader_never_publishes_an_implausible_value_as_good(fields, data):
    config = ModbusDeviceConfig(name="m", site="s", host="192.0.2.1", fields=fields)
    reader = ModbusReader(config)
    reader._client = _FakeModbus(data)  # noqa: SLF001 - the transport is replaced, the decoding is real
    reader._exceptions = (OSError, OSError, OSError)  # noqa: SLF001
    for _ in range(2):  # the first read runs the byte-order check, the second reads as configured
        with np.errstate(all="ignore"), _quiet("dcpue.ingest.modbus"):  # overflow to inf is what is tested
            values = reader.read()
        _honest(values)
        by_name = {f.name: f for f in reader.fields}
        for v in values:
            f = by_name[v.field]
            if v.quality == Quality.GOOD and f.valid_range is not None:
                assert f.valid_range[0] <= v.value <= f.valid_range[1], (v, f.valid_range)


# -- SNMP --------------------------------------------------------------------------------------------------

SNMP_RAW = st.one_of(st.integers(), st.integers(-(10**400), 10**400), st.binary(max_size=12),
                     st.sampled_from([b"1e308", b"-1e400", b"nan", b"inf", b" 42 ", b"", b"12.5\x00"]),
                     st.text(max_size=10).map(str.encode), st.builds(Missing, st.text(max_size=5)))


@fuzz(200)
@given(SNMP_RAW, st.sampled_from([1.0, 0.1, 0.001, 10.0, 1e10, 1e300, -0.5]),
       st.one_of(st.none(), st.floats(-1e6, 0)), st.one_of(st.none(), st.floats(0, 1e6)))
def test_snmp_values_decode_to_a_plausible_good_number_or_nan_bad(raw, scale, valid_min, valid_max):
    try:
        value, quality = decode_number(raw, scale, valid_min, valid_max)
    except ValueError as exc:
        assert isinstance(raw, bytes) and "expected a number" in str(exc)
        return
    if quality == Quality.GOOD:
        assert math.isfinite(value)
        number = float(raw.decode("ascii", "replace").strip()) if isinstance(raw, bytes) else float(raw)
        assert (valid_min is None or number >= valid_min) and (valid_max is None or number <= valid_max)
        assert math.isclose(value, number * scale, rel_tol=1e-9, abs_tol=1e-300)
    else:
        assert quality == Quality.BAD and math.isnan(value)


@fuzz(100)
@given(st.integers(), st.integers(-3, 20), st.one_of(st.integers(-12, 12), st.integers(),
                                                     st.integers(10**300, 10**400),
                                                     st.integers(-(10**400), -(10**300))))
def test_entity_sensor_values_are_finite_or_a_value_error(value, scale, precision):
    try:
        result = entity_sensor_value(value, scale, precision)
    except ValueError as exc:
        assert "entPhySensor" in str(exc)
        return
    except OverflowError:  # only for a value beyond float range itself, which the reader filters (|raw| < 1e9)
        assert abs(value) > 1e300
        return
    if abs(value) < 1e9:
        assert math.isfinite(result)


PYSNMP_VALUE = st.one_of(
    st.integers(-(2**31), 2**31 - 1).map(rfc1902.Integer32), st.integers(0, 2**32 - 1).map(rfc1902.Gauge32),
    st.integers(0, 2**32 - 1).map(rfc1902.Counter32), st.integers(0, 2**64 - 1).map(rfc1902.Counter64),
    st.integers(-(10**400), 10**400).map(univ.Integer),  # an agent sending an oversized INTEGER
    st.binary(max_size=10).map(rfc1902.OctetString), st.just(univ.Null("")),
    st.just(rfc1902.IpAddress("10.0.0.1")), st.just(univ.ObjectIdentifier("1.3.6.1")),
)


@fuzz(150)
@given(st.data())
def test_snmp_reader_turns_any_agent_value_into_an_honest_field_or_a_collector_error(data):
    reader = SnmpDeviceConfig(name="ups", site="s", host="192.0.2.7", profiles=["ups-mib"]).make_reader()
    specs = [f for f in reader.profiles[0].scalars]
    for _ in range(3):  # the same field read repeatedly: counters are unwrapped across reads
        spec = data.draw(st.sampled_from(specs))
        try:
            value = reader._decode(spec, spec.field, spec.oid, data.draw(PYSNMP_VALUE))  # noqa: SLF001
        except CollectorError as exc:
            assert "unexpected" in str(exc)
            continue
        _honest([value])


# -- Redfish -----------------------------------------------------------------------------------------------

JSON_NUMBER = st.one_of(st.integers(), st.integers(-(10**400), 10**400), st.floats(),
                        st.sampled_from([math.inf, -math.inf, math.nan, 1e308]))
JSON_LEAF = st.one_of(st.none(), st.booleans(), JSON_NUMBER, st.text(max_size=8),
                      st.sampled_from(["OK", "Warning", "Critical", "Intake", "Chassis", "Power", "W", "Cel"]))
KEY_NAMES = (["PowerControl", "PowerSupplies", "PowerConsumedWatts", "PowerInputWatts", "PowerOutputWatts",
                        "LastPowerOutputWatts", "MemberId", "Temperatures", "ReadingCelsius", "PhysicalContext",
                        "Name", "Reading", "ReadingUnits", "ReadingType", "ElectricalContext", "Status", "Health",
                        "State", "PowerWatts", "EnergykWh", "TemperatureCelsius", "PumpSpeedPercent",
                        "CoolantLevelPercent", "CoolantLevelStatus", "CoolantQuality", "DetectorState",
                        "SupplyTemperatureCelsius", "FlowLitersPerMinute", "HeatRemovedkW"])
KEYS = st.sampled_from(KEY_NAMES) | st.text(max_size=5)
JSON_DOC = st.recursive(JSON_LEAF, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                           st.dictionaries(KEYS, inner, max_size=5)), max_leaves=20)


@fuzz(250)
@given(st.sampled_from(sorted(PARSERS)), st.fixed_dictionaries(
    {}, optional={k: st.one_of(JSON_NUMBER, JSON_DOC, st.dictionaries(st.just("Reading"), JSON_NUMBER))
                  for k in KEY_NAMES}))
def test_every_redfish_parser_takes_any_json_object_and_publishes_only_finite_good_values(kind, doc):
    parsed = PARSERS[kind](doc, "chassis.c1")
    _honest(parsed.values)
    names = {v.field for v in parsed.values}
    assert set(parsed.roles.values()) <= names


@pytest.mark.parametrize("kind", sorted(PARSERS))
@pytest.mark.parametrize("doc", [{"Status": {"State": []}}, {"Status": {"State": {}, "Health": []}},
                                 {"DetectorState": []}, {"Status": {"Health": {"x": 1}}}])
def test_unhashable_status_values_are_not_a_crash(kind, doc):
    """Found by the long fuzz profile (the 14th bug): a LeakDetector whose ``Status.State`` was a JSON list
    raised TypeError (a list does not hash) instead of giving a BAD value."""
    _honest(PARSERS[kind](doc, "chassis.c1").values)


@pytest.mark.parametrize("text", ['{"Reading": Infinity}', '{"Reading": -Infinity}', '{"Reading": 1e400}',
                                  '{"Reading": ' + "9" * 400 + "}", '{"Reading": NaN}'])
def test_redfish_readings_beyond_float_range_are_bad_not_infinite(text):
    (value,) = PARSERS["sensor"](json.loads(text), "chassis.c1.sensor.s").values
    assert math.isnan(value.value) and value.quality & Quality.BAD


# -- MQTT --------------------------------------------------------------------------------------------------

SUBSCRIPTION = st.one_of(
    st.just(MqttSubscription(topic="dc/+/power", field="p_{1}", unit="W")),
    st.builds(lambda path, tpath: MqttSubscription(topic="dc/#", field="f", format="json", value_path=path,
                                                   time_path=tpath),
              st.sampled_from(["$", "$.v", "$.data.power", "$.phases[1]", "$['a b'].c", "v"]),
              st.sampled_from([None, "$.t", "$.ts"])))
PAYLOAD_DOC = st.recursive(
    st.one_of(JSON_LEAF, st.sampled_from(["2024-05-01T12:00:00Z", "1714564800", "1714564800000", "0001-01-01"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.sampled_from(["v", "t", "ts", "data", "power", "phases", "a b", "c"]),
                                            inner, max_size=4)), max_leaves=10)


def _payload_bytes(doc: Any) -> bytes:
    return json.dumps(doc).encode()  # Python's json writes NaN/Infinity, which devices send too


@fuzz(250)
@given(SUBSCRIPTION, st.one_of(PAYLOAD_DOC.map(_payload_bytes), st.binary(max_size=30),
                               st.sampled_from([b"[" * 5_000, b'{"v":' + b"[" * 5_000, b"1e400", b"\xff"])))
def test_an_mqtt_payload_gives_a_finite_value_and_a_plausible_time_or_a_value_error(sub, payload):
    try:
        value, ts_ms = parse_payload(sub, payload)
    except ValueError as exc:
        assert str(exc)
        return
    assert math.isfinite(value)
    assert ts_ms is None or EARLIEST_MS <= ts_ms < LATEST_MS


@fuzz(100)
@given(st.one_of(JSON_LEAF, st.text(max_size=30), st.datetimes().map(lambda d: d.isoformat()),
                 st.floats(0, 1e20), st.integers(-(10**30), 10**30)))
def test_mqtt_device_times_are_plausible_or_a_value_error(obj):
    try:
        ms = parse_time(obj)
    except ValueError as exc:
        assert "time" in str(exc)
        return
    assert isinstance(ms, int) and EARLIEST_MS <= ms < LATEST_MS


@fuzz(100)
@given(st.text(max_size=20))
def test_mqtt_json_paths_parse_or_fail_with_a_value_error(path):
    try:
        keys = parse_path(path)
    except ValueError as exc:
        assert "JSON path" in str(exc)
        return
    assert all(isinstance(k, str | int) for k in keys)


@fuzz(60)
@given(st.lists(st.one_of(PAYLOAD_DOC.map(_payload_bytes), st.just(b"[" * 5_000), st.binary(max_size=10)),
                min_size=1, max_size=6))
def test_one_hostile_mqtt_message_does_not_cost_the_others(payloads):
    pytest.importorskip("paho.mqtt.client")
    config = MqttDeviceConfig(name="m", site="s", host="127.0.0.1", subscriptions=[
        {"topic": "dc/#", "field": "f", "format": "json", "value_path": "$.v"}])
    reader = config.make_reader()
    values = [v for i, p in enumerate(payloads)
              for v in reader._decode("dc/x", p, False, EARLIEST_MS + i)]  # noqa: SLF001 - no broker needed
    assert len(values) == len(payloads)  # one field value per message, good or BAD
    _honest(values)
    bad = [v for v in values if v.quality & Quality.BAD]
    assert len(bad) == len(reader.malformed()) and all(m.reason for m in reader.malformed())


# -- BACnet ------------------------------------------------------------------------------------------------

# digits, and characters str.isdigit() takes for digits although int() refuses them (², ①) or reads them (٣)
DIGITISH = st.one_of(st.text(max_size=8), st.text(alphabet="0123456789 ²³¹①٣", max_size=7))

@fuzz(150)
@given(st.one_of(st.text(max_size=20), st.builds(lambda k, n: f"{k},{n}", st.sampled_from(
    ["analog-value", "analog-output", "binary-value", "large-analog-value"]), DIGITISH)))
def test_bacnet_object_ids_parse_or_fail_with_a_value_error_naming_the_text(text):
    try:
        kind, instance = parse_object_id(text)
    except ValueError as exc:
        assert repr(text) in str(exc) or "object" in str(exc), str(exc)
        return
    assert kind in ("analog-value", "analog-output", "large-analog-value") and 0 <= instance <= MAX_INSTANCE


@fuzz(150)
@given(st.one_of(st.text(max_size=22), st.builds(lambda p: f"10.0.0.1:{p}", DIGITISH),
                 st.builds(lambda p: f"0.0.0.0:{p}", DIGITISH)))
def test_bacnet_addresses_parse_or_fail_with_a_value_error_naming_the_text(text):
    for parse, low in ((parse_device_address, 1), (parse_local_address, 0)):
        try:
            result = parse(text)
        except ValueError as exc:
            assert repr(text) in str(exc), str(exc)
            continue
        host, port = result if isinstance(result, tuple) else (result.rsplit(":", 1)[0], int(result.rsplit(":", 1)[1]))
        assert low <= port <= 65535 and host.count(".") == 3


def test_unicode_superscript_digits_are_refused_with_the_bacnet_message():
    for parse, text in ((parse_object_id, "analog-value,²"), (parse_device_address, "10.0.0.1:²"),
                        (parse_local_address, "0.0.0.0:²")):
        with pytest.raises(ValueError, match="not an object identifier|the port must be a number"):
            parse(text)


def test_numpy_register_arrays_of_other_kinds_are_refused():
    with pytest.raises(ValueError, match="integers"):
        decode_registers(np.array([1.5, 2.5]), "float32")
