"""Cluster and fleet rows from site rows that arrive in any order, from any worker."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dcpue.analytics.groups import HOLD_MS, GroupAggregator
from dcpue.analytics.stream import StreamEngine
from dcpue.results import conform_windows
from tests.factories import GUI_AN, T0, counter_series, power_series, registry, simple_site

HOUR = 3_600_000


@pytest.fixture
def reg():
    return registry(simple_site("a", cluster="c"), simple_site("b", cluster="c"), simple_site("z", cluster="c"),
                    clusters=[{**GUI_AN, "id": "c"}])


def site_rows(reg, site: str, kw: float, hours: int, start_ms: int = T0) -> pd.DataFrame:
    """The site rows the engine emits for ``hours`` of steady load at ``site`` (facility kw, IT 100 kW)."""
    engine = StreamEngine(reg, emit_groups=False)
    engine.add(pd.concat([counter_series(site, "facility.main", kw, hours * 60 + 10, start_ms=start_ms),
                          power_series(site, "it.ups", 100, hours * 60 + 10, start_ms=start_ms)]))
    rows = engine.advance()
    return rows[rows["window"] == "1h"]


def newest(rows: pd.DataFrame) -> pd.DataFrame:
    return rows.drop_duplicates(["scope", "id", "window", "start_ms"], keep="last").set_index(
        ["scope", "id", "window", "start_ms"]).sort_index()


def test_group_pue_is_total_over_it_of_all_members_and_order_does_not_matter(reg):
    a, b, z = site_rows(reg, "a", 150, 3), site_rows(reg, "b", 120, 3), site_rows(reg, "z", 200, 3)
    one = GroupAggregator(reg.sites_table)
    forward = newest(pd.concat([one.add(a), one.add(b), one.add(z)]))
    other = GroupAggregator(reg.sites_table)
    backward = newest(pd.concat([other.add(z), other.add(b), other.add(a), other.add(a)]))  # a replayed
    row = forward.loc[("cluster", "c", "1h", T0)]
    assert row["pue"] == pytest.approx((150 + 120 + 200) / 300)  # Σ total ÷ Σ IT, not a mean of ratios
    assert bool(row["final"]) and row["coverage"] == 1.0
    pd.testing.assert_frame_equal(forward, backward.loc[forward.index])


def test_a_silent_member_holds_a_window_only_up_to_the_hold_limit(reg):
    groups = GroupAggregator(reg.sites_table)
    first = newest(pd.concat([groups.add(site_rows(reg, "a", 150, 2)), groups.add(site_rows(reg, "b", 120, 2))]))
    assert not first.loc[("cluster", "c", "1h", T0), "final"]  # z has not reported: the hour stays open
    hold = HOLD_MS["1h"] // HOUR
    later = T0 + (hold + 2) * HOUR
    moved_on = groups.add(pd.concat([site_rows(reg, "a", 150, 2, later), site_rows(reg, "b", 120, 2, later)]))
    closed = newest(moved_on).loc[("cluster", "c", "1h", T0)]
    assert bool(closed["final"]) and closed["coverage"] == pytest.approx(2 / 3)  # closed without z
    assert closed["status"] == "incomplete"  # two of three members is below the coverage threshold
    # z's row for that hour arriving now is late: no partial group figure replaces the closed one
    late = groups.add(site_rows(reg, "z", 200, 2))
    assert not ((late["start_ms"] == T0) & (late["window"] == "1h")).any()
    assert groups.late_rows > 0


def test_snapshot_restores_every_held_row(reg):
    groups = GroupAggregator(reg.sites_table)
    groups.add(site_rows(reg, "a", 150, 2))
    copy = GroupAggregator(reg.sites_table)
    copy.restore(groups.snapshot())
    assert copy.held_rows == groups.held_rows > 0
    b = site_rows(reg, "b", 120, 2)
    pd.testing.assert_frame_equal(groups.add(b), copy.add(b))


def test_the_embedded_engine_gives_the_same_group_rows_as_the_second_stage(reg):
    readings = pd.concat([
        pd.concat([counter_series(s, "facility.main", kw, 200), power_series(s, "it.ups", 100 + 5 * i, 200)])
        for i, (s, kw) in enumerate((("a", 150), ("b", 120), ("z", 200)))])
    engine = StreamEngine(reg, emit_groups=True)
    stage_one = StreamEngine(reg, emit_groups=False)
    groups = GroupAggregator(reg.sites_table)
    embedded, staged = [], []
    for hour in range(4):
        part = readings[(readings["ts"] >= T0 + hour * HOUR) & (readings["ts"] < T0 + (hour + 1) * HOUR)]
        engine.add(part)
        embedded.append(engine.advance())
        stage_one.add(part)
        staged.append(groups.add(stage_one.advance()))
    want = newest(pd.concat(embedded).query("scope != 'site'"))
    got = newest(pd.concat(staged))
    assert len(want) > 0
    np.testing.assert_allclose(got.loc[want.index, "pue"], want["pue"], rtol=1e-12)
    assert conform_windows(got.reset_index()).shape[1] == conform_windows(want.reset_index()).shape[1]
