"""Setpoint write-back to a real BACnet/IP device (a bacpypes3 application on 127.0.0.1, over UDP): the
same safety rules as Modbus — bounds, step, rate limit, read-back, rollback and suspension — plus what
BACnet adds: dcpue's priority slot, an operator's higher-priority command winning, relinquish on undo,
°F objects, and bounded timeouts. One device serves the module; each test starts from its image."""

from __future__ import annotations

import time

import bacpypes3  # noqa: F401  (the test extra installs it: a missing one must fail, not skip)
import pytest
from pydantic import TypeAdapter, ValidationError

from dcpue.ingest.writeback import BacnetTarget, ModbusTarget, SetpointWriter, WritebackTarget
from dcpue.settings import CoolingSettings
from tests.peers.bacnet import PeerObject, free_udp_port, run_bacnet_device

T0 = 1_751_328_000_000
MIN = 60_000
SA, CHW, SA_F, PLAIN = "analog-value,1", "analog-value,2", "analog-value,3", "analog-value,4"
IMAGE = {
    SA: PeerObject(22.0),  # supply air [°C], every slot empty: the BMS's own setpoint (relinquish default)
    CHW: PeerObject(14.0, slots={10: 14.0}),  # chilled water [°C], slot 10 left set by an earlier dcpue write
    SA_F: PeerObject(71.6, units="degrees-fahrenheit"),  # a US controller's supply air: 22 °C
    PLAIN: PeerObject(20.0, commandable=False),  # a writable value without a priority array
}
PRIORITY = 10


@pytest.fixture(scope="module")
def device():
    with run_bacnet_device(IMAGE) as peer:
        yield peer


@pytest.fixture
def peer(device):
    device.reset()
    return device


def target(peer, **overrides: object) -> BacnetTarget:
    config = {
        "protocol": "bacnet", "enabled": True, "device": peer.address, "timeout_s": 1.0,
        "points": {"supply_air": {"object": SA}, "chw_supply": {"object": CHW, "priority": PRIORITY}},
        "bounds": {"supply_air": (18.0, 26.0), "chw_supply": (7.0, 20.0)}, "min_interval_s": 900,
        "max_writes_per_day": 3, "watch_s": 1800, "suspend_s": 3600, **overrides}
    parsed = TypeAdapter(WritebackTarget).validate_python(config)
    assert isinstance(parsed, BacnetTarget)
    return parsed


def change(ts_ms: int, **setpoints: float) -> dict[str, object]:
    return {"site": "xy-03", "ts_ms": ts_ms, "ok": True, "action": "change", "recommended": setpoints}


def test_writes_at_its_priority_and_reads_back_from_the_device(peer):
    writer = SetpointWriter("xy-03", target(peer))
    try:
        assert writer.read() == {"supply_air": 22.0, "chw_supply": 14.0}
        done = writer.apply(change(T0, supply_air=23.0, chw_supply=14.5))
        assert done.action == "written" and done.reason == "written and read back"
        assert (peer.present_value(SA), peer.present_value(CHW)) == (23.0, 14.5)
        assert (peer.slot(SA, PRIORITY), peer.slot(CHW, PRIORITY)) == (23.0, 14.5)  # dcpue's slot, nothing else
        assert all(peer.slot(SA, p) is None for p in range(1, 17) if p != PRIORITY)
        assert writer.read() == {"supply_air": 23.0, "chw_supply": 14.5}
    finally:
        writer.close()


