"""The streaming engine: late and out-of-order data, finalization, rollups equal to batch results."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dcpue.analytics.batch import batch_windows
from dcpue.analytics.stream import StreamEngine, window_ends, window_starts
from dcpue.settings import EngineSettings
from tests.factories import GUI_AN, MIN, T0, counter_series, power_series, registry, simple_site

HOUR = 60 * MIN


def fleet_readings(minutes: int) -> pd.DataFrame:
    return pd.concat([
        counter_series("a", "facility.main", 150, minutes), power_series("a", "it.ups", 100, minutes),
        power_series("a", "cool.crah", 40, minutes),
        counter_series("b", "facility.main", 240, minutes), power_series("b", "it.ups", 200, minutes),
        power_series("b", "cool.crah", 30, minutes),
    ], ignore_index=True)


def run(engine: StreamEngine, chunks: list[pd.DataFrame]) -> pd.DataFrame:
    out = [engine.advance() for chunk in chunks if engine.add(chunk) is not None]
    # the store keeps the last row written per key; do the same
    return pd.concat(out, ignore_index=True).drop_duplicates(["scope", "id", "window", "start_ms"], keep="last")


def chunked(readings: pd.DataFrame, minutes_per_chunk: int) -> list[pd.DataFrame]:
    key = (readings["ts"] - T0) // (minutes_per_chunk * MIN)
    return [part for _, part in readings.groupby(key)]


@pytest.fixture
def reg():
    return registry(simple_site("a", cluster="gui-an"), simple_site("b", cluster="gui-an"), clusters=[GUI_AN])


def test_closed_hours_equal_the_batch_result_and_are_final(reg):
    readings = fleet_readings(180)
    stream = run(StreamEngine(reg, EngineSettings()), chunked(readings, 7))
    batch = batch_windows(readings, reg, "1h")
    for ident in ("a", "b"):
        for start in (T0, T0 + HOUR):  # hours 1 and 2 are closed (the third is still open at minute 180)
            s = stream[(stream["window"] == "1h") & (stream["id"] == ident) & (stream["start_ms"] == start)].iloc[0]
            b = batch[(batch["id"] == ident) & (batch["start_ms"] == start)].iloc[0]
            assert bool(s["final"])
            assert s["facility_kwh"] == pytest.approx(b["facility_kwh"])
            assert s["it_kwh"] == pytest.approx(b["it_kwh"])
            assert s["pue"] == pytest.approx(b["pue"])
    fleet = stream[(stream["scope"] == "fleet") & (stream["window"] == "1h") & (stream["start_ms"] == T0)].iloc[0]
    # (150 + 240) / (100 + 200) = 1.3
    assert fleet["pue"] == pytest.approx(1.3)
    assert bool(fleet["final"])


def test_results_do_not_depend_on_how_input_is_chunked(reg):
    readings = fleet_readings(150)
    small = run(StreamEngine(reg), chunked(readings, 3))
    large = run(StreamEngine(reg), chunked(readings, 40))
    key = ["scope", "id", "window", "start_ms"]
    closed = small[small["final"]].set_index(key).sort_index()
    other = large.set_index(key).loc[closed.index]
    np.testing.assert_allclose(closed["facility_kwh"], other["facility_kwh"])
    np.testing.assert_allclose(closed["pue"].fillna(-1), other["pue"].fillna(-1))


def test_out_of_order_readings_within_lateness_update_their_window(reg):
    # minutes 0..30 arrive with minute 20's IT sample missing, then it arrives after minute 21 (within 120 s)
    readings = fleet_readings(30)
    late_mask = (readings["point"] == "it.ups") & (readings["site"] == "a") & (readings["ts"] == T0 + 20 * MIN)
    late, on_time = readings[late_mask], readings[~late_mask]
    engine = StreamEngine(reg)
    first = on_time[on_time["ts"] <= T0 + 21 * MIN]
    engine.add(first.sample(frac=1.0, random_state=3))  # shuffled: order inside a batch does not matter
    engine.advance()
    assert engine.add(late) == 0  # accepted, not too late
    engine.add(on_time[on_time["ts"] > T0 + 21 * MIN])
    rows = engine.advance()
    minute19 = rows[(rows["id"] == "a") & (rows["window"] == "1m") & (rows["start_ms"] == T0 + 19 * MIN)].iloc[0]
    minute20 = rows[(rows["id"] == "a") & (rows["window"] == "1m") & (rows["start_ms"] == T0 + 20 * MIN)].iloc[0]
    assert minute19["it_kwh"] == pytest.approx(100 / 60)
    assert minute20["it_kwh"] == pytest.approx(100 / 60)
    assert engine.counters.late_dropped == 0


def test_too_late_readings_are_counted_and_dropped(reg):
    engine = StreamEngine(reg, EngineSettings(allowed_lateness_s=120))
    readings = fleet_readings(60)
    engine.add(readings)
    engine.advance()  # everything up to minute 58 is final now (60 min − 2 min lateness)
    stale = power_series("a", "it.ups", 999.0, 5, start_ms=T0 + 10 * MIN)  # 6 samples for closed minutes
    assert engine.add(stale) == 6
    assert engine.counters.late_dropped == 6
    assert engine.counters.late_by_site == {"a": 6}
    assert engine.advance().empty  # nothing changed, nothing re-emitted


def test_every_window_ends_final_exactly_once_per_key(reg):
    readings = fleet_readings(24 * 60 + 10)
    stream = run(StreamEngine(reg), chunked(readings, 30))
    day = stream[(stream["scope"] == "site") & (stream["window"] == "1d") & (stream["id"] == "a")]
    first_day = day[day["start_ms"] == window_starts(np.array([T0]), "1d", "Asia/Shanghai")[0]].iloc[0]
    assert bool(first_day["final"])
    # a full local day of 150 kW: 3600 kWh, PUE 1.5
    assert first_day["facility_kwh"] == pytest.approx(3600.0)
    assert first_day["pue"] == pytest.approx(1.5)
    annual = stream[(stream["window"] == "12mo") & (stream["id"] == "a")].iloc[-1]
    assert annual["status"] == "incomplete"  # one day of 365: never reported as an annual figure
    # the open annual window runs from 364 local days before today to now (00:10 of day 2):
    # 1,450 covered minutes of 364 days + 10 minutes elapsed
    assert annual["coverage"] == pytest.approx((24 * 60 + 10) / (364 * 24 * 60 + 10), rel=1e-6)
    assert pd.Timestamp(annual["end_ms"], unit="ms", tz="Asia/Shanghai").strftime("%H:%M") == "00:00"


def test_state_stays_bounded(reg):
    engine = StreamEngine(reg)
    for chunk in chunked(fleet_readings(6 * 60), 10):
        engine.add(chunk)
        engine.advance()
    counters = engine.snapshot_counters()
    # only the open windows (closing delay max(lateness, max gap) = 5 min, plus the current minute)
    # and the samples they need (each series' last one before them) remain, for 2 sites × 3 points
    open_minutes = engine.lateness_ms // MIN + 1
    assert counters["open_windows"] <= 2 * open_minutes
    assert counters["buffered_readings"] <= 2 * 3 * (open_minutes + 1)
    assert len(engine._acc["15m"]) <= 2 * 2  # closed quarter-hours are forgotten after emission


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 8), st.sampled_from([0, 0, 1, 4, 8, 12])), max_size=40),
       st.integers(0, 9), st.integers(0, 9))
def test_pruning_keeps_the_open_range_and_each_series_newest_usable_reading_before_it(rows, until_a, until_b):
    """Past a site's closed range the buffer keeps, per series, only its newest usable reading (neither BAD nor
    COLLECTOR_DOWN; of equal times the last received): where the interval into the open range starts."""
    from dcpue.analytics.stream import _buffer_frame

    engine = StreamEngine(registry(simple_site("a"), simple_site("b")))
    pid = np.array([p for p, _, _ in rows], dtype=np.int64)  # rows 0-2: site a's points, 3-5: site b's
    ts = T0 + MIN * np.array([t for _, t, _ in rows], dtype=np.int64)
    quality = np.array([q for _, _, q in rows], dtype=np.int64)
    engine._buffer = _buffer_frame(pid, ts, np.arange(len(rows), dtype=np.float64), quality)
    until = {"a": T0 + until_a * MIN, "b": T0 + until_b * MIN}
    engine._final_until.update(until)
    site_of = engine._pid_site
    newest: dict[int, tuple[int, int]] = {}  # pid -> (ts, row) of its newest usable reading before its site's range
    keep = set()
    for row, (p, t, q) in enumerate(zip(pid.tolist(), ts.tolist(), quality.tolist(), strict=True)):
        if t >= until[engine._site_ids[site_of[p]]]:
            keep.add(row)
        elif q & 12 == 0 and (t, row) >= newest.get(p, (t, row)):
            newest[p] = (t, row)
    keep |= {row for _, row in newest.values()}
    engine._prune_buffer()
    assert sorted(engine._buffer["value"].astype(int).tolist()) == sorted(keep)


def test_month_windows_follow_the_calendar():
    start = int(pd.Timestamp("2025-02-10T00:00+08:00").value // 1_000_000)
    [month] = window_starts(np.array([start]), "1mo", "Asia/Shanghai")
    assert pd.Timestamp(month, unit="ms", tz="Asia/Shanghai") == pd.Timestamp("2025-02-01T00:00+08:00")
    [end] = window_ends(np.array([month]), "1mo", "Asia/Shanghai")
    assert pd.Timestamp(end, unit="ms", tz="Asia/Shanghai") == pd.Timestamp("2025-03-01T00:00+08:00")


def test_meters_sampled_less_often_than_the_lateness_lose_nothing(reg):
    # IT sampled every 4 minutes (above the 2-minute lateness, below the 5-minute gap limit):
    # windows must stay open until the closing sample arrives, so the stream equals the batch result.
    readings = pd.concat([
        counter_series("a", "facility.main", 150, 180), power_series("a", "it.ups", 100, 180, step_min=4),
        counter_series("b", "facility.main", 240, 180), power_series("b", "it.ups", 200, 180, step_min=4),
    ], ignore_index=True)
    stream = run(StreamEngine(reg), chunked(readings, 1))
    batch = batch_windows(readings, reg, "1h")
    for start in (T0, T0 + HOUR):
        s = stream[(stream["window"] == "1h") & (stream["id"] == "a") & (stream["start_ms"] == start)].iloc[0]
        b = batch[(batch["id"] == "a") & (batch["start_ms"] == start)].iloc[0]
        assert bool(s["final"]) and s["status"] == "ok"
        assert s["it_kwh"] == pytest.approx(b["it_kwh"]) == pytest.approx(100.0)
        assert s["pue"] == pytest.approx(1.5)


def test_a_point_whose_messages_arrive_late_is_waited_for(reg):
    # the IT meter's batches arrive 6 minutes after the other points (a slow collector):
    # windows wait for it (up to close_timeout_s), so its energy is not lost and nothing is "late"
    other = pd.concat([counter_series("a", "facility.main", 150, 80), power_series("a", "cool.crah", 40, 80)])
    it = power_series("a", "it.ups", 100, 80)
    engine = StreamEngine(reg)
    out = []
    for minute in range(0, 81):  # the first hour closes once the IT meter's minute 60 + lateness has arrived
        engine.add(other[other["ts"] == T0 + minute * MIN])
        engine.add(it[it["ts"] == T0 + (minute - 6) * MIN])
        out.append(engine.advance())
    rows = pd.concat(out).drop_duplicates(["scope", "id", "window", "start_ms"], keep="last")
    hour = rows[(rows["id"] == "a") & (rows["window"] == "1h") & (rows["start_ms"] == T0)].iloc[0]
    assert bool(hour["final"])
    assert hour["it_kwh"] == pytest.approx(100.0)
    assert hour["pue"] == pytest.approx(1.5)
    assert engine.counters.late_dropped == 0


def test_group_rows_wait_for_a_lagging_member(reg):
    # site b reports 10 minutes behind site a; the fleet minute must include both once b catches up
    a = pd.concat([counter_series("a", "facility.main", 150, 60), power_series("a", "it.ups", 100, 60)])
    b = pd.concat([counter_series("b", "facility.main", 240, 60), power_series("b", "it.ups", 200, 60)])
    engine = StreamEngine(reg)
    out = []
    for minute in range(0, 71):
        engine.add(a[a["ts"] == T0 + minute * MIN])
        engine.add(b[b["ts"] == T0 + (minute - 10) * MIN])
        out.append(engine.advance())
    rows = pd.concat(out).drop_duplicates(["scope", "id", "window", "start_ms"], keep="last")
    fleet = rows[(rows["scope"] == "fleet") & (rows["window"] == "1m") & (rows["start_ms"] == T0 + 20 * MIN)].iloc[0]
    assert bool(fleet["final"]) and fleet["status"] == "ok"
    assert fleet["pue"] == pytest.approx(390 / 300)
    # while b had not closed minute 20, no fleet row for it was final
    early = [o for o in out if not o.empty]
    first_final = next(o for o in early if ((o["scope"] == "fleet") & (o["window"] == "1m")
                                           & (o["start_ms"] == T0 + 20 * MIN) & o["final"]).any())
    row = first_final[(first_final["scope"] == "fleet") & (first_final["window"] == "1m")
                      & (first_final["start_ms"] == T0 + 20 * MIN)].iloc[0]
    assert row["coverage"] == pytest.approx(1.0)


def test_day_windows_survive_daylight_saving_zones(reg):
    # Europe/Berlin leaves summer time on 2025-10-26: that local day has 25 hours
    start = int(pd.Timestamp("2025-10-25T22:00:00Z").value // 1_000_000)  # 2025-10-26 00:00 CEST
    [day] = window_starts(np.array([start + 3_600_000]), "1d", "Europe/Berlin")
    [end] = window_ends(np.array([day]), "1d", "Europe/Berlin")
    assert (end - day) / 3_600_000 == 25


def test_a_restored_snapshot_continues_exactly_as_without_restart():
    from dcpue.analytics.stream import restore_site, snapshot_sites

    reg = registry(simple_site("a"))
    readings = pd.concat([counter_series("a", "facility.main", 150, 600), power_series("a", "it.ups", 100, 600),
                          power_series("a", "cool.crah", 40, 600)], ignore_index=True)
    first, second = readings[readings["ts"] < T0 + 300 * MIN], readings[readings["ts"] >= T0 + 300 * MIN]
    before = StreamEngine(reg)
    rows_before = run(before, chunked(first, 15))
    resumed = StreamEngine(reg)
    assert restore_site(resumed, snapshot_sites(before, ["a"])["a"]) == "a"
    rows = pd.concat([rows_before, run(resumed, chunked(second, 15))])
    rows = rows.drop_duplicates(["scope", "id", "window", "start_ms"], keep="last")
    whole = run(StreamEngine(reg), chunked(readings, 15))
    key = ["scope", "id", "window", "start_ms"]
    got, want = rows.set_index(key).sort_index(), whole.set_index(key).sort_index()
    assert got.index.equals(want.index)
    np.testing.assert_allclose(got["facility_kwh"], want["facility_kwh"])
    np.testing.assert_allclose(got["pue"].fillna(-1), want["pue"].fillna(-1))


def test_a_snapshot_of_some_sites_holds_each_ones_state_and_no_other():
    """Checkpoints encode every state frame once for all sites and slice it by site: each site's blob
    restores exactly that site's rows (sites with different row counts, one left out)."""
    from dcpue.analytics.stream import restore_site, snapshot_sites

    reg = registry(simple_site("a"), simple_site("b"), simple_site("c"), simple_site("quiet"))
    readings = pd.concat([counter_series("a", "facility.main", 150, 200), power_series("a", "it.ups", 100, 200),
                          counter_series("b", "facility.main", 90, 130), power_series("b", "it.ups", 60, 130),
                          power_series("b", "cool.crah", 20, 130),
                          counter_series("c", "facility.main", 40, 170), power_series("c", "it.ups", 30, 170)],
                         ignore_index=True).sort_values("ts", kind="stable")
    engine = StreamEngine(reg)
    run(engine, chunked(readings, 15))
    engine.add(readings[readings["ts"] >= T0 + 125 * MIN].assign(ts=lambda r: r["ts"] + 100 * MIN).head(40))
    blobs = snapshot_sites(engine, {"a", "c"})
    assert set(blobs) == {"a", "c"}
    quiet = StreamEngine(reg)  # a site with no state yet, beside sites with some, snapshots empty
    assert restore_site(quiet, snapshot_sites(engine, {"quiet"})["quiet"]) == "quiet"
    assert quiet._buffer.empty and quiet._open.empty  # noqa: SLF001

    engine._merge_pending()  # noqa: SLF001
    for site, blob in blobs.items():
        alone = StreamEngine(reg)
        assert restore_site(alone, blob) == site
        alone._merge_pending()  # noqa: SLF001
        assert len(engine._open.frame([site])) > 0  # noqa: SLF001
        pd.testing.assert_frame_equal(alone._open.frame(), engine._open.frame([site]), check_dtype=False)  # noqa: SLF001
        for label in StreamEngine.ROLLUPS:
            pd.testing.assert_frame_equal(alone._acc[label].frame(),  # noqa: SLF001
                                          engine._acc[label].frame([site]), check_dtype=False)  # noqa: SLF001
        # the buffer holds each reading's points-table row, the same in both engines (one registry)
        site_of_reading = engine._pid_site[engine._buffer["pid"].to_numpy()]  # noqa: SLF001
        mine = engine._buffer[site_of_reading == engine._site_code[site]]  # noqa: SLF001
        assert len(mine) > 0
        pd.testing.assert_frame_equal(alone._buffer.reset_index(drop=True), mine.reset_index(drop=True))  # noqa: SLF001


