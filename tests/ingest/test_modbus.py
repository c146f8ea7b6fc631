"""The Modbus collector: decoding, profiles, read planning, and reads over TCP from a real pymodbus server.

Expected decodings are built independently of the code under test: :mod:`struct` packs the value
big-endian and the bytes are reordered by the byte-order letters themselves (A = most significant).
"""

from __future__ import annotations

import logging
import struct
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from dcpue.errors import CollectorError, ConfigError, MissingExtraError
from dcpue.ingest.device import DeviceReader
from dcpue.ingest.modbus import (
    DTYPES,
    MAX_READ_REGISTERS,
    ModbusDeviceConfig,
    ModbusField,
    decode_registers,
    list_profiles,
    load_profile,
    plan_reads,
    sanity_check,
)
from dcpue.model import UNITS, Quality
from tests.peers.modbus import encode_value, run_modbus_server, short_reply_server, silent_tcp_server
from tests.servers import free_port

SHIPPED = ("abb-b23", "eastron-sdm630", "generic-cdu-chiller", "schneider-pm5000")
ORDERS = {1: ("AB", "BA"), 2: ("ABCD", "DCBA", "BADC", "CDAB"), 4: ("ABCDEFGH", "HGFEDCBA", "BADCFEHG", "GHEFCDAB")}
STRUCT = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "int64": "q", "uint64": "Q",
          "float32": "f", "float64": "d"}
# values whose bytes all differ, so any byte ending up in the wrong place changes the result
SAMPLES = {
    "int16": -12345,
    "uint16": 0xA1B2,
    "int32": -0x12345678,
    "uint32": 0xA1B2C3D4,
    "int64": -0x123456789ABCDEF0,
    "uint64": 0xA1B2C3D4E5F60718,
    "float32": -1234.5678,
    "float64": -98765.4321,
}


def registers_for(value: float, data_type: str, byte_order: str) -> list[int]:
    """The registers a device sends: big-endian bytes reordered by the letters of ``byte_order``."""
    big = struct.pack(">" + STRUCT[data_type], value)
    letters = "ABCDEFGH"[: len(big)]
    wire = bytes(big[letters.index(letter)] for letter in byte_order)
    return list(struct.unpack(f">{len(wire) // 2}H", wire))


def expected(value: float, data_type: str) -> float:
    """``value`` as the decoder must return it: float32 rounding, integers as float64."""
    code = STRUCT[data_type]
    return float(struct.unpack(">" + code, struct.pack(">" + code, value))[0])