def test_bounds_step_and_rate_limits_refuse_without_writing(peer):
    writer = SetpointWriter("xy-03", target(peer))
    try:
        outside = writer.apply(change(T0, chw_supply=21.0))
        assert outside.action == "refused" and "outside the site's bounds 7..20" in outside.reason
        too_far = writer.apply(change(T0, supply_air=23.5))
        assert too_far.action == "refused" and "22 → 23.5 °C is more than the 1 K" in too_far.reason
        assert writer.apply(change(T0, supply_air=23.0)).action == "written"
        soon = writer.apply(change(T0 + 5 * MIN, supply_air=24.0))
        assert soon.action == "refused" and soon.reason.startswith("rate limit: last write 300 s ago")
        assert peer.present_value(SA) == 23.0  # nothing refused reached the device
        writes = [writer.apply(change(T0 + k * 20 * MIN, supply_air=22.0 + (k % 2))) for k in range(1, 4)]
        assert [w.action for w in writes] == ["written", "written", "refused"]
        assert "3 writes in 24 h" in writes[2].reason
        assert writer.apply(change(T0, fw_supply=30.0)).reason == "no BACnet point configured for fw_supply"
    finally:
        writer.close()


def test_rollback_on_a_hot_aisle_restores_the_priority_slots_it_found(peer):
    writer = SetpointWriter("xy-03", target(peer))
    try:
        assert writer.apply(change(T0, supply_air=23.0, chw_supply=15.0)).action == "written"
        assert writer.watch(T0 + 10 * MIN, rack_inlet_c=26.4) is None  # within the limit: nothing to do
        rolled = writer.watch(T0 + 12 * MIN, rack_inlet_c=27.6)
        assert rolled is not None and rolled.action == "rolled_back" and "27.6" in rolled.reason
        assert rolled.values == {"supply_air": 22.0, "chw_supply": 14.0}
        # supply air: slot 10 was empty, so it is relinquished and the BMS's own setpoint is back;
        # chilled water: slot 10 held 14.0 before the write and holds it again
        assert (peer.slot(SA, PRIORITY), peer.present_value(SA)) == (None, 22.0)
        assert (peer.slot(CHW, PRIORITY), peer.present_value(CHW)) == (14.0, 14.0)
        suspended = writer.apply(change(T0 + 50 * MIN, supply_air=23.0))
        assert suspended.action == "refused" and "suspended" in suspended.reason
        assert writer.apply(change(T0 + 80 * MIN, supply_air=23.0)).action == "written"  # suspension over
        assert writer.watch(T0 + 80 * MIN + 31 * MIN, rack_inlet_c=28.0) is None  # after watch_s: not ours
    finally:
        writer.close()


def test_an_operator_command_at_a_higher_priority_wins_and_the_write_is_undone(peer):
    peer.command(SA, 24.0, priority=8)  # Manual Operator
    writer = SetpointWriter("xy-03", target(peer))
    try:
        refused = writer.apply(change(T0, supply_air=24.5))
        assert refused.action == "refused"
        assert "reads 24 °C after writing 24.5 °C at priority 10: priority 8 holds the point" in refused.reason
        assert refused.reason.endswith("the write was undone")
        assert (peer.slot(SA, PRIORITY), peer.present_value(SA)) == (None, 24.0)  # nothing left waiting in slot 10
        assert writer.watch(T0 + MIN, rack_inlet_c=30.0) is None  # nothing was written: nothing to roll back
    finally:
        writer.close()


def test_fahrenheit_and_non_commandable_points_on_their_own_device_are_written_and_restored(peer):
    # each point names its own device; the target's default device is a silent one, never asked
    points = {"supply_air": {"object": SA_F, "device": peer.address},
              "chw_supply": {"object": PLAIN, "priority": 12, "device": peer.address}}
    writer = SetpointWriter("xy-03", target(peer, device=f"127.0.0.1:{free_udp_port()}", points=points))
    try:
        assert writer.read() == {"supply_air": 22.0, "chw_supply": 20.0}
        assert writer.apply(change(T0, supply_air=23.0, chw_supply=19.0)).action == "written"
        assert peer.present_value(SA_F) == pytest.approx(73.4, abs=1e-4)  # 23 °C in °F (REAL is float32)
        assert peer.slot(SA_F, PRIORITY) == pytest.approx(73.4, abs=1e-4)
        assert peer.present_value(PLAIN) == 19.0
        assert writer.watch(T0 + MIN, rack_inlet_c=None) is None  # no measurement: no verdict
        rolled = writer.watch(T0 + MIN, rack_inlet_c=27.5)
        assert rolled is not None and rolled.action == "rolled_back"
        assert peer.slot(SA_F, PRIORITY) is None and peer.present_value(SA_F) == pytest.approx(71.6, abs=1e-4)
        assert peer.present_value(PLAIN) == 20.0  # no priority array: the previous value written back
    finally:
        writer.close()


