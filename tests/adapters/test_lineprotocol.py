"""Line protocol of raw readings and the site inventory (pure; the servers' read-back is in test_influxdb.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from dcpue.adapters.lineprotocol import (
    INVENTORY_FIELDS,
    inventory_to_lines,
    readings_to_lines,
    recommendations_to_lines,
)
from dcpue.model import Quality, readings_frame
from tests.factories import GUI_AN, T0, point, registry, simple_site, site


def reg():
    return registry(simple_site("a", cluster="gui-an"), simple_site("b", city="Gui'an New Area, Guizhou"),
                    clusters=[GUI_AN])


def test_readings_carry_point_and_site_tags_in_fixed_order():
    r = reg()
    frame = readings_frame(["a", "b"], ["it.ups", "cool.crah"], [T0, T0 + 60_000], [100.5, 12.25], [0, 1])
    lines = readings_to_lines(frame, r.points_table, r.sites_table)
    assert lines == [
        f"reading,site=a,point=it.ups,role=it,quantity=power,cluster=gui-an,city=Guiyang value=100.5,quality=0i {T0}",
        # no cluster: the tag is left out; spaces and commas in the city are escaped
        "reading,site=b,point=cool.crah,role=cooling,quantity=power,city=Gui'an\\ New\\ Area\\,\\ Guizhou "
        f"value=12.25,quality=1i {T0 + 60_000}",
    ]


def test_values_of_registered_points_are_written_in_the_canonical_unit():
    r = registry(site("w", [point("facility.main", "facility", "energy", "Wh"),
                            point("it.pdu", "it", "power", "W", it_category=2),
                            point("water.main", "water", "water_volume", "m3")]))
    frame = readings_frame("w", ["facility.main", "it.pdu", "water.main", "unknown"], T0,
                           [5_000_000.0, 2_500.0, 3.0, 7.0])
    lines = readings_to_lines(frame, r.points_table)
    values = [float(line.split(" ")[1].split(",")[0].removeprefix("value=")) for line in lines]
    factors = r.points_table["factor"]  # the registry's own unit factors: Wh, W → k…; m3 → L
    assert values == [5_000_000.0 * factors[("w", "facility.main")], 2_500.0 * factors[("w", "it.pdu")],
                      3.0 * factors[("w", "water.main")], 7.0]
    assert values == [5_000.0, 2.5, 3_000.0, 7.0]  # as documented: kWh, kW, L; unknown point as received


def test_readings_without_registry_tables_have_only_site_and_point():
    frame = readings_frame("a", "it.ups", [T0], [1.0])
    assert readings_to_lines(frame) == [f"reading,site=a,point=it.ups value=1.0,quality=0i {T0}"]


def test_unknown_points_keep_site_and_point_tags_only():
    r = reg()
    frame = readings_frame(["a", "zz"], ["not.registered", "x"], [T0, T0], [2.0, 3.0])
    lines = readings_to_lines(frame, r.points_table, r.sites_table)
    # site a is known (cluster/city), its point is not (no role/quantity); site zz is unknown altogether
    assert lines == [f"reading,site=a,point=not.registered,cluster=gui-an,city=Guiyang value=2.0,quality=0i {T0}",
                     f"reading,site=zz,point=x value=3.0,quality=0i {T0}"]


def test_tag_values_are_escaped():
    frame = readings_frame(["dc 1,north"], ["p=1 x\\y"], [T0], [1.0])
    assert readings_to_lines(frame) == [f"reading,site=dc\\ 1\\,north,point=p\\=1\\ x\\\\y value=1.0,quality=0i {T0}"]


def test_a_value_that_is_not_finite_is_left_out_and_the_quality_kept():
    bad = int(Quality.BAD | Quality.COLLECTOR_DOWN)
    frame = readings_frame("a", "it.ups", [T0, T0 + 1, T0 + 2], [np.nan, np.inf, 5.0], [bad, 2, 0])
    assert readings_to_lines(frame) == [
        f"reading,site=a,point=it.ups quality={bad}i {T0}",
        f"reading,site=a,point=it.ups quality=2i {T0 + 1}",
        f"reading,site=a,point=it.ups value=5.0,quality=0i {T0 + 2}",
    ]


def test_values_are_floats_that_round_trip_and_quality_is_an_integer():
    values = np.array([0.1 + 0.2, 1e-7, 123456789.123456789, 1e20, 100.0, -3.0])
    frame = readings_frame("a", "p", T0 + np.arange(len(values)), values, 4)
    lines = readings_to_lines(frame)
    fields = [line.split(" ")[1] for line in lines]
    parsed = [float(f.split(",")[0].removeprefix("value=")) for f in fields]
    assert parsed == values.tolist()  # exact, not approximately
    # an integral value is still written as a float (a field's type is fixed at its first write)
    assert all("i" not in f.split(",")[0] for f in fields)
    assert all(f.split(",")[1] == "quality=4i" for f in fields)
    assert [int(line.rsplit(" ", 1)[1]) for line in lines] == (T0 + np.arange(len(values))).tolist()


def test_readings_keep_their_own_order_and_index_does_not_matter():
    r = reg()
    frame = readings_frame(["b", "a", "a"], ["it.ups", "it.ups", "facility.main"], [T0 + 2, T0, T0 + 1],
                           [3.0, 1.0, 2.0])
    frame.index = [7, 3, 5]  # e.g. after pd.concat or filtering
    lines = readings_to_lines(frame, r.points_table, r.sites_table)
    assert [line.split(",")[1] for line in lines] == ["site=b", "site=a", "site=a"]
    assert [line.rsplit(" ", 1)[1] for line in lines] == [str(T0 + 2), str(T0), str(T0 + 1)]
    assert "role=facility,quantity=energy" in lines[2]


def test_no_readings_no_lines():
    assert readings_to_lines(readings_frame([], [], np.array([], dtype=np.int64), np.array([]))) == []


def test_inventory_has_one_point_per_site_with_typed_fields():
    r = reg()
    sites = r.sites_table
    lines = inventory_to_lines(sites, T0)
    assert len(lines) == len(sites)
    head, fields, ts = lines[0].split(" ")
    assert head == "site_inventory,site=a,cluster=gui-an,city=Guiyang,cooling=air"
    assert ts == str(T0)
    parsed = dict(part.split("=", 1) for part in fields.split(","))
    row = sites.loc["a"]
    assert parsed["site_name"] == f'"{row["name"]}"'
    for col, (key, kind) in INVENTORY_FIELDS.items():
        if col in ("name",) or col not in sites:
            continue
        if kind == "int":
            assert parsed[key] == f"{int(row[col])}i"
        else:
            assert float(parsed[key]) == row[col]
    assert set(parsed) == {key for col, (key, _) in INVENTORY_FIELDS.items() if col in sites}
    # site b: no cluster tag, city escaped
    assert lines[1].startswith("site_inventory,site=b,city=Gui'an\\ New\\ Area\\,\\ Guizhou,cooling=air ")


def test_inventory_quotes_strings_and_leaves_out_missing_values():
    sites = pd.DataFrame({"name": ['DC "one" \\ 贵安'], "city": ["Guiyang"], "cluster": [""],
                          "racks_installed": [np.nan], "design_it_kw": [np.nan], "commissioned": [2019]},
                         index=pd.Index(["s1"], name="site"))
    assert inventory_to_lines(sites, 0) == [
        'site_inventory,site=s1,city=Guiyang site_name="DC \\"one\\" \\\\ 贵安",commissioned=2019i 0']


def test_inventory_site_without_any_attribute_is_not_written():
    sites = pd.DataFrame({"city": ["Guiyang", "Zunyi"], "racks_installed": [10, np.nan]},
                         index=pd.Index(["s1", "s2"], name="site"))
    assert inventory_to_lines(sites, 5) == ["site_inventory,site=s1,city=Guiyang racks_installed=10i 5"]


def test_recommendation_lines_carry_the_record_predictions_and_leave_unknowns_out():
    change = {"site": "gy-04", "ts_ms": T0, "ok": True, "action": "change", "model_version": "m1",
              "reason": "change: raise chw_supply 17.0 → 18.0 °C", "current": {"supply_air": 24.0, "chw_supply": 17.0},
              "recommended": {"supply_air": 24.0, "chw_supply": 18.0}, "saving_kw": 3.5, "saving_pct": 0.35,
              "facility_kw_recommended": 996.5, "predicted_pue": 1.151, "rack_inlet_c": 25.9,
              "rack_inlet_c_hi": 26.3, "fw_supply_c": 33.1, "fw_supply_c_hi": 33.6}
    refused = {"site": "gy-04", "ts_ms": T0 + 900_000, "ok": False, "action": "none", "model_version": "m1",
               "reason": "no recommendation: conditions outside the training data", "current": {"supply_air": 24.0},
               "recommended": None, "saving_kw": None}
    lines = recommendations_to_lines([change, refused])
    assert len(lines) == 3  # one point per record and setpoint
    chw = next(line for line in lines if "setpoint=chw_supply" in line)
    assert chw.startswith("recommendation,site=gy-04,loop=chilled_water,setpoint=chw_supply ")
    fields = dict(part.split("=", 1) for part in chw.split(" ")[1].split(",") if "=" in part and '"' not in part)
    assert {k: float(fields[k]) for k in ("current", "recommended", "expected_saving_kw", "expected_saving_pct",
                                          "predicted_facility_kw", "predicted_pue", "rack_inlet_c",
                                          "rack_inlet_c_hi", "fw_supply_c", "fw_supply_c_hi")} == {
        "current": 17.0, "recommended": 18.0, "expected_saving_kw": 3.5, "expected_saving_pct": 0.35,
        "predicted_facility_kw": 996.5, "predicted_pue": 1.151, "rack_inlet_c": 25.9, "rack_inlet_c_hi": 26.3,
        "fw_supply_c": 33.1, "fw_supply_c_hi": 33.6}
    assert chw.endswith(f" {T0}") and "ok=true" in chw and 'action="change"' in chw
    (none,) = [line for line in lines if str(T0 + 900_000) in line]
    assert "recommended=" not in none and "expected_saving" not in none and "fw_supply_c" not in none
    tower = recommendations_to_lines([{**change, "current": {"cw_supply": 20.0}, "recommended": {"cw_supply": 22.0}}])
    assert [line.split(" ")[0] for line in tower] == [
        "recommendation,site=gy-04,loop=condenser_water,setpoint=cw_supply"]
    assert "ok=false" in none and 'reason="no recommendation: conditions outside the training data"' in none


def test_window_fields_round_trip_and_leave_out_what_is_not_finite():
    """Window results: every float field is the shortest text that reads back as the same number, integer
    fields carry ``i``, and a figure that is not finite is left out of that row only."""
    from dcpue.adapters.lineprotocol import windows_to_lines
    from dcpue.analytics.stream import StreamEngine
    from tests.factories import counter_series, power_series

    engine = StreamEngine(reg())
    engine.add(pd.concat([counter_series("a", "facility.main", 150, 90), power_series("a", "it.ups", 100.1, 90),
                          counter_series("b", "facility.main", 90, 90)], ignore_index=True))
    windows = engine.advance()
    windows.loc[windows.index[0], "facility_kwh"] = 1e20 / 3
    windows.loc[windows.index[1], "facility_kwh"] = 1e-7 / 3
    windows.loc[windows.index[2], "facility_kwh"] = np.inf
    lines = windows_to_lines(windows)
    assert len(lines) == len(windows)
    for line, (_, row) in zip(lines, windows.iterrows(), strict=True):
        fields = dict(f.split("=", 1) for f in line.split(" ")[1].split(","))
        for name in ("facility_kwh", "it_kwh", "pue"):
            value = row[name]
            if np.isfinite(value):
                assert float(fields[name]) == value and fields[name] == str(np.float64(value))
            else:
                assert name not in fields
        assert fields["start_ms"] == f"{int(row['start_ms'])}i"
        assert fields["status"] == f'"{row["status"]}"'


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=50))
def test_float_fields_are_the_shortest_round_trip_text_of_every_finite_value(values):
    """The fast float text (msgspec's JSON digits) is exactly ``repr``: in and out of scientific notation."""
    from dcpue.adapters.lineprotocol import _float_fields

    array = np.asarray(values, dtype=np.float64)
    fields = _float_fields("x", array)
    assert len(fields) == len(values)
    for value, text in zip(array.tolist(), fields, strict=True):
        if np.isfinite(value):
            assert text == f"x={value!r}"


def _window_line_one_by_one(row: dict, sites: pd.DataFrame) -> str:
    """The line of one window row, field by field: the reference the batch builder must match byte for byte."""
    from dcpue.adapters.lineprotocol import FLOAT_FIELDS, INT_FIELDS, STRING_FIELDS

    def tag(text: str) -> str:
        return text.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")

    def quoted(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    site = row["id"] if row["scope"] == "site" else ""
    cluster = row["id"] if row["scope"] == "cluster" else ""
    city = ""
    if site and site in sites.index:
        city = sites.at[site, "city"] or ""
        cluster = sites.at[site, "cluster"] or ""
    tags = "".join(f",{key}={tag(value)}" for key, value in (("site", site), ("scope", row["scope"]),
                                                              ("cluster", cluster), ("city", city),
                                                              ("window", row["window"])) if value)
    fields = [f"{col}={quoted(row[col])}" for col in STRING_FIELDS]
    fields.append(f"final={'true' if row['final'] else 'false'}")
    fields += [f"{col}={int(row[col])}i" for col in INT_FIELDS]
    fields += [f"{col}={float(row[col])!r}" for col in FLOAT_FIELDS if np.isfinite(row[col])]
    return f"pue{tags} {','.join(fields)} {int(row['end_ms'])}"


_ODD_FLOATS = st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-7 / 3, -2.5e-5, 1e20 / 3, 1e16, 9.999e15,
                               1e-4, 0.1 + 0.2, 1.2, 1234.5678, -3.0])