def table() -> list[tuple[str, str]]:
    return [(t, order) for t in DTYPES for order in ORDERS[DTYPES[t].itemsize // 2]]


def field(name: str, address: int, data_type: str = "float32", **kw) -> ModbusField:
    return ModbusField(name=name, register_type=kw.pop("register_type", "holding"), address=address,
                       type=data_type, **kw)


def device(host: str, port: int, **kw) -> ModbusDeviceConfig:
    kw.setdefault("interval_s", 10.0)
    kw.setdefault("timeout_s", 2.0)
    return ModbusDeviceConfig(name=kw.pop("name", "meter-1"), site="site-a", host=host, port=port, **kw)


def plausible_value(f: ModbusField) -> float:
    """A value inside ``f``'s range that the field's encoding represents exactly (what the meter would send)."""
    lo, hi = f.valid_range
    value = lo + (hi - lo) * 0.37
    if f.type.startswith("float"):
        return value
    return round((value - f.offset) / f.scale) * f.scale + f.offset


# --- decoding ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("data_type", "byte_order"), table())
def test_decode_every_type_and_byte_order(data_type, byte_order):
    value = SAMPLES[data_type]
    regs = registers_for(value, data_type, byte_order)
    assert decode_registers(regs, data_type, byte_order) == expected(value, data_type)


@pytest.mark.parametrize(("registers", "data_type", "byte_order", "value"), [
    ([0x4348, 0x0000], "float32", "ABCD", 200.0),  # 0x43480000 is 200.0
    ([0x0000, 0x4348], "float32", "CDAB", 200.0),
    ([0x4843, 0x0000], "float32", "BADC", 200.0),
    ([0x0000, 0x4843], "float32", "DCBA", 200.0),
    ([0x3412], "int16", "BA", 0x1234),
    ([0xFFFE], "int16", "AB", -2),
    ([0xFFFE], "uint16", "AB", 65534),
    ([0x5678, 0x1234], "uint32", "CDAB", 0x12345678),
    ([0xFFFF, 0xFFFF], "int32", "ABCD", -1),
    ([0x0001, 0, 0, 0], "int64", "GHEFCDAB", 1),
    ([0x0100, 0, 0, 0], "uint64", "HGFEDCBA", 1),  # little-endian: least significant byte first
    ([0x4059, 0, 0, 0], "float64", "ABCDEFGH", 100.0),  # 0x4059000000000000 is 100.0
])
def test_decode_hand_checked_cases(registers, data_type, byte_order, value):
    assert decode_registers(registers, data_type, byte_order) == value


@pytest.mark.parametrize(("data_type", "sent_as", "configured_as"), [
    ("int16", "AB", "ABCD"), ("int16", "AB", "CDAB"), ("int16", "BA", "DCBA"), ("int16", "BA", "BADC"),
    ("int32", "BADC", "BADCFEHG"), ("float32", "CDAB", "GHEFCDAB"), ("float64", "GHEFCDAB", "CDAB"),
    ("uint64", "HGFEDCBA", "DCBA"),
])
def test_any_spelling_applies_to_any_width(data_type, sent_as, configured_as):
    value = SAMPLES[data_type]
    regs = registers_for(value, data_type, sent_as)
    assert decode_registers(regs, data_type, configured_as) == expected(value, data_type)


def test_decode_scale_and_offset():
    assert decode_registers([0xFF85], "int16", "AB", scale=0.1, offset=20.0) == pytest.approx(-123 * 0.1 + 20.0)
    assert decode_registers(registers_for(1234567, "uint32", "ABCD"), "uint32", scale=0.001) == pytest.approx(
        1234.567)


def test_decode_is_vectorised_over_rows():
    values = [-1.5, 0.0, 230.25, 1e6]
    matrix = np.array([registers_for(v, "float32", "CDAB") for v in values])
    out = decode_registers(matrix, "float32", "CDAB", scale=2.0, offset=1.0)
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, [v * 2.0 + 1.0 for v in values])


@pytest.mark.parametrize(("registers", "data_type", "byte_order", "message"), [
    ([1, 2, 3], "float32", "ABCD", "float32 takes 2 register"),
    ([0x10000, 0], "uint32", "ABCD", "0..65535"),
    ([-1], "int16", "AB", "0..65535"),
    ([1.5, 2.0], "float32", "ABCD", "integers"),
    ([1, 2], "float", "ABCD", "unknown Modbus data type 'float'"),
    ([1, 2], "float32", "ACBD", "unknown byte order 'ACBD'"),
])
def test_decode_rejects_bad_input(registers, data_type, byte_order, message):
    with pytest.raises(ValueError, match=message):
        decode_registers(registers, data_type, byte_order)


# --- read planning ---------------------------------------------------------------------------------------


def covered(blocks) -> list[str]:
    return sorted(f.name for b in blocks for f in b.fields)


def test_plan_joins_contiguous_fields_into_one_read():
    fields = [field(f"f{i}", 100 + 2 * i) for i in range(5)]
    [block] = plan_reads(fields)
    assert (block.register_type, block.address, block.count) == ("holding", 100, 10)
    assert covered([block]) == sorted(f.name for f in fields)


def test_plan_bridges_gaps_up_to_max_gap_only():
    fields = [field("a", 0), field("b", 7), field("c", 30)]  # holes of 5 and 21 registers
    assert [(b.address, b.count) for b in plan_reads(fields, max_gap=5)] == [(0, 9), (30, 2)]
    assert [(b.address, b.count) for b in plan_reads(fields, max_gap=4)] == [(0, 2), (7, 2), (30, 2)]
    assert [(b.address, b.count) for b in plan_reads(fields, max_gap=21)] == [(0, 32)]
    assert [(b.address, b.count) for b in plan_reads(fields, max_gap=0)] == [(0, 2), (7, 2), (30, 2)]


def test_plan_splits_at_125_registers():
    fields = [field(f"f{i:03d}", 2 * i) for i in range(100)]  # 200 contiguous registers
    blocks = plan_reads(fields)
    assert [(b.address, b.count) for b in blocks] == [(0, 124), (124, 76)]
    assert all(b.count <= MAX_READ_REGISTERS for b in blocks)
    assert covered(blocks) == sorted(f.name for f in fields)


def test_plan_respects_a_smaller_device_limit():
    fields = [field(f"f{i:02d}", 2 * i) for i in range(50)]
    blocks = plan_reads(fields, max_count=80)
    assert [b.count for b in blocks] == [80, 20]
    with pytest.raises(ValueError, match="max_count"):
        plan_reads(fields, max_count=126)


def test_plan_groups_per_unit_id_and_register_type():
    fields = [
        field("h1", 0), field("i1", 2, register_type="input"), field("h2", 2),
        field("u2", 4, unit_id=2), field("i2", 0, register_type="input"),
    ]
    blocks = plan_reads(fields, unit_id=1)
    assert [(b.unit_id, b.register_type, b.address, b.count) for b in blocks] == [
        (1, "holding", 0, 4), (1, "input", 0, 4), (2, "holding", 4, 2)]
    assert [f.name for f in blocks[1].fields] == ["i2", "i1"]


def test_plan_handles_overlapping_fields_and_mixed_widths():
    fields = [field("whole", 10, "float64"), field("low", 12, "uint32"), field("flag", 14, "uint16")]
    [block] = plan_reads(fields)
    assert (block.address, block.count) == (10, 5)


# --- profiles --------------------------------------------------------------------------------------------


def test_shipped_profiles_are_listed():
    assert set(SHIPPED) <= set(list_profiles())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_is_valid_and_cites_its_source(name):
    profile = load_profile(name)
    assert profile.name == name
    assert profile.source.title and profile.source.document and profile.source.url
    assert profile.addressing
    allowed = {"", "V", "A", "Hz", *(u for units in UNITS.values() for u in units)}
    taken: dict[str, set[int]] = {"holding": set(), "input": set()}
    for f in profile.fields:
        assert f.valid_range is not None, f"{name}: {f.name} has no plausible range"
        assert f.unit in allowed
        assert f.description
        registers = set(range(f.address, f.address + f.words))
        assert not registers & taken[f.register_type], f"{name}: {f.name} overlaps another field"
        taken[f.register_type] |= registers
    blocks = plan_reads(profile.fields, 1, profile.max_gap, profile.max_read)
    assert all(b.count <= profile.max_read for b in blocks)
    assert covered(blocks) == sorted(f.name for f in profile.fields)


def test_profile_error_names_file_field_and_problem(tmp_path):
    data = load_profile("eastron-sdm630").model_dump(mode="json", by_alias=True)
    data["fields"][1]["type"] = "float"
    data["fields"][3]["unit"] = "amps"
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    message = str(info.value)
    assert str(path) in message
    assert "fields[1] (voltage_l2_v).type" in message and "'float32'" in message
    assert "fields[3] (current_l1_a).unit" in message and "unknown unit 'amps'" in message


@pytest.mark.parametrize(("edit", "expected_text"), [
    (lambda d: d.pop("source"), "source: Field required"),
    (lambda d: d["fields"].append(dict(d["fields"][0])), "field name 'voltage_l1_v' appears twice"),
    (lambda d: d["fields"][0].update(range=[10, 1]), "fields[0] (voltage_l1_v): Value error, range must be"),
    (lambda d: d["fields"][0].update(adress=3), "fields[0] (voltage_l1_v).adress: Extra inputs are not permitted"),
    (lambda d: d.update(max_read=200), "max_read: Input should be less than or equal to 125"),
])
def test_profile_validation_problems(tmp_path, edit, expected_text):
    data = load_profile("eastron-sdm630").model_dump(mode="json", by_alias=True)
    edit(data)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError, match="p.yaml") as info:
        load_profile(path)
    assert expected_text in str(info.value)