def test_an_unreachable_device_a_bad_local_address_or_a_missing_object_is_a_refusal_in_bounded_time(peer):
    silent = f"127.0.0.1:{free_udp_port()}"  # nothing listens there
    writer = SetpointWriter("xy-03", target(peer, device=silent, timeout_s=0.3, retries=1))
    try:
        started = time.monotonic()
        result = writer.apply(change(T0, supply_air=23.0))
        took = time.monotonic() - started
        assert result.action == "refused"
        assert result.reason == (f"reading {SA} present-value from {silent}: no response within 0.3 s × 2 attempts")
        assert 0.5 < took < 3.0
    finally:
        writer.close()
    unbound = SetpointWriter("xy-03", target(peer, local_address="192.0.2.1:0", timeout_s=0.3))  # TEST-NET-1
    try:
        result = unbound.apply(change(T0, supply_air=23.0))
        assert result.action == "refused"
        assert result.reason.endswith("cannot bind the client's UDP socket to 192.0.2.1:0")
    finally:
        unbound.close()
    missing = SetpointWriter("xy-03", target(peer, points={"supply_air": {"object": "analog-value,99"}}))
    try:
        result = missing.apply(change(T0, supply_air=23.0))
        assert result.action == "refused"
        assert result.reason == (f"reading analog-value,99 present-value from {peer.address}: "
                                 "the device answered error unknown-object (class object)")
        assert missing.apply(change(T0 + 20 * MIN, supply_air=23.0)).action == "refused"  # the writer survives
    finally:
        missing.close()


def test_a_config_without_protocol_is_modbus_and_bad_bacnet_configs_name_the_field():
    legacy = CoolingSettings(writeback={"xy-03": {"enabled": True, "host": "10.20.0.50",
                                                  "registers": {"supply_air": {"address": 100}}}})
    assert isinstance(legacy.writeback["xy-03"], ModbusTarget)
    good = {"protocol": "bacnet", "enabled": True, "device": "10.20.0.60",
            "points": {"supply_air": {"object": "analog-value,1"}}}
    parsed = CoolingSettings(writeback={"xy-03": good}).writeback["xy-03"]
    assert isinstance(parsed, BacnetTarget) and parsed.device == "10.20.0.60:47808"
    assert parsed.points["supply_air"].priority == 10 and parsed.points["supply_air"].property == "present-value"

    def error(**change: object) -> str:
        with pytest.raises(ValidationError) as caught:
            CoolingSettings(writeback={"xy-03": {**good, **change}})
        return str(caught.value)

    assert "writeback.xy-03\n  protocol must be 'modbus' or 'bacnet'" in error(protocol="knx")
    point = "writeback.xy-03.bacnet.points.supply_air"
    assert f"{point}.object\n" in (text := error(points={"supply_air": {"object": "analog-value"}}))
    assert "like 'analog-value,1'" in text
    assert "use one of analog-value, analog-output, large-analog-value" in error(
        points={"supply_air": {"object": "binary-value,3"}})
    assert f"{point}.priority\n  Input should be greater than or equal to 8" in error(
        points={"supply_air": {"object": "analog-value,1", "priority": 5}})
    assert "writeback.xy-03.bacnet.device\n" in (text := error(device="bms.local:47808"))
    assert "IPv4 'a.b.c.d' or 'a.b.c.d:port'" in text
    assert "writeback.xy-03.bacnet.registers\n  Extra inputs are not permitted" in error(registers={})
    with pytest.raises(ValidationError, match=r"writeback.xy-03.bacnet.points\n  Field required"):
        CoolingSettings(writeback={"xy-03": {k: v for k, v in good.items() if k != "points"}})
