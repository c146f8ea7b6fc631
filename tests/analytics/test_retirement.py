"""Retirement assessment (issue #7): criteria, verdicts, score and the consolidation plan on synthetic fleets."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dcpue.analytics.retirement import CRITERIA, Economics, assess, site_inputs
from tests.factories import GUI_AN, registry, simple_site


def test_a_small_old_inefficient_site_outside_the_hub_is_retired_into_the_hub():
    reg = registry(
        simple_site("hub", cluster="gui-an", latitude=26.41, longitude=106.40, racks_installed=6000,
                    racks_in_service=4800, design_it_kw=30000, commissioned=2022),
        simple_site("old", latitude=27.7, longitude=106.9, racks_installed=200, racks_in_service=50,
                    design_it_kw=500, commissioned=2010),
        clusters=[GUI_AN])
    figures = pd.DataFrame({"site": ["hub", "old"], "annual_pue": [1.15, 1.80], "it_kw_mean": [15000.0, 100.0]})
    result = assess(site_inputs(reg, figures, as_of_year=2025), reg.clusters,
                    economics=Economics(electricity_price_cny_per_kwh=0.6))
    sites = result.sites.set_index("site")
    assert sites.loc["old", "verdict"] == "retire"
    assert sites.loc["hub", "verdict"] == "keep"
    assert [sites.loc["old", c] for c in CRITERIA] == ["met", "met", "met", "met", "met", "unknown"]
    assert result.plan["destination"].tolist() == ["gui-an"]
    assert result.plan["saved_kwh_year"].iloc[0] == pytest.approx(100 * 8760 * (1.80 - 1.15))
    json.dumps(result.to_dict(), allow_nan=False)
    assert np.isfinite(result.totals["saved_cost_cny_year"])