_TEXT = st.text(alphabet=st.sampled_from(list('ab ,="\\é')), max_size=6)


@settings(max_examples=150, deadline=None)
@given(st.data(), st.integers(min_value=1, max_value=12))
def test_window_lines_are_each_rows_fields_written_one_by_one(data, n):
    """Rows sharing which figures are left out are written from one template: every line still equals the row's
    own, field by field, whatever mix of missing, scientific and escaped values the rows hold."""
    from dcpue.adapters.lineprotocol import FLOAT_FIELDS, windows_to_lines
    from dcpue.results import WINDOW_COLUMNS, conform_windows

    sites = reg().sites_table
    # a few figures per row vary, the rest share one value, so rows share templates as live ones do
    shared = {col: data.draw(_ODD_FLOATS | st.floats(allow_nan=False, allow_infinity=False)) for col in FLOAT_FIELDS}
    rows = []
    for _ in range(n):
        row = dict(shared)
        for col in data.draw(st.lists(st.sampled_from(FLOAT_FIELDS), max_size=4)):
            row[col] = data.draw(_ODD_FLOATS | st.floats())
        scope = data.draw(st.sampled_from(["site", "cluster", "fleet"]))
        row.update(scope=scope, id=data.draw(st.sampled_from(["a", "b", "gui-an", "x y"]) | _TEXT),
                   window=data.draw(st.sampled_from(["1m", "1h", "rolling_365d"])),
                   start_ms=data.draw(st.integers(0, 2**50)), end_ms=data.draw(st.integers(0, 2**50)),
                   final=data.draw(st.booleans()), status=data.draw(_TEXT), grade=data.draw(_TEXT),
                   flags=data.draw(_TEXT), it_category=data.draw(st.integers(-5, 5)),
                   racks_installed=data.draw(st.integers(0, 10**6)), racks_in_service=data.draw(st.integers(0, 10**6)))
        rows.append(row)
    windows = pd.DataFrame(rows)[list(WINDOW_COLUMNS)]
    expected = [_window_line_one_by_one(row, sites) for row in conform_windows(windows).to_dict("records")]
    assert windows_to_lines(windows, sites) == expected