def test_checkpoint_text_columns_are_coded_per_site_with_minus_one_for_missing():
    """The encoded text columns are what encoding each site's rows alone gives: codes into the site's own
    values in order of appearance, -1 for a missing value (no entry for it)."""
    from dcpue.analytics.stream import _frames_to_objs

    frame = pd.DataFrame({"site": ["a", "b", "a", "a", "b", "c"], "flag": ["x", "y", None, "x", None, None],
                          "n": [-5, 3, 200, 1, 2, 3]})
    objs = _frames_to_objs(frame, {"a", "b", "c"})
    for site, rows in frame.groupby("site"):
        (position, codes, values), = objs[site]["coded"][1:]  # the site column itself is coded first
        expected_codes, expected_values = pd.factorize(rows["flag"], use_na_sentinel=True)
        assert position == 1
        assert np.frombuffer(codes, dtype="<i4").tolist() == expected_codes.tolist()
        assert values == list(expected_values)
    assert objs["a"]["blocks"][0][0] == np.dtype(np.int16).str  # -5..200 per site, as before


def test_collector_down_markers_leave_every_figure_as_it_was(reg):
    from dcpue.model import Quality, readings_frame

    readings = fleet_readings(180)
    # a collector that could not reach a's UPS every 5 minutes published NaN flagged COLLECTOR_DOWN
    marks_ts = T0 + np.arange(0, 180, 5) * MIN + 30_000
    marks = readings_frame("a", "it.ups", marks_ts, np.nan, int(Quality.COLLECTOR_DOWN))
    with_marks = pd.concat([readings, marks], ignore_index=True).sort_values("ts", kind="stable")
    plain = run(StreamEngine(reg, EngineSettings()), chunked(readings, 7))
    marked = run(StreamEngine(reg, EngineSettings()), chunked(with_marks, 7))
    columns = ["scope", "id", "window", "start_ms", "pue", "facility_kwh", "it_kwh"]
    pd.testing.assert_frame_equal(plain[columns].sort_values(columns[:4]).reset_index(drop=True),
                                  marked[columns].sort_values(columns[:4]).reset_index(drop=True))


