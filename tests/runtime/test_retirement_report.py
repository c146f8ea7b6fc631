"""The retirement report: the HTML is parsed with html5lib in strict mode (any parse error fails) and checked
element by element; the XLSX export is opened with openpyxl. The assessment comes from a store filled with the
PUE engine's windows of simulator readings; registry names carry markup, quotes, ``$`` and a formula."""

from __future__ import annotations

import re

import html5lib
import openpyxl
import pandas as pd
import pytest

from dcpue.analytics.retirement import CRITERIA, PLAN_COLUMNS, SITE_COLUMNS
from dcpue.registry import parse_registry
from dcpue.runtime.retirement import assess_store
from dcpue.runtime.retirement_report import VERDICT_COLOURS, render_html, write_html, write_xlsx
from dcpue.settings import RetirementSettings
from tests.helpers.retirement import TZ, filled_store, fleet

SVG = "{http://www.w3.org/2000/svg}"
HOSTILE = '=HYPERLINK("http://example.invalid/x","<b>open</b>") & <script>alert("x")</script> $5$'
HUB_NAME = "Gui'an <i>hub</i> $x$ & co (贵安集群)"


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    raw = fleet().model_dump(mode="json")
    raw["sites"][1]["name"] = HOSTILE  # tr-02
    raw["clusters"][0]["name"] = HUB_NAME
    registry = parse_registry(raw)
    store = filled_store(tmp_path_factory.mktemp("report") / "store.sqlite")
    # these thresholds give the simulated fleet one site of every verdict
    settings = RetirementSettings.model_validate({"criteria": {"min_pue_months": 2, "inefficient_above_pue": 1.13}})
    out = assess_store(store, registry, settings, tz=TZ, price_cny_per_kwh=0.45)
    store.close()
    assert sorted(out.assessment.sites["verdict"]) == ["consolidate", "keep", "retire", "upgrade"]
    return out


@pytest.fixture(scope="module")
def page(result, tmp_path_factory):
    path = write_html(result, tmp_path_factory.mktemp("html") / "report.html")
    source = path.read_text(encoding="utf-8")
    parser = html5lib.HTMLParser(strict=True, namespaceHTMLElements=False)
    return source, parser.parse(source)  # strict: the first parse error raises


def text(element) -> str:
    return "".join(element.itertext())


def by_class(doc, cls: str) -> list:
    return [e for e in doc.iter() if cls in (e.get("class") or "").split()]


def test_the_report_is_self_contained_and_ids_are_unique(page):
    source, doc = page
    tags = {e.tag for e in doc.iter() if isinstance(e.tag, str)}
    assert not tags & {"script", "link", "iframe", "img", "object", "embed"}
    refs = [v for e in doc.iter() for k, v in e.attrib.items() if k.endswith("href") or k == "src"]
    assert refs and all(v.startswith("#") for v in refs)  # only references into the page itself
    ids = [e.get("id") for e in doc.iter() if e.get("id")]
    assert len(ids) == len(set(ids))
    assert set(refs) | {f"#{r}" for r in re.findall(r"url\(#([^)]+)\)", source)} <= {f"#{i}" for i in ids}
    assert "@import" not in source and "url(http" not in source


def test_the_map_has_one_marker_per_site_coloured_by_verdict(page, result):
    _, doc = page
    sites = result.assessment.sites.set_index("site")
    (chart,) = [e for e in doc.iter() if e.get("id") == "retirement-map"]
    markers = by_class(chart, "site-marker")
    assert sorted(m.get("data-site") for m in markers) == sorted(sites.index)
    for marker in markers:
        verdict = sites.loc[marker.get("data-site"), "verdict"]
        assert marker.get("data-verdict") == verdict
        (use,) = marker.iter(f"{SVG}use")
        assert f"fill: {VERDICT_COLOURS[verdict]}" in use.get("style")
        assert marker.find(f"{SVG}title").text.startswith(marker.get("data-site"))
    assert len(set(VERDICT_COLOURS.values())) == 4
    (hub,) = by_class(chart, "hub-marker")
    assert hub.get("data-cluster") == "gui-an" and HUB_NAME in hub.find(f"{SVG}title").text
    legend = text(chart)
    assert all(f"{label} (1)" in legend for label in ("retire and migrate", "consolidate", "upgrade"))


