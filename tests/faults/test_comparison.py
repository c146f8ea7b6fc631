"""The scenarios' equality check can fail: a lost batch, a double-counted batch, a window missing, or a
wrong final row later overwritten by the right one are each caught (hermetic, no servers)."""

from __future__ import annotations

import pandas as pd

from .harness import clean_reference, clean_run, compare, fleet


def frames_of(rows: pd.DataFrame) -> list[pd.DataFrame]:
    return [rows.reset_index()]


def test_the_clean_run_equals_itself():
    want = clean_reference()
    assert compare(frames_of(want), want).equal


def test_a_lost_batch_is_caught():
    f = fleet()
    site, batch = f.rounds[len(f.rounds) // 2][1]
    readings = pd.concat(f.readings.values(), ignore_index=True)
    lost = readings[~(readings["site"].eq(site) & readings["ts"].isin(batch["ts"]))]
    cmp = compare(frames_of(clean_run(f.registry, lost)), clean_reference())
    assert not cmp.equal
    assert cmp.missing or cmp.differing is not None


def test_a_double_counted_batch_is_caught():
    f = fleet()
    want = clean_reference()
    site, batch = f.rounds[len(f.rounds) // 2][0]
    facility = batch[batch["point"] == "facility.main"]["value"]
    doubled_kwh = float(facility.max() - facility.min())  # that batch's facility energy, booked a second time
    day = want.xs(("site", site, "1d"), level=("scope", "id", "window"), drop_level=False).index[0]
    wrong = want.copy()
    wrong.loc[day, "facility_kwh"] += doubled_kwh
    cmp = compare(frames_of(wrong), want)
    assert not cmp.equal and cmp.differing is not None and day in cmp.differing.index
    assert doubled_kwh > 50  # [kWh] far beyond the comparison's tolerance


def test_a_missing_window_and_an_overwritten_wrong_row_are_caught():
    want = clean_reference()
    assert compare(frames_of(want.iloc[1:]), want).missing == [want.index[0]]
    wrong = want.iloc[:1].copy()
    wrong["facility_kwh"] += 1.0
    cmp = compare([wrong.reset_index(), want.reset_index()], want)  # the wrong final row came first
    assert cmp.disagreeing == [want.index[0]]