def test_sensor_readings_are_counted_not_buffered_and_change_no_figure():
    """Only energy-balance points are integrated: a site's temperature and humidity sensors are accepted and
    counted, but neither buffered nor checkpointed, and every window is what it is without them."""
    import msgspec

    from dcpue.analytics.pue import flow_of_points
    from dcpue.analytics.stream import _obj_to_frame, snapshot_sites
    from dcpue.model import readings_frame
    from tests.factories import point

    plain_site = simple_site("a")
    sensor = point("hall.temp", "sensor", "temperature", "degC")
    reg = registry({**plain_site, "points": [*plain_site["points"], sensor]})
    assert ("a", "hall.temp") in reg.points_table.index
    assert ("a", "hall.temp") not in flow_of_points(reg.points_table).index
    energy = pd.concat([counter_series("a", "facility.main", 150, 60), power_series("a", "it.ups", 100, 60)],
                       ignore_index=True)
    temps = readings_frame("a", "hall.temp", energy["ts"].unique(), 24.5, 0)
    with_sensor = pd.concat([energy, temps], ignore_index=True).sort_values("ts", kind="stable")
    engine = StreamEngine(reg)
    rows = run(engine, chunked(with_sensor, 7))
    plain = run(StreamEngine(reg), chunked(energy, 7))
    assert engine.counters.accepted == len(with_sensor)
    buffered = _obj_to_frame(msgspec.msgpack.decode(snapshot_sites(engine, ["a"])["a"])["buffer"], None)
    assert set(buffered["point"]) == {"facility.main", "it.ups"}  # the CRAH sent nothing, the sensor is left out
    assert engine.snapshot_counters()["buffered_readings"] == len(buffered)
    columns = ["scope", "id", "window", "start_ms", "final", "pue", "facility_kwh", "it_kwh", "coverage"]
    pd.testing.assert_frame_equal(plain[columns].sort_values(columns[:4]).reset_index(drop=True),
                                  rows[columns].sort_values(columns[:4]).reset_index(drop=True))


