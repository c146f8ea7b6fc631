"""Setpoint write-back to a real Modbus TCP server (pymodbus peer): opt in, bounds, step, rate limit,
read-back, and rollback on a constraint breach."""

from __future__ import annotations

import time

import pytest

from dcpue.ingest.writeback import ModbusTarget, SetpointRegister, SetpointWriter
from tests.peers.modbus import flaky_bms, run_modbus_server, silent_tcp_server

T0 = 1_751_328_000_000
MIN = 60_000
SA, CHW = 100, 101  # holding registers: supply air and chilled water, int16 in 0.1 °C


def holding(peer, address: int) -> int:
    from pymodbus.client import ModbusTcpClient

    client = ModbusTcpClient(peer.host, port=peer.port, timeout=3)
    assert client.connect()
    try:
        return client.read_holding_registers(address, count=1, device_id=1).registers[0]
    finally:
        client.close()


def target(peer, **overrides: object) -> ModbusTarget:
    return ModbusTarget.model_validate({
        "enabled": True, "host": peer.host, "port": peer.port, "unit_id": 1,
        "registers": {"supply_air": SetpointRegister(address=SA), "chw_supply": SetpointRegister(address=CHW)},
        "bounds": {"supply_air": (18.0, 26.0), "chw_supply": (7.0, 20.0)}, "min_interval_s": 900,
        "max_writes_per_day": 3, "watch_s": 1800, "suspend_s": 3600, **overrides})


def change(ts_ms: int, **setpoints: float) -> dict[str, object]:
    return {"site": "xy-03", "ts_ms": ts_ms, "ok": True, "action": "change", "recommended": setpoints}


@pytest.fixture
def peer():
    with run_modbus_server({1: {"holding": {SA: 220, CHW: 140}}}) as server:
        yield server


def test_writes_within_limits_reads_back_and_rolls_back_on_a_hot_aisle(peer):
    writer = SetpointWriter("xy-03", target(peer))
    try:
        assert writer.read() == {"supply_air": 22.0, "chw_supply": 14.0}
        done = writer.apply(change(T0, supply_air=23.0, chw_supply=15.0))
        assert done.action == "written", done.reason
        assert (holding(peer, SA), holding(peer, CHW)) == (230, 150)

        assert writer.apply(change(T0 + 5 * MIN, supply_air=24.0)).reason.startswith("rate limit")
        too_far = writer.apply(change(T0 + 20 * MIN, supply_air=25.0))
        assert too_far.action == "refused" and "more than the 1 K" in too_far.reason
        outside = writer.apply(change(T0 + 40 * MIN, chw_supply=21.0))
        assert outside.action == "refused" and "outside the site's bounds" in outside.reason
        assert holding(peer, SA) == 230  # nothing refused was written

        assert writer.watch(T0 + 10 * MIN, rack_inlet_c=26.4) is None  # within the limit: nothing to do
        rolled = writer.watch(T0 + 12 * MIN, rack_inlet_c=27.6)
        assert rolled is not None and rolled.action == "rolled_back" and "27.6" in rolled.reason
        assert (holding(peer, SA), holding(peer, CHW)) == (220, 140)  # the setpoints before the write
        suspended = writer.apply(change(T0 + 50 * MIN, supply_air=23.0))
        assert suspended.action == "refused" and "suspended" in suspended.reason
        assert writer.apply(change(T0 + 80 * MIN, supply_air=23.0)).action == "written"  # suspension over
        assert writer.watch(T0 + 80 * MIN + 31 * MIN, rack_inlet_c=28.0) is None  # after watch_s: not ours
    finally:
        writer.close()


def test_nothing_is_written_unless_enabled_trusted_and_a_change(peer):
    off = SetpointWriter("xy-03", target(peer, enabled=False))
    on = SetpointWriter("xy-03", target(peer))
    try:
        assert off.apply(change(T0, supply_air=23.0)).action == "refused"
        refused = {"site": "xy-03", "ts_ms": T0, "ok": False, "action": "none", "recommended": None}
        assert on.apply(refused).action == "none"
        assert on.apply({**change(T0, supply_air=22.0), "action": "keep"}).action == "none"
        assert on.apply(change(T0, fw_supply=30.0)).reason == "no register configured for fw_supply"
        assert holding(peer, SA) == 220
        writes = [on.apply(change(T0 + k * 20 * MIN, supply_air=22.0 + (k % 2))) for k in range(5)]
        assert [w.action for w in writes] == ["written", "written", "written", "refused", "refused"]
        assert "3 writes in 24 h" in writes[3].reason
    finally:
        off.close()
        on.close()