def test_the_bubble_chart_has_one_bubble_per_site_with_both_figures(page, result):
    _, doc = page
    (chart,) = [e for e in doc.iter() if e.get("id") == "retirement-bubbles"]
    bubbles = by_class(chart, "site-bubble")
    assert sorted(b.get("data-site") for b in bubbles) == sorted(result.assessment.sites["site"])
    sizes = {}
    for b in bubbles:
        (use,) = b.iter(f"{SVG}use")
        assert f"fill: {VERDICT_COLOURS[b.get('data-verdict')]}" in use.get("style")
        sizes[b.get("data-site")] = float(re.search(r"d=\"M 0 ([0-9.]+)", _marker_path(chart, use)).group(1))
    assert sizes["ga-01"] > sizes["gy-04"] > sizes["xy-03"] >= sizes["tr-02"]  # area follows the IT load


def _marker_path(chart, use) -> str:
    ref = use.get("{http://www.w3.org/1999/xlink}href") or use.get("xlink:href")
    (path,) = [p for p in chart.iter(f"{SVG}path") if p.get("id") == ref[1:]]
    return f'd="{path.get("d")}"'


def test_every_site_row_shows_verdict_score_and_each_criterions_evidence(page, result):
    _, doc = page
    sites = result.assessment.sites
    (table,) = [e for e in doc.iter() if e.get("id") == "sites-table"]
    rows = {r.get("data-site"): r for r in table.find("tbody")}
    assert list(rows) == list(sites["site"])
    for _, site in sites.iterrows():
        row = rows[site["site"]]
        assert row.get("data-verdict") == site["verdict"]
        cells = [text(td) for td in row]
        assert cells[1] == site["name"]
        assert cells[5].startswith(f"{site['score']:.0f}")
        for c in CRITERIA:
            assert site[f"{c}_evidence"] in text(row)
        statuses = [s.get("class").split()[1] for s in by_class(row, "st")]
        assert statuses == [f"st-{site[c]}" for c in CRITERIA]
        trend = site["occupancy_trend_pp_per_year"]
        assert [text(e) for e in by_class(row, "trend")] == ([] if pd.isna(trend) else [f"{trend:+.1f} pp/yr"])
    assert sites["occupancy_trend_pp_per_year"].notna().any()  # a year of monthly history gives trends


def test_user_text_is_escaped(page):
    source, doc = page
    assert "<script>" not in source and "<b>open</b>" not in source and "<i>hub</i>" not in source
    (table,) = [e for e in doc.iter() if e.get("id") == "sites-table"]
    (row,) = [r for r in table.find("tbody") if r.get("data-site") == "tr-02"]
    assert text(list(row)[1]) == HOSTILE  # the name, as text
    assert any(HUB_NAME in text(td) for td in doc.iter("td"))


def test_the_plan_and_the_totals(page, result):
    _, doc = page
    plan, totals = result.assessment.plan, result.assessment.totals
    (table,) = [e for e in doc.iter() if e.get("id") == "plan-table"]
    assert [r.get("data-site") for r in table.find("tbody")] == list(plan["site"])
    assert set(plan["site"]) == {"tr-02", "xy-03"} and plan["destination"].eq("gui-an").all()
    foot = [text(td) for td in table.find("tfoot").iter("td")]
    assert foot[9] == f"{totals['saved_kwh_year']:,.0f}" and foot[11] == f"{totals['saved_cost_cny_year']:,.0f}"
    tiles = text([e for e in doc.iter() if e.get("id") == "totals"][0])
    assert f"{totals['saved_tco2_year']:,.1f}tCO₂ saved a year" in tiles