def test_a_site_whose_sensors_report_before_its_meters_has_its_windows_and_closes_the_fleets(tmp_path):
    """Sensors are not integrated, but they still put a site in the balance: its windows run from its first
    reading of any point, with no coverage until its meters report, and close like every other site's, so the
    cluster and fleet windows close with them (not held for the site that never closes a window). The same
    after a checkpoint and restore in between."""
    from dcpue.analytics.stream import restore_site, snapshot_sites
    from dcpue.model import readings_frame
    from tests.factories import GUI_AN, point

    def with_sensor(sid):
        doc = simple_site(sid, cluster="gui-an")
        return {**doc, "points": [*doc["points"], point("hall.temp", "sensor", "temperature", "degC")]}

    reg = registry(with_sensor("a"), with_sensor("b"), clusters=[GUI_AN])
    minutes = 45
    stamps = T0 + np.arange(minutes) * MIN
    meters_from = 20  # b's meters start at minute 20, its sensor at 0; a has everything from 0
    readings = pd.concat([
        counter_series("a", "facility.main", 150, minutes), power_series("a", "it.ups", 100, minutes),
        readings_frame("a", "hall.temp", stamps, 24.0, 0), readings_frame("b", "hall.temp", stamps, 25.0, 0),
        counter_series("b", "facility.main", 150, minutes - meters_from, start_ms=T0 + meters_from * MIN),
        power_series("b", "it.ups", 100, minutes - meters_from, start_ms=T0 + meters_from * MIN),
    ], ignore_index=True).sort_values("ts", kind="stable")
    for restore in (False, True):
        engine, out = StreamEngine(reg), []
        for k, chunk in enumerate(chunked(readings, 5)):
            engine.add(chunk)
            out.append(engine.advance())
            if restore and k == 2:
                resumed = StreamEngine(reg)
                for blob in snapshot_sites(engine, {"a", "b"}).values():
                    restore_site(resumed, blob)
                resumed._groups = engine._groups  # noqa: SLF001 — the aggregator is another worker's in production
                engine = resumed
        rows = pd.concat(out, ignore_index=True).drop_duplicates(["scope", "id", "window", "start_ms"], keep="last")
        b_min = rows[(rows["id"] == "b") & (rows["window"] == "1m")].set_index("start_ms")
        assert b_min.index.min() == T0  # from b's first (sensor) reading on
        early = b_min.loc[T0:T0 + (meters_from - 2) * MIN]
        assert len(early) == meters_from - 1 and (early["coverage"] == 0).all() and early["final"].all()
        # from minute 20 its meters report (the silent CRAH holds windows open for the close timeout)
        assert b_min.loc[T0 + 25 * MIN, "pue"] == pytest.approx(1.5) and b_min.loc[T0 + 25 * MIN, "final"]
        fleet = rows[(rows["scope"] == "fleet") & (rows["window"] == "1m")].set_index("start_ms")
        assert fleet.loc[T0 + 5 * MIN, "final"]  # closed with both sites, not held for b
        assert fleet.loc[T0 + 30 * MIN, "pue"] == pytest.approx(1.5)