def test_an_unreachable_bms_is_a_refusal_not_a_crash():
    writer = SetpointWriter("xy-03", ModbusTarget(enabled=True, host="127.0.0.1", port=1, timeout_s=0.5,
                                                  registers={"supply_air": SetpointRegister(address=SA)}))
    result = writer.apply(change(T0, supply_air=23.0))
    assert result.action == "refused" and "cannot connect" in result.reason


def test_a_write_the_bms_refuses_halfway_is_undone_before_it_is_refused():
    """Supply air is written, then the chilled-water register refuses the write (read-only on this BMS):
    the supply air already written is put back, so the plant is never left half-changed."""
    with run_modbus_server({1: {"holding": {SA: 220, CHW: 140}}}, readonly={1: {CHW}}) as bms:
        writer = SetpointWriter("xy-03", target(bms))
        try:
            assert writer.read() == {"supply_air": 22.0, "chw_supply": 14.0}  # reads still work
            refused = writer.apply(change(T0, supply_air=23.0, chw_supply=15.0))
            assert refused.action == "refused", refused.reason
            assert "undone" in refused.reason
            assert (holding(bms, SA), holding(bms, CHW)) == (220, 140)  # as before the attempt
            assert writer.watch(T0 + 5 * MIN, rack_inlet_c=30.0) is None  # nothing in effect to roll back
        finally:
            writer.close()


def test_a_link_lost_mid_write_is_a_refusal_and_the_half_write_is_undone_once_the_bms_answers():
    """The link dies on the chilled-water write after supply air landed, and the BMS stays unreachable
    for the undo: a refusal (never an exception in the worker), and the half-changed plant is put back
    as soon as the BMS answers again, before anything else is written."""
    with flaky_bms({SA: 220, CHW: 140}, drop_on_write=2) as bms:
        writer = SetpointWriter("xy-03", target(bms, timeout_s=0.5))
        try:
            refused = writer.apply(change(T0, supply_air=23.0, chw_supply=15.0))
            assert refused.action == "refused" and "writing chw_supply = 15 failed" in refused.reason
            assert "undoing the write failed too" in refused.reason
            assert bms.registers == {SA: 230, CHW: 140}  # half changed: supply air only
            still = writer.apply(change(T0 + 20 * MIN, supply_air=22.5))
            assert still.action == "refused" and "still has to be undone" in still.reason
            bms.serving.set()  # the BMS answers again
            undone = writer.apply(change(T0 + 40 * MIN, supply_air=22.5))
            assert undone.action == "rolled_back" and bms.registers == {SA: 220, CHW: 140}
            assert writer.apply(change(T0 + 60 * MIN, supply_air=23.0)).action == "written"  # then business as usual
            assert bms.registers == {SA: 230, CHW: 140}
        finally:
            writer.close()


def test_a_bms_that_never_answers_is_a_refusal_in_bounded_time():
    with silent_tcp_server() as (host, port):
        writer = SetpointWriter("xy-03", ModbusTarget.model_validate({
            "enabled": True, "host": host, "port": port, "timeout_s": 0.5,
            "registers": {"supply_air": SetpointRegister(address=SA)}}))
        try:
            started = time.monotonic()
            result = writer.apply(change(T0, supply_air=23.0))
            assert result.action == "refused" and "reading supply_air at 100 failed" in result.reason
            assert time.monotonic() - started < 5
        finally:
            writer.close()


def test_a_setpoint_the_bms_reads_as_nan_is_never_written():
    """A float32 register holding NaN (a BMS point out of service): no step can be checked, so no write,
    even without bounds for it."""
    with run_modbus_server({1: {"holding": {SA: 0x7FC0, SA + 1: 0x0000}}}) as bms:
        writer = SetpointWriter("xy-03", ModbusTarget.model_validate({
            "enabled": True, "host": bms.host, "port": bms.port,
            "registers": {"supply_air": SetpointRegister(address=SA, data_type="float32", scale=1.0)}}))
        try:
            result = writer.apply(change(T0, supply_air=23.0))
            assert result.action == "refused" and "the BMS holds nan" in result.reason
            assert (holding(bms, SA), holding(bms, SA + 1)) == (0x7FC0, 0x0000)
        finally:
            writer.close()