def test_the_xlsx_export(result, tmp_path):
    assessment = result.assessment
    book = openpyxl.load_workbook(write_xlsx(result, tmp_path / "r.xlsx"))
    assert book.sheetnames == ["Summary", "Sites", "Plan", "Clusters", "Criteria"]
    sites = list(book["Sites"].iter_rows(values_only=True))
    assert list(sites[0]) == list(SITE_COLUMNS) and len(sites) == 1 + len(assessment.sites)
    name_col = SITE_COLUMNS.index("name")
    (hostile,) = [r for r in book["Sites"].iter_rows(min_row=2) if r[0].value == "tr-02"]
    assert hostile[name_col].value == HOSTILE and hostile[name_col].data_type == "s"  # text, not a formula
    by_site = {r[0]: dict(zip(SITE_COLUMNS, r, strict=True)) for r in sites[1:]}
    for _, s in assessment.sites.iterrows():
        assert by_site[s["site"]]["verdict"] == s["verdict"]
        assert by_site[s["site"]]["score"] == pytest.approx(s["score"])
        assert by_site[s["site"]]["inefficient_evidence"] == s["inefficient_evidence"]
    plan = list(book["Plan"].iter_rows(values_only=True))
    assert list(plan[0]) == list(PLAN_COLUMNS)
    saved = PLAN_COLUMNS.index("saved_kwh_year")
    assert sum(r[saved] for r in plan[1:]) == pytest.approx(assessment.totals["saved_kwh_year"])
    clusters = list(book["Clusters"].iter_rows(values_only=True))
    assert clusters[1][:2] == ("gui-an", HUB_NAME)
    criteria = {r[0]: r[1] for r in book["Criteria"].iter_rows(min_row=2, values_only=True)}
    assert criteria["inefficient_above_pue"] == 1.13 and criteria["weights.inefficient"] == 25.0
    summary = {r[0]: r[1] for r in book["Summary"].iter_rows(min_row=2, values_only=True)}
    assert summary["verdict retire"] == 1 and summary["as of"] == "2025-02-01T00:00:00+08:00"


def test_an_assessment_without_period_or_plan_renders(result):
    keep_all = result.assessment.sites.assign(verdict="keep")
    bare = type(result.assessment)(sites=keep_all, plan=result.assessment.plan.iloc[0:0],
                                   clusters=result.assessment.clusters, totals={"sites": 4.0, "keep": 4.0},
                                   criteria=result.assessment.criteria)
    doc = html5lib.HTMLParser(strict=True, namespaceHTMLElements=False).parse(render_html(bare))
    assert "nothing moves" in text([e for e in doc.iter() if e.get("id") == "plan-table"][0])
    assert {m.get("data-verdict") for m in by_class(doc, "site-marker")} == {"keep"}


def test_the_report_opens_in_chromium_with_both_charts_drawn(page, result, tmp_path):
    """The officials' file in a real browser (headless Debian Chromium, file:// and offline): the DOM it
    builds keeps both charts with one marker and one bubble per site and the escaped names as text;
    a screenshot lands in tests/artifacts/ for a human look."""
    from pathlib import Path

    from tests.helpers.browser import dump_dom, screenshot

    source, _ = page
    path = tmp_path / "report.html"
    path.write_text(source, encoding="utf-8")
    dom = dump_dom(path.as_uri(), budget_ms=1000)
    doc = html5lib.parse(dom, namespaceHTMLElements=False)
    n_sites = len(result.assessment.sites)
    for chart_id, cls in (("retirement-map", "site-marker"), ("retirement-bubbles", "site-bubble")):
        (chart,) = [e for e in doc.iter() if e.get("id") == chart_id]
        assert len(by_class(chart, cls)) == n_sites, chart_id
    assert "<script>" not in dom and HOSTILE in text(doc)  # shown as text, never run as markup
    shot = screenshot(path.as_uri(), Path(__file__).resolve().parents[1] / "artifacts" / "retirement-report.png",
                      window_size=(1400, 2000), budget_ms=1000)
    assert shot.stat().st_size > 20_000  # a drawn page, not a blank one