def test_version_1_to_3_snapshots_restore_the_same_state_as_version_4():
    """Checkpoints written before state version 4 (no mark of complete days saved apart), before version 3
    (complete days among the running sums) and before version 2 (columns as lists of values) are still read,
    and the engine goes on as from a version 4 one."""
    import msgspec

    from dcpue.analytics.stream import _frames_to_objs, _obj_to_frame, restore_site, snapshot_sites

    reg = registry(simple_site("a"))
    readings = pd.concat([counter_series("a", "facility.main", 150, 2 * 24 * 60 + 240),
                          power_series("a", "it.ups", 100, 2 * 24 * 60 + 240)], ignore_index=True)
    chunks = chunked(readings, 180)
    engine = StreamEngine(reg)
    run(engine, chunks[:-1])
    blob = snapshot_sites(engine, ["a"])["a"]
    state = msgspec.msgpack.decode(blob)
    assert state["v"] == 4 and state["complete"]["1d"] is not None and state["complete_through"] is None  # two days
    v3 = {key: value for key, value in state.items() if key != "complete_through"} | {"v": 3}
    v2_acc = {}
    for label, obj in state["acc"].items():
        running = _obj_to_frame(obj, ["site", "start_ms"])
        complete = engine._complete[label].frame(["a"]) if label in engine._complete else pd.DataFrame()  # noqa: SLF001
        every = pd.concat([f for f in (running, complete) if not f.empty])
        v2_acc[label] = _frames_to_objs(every, {"a"})["a"]
    v2 = {key: value for key, value in v3.items() if key != "complete"} | {"v": 2, "acc": v2_acc}

    def as_v1(obj):
        frame = _obj_to_frame(obj, None)
        return {"columns": list(frame.columns), "data": [frame[c].tolist() for c in frame.columns]}

    v1 = {**v2, "v": 1, "buffer": as_v1(v2["buffer"]), "open": as_v1(v2["open"]),
          "acc": {label: as_v1(obj) for label, obj in v2["acc"].items()}}
    restored, rows = {}, {}
    for name, data in (("v4", blob), ("v3", msgspec.msgpack.encode(v3)), ("v2", msgspec.msgpack.encode(v2)),
                       ("v1", msgspec.msgpack.encode(v1))):
        restored[name] = StreamEngine(reg)
        restore_site(restored[name], data)
        rows[name] = run(restored[name], chunks[-1:])  # the complete days of v1 and v2 leave the running sums
    want = run(engine, chunks[-1:])
    for name, resumed in restored.items():
        assert len(resumed._buffer) == len(engine._buffer) > 0 and len(resumed._open) > 0  # noqa: SLF001
        pd.testing.assert_frame_equal(resumed._buffer, engine._buffer, check_dtype=False)  # noqa: SLF001
        pd.testing.assert_frame_equal(resumed._open.frame(), engine._open.frame(), check_dtype=False)  # noqa: SLF001
        for label in StreamEngine.ROLLUPS:
            pd.testing.assert_frame_equal(resumed._acc[label].frame(), engine._acc[label].frame(),  # noqa: SLF001
                                          check_dtype=False, check_index_type=False)
        for label, complete in engine._complete.items():  # noqa: SLF001
            pd.testing.assert_frame_equal(resumed._complete[label].frame(["a"]), complete.frame(["a"]))  # noqa: SLF001
        pd.testing.assert_frame_equal(rows[name].reset_index(drop=True), want.reset_index(drop=True))