def test_unknown_profile_lists_the_shipped_ones(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_profile("eastron-sdm999")
    assert "eastron-sdm999" in str(info.value)
    assert all(name in str(info.value) for name in SHIPPED)
    with pytest.raises(ConfigError, match="not found"):
        load_profile(tmp_path / "missing.yaml")


# --- configuration ---------------------------------------------------------------------------------------


def test_from_url_parses_host_port_unit_and_query():
    cfg = ModbusDeviceConfig.from_url("modbus://10.1.2.3:1502/7?profile=abb-b23&byte_order=CDAB", timeout_s=1)
    assert (cfg.host, cfg.port, cfg.unit_id, cfg.profile, cfg.byte_order) == ("10.1.2.3", 1502, 7, "abb-b23", "CDAB")
    assert cfg.timeout_s == 1 and cfg.site == "probe" and cfg.name == "modbus-10.1.2.3-1502-7"
    assert cfg.protocol == "modbus"
    default = ModbusDeviceConfig.from_url("modbus+tcp://meter.local?profile=eastron-sdm630", name="m", site="dc1")
    assert (default.port, default.unit_id, default.name, default.site) == (502, 1, "m", "dc1")


@pytest.mark.parametrize(("url", "message"), [
    ("tcp://10.1.2.3/1?profile=abb-b23", "not a Modbus URL"),
    ("modbus:///1?profile=abb-b23", "no host"),
    ("modbus://10.1.2.3/meter?profile=abb-b23", "must be the unit id"),
])
def test_from_url_rejects_bad_urls(url, message):
    with pytest.raises(ValueError, match=message):
        ModbusDeviceConfig.from_url(url)


def test_config_rejects_unknown_profile_missing_fields_and_unknown_points():
    with pytest.raises(ValidationError, match="unknown Modbus profile 'sdm630'.*eastron-sdm630"):
        device("h", 502, profile="sdm630")
    with pytest.raises(ValidationError, match="give a `profile`"):
        device("h", 502)
    with pytest.raises(ValidationError, match="unknown field.*power_kw.*active_power_total_w"):
        device("h", 502, profile="eastron-sdm630", points={"power_kw": "site-a.it.power"})
    with pytest.raises(ValidationError, match="byte_order"):
        device("h", 502, profile="eastron-sdm630", byte_order="ACBD")


def test_inline_fields_replace_and_extend_the_profile_and_byte_order_overrides_the_default():
    scaled = field("active_power_total_w", 52, register_type="input", scale=0.001, unit="kW",
                   valid_range=(-1e4, 1e4))
    own_order = field("spare_w", 400, register_type="input", byte_order="ABCD")
    cfg = device("h", 502, profile="eastron-sdm630", fields=[scaled, own_order], byte_order="CDAB",
                  points={"active_power_total_w": "site-a.it.power"})
    by_name = {f.name: f for f in cfg.resolved_fields}
    assert len(by_name) == len(load_profile("eastron-sdm630").fields) + 1
    assert by_name["active_power_total_w"].scale == 0.001 and by_name["active_power_total_w"].unit == "kW"
    assert by_name["voltage_l1_v"].byte_order == "CDAB"  # profile field: the device's override
    assert by_name["spare_w"].byte_order == "ABCD"  # its own order wins
    assert {f.unit_id for f in cfg.resolved_fields} == {1}


def test_max_gap_override_changes_the_plan():
    assert len(device("h", 502, profile="eastron-sdm630").plan()) == 2
    assert len(device("h", 502, profile="eastron-sdm630", max_gap=0).plan()) == 4


def test_profile_from_a_path(tmp_path):
    data = load_profile("generic-cdu-chiller").model_dump(mode="json", by_alias=True)
    data["name"] = "site-cdu"
    path = tmp_path / "site-cdu.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    cfg = device("h", 502, profile=str(path))
    assert cfg.profile_data.name == "site-cdu"


def test_documented_example_is_valid():
    doc = (Path(__file__).parents[2] / "docs" / "collectors" / "modbus.md").read_text(encoding="utf-8")
    example = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    configs = [ModbusDeviceConfig.model_validate(d) for d in yaml.safe_load(example)["devices"]]
    assert [c.name for c in configs] == ["gy01-main-meter", "gy01-cdu-3"]
    assert configs[1].resolved_fields[0].byte_order == "CDAB" and configs[1].effective_max_gap == 0


def test_make_reader_does_no_io_and_follows_the_contract():
    cfg = device("192.0.2.1", 502, profile="schneider-pm5000")  # TEST-NET-1: nothing answers there
    reader = cfg.make_reader()
    assert isinstance(reader, DeviceReader)
    assert not reader.connected
    reader.close()
    reader.close()


def test_missing_pymodbus_gives_an_install_hint(monkeypatch):
    for module in ("pymodbus", "pymodbus.client", "pymodbus.exceptions"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingExtraError, match=r"pip install 'dcpue\[collectors\]'"):
        device("h", 502, profile="abb-b23").make_reader()


# --- reads over TCP ----------------------------------------------------------------------------------------


def spelled(byte_order: str, words: int) -> str:
    """A 4-letter byte order spelled for a ``words``-register value (as the docs define the equivalence)."""
    if len(byte_order) == 2 * words:
        return byte_order
    return {1: dict(zip(ORDERS[2], ("AB", "BA", "BA", "AB"), strict=True)),
            4: dict(zip(ORDERS[2], ORDERS[4], strict=True))}[words][byte_order]


def image_of(values: dict[ModbusField, float], byte_order: str | None = None) -> dict[str, dict[int, int]]:
    """A register image holding each field's value, encoded the way the field says (or in ``byte_order``)."""
    image: dict[str, dict[int, int]] = {"holding": {}, "input": {}}
    for f, value in values.items():
        order = spelled(byte_order or f.byte_order or "ABCD", f.words)
        for i, register in enumerate(encode_value(value, f.type, order, f.scale, f.offset)):
            image[f.register_type][f.address + i] = register
    return image


@pytest.mark.integration
def test_reads_every_type_and_byte_order_over_tcp():
    fields, values, address = [], {}, 0
    for n, (data_type, order) in enumerate(table()):
        f = field(f"v{n:02d}_{data_type}_{order.lower()}", address, data_type, byte_order=order,
                  register_type="holding" if n % 2 else "input")
        fields.append(f)
        values[f] = SAMPLES[data_type]
        address += f.words
    with run_modbus_server({1: image_of(values)}) as peer:
        reader = device(peer.host, peer.port, fields=fields).make_reader()
        try:
            reader.open()
            got = {fv.field: fv for fv in reader.read()}
        finally:
            reader.close()
    for f in fields:
        assert got[f.name].value == expected(SAMPLES[f.type], f.type), f.name
        assert got[f.name].quality == Quality.GOOD
    assert len(peer.requests) == len(reader.blocks) == 2  # one read per register type


@pytest.mark.integration
def test_scale_and_offset_over_tcp():
    temp = field("supply_temp_c", 0, "int16", scale=0.1, offset=-40.0, unit="°C", valid_range=(-50, 100))
    energy = field("energy_kwh", 1, "uint32", scale=0.001, unit="kWh", valid_range=(0, 1e7))
    power = field("power_kw", 3, "float32", byte_order="CDAB", scale=0.001, unit="kW", valid_range=(0, 1e4))
    image = {"holding": {0: 627, **dict(enumerate(registers_for(1234567, "uint32", "ABCD"), start=1)),
                         **dict(enumerate(registers_for(12345.5, "float32", "CDAB"), start=3))}}
    with run_modbus_server({1: image}) as peer:
        reader = device(peer.host, peer.port, fields=[temp, energy, power]).make_reader()
        got = {fv.field: fv for fv in reader.read()}  # read() connects by itself
        reader.close()
    assert got["supply_temp_c"].value == pytest.approx(627 * 0.1 - 40.0)
    assert got["supply_temp_c"].unit == "°C"
    assert got["energy_kwh"].value == pytest.approx(1234.567)
    assert got["power_kw"].value == pytest.approx(12.3455)
    assert all(fv.quality == Quality.GOOD for fv in got.values())


@pytest.mark.integration
@pytest.mark.parametrize("name", SHIPPED)
def test_each_shipped_profile_reads_over_tcp(name):
    profile = load_profile(name)
    values = {f: plausible_value(f) for f in profile.fields}
    with run_modbus_server({3: image_of(values, profile.byte_order)}) as peer:
        cfg = ModbusDeviceConfig.from_url(f"modbus://{peer.host}:{peer.port}/3?profile={name}", timeout_s=2)
        reader = cfg.make_reader()
        reader.open()
        try:
            got = {fv.field: fv for fv in reader.read()}
        finally:
            reader.close()
    assert set(got) == {f.name for f in profile.fields}
    for f, value in values.items():
        fv = got[f.name]
        want = expected(value, "float32") if f.type == "float32" else value
        assert fv.value == pytest.approx(want, rel=1e-12, abs=1e-9), f.name
        assert (fv.unit, fv.quality) == (f.unit, Quality.GOOD), f.name
    assert reader.problems == []
    function_codes = {"holding": 3, "input": 4}
    assert peer.requests == [(3, function_codes[b.register_type]) for b in reader.blocks]


def sdm630_image(swapped: dict[str, float]) -> tuple[dict, dict[str, float]]:
    """An SDM630 image with plausible ABCD values, except ``swapped`` fields, sent word-swapped (CDAB)."""
    profile = load_profile("eastron-sdm630")
    image: dict[str, dict[int, int]] = {"holding": {}, "input": {}}
    values = {}
    for f in profile.fields:
        value = swapped.get(f.name, plausible_value(f))
        values[f.name] = value
        order = "CDAB" if f.name in swapped else "ABCD"
        for i, register in enumerate(registers_for(value, "float32", order)):
            image["input"][f.address + i] = register
    return image, values


@pytest.mark.integration
def test_first_read_check_catches_word_swapped_floats(caplog):
    image, _ = sdm630_image({"active_power_total_w": 12345.6, "voltage_l1_v": 230.0})
    caplog.set_level(logging.WARNING, logger="dcpue.ingest.modbus")
    with run_modbus_server({1: image}) as peer:
        reader = device(peer.host, peer.port, profile="eastron-sdm630").make_reader()
        try:
            first = {fv.field: fv for fv in reader.read()}
            second = {fv.field: fv for fv in reader.read()}
        finally:
            reader.close()
    # the ABCD reading of the swapped registers, computed with struct: kept for audit, flagged BAD
    power_as_read = struct.unpack(">f", struct.pack(">2H", *registers_for(12345.6, "float32", "CDAB")))[0]
    assert first["active_power_total_w"].value == power_as_read
    for fvs in (first, second):
        assert fvs["active_power_total_w"].quality == Quality.BAD
        assert fvs["voltage_l1_v"].quality == Quality.BAD
        assert all(fv.quality == Quality.GOOD for name, fv in fvs.items()
                   if name not in ("active_power_total_w", "voltage_l1_v"))
    assert [p.field for p in reader.problems] == ["voltage_l1_v", "active_power_total_w"]  # first read only
    voltage, power = reader.problems
    assert power.alternatives[0] == ("CDAB", pytest.approx(12345.6, rel=1e-6))  # swapped words come first
    text = power.message("meter-1")
    assert "'active_power_total_w'" in text and "input register 52" in text
    assert "outside its plausible range [-1.5e+07, 1.5e+07] W" in text
    assert "byte_order CDAB it reads 12345.6" in text and "`byte_order: CDAB`" in text
    assert voltage.tiny and voltage.alternatives == (("CDAB", 230.0),)
    assert "nearer 0 than 1e-07" in voltage.message()
    warnings = [r.getMessage() for r in caplog.records if r.name == "dcpue.ingest.modbus"]
    assert len(warnings) == 2 and "device 'meter-1'" in warnings[0]
    assert reader.suggested_byte_order is None  # 12 of 14 fields are right as configured


@pytest.mark.integration
def test_word_swapped_device_gets_a_device_wide_suggestion_and_the_override_fixes_it():
    profile = load_profile("eastron-sdm630")
    sent = {f.name: plausible_value(f) for f in profile.fields} | {"energy_export_kwh": 0.0}
    image, values = sdm630_image(sent)  # every field CDAB
    with run_modbus_server({1: image}) as peer:
        wrong = device(peer.host, peer.port, profile="eastron-sdm630").make_reader()
        first, second = wrong.read(), wrong.read()
        wrong.close()
        reader = device(peer.host, peer.port, profile="eastron-sdm630", byte_order="CDAB").make_reader()
        got = reader.read()
        reader.close()
    assert wrong.problems and wrong.suggested_byte_order == "CDAB"
    # even the fields that happen to look plausible in the wrong order are garbage: BAD, value kept;
    # a zero reads the same in every order and stays GOOD
    assert len(wrong.problems) < len(first) - 1
    for fvs in (first, second):
        assert {fv.field for fv in fvs if fv.quality == Quality.GOOD} == {"energy_export_kwh"}
    assert all(fv.quality == Quality.GOOD for fv in got) and reader.problems == []
    assert {fv.field: fv.value for fv in got} == pytest.approx(
        {name: expected(v, "float32") for name, v in values.items()})


def test_sanity_check_without_a_plausible_alternative():
    f = field("flow_m3_h", 0, "uint16", scale=0.1, unit="m3/h", valid_range=(0, 100))
    problem = sanity_check(f, [0xFFFF], "AB")  # 6553.5 in either byte order
    assert problem is not None and problem.alternatives == ()
    assert "No other byte order gives a plausible value" in problem.message()
    assert sanity_check(f, [0x01F4], "AB") is None  # 50.0


# --- errors -----------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_refused_connection():
    port = free_port()  # nothing listens there
    reader = device("127.0.0.1", port, profile="abb-b23", name="pdu-7").make_reader()
    with pytest.raises(CollectorError) as info:
        reader.open()
    assert "connection refused" in str(info.value)
    assert f"'pdu-7' at 127.0.0.1:{port}" in str(info.value)
    assert not reader.connected


@pytest.mark.integration
def test_timeout_when_the_device_never_answers():
    with silent_tcp_server() as (host, port):
        reader = device(host, port, profile="abb-b23", timeout_s=0.3).make_reader()
        started = time.monotonic()
        with pytest.raises(CollectorError) as info:
            reader.read()
        elapsed = time.monotonic() - started
    assert "no response within 0.3 s" in str(info.value)
    assert f"at {host}:{port} (unit 1)" in str(info.value)
    assert "holding registers 20480..20487" in str(info.value)
    assert 0.25 < elapsed < 2.0
    assert not reader.connected  # dropped, so a late reply cannot answer the next request


@pytest.mark.integration
def test_illegal_address_exception():
    image = {"holding": {a: 0 for a in range(10)}}
    temp = field("supply_temp_c", 100, "int16", scale=0.1, unit="°C")
    with run_modbus_server({1: image}, fill_gaps=False) as peer:
        reader = device(peer.host, peer.port, fields=[temp]).make_reader()
        with pytest.raises(CollectorError) as info:
            reader.read()
        assert reader.connected  # a valid reply: the connection stays usable
        reader.close()
    text = str(info.value)
    assert "Modbus exception 2 ILLEGAL DATA ADDRESS" in text
    assert "holding registers 100..100 (supply_temp_c)" in text
    assert f"at {peer.address} (unit 1)" in text


@pytest.mark.integration
def test_unknown_unit_id_exception():
    with run_modbus_server({1: {"holding": {0: 1}}}) as peer:
        reader = device(peer.host, peer.port, unit_id=9, fields=[field("x", 0, "uint16")]).make_reader()
        with pytest.raises(CollectorError, match="Modbus exception 4 SERVER DEVICE FAILURE.*unit 9"):
            reader.read()
        reader.close()


@pytest.mark.integration
def test_short_response():
    with short_reply_server() as (host, port):
        reader = device(host, port, fields=[field("x", 0, "float64")]).make_reader()
        with pytest.raises(CollectorError, match="short response reading .* asked for 4 registers, got 3"):
            reader.read()
        reader.close()


@pytest.mark.integration
def test_reader_reconnects_after_close():
    with run_modbus_server({1: {"input": dict(enumerate(registers_for(50.0, "float32", "ABCD"), start=70))}}) as peer:
        reader = device(peer.host, peer.port, fields=[
            field("frequency_hz", 70, register_type="input", unit="Hz", valid_range=(0, 70))]).make_reader()
        reader.open()
        assert reader.read()[0].value == 50.0
        reader.close()
        assert not reader.connected
        assert reader.read()[0].value == 50.0
        assert reader.connected
        reader.close()
    assert reader.last_registers["frequency_hz"] == (0x4248, 0x0000)