def test_a_bad_reading_after_a_counter_interval_start_does_not_cut_the_interval(reg):
    """A counter's interval longer than the max gap is still booked; pruning the buffer must keep its start even
    when a BAD reading of the same meter (never integrated) came after it. The meter is silent for 40 minutes,
    longer than the close timeout: the minutes closed before it came back stay gaps, and the ones still open
    then get the interval's share, 150 kW for a minute each."""
    from dcpue.model import Quality, readings_frame

    readings = fleet_readings(180)
    meter = (readings["site"] == "a") & (readings["point"] == "facility.main")
    silent = meter & (readings["ts"] > T0 + 60 * MIN) & (readings["ts"] < T0 + 100 * MIN)
    marker = readings_frame("a", "facility.main", [T0 + 62 * MIN], np.nan, int(Quality.COLLECTOR_DOWN))
    gappy = pd.concat([readings[~silent], marker], ignore_index=True).sort_values("ts", kind="stable")
    stream = run(StreamEngine(reg), chunked(gappy, 7))
    minutes = stream[(stream["window"] == "1m") & (stream["id"] == "a") & (stream["start_ms"] >= T0 + 60 * MIN)
                     & (stream["start_ms"] < T0 + 100 * MIN)].sort_values("start_ms")
    assert len(minutes) == 40 and minutes["final"].all()
    kwh = minutes["facility_kwh"].to_numpy()
    shared = np.flatnonzero(kwh > 0)
    assert len(shared) and shared[-1] == 39 and (np.diff(shared) == 1).all()
    np.testing.assert_allclose(kwh[shared], 150 / 60)
    assert (kwh[:shared[0]] == 0).all()


def test_sites_of_names_each_site_of_the_given_points_once(reg):
    engine = StreamEngine(reg)
    rows = {site: engine.points.index.get_loc((site, "it.ups")) for site in ("a", "b")}
    assert engine.sites_of(np.array([rows["b"], rows["b"], -1])) == ["b"]
    assert sorted(engine.sites_of(np.array([rows["a"], rows["b"], rows["a"]]))) == ["a", "b"]
    assert engine.sites_of(np.array([-1, -1])) == [] and engine.sites_of(np.array([], dtype=np.int64)) == []


def test_a_site_has_no_window_before_it_has_a_reading_in_it(reg):
    """Sites that advance together share their window edges; a site whose newest reading is older than the
    other's gets no row for the windows only the other has opened (a window opens with a reading newer than its
    start)."""
    readings = fleet_readings(20)
    lagging = (readings["site"] == "b") & (readings["ts"] >= T0 + 12 * MIN)
    engine = StreamEngine(reg, EngineSettings())
    engine.add(readings[~lagging])
    rows = engine.advance()
    minutes = rows[(rows["scope"] == "site") & (rows["window"] == "1m")]
    b_newest = readings.loc[~lagging & (readings["site"] == "b"), "ts"].max()
    assert minutes.loc[minutes["id"] == "b", "start_ms"].max() < b_newest
    assert minutes.loc[minutes["id"] == "a", "start_ms"].max() == T0 + 19 * MIN
    engine.add(readings[lagging])
    later = engine.advance()
    b_later = later[(later["id"] == "b") & (later["window"] == "1m")]
    assert b_later["start_ms"].max() == T0 + 19 * MIN and (b_later["coverage"] > 0).all()


def test_complete_days_are_kept_per_site_and_the_annual_figure_sums_every_one(reg):
    """Days leave the running sums once complete (a step reads only its sites' days, not a year of every site's);
    the rolling annual figure still adds up every day, across a checkpoint and restore too."""
    from dcpue.analytics.stream import restore_site, snapshot_sites

    readings = fleet_readings(2 * 24 * 60 + 120)
    chunks = chunked(readings, 180)
    whole = StreamEngine(reg)
    rows = run(whole, chunks)
    assert {site: len(whole._complete["1d"].frame([site])) for site in ("a", "b")} == {"a": 2, "b": 2}
    assert len(whole._acc["1d"]) == 2  # each site's current day only
    days = rows[(rows["window"] == "1d") & (rows["scope"] == "site")]
    for site in ("a", "b"):
        annual = rows[(rows["window"] == "12mo") & (rows["id"] == site)].iloc[-1]
        assert annual["facility_kwh"] == pytest.approx(days.loc[days["id"] == site, "facility_kwh"].sum(), rel=1e-12)

    before, resumed = StreamEngine(reg), StreamEngine(reg)
    half = len(chunks) // 2 + 2  # mid-day, with a complete day behind
    run(before, chunks[:half])
    assert len(before._complete["1d"]) > 0
    for blob in snapshot_sites(before, {"a", "b"}).values():
        restore_site(resumed, blob)
    after = run(resumed, chunks[half:])
    key = ["scope", "id", "window", "start_ms"]
    got = after.set_index(key).sort_index()
    want = rows.set_index(key).sort_index().loc[got.index]
    np.testing.assert_allclose(got["facility_kwh"], want["facility_kwh"], rtol=1e-12)
    np.testing.assert_allclose(got["coverage"], want["coverage"], rtol=1e-12)
    assert {site: len(resumed._complete["1d"].frame([site])) for site in ("a", "b")} == {"a": 2, "b": 2}


def test_complete_days_older_than_kept_are_forgotten(reg):
    engine = StreamEngine(reg)
    engine.KEEP_COMPLETE_MS = {"1d": 2 * 24 * HOUR}  # the annual figure keeps 366 days
    rows = run(engine, chunked(fleet_readings(4 * 24 * 60 + 60), 360))
    for site in ("a", "b"):
        kept = engine._complete["1d"].frame([site]).index.get_level_values("start_ms").tolist()
        days = rows[(rows["window"] == "1d") & (rows["id"] == site) & rows["final"]]["start_ms"].sort_values()
        assert len(days) == 4
        # a day goes once its end is two days behind the closed windows, when the site's next day completes
        assert kept == days.tolist()[-2:]


def test_restoring_a_site_replaces_everything_the_engine_held_of_it(reg):
    """Rewound to an older checkpoint, an engine goes on exactly as one that starts from that checkpoint: nothing
    it held of the site since (buffered readings, open windows, running sums, complete days) is left over."""
    from dcpue.analytics.stream import restore_site, snapshot_sites

    readings = fleet_readings(2 * 24 * 60 + 240)
    # site b reports from 15:00 of the first day on: its checkpoint before that holds nothing at all
    readings = readings[(readings["site"] == "a") | (readings["ts"] >= T0 + 15 * HOUR)]
    chunks = chunked(readings, 180)
    engine = StreamEngine(reg, emit_groups=False)
    run(engine, chunks[:4])  # 12:00 of the first day
    blobs = snapshot_sites(engine, {"a", "b"})
    run(engine, chunks[4:12])  # a day completes; new running sums, windows and readings of both
    fresh = StreamEngine(reg, emit_groups=False)
    for blob in blobs.values():
        restore_site(engine, blob)
        restore_site(fresh, blob)
    got, want = run(engine, chunks[4:]), run(fresh, chunks[4:])
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True))


def test_complete_days_saved_apart_restore_the_same_state_as_days_carried_by_the_checkpoint(reg):
    """A checkpoint may leave the days up to a mark to a record of their own (written once a day, not with every
    checkpoint): restored with that record the engine goes on exactly as from a checkpoint that carries every
    day; with a newer one too (which is named: it may lack days forgotten since); without it, or with an older or
    unreadable one, what is missing is named and the rest restored."""
    import msgspec

    from dcpue.analytics.stream import UnusableRecord, complete_gap, restore_site, snapshot_complete, snapshot_sites

    chunks = chunked(fleet_readings(3 * 24 * 60 + 240), 180)
    engine = StreamEngine(reg, emit_groups=False)
    run(engine, chunks[:12])  # 12:00 of the second day: one complete day each
    first = snapshot_complete(engine, {"a", "b"})
    assert {site: mark for site, (mark, _) in first.items()} == {"a": T0, "b": T0}
    run(engine, chunks[12:20])  # a second day completes
    assert engine.newest_complete("a") == T0 + 24 * HOUR
    marks = {site: mark for site, (mark, _) in first.items()}
    carried = snapshot_sites(engine, {"a", "b"})
    apart = snapshot_sites(engine, {"a", "b"}, saved_through=marks)
    newer = snapshot_complete(engine, {"a", "b"})  # written with the checkpoint; or only it, before a crash
    for site in ("a", "b"):
        state = msgspec.msgpack.decode(apart[site])
        tail = np.frombuffer(state["complete"]["1d"]["starts"], dtype="<i8").tolist()
        assert state["complete_through"] == T0 and tail == [T0 + 24 * HOUR]  # only the day after the mark
        assert len(apart[site]) < len(carried[site])

    want_engine = StreamEngine(reg, emit_groups=False)
    for blob in carried.values():
        restore_site(want_engine, blob)
    want = run(want_engine, chunks[20:])
    for records in (first, newer):
        resumed = StreamEngine(reg, emit_groups=False)
        for site, blob in apart.items():
            gap = complete_gap(blob, records[site][1])
            assert gap is None if records is first else "replaced" in gap
            restore_site(resumed, blob, records[site][1])
        for site in ("a", "b"):
            pd.testing.assert_frame_equal(resumed._complete["1d"].frame([site]), engine._complete["1d"].frame([site]))  # noqa: SLF001
        pd.testing.assert_frame_equal(run(resumed, chunks[20:]).reset_index(drop=True), want.reset_index(drop=True))

    later = snapshot_sites(engine, {"a"}, saved_through={"a": T0 + 24 * HOUR})["a"]
    assert "reaches" in complete_gap(later, first["a"][1])
    assert "missing" in complete_gap(later, None)
    partial = StreamEngine(reg, emit_groups=False)
    restore_site(partial, later, first["a"][1])
    assert partial._complete["1d"].frame(["a"]).index.get_level_values("start_ms").tolist() == [T0]  # noqa: SLF001
    with pytest.raises(ValueError, match="unsupported engine state"):
        restore_site(partial, first["a"][1])
    record = msgspec.msgpack.decode(first["a"][1])
    day = record["complete"]["1d"]
    truncated = msgspec.msgpack.encode(record | {"complete": {"1d": day | {"sums": day["sums"][:-8]}}})
    for bad, why in ((first["b"][1], "of site 'b'"), (b"\xc1", "Decode"), (truncated, "reshape")):
        with pytest.raises(UnusableRecord, match=why):
            complete_gap(apart["a"], bad)
        with pytest.raises(UnusableRecord, match=why):  # found before anything was changed
            restore_site(partial, apart["a"], bad)
        assert partial._complete["1d"].frame(["a"]).index.get_level_values("start_ms").tolist() == [T0]  # noqa: SLF001


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=946_684_800_000, max_value=4_102_444_800_000), min_size=1, max_size=20),
       st.lists(st.tuples(st.sampled_from(["1m", "15m", "1h", "1d", "1mo"]),
                          st.sampled_from(["UTC", "Asia/Shanghai", "Europe/Berlin", "America/St_Johns"]),
                          st.booleans()), min_size=1, max_size=8))
def test_window_bounds_asked_again_are_those_converted_anew(times, asks):
    """Window starts and ends are converted once per (label, zone) and time, then looked up: asked again, in any
    order of labels, zones and kinds, each is what converting it afresh gives."""
    from dcpue.analytics import stream

    ts = np.array(times, dtype=np.int64)
    for label, tz, ends in asks:
        if ends:
            starts = stream._window_starts(ts, label, tz)  # noqa: SLF001
            assert window_ends(starts, label, tz).tolist() == stream._window_ends(starts, label, tz).tolist()  # noqa: SLF001
        else:
            assert window_starts(ts, label, tz).tolist() == stream._window_starts(ts, label, tz).tolist()  # noqa: SLF001


def test_counting_open_windows_while_a_step_replaces_sites_never_fails():
    """The status page counts the engine's open windows from its own thread while the worker's step replaces
    sites' rows: the count never meets the table changing size under it."""
    import sys
    import threading
    import time

    from dcpue.analytics.pue import FLOW_COLUMNS, site_start_index
    from dcpue.analytics.stream import _SiteRows

    sites = np.array([f"s{k}" for k in range(50)], dtype=object)
    frame = pd.DataFrame(np.ones((150, len(FLOW_COLUMNS))), columns=list(FLOW_COLUMNS),
                         index=site_start_index(sites, np.repeat(np.arange(50), 3), np.tile([0, MIN, 2 * MIN], 50)))
    rows = _SiteRows()
    stop, errors, counts = threading.Event(), [], set()

    def step():
        while not stop.is_set():
            rows.put(frame, sites=sites.tolist())  # every site dropped, then put back

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, as a loaded machine may
    worker = threading.Thread(target=step)
    worker.start()
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                counts.add(len(rows))
            except RuntimeError as exc:
                errors.append(exc)
    finally:
        stop.set()
        worker.join()
        sys.setswitchinterval(interval)
    assert not errors and counts <= set(range(0, 151, 3))
