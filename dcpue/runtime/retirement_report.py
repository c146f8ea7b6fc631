"""The retirement report for officials: one self-contained HTML file, and an XLSX workbook.

:func:`render_html` builds a single HTML document that works offline — no script, no web font, no
external link; both charts are inline SVG drawn with matplotlib's SVG backend:

* ``#retirement-map`` — a map-style scatter of the sites (longitude, latitude), one marker per site
  (``g.site-marker`` with ``data-site`` and ``data-verdict``) coloured by verdict, the hub clusters as
  stars with a ring at the ``scattered_hub_km`` distance, and a dashed line for each planned move;
* ``#retirement-bubbles`` — annual PUE against 上架率, one bubble per site whose two figures are known
  (area ∝ mean IT load), with the inefficiency bar, the PUE target and the low-occupancy bar;

then the fleet totals, the per-site table (verdict, score, each criterion's status and evidence), the
consolidation plan with its savings, the hub clusters and the thresholds used. Every text that comes
from the registry or the assessment is escaped.

:func:`write_xlsx` writes the same tables with openpyxl (sheets Summary, Sites, Plan, Clusters,
Criteria); text is always stored as text, so a site name such as ``=HYPERLINK(…)`` is never a formula.

matplotlib and openpyxl come with the ``report`` extra (``pip install 'dcpue[report]'``).
"""

from __future__ import annotations

import html
import io
import math
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dcpue.errors import missing_extra

VERDICT_COLOURS = {"retire": "#c62828", "consolidate": "#ef6c00", "upgrade": "#1565c0", "keep": "#2e7d32"}
VERDICT_LABELS = {"retire": "retire and migrate", "consolidate": "consolidate", "upgrade": "upgrade",
                  "keep": "keep"}
STATUS_LABELS = {"met": "met", "not_met": "not met", "unknown": "unknown"}
CRITERION_LABELS = {"low_occupancy": "Low 上架率", "small": "Small", "old": "Old", "inefficient": "Inefficient",
                    "scattered": "Scattered", "poor_benefit": "Poor benefit"}
HUB_COLOUR = "#212121"
_KM_PER_DEGREE = 111.195  # [km] one degree of latitude on the 6,371 km sphere


# --- input --------------------------------------------------------------------------------------------

def _unwrap(result: Any) -> tuple[Any, dict[str, Any] | None]:
    """(Assessment, period) from an Assessment or a :class:`dcpue.runtime.retirement.StoreAssessment`."""
    inner = getattr(result, "assessment", None)
    if inner is None:
        return result, None
    return inner, result.to_dict().get("period")


def _missing(value: Any) -> bool:
    """None, NaN or empty: the core leaves an absent cluster or destination as either."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def _e(value: Any) -> str:
    """Escaped text for HTML content and attribute values; None/NaN → empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return html.escape(str(value), quote=True)


def _num(value: Any, digits: int = 0, unit: str = "") -> str:
    """A number with thousands separators, or an em dash when unknown."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "—"
    if not math.isfinite(v):
        return "—"
    return f"{v:,.{digits}f}{unit}"


# --- charts (matplotlib, SVG backend) -----------------------------------------------------------------

def _matplotlib() -> tuple[Any, Any, Any]:
    try:
        import matplotlib
        from matplotlib.backends.backend_svg import FigureCanvasSVG
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise missing_extra("matplotlib", "report") from exc
    return matplotlib, Figure, FigureCanvasSVG


def _mpl_text(text: Any) -> str:
    """Plain text for matplotlib: a ``$`` would start mathtext."""
    return str(text).replace("$", r"\$")


def _svg(fig: Any, canvas_cls: Any, salt: str, element_id: str, marks: dict[str, tuple[str, str]]) -> str:
    """The figure as an inline ``<svg>`` element: no XML prolog or metadata, ``id`` set, and each
    ``<g id=gid>`` of ``marks`` given the (escaped) attributes and ``<title>`` text of ``marks[gid]``."""
    matplotlib = _matplotlib()[0]
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": salt}):
        canvas_cls(fig).print_svg(buffer, metadata={"Date": None})
    text = buffer.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r"\s*<metadata>.*?</metadata>", "", text, count=1, flags=re.S)
    # matplotlib numbers its groups per figure (figure_1, axes_1 …): prefix them so two charts in one
    # document never share an id; the marker groups keep theirs (already unique, and what tests look for)
    own = {i for i in re.findall(r'\bid="([^"]+)"', text) if i not in marks}
    text = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{element_id}-{m.group(1)}"' if m.group(1) in own else m.group(0),
                  text)
    text = re.sub(r'(url\(#|href="#)([^")]+)', lambda m: m.group(1) + (f"{element_id}-{m.group(2)}"
                                                                        if m.group(2) in own else m.group(2)), text)
    text = text.replace("<svg ", f'<svg id="{element_id}" role="img" ', 1)
    for gid, (attrs, title) in marks.items():
        opening = f'<g id="{gid}">'
        if text.count(opening) != 1:
            raise RuntimeError(f"chart {element_id}: marker group {gid} not found once in the SVG")
        text = text.replace(opening, f'<g id="{gid}" {attrs}><title>{title}</title>', 1)
    return text


def _chart_context() -> Any:
    matplotlib = _matplotlib()[0]
    return matplotlib.rc_context({
        "svg.fonttype": "none",  # text stays text: the browser draws it with its own (CJK) fonts
        "font.family": "sans-serif",
        "font.sans-serif": ["DejaVu Sans", "Noto Sans CJK SC", "Noto Sans CJK JP", "WenQuanYi Zen Hei",
                            "Arial Unicode MS"],
        "font.size": 9,
    })


def _site_title(row: pd.Series, extra: str = "") -> str:
    return (f"{row['site']} · {row['name'] or ''} · {VERDICT_LABELS.get(row['verdict'], row['verdict'])}, "
            f"score {_num(row['score'], 0)}{extra}")


def map_svg(assessment: Any) -> str:
    """The map-style scatter (``<svg id="retirement-map">``): sites by longitude and latitude, coloured by verdict."""
    _, figure_cls, canvas_cls = _matplotlib()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Ellipse

    sites, clusters, plan = assessment.sites, assessment.clusters, assessment.plan
    hub_km = float(assessment.criteria.scattered_hub_km)
    lats = pd.concat([sites["latitude"], clusters["latitude"]]).astype(float)
    mid_lat = float(np.nanmean(lats)) if lats.notna().any() else 0.0
    marks: dict[str, tuple[str, str]] = {}
    with _chart_context(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing")
        fig = figure_cls(figsize=(7.2, 5.6), layout="constrained")
        ax = fig.add_subplot()
        ax.set_aspect(1.0 / max(math.cos(math.radians(mid_lat)), 0.1))  # degrees of longitude shrink with latitude
        coords = {c: (la, lo) for c, la, lo in zip(clusters["cluster"], clusters["latitude"], clusters["longitude"],
                                                   strict=True)}
        sitepos = {s: (la, lo) for s, la, lo in zip(sites["site"], sites["latitude"], sites["longitude"], strict=True)}
        for i, move in enumerate(plan.itertuples(index=False)):
            if _missing(move.destination) or move.destination not in coords or move.site not in sitepos:
                continue
            (la0, lo0), (la1, lo1) = sitepos[move.site], coords[move.destination]
            ax.plot([lo0, lo1], [la0, la1], color="#757575", lw=0.9, ls=(0, (4, 3)), zorder=1, gid=f"map-move-{i}")
        for j, c in enumerate(clusters.itertuples(index=False)):
            if not (math.isfinite(c.latitude) and math.isfinite(c.longitude)):
                continue
            ring_h = 2 * hub_km / _KM_PER_DEGREE
            ax.add_patch(Ellipse((c.longitude, c.latitude), ring_h / math.cos(math.radians(c.latitude)), ring_h,
                                 fill=False, ls="--", lw=0.8, ec=HUB_COLOUR, alpha=0.6, zorder=1))
            ax.plot([c.longitude], [c.latitude], marker="*", ms=16, color=HUB_COLOUR, mec="white", mew=0.8,
                    ls="none", zorder=3, gid=f"map-hub-{j}")
            ax.annotate(_mpl_text(c.name or c.cluster), (c.longitude, c.latitude), xytext=(9, 6),
                        textcoords="offset points", fontsize=8, fontweight="bold", color=HUB_COLOUR)
            marks[f"map-hub-{j}"] = (f'class="hub-marker" data-cluster="{_e(c.cluster)}"',
                                     f"{_e(c.name)} ({_e(c.cluster)}): hub cluster, ring {_num(hub_km, 0)} km")
        label_sites = len(sites) <= 40
        for i, row in sites.iterrows():
            colour = VERDICT_COLOURS.get(row["verdict"], "#9e9e9e")
            ax.scatter([row["longitude"]], [row["latitude"]], s=46, c=colour, edgecolors="white", linewidths=0.8,
                       zorder=4, gid=f"map-site-{i}")
            if label_sites:
                ax.annotate(_mpl_text(row["site"]), (row["longitude"], row["latitude"]), xytext=(5, -9),
                            textcoords="offset points", fontsize=7, color="#424242")
            marks[f"map-site-{i}"] = (f'class="site-marker" data-site="{_e(row["site"])}" '
                                      f'data-verdict="{_e(row["verdict"])}"', _e(_site_title(row)))
        counts = sites["verdict"].value_counts()
        handles = [Line2D([], [], marker="o", ls="none", color=VERDICT_COLOURS[v], mec="white", ms=8,
                          label=f"{VERDICT_LABELS[v]} ({int(counts.get(v, 0))})") for v in VERDICT_COLOURS]
        handles.append(Line2D([], [], marker="*", ls="none", color=HUB_COLOUR, ms=12, label="hub cluster"))
        handles.append(Line2D([], [], ls="--", color=HUB_COLOUR, lw=0.8, label=f"{_num(hub_km, 0)} km from a hub"))
        if len(plan) and plan["destination"].notna().any():
            handles.append(Line2D([], [], ls=(0, (4, 3)), color="#757575", lw=0.9, label="planned move"))
        ax.legend(handles=handles, loc="best", fontsize=7.5, framealpha=0.9)
        ax.set_xlabel("longitude [°E]")
        ax.set_ylabel("latitude [°N]")
        ax.grid(True, lw=0.4, color="#e0e0e0")
        ax.set_title("Sites by verdict, hub clusters and planned moves")
        return _svg(fig, canvas_cls, "dcpue-retirement-map", "retirement-map", marks)


def bubble_svg(assessment: Any) -> tuple[str, list[str]]:
    """The PUE-vs-上架率 bubble chart (``<svg id="retirement-bubbles">``) and the ids of the sites left out
    because their annual PUE or 上架率 is unknown."""
    _, figure_cls, canvas_cls = _matplotlib()
    from matplotlib.lines import Line2D

    sites, crit = assessment.sites, assessment.criteria
    pue = pd.to_numeric(sites["annual_pue"], errors="coerce")
    occ = pd.to_numeric(sites["occupancy_pct"], errors="coerce")
    it_kw = pd.to_numeric(sites["it_kw_mean"], errors="coerce")
    shown = pue.notna() & occ.notna()
    left_out = sites.loc[~shown, "site"].astype(str).tolist()
    it_max = float(it_kw[shown].max()) if (shown & it_kw.notna()).any() else 1.0
    marks: dict[str, tuple[str, str]] = {}
    with _chart_context(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing")
        fig = figure_cls(figsize=(7.2, 5.0), layout="constrained")
        ax = fig.add_subplot()
        ax.axhline(crit.inefficient_above_pue, color="#c62828", ls="--", lw=0.9)
        ax.axhline(crit.target_pue, color="#2e7d32", ls=":", lw=1.0)
        ax.axvline(crit.low_occupancy_below_pct, color="#616161", ls="--", lw=0.9)
        # largest first, so small bubbles stay on top
        for i in sorted(np.flatnonzero(shown.to_numpy()), key=lambda k: -np.nan_to_num(it_kw.iat[k])):
            row = sites.iloc[i]
            colour = VERDICT_COLOURS.get(row["verdict"], "#9e9e9e")
            known = math.isfinite(it_kw.iat[i])
            size = 30 + 1400 * (it_kw.iat[i] / it_max if known and it_max > 0 else 0.0)
            ax.scatter([occ.iat[i]], [pue.iat[i]], s=size, c=colour if known else "none", edgecolors=colour,
                       alpha=0.6 if known else 1.0, linewidths=1.0, zorder=3, gid=f"bubble-site-{i}")
            extra = (f"; PUE {pue.iat[i]:.2f}, 上架率 {occ.iat[i]:.0f} %, IT {_num(it_kw.iat[i], 0)} kW")
            marks[f"bubble-site-{i}"] = (f'class="site-bubble" data-site="{_e(row["site"])}" '
                                         f'data-verdict="{_e(row["verdict"])}"', _e(_site_title(row, extra)))
        top = max(float(pue[shown].max()) + 0.1 if shown.any() else 2.0, crit.inefficient_above_pue + 0.15)
        ax.set_ylim(min(1.0, float(pue[shown].min()) - 0.05) if shown.any() else 1.0, top)
        ax.set_xlim(0, max(100.0, float(occ[shown].max()) + 5 if shown.any() else 100.0))
        counts = sites.loc[shown, "verdict"].value_counts()
        handles = [Line2D([], [], marker="o", ls="none", color=VERDICT_COLOURS[v], alpha=0.6, ms=8,
                          label=f"{VERDICT_LABELS[v]} ({int(counts.get(v, 0))})") for v in VERDICT_COLOURS]
        handles += [Line2D([], [], color="#c62828", ls="--", lw=0.9,
                           label=f"inefficient above PUE {crit.inefficient_above_pue:.2f}"),
                    Line2D([], [], color="#2e7d32", ls=":", lw=1.0, label=f"target PUE {crit.target_pue:.2f}"),
                    Line2D([], [], color="#616161", ls="--", lw=0.9,
                           label=f"low occupancy below {crit.low_occupancy_below_pct:g} %")]
        ax.legend(handles=handles, loc="upper right", fontsize=7.5, framealpha=0.9)
        ax.set_xlabel("rack occupancy (上架率) [%]")
        ax.set_ylabel("annual PUE [–]")
        ax.grid(True, lw=0.4, color="#e0e0e0")
        ax.set_title("Annual PUE against occupancy; bubble area ∝ mean IT load")
        return _svg(fig, canvas_cls, "dcpue-retirement-bubbles", "retirement-bubbles", marks), left_out


# --- HTML ---------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI","Noto Sans CJK SC","Microsoft YaHei",sans-serif;margin:24px;
color:#212121;font-size:14px;line-height:1.4}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #e0e0e0}
.meta{color:#616161;margin:0 0 12px}
.totals{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}
.tile{border:1px solid #e0e0e0;border-radius:6px;padding:8px 12px;min-width:120px}
.tile b{display:block;font-size:20px}
.verdict{display:inline-block;color:#fff;border-radius:10px;padding:1px 8px;font-size:12px;white-space:nowrap}
.v-retire{background:#c62828}.v-consolidate{background:#ef6c00}.v-upgrade{background:#1565c0}.v-keep{background:#2e7d32}
.charts{display:flex;flex-wrap:wrap;gap:16px}
.charts figure{margin:0;flex:1 1 480px;max-width:760px}
.charts svg{width:100%;height:auto}
figcaption{color:#616161;font-size:12px}
table{border-collapse:collapse;font-size:12px;margin:6px 0}
th,td{border:1px solid #e0e0e0;padding:4px 6px;vertical-align:top;text-align:left}
th{background:#f5f5f5} td.n{text-align:right;white-space:nowrap}
.st{display:inline-block;font-size:11px;border-radius:8px;padding:0 6px;white-space:nowrap}
.st-met{background:#ffcdd2}.st-not_met{background:#c8e6c9}.st-unknown{background:#eeeeee;color:#616161}
.ev{color:#424242;font-size:11px;margin-top:2px}
tfoot td{font-weight:bold}
@media print{body{margin:8mm}.charts figure{flex-basis:45%}}
"""


def _verdict_chip(verdict: Any) -> str:
    v = str(verdict)
    return f'<span class="verdict v-{_e(v)}">{_e(VERDICT_LABELS.get(v, v))}</span>'


def _table(head: list[str], rows: list[list[str]], *, table_id: str, numeric: set[int] = frozenset(),  # type: ignore[assignment]
           foot: list[str] | None = None, row_attrs: list[str] | None = None) -> str:
    out = [f'<table id="{table_id}"><thead><tr>', *(f"<th>{h}</th>" for h in head), "</tr></thead><tbody>"]
    for k, cells in enumerate(rows):
        attrs = f" {row_attrs[k]}" if row_attrs else ""
        out.append(f"<tr{attrs}>" + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>"
                                            for i, c in enumerate(cells)) + "</tr>")
    out.append("</tbody>")
    if foot is not None:
        out.append("<tfoot><tr>" + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>"
                                           for i, c in enumerate(foot)) + "</tr></tfoot>")
    out.append("</table>")
    return "".join(out)


def _sites_table(sites: pd.DataFrame) -> str:
    from dcpue.analytics.retirement import CRITERIA

    head = ["Site", "Name", "City", "Hub cluster", "Verdict", "Score", "Met / unknown", "Annual PUE", "上架率 [%]",
            "IT load [kW]", *(_e(CRITERION_LABELS.get(c, c)) for c in CRITERIA), "Why"]
    rows, attrs = [], []
    for _, r in sites.iterrows():
        score = _num(r["score"], 0)
        if float(r["score_max"]) > float(r["score"]):
            score += f"–{_num(r['score_max'], 0)}"
        verdict = _verdict_chip(r["verdict"])
        if not bool(r["verdict_certain"]):
            verdict += f'<div class="ev">could also be: {_e(r["verdict_alternatives"])}</div>'
        cells = [_e(r["site"]), _e(r["name"]), _e(r["city"]), "—" if _missing(r["cluster"]) else _e(r["cluster"]),
                 verdict, score,
                 f"{int(r['criteria_met'])} / {int(r['criteria_unknown'])}", _num(r["annual_pue"], 2),
                 _num(r["occupancy_pct"], 0) + (f' <span class="ev">({_e(r["occupancy_source"])})</span>'
                                                if r["occupancy_source"] else "")
                 + ("" if _missing(r.get("occupancy_trend_pp_per_year")) else
                    f'<div class="ev trend">{float(r["occupancy_trend_pp_per_year"]):+.1f} pp/yr</div>'),
                 _num(r["it_kw_mean"], 0)]
        for c in CRITERIA:
            status = str(r[c])
            cells.append(f'<span class="st st-{_e(status)}">{_e(STATUS_LABELS.get(status, status))}</span>'
                         f'<div class="ev">{_e(r[f"{c}_evidence"])}</div>')
        cells.append(_e(r["verdict_reason"]))
        rows.append(cells)
        attrs.append(f'data-site="{_e(r["site"])}" data-verdict="{_e(r["verdict"])}"')
    return _table(head, rows, table_id="sites-table", numeric={5, 6, 7, 8, 9}, row_attrs=attrs)


def _plan_table(plan: pd.DataFrame, totals: dict[str, Any]) -> str:
    if plan.empty:
        return '<p id="plan-table">No site is to be retired or consolidated: nothing moves.</p>'
    head = ["Site", "Name", "Verdict", "Destination", "Distance [km]", "IT load moved [kW]", "IT energy [kWh/yr]",
            "Site PUE", "Destination PUE", "Saved [kWh/yr]", "Saved [tCO₂/yr]", "Saved [CNY/yr]", "Note"]
    rows = [[_e(r["site"]), _e(r["name"]), _verdict_chip(r["verdict"]),
             "— not placed" if _missing(r["destination"]) else _e(f"{r['destination_name']} ({r['destination']})"),
             _num(r["distance_km"], 0), _num(r["moved_it_kw"], 0), _num(r["it_kwh_year"], 0), _num(r["site_pue"], 2),
             _num(r["destination_pue"], 2), _num(r["saved_kwh_year"], 0), _num(r["saved_tco2_year"], 1),
             _num(r["saved_cost_cny_year"], 0), _e(r["note"])] for _, r in plan.iterrows()]
    attrs = [f'data-site="{_e(s)}"' for s in plan["site"]]
    foot = ["Fleet", "", "", "", "", _num(totals.get("moved_it_kw"), 0), "", "", "",
            _num(totals.get("saved_kwh_year"), 0), _num(totals.get("saved_tco2_year"), 1),
            _num(totals.get("saved_cost_cny_year"), 0), ""]
    return _table(head, rows, table_id="plan-table", numeric=set(range(4, 12)), foot=foot, row_attrs=attrs)


def _clusters_table(clusters: pd.DataFrame) -> str:
    if clusters.empty:
        return '<p id="clusters-table">No hub cluster is given: no site can be placed.</p>'
    head = ["Cluster", "Name", "Member sites", "PUE", "Capacity [kW]", "Load before [kW]", "Spare before [kW]",
            "Moved in [kW]", "Sites in", "Spare after [kW]", "上架率 [%] / target", "Note"]
    rows = [[_e(r["cluster"]), _e(r["name"]), _num(r["members"]), _num(r["pue"], 2), _num(r["capacity_kw"]),
             _num(r["load_kw_before"]), _num(r["spare_kw_before"]), _num(r["moved_in_kw"]), _num(r["sites_in"]),
             _num(r["spare_kw_after"]), f"{_num(r['occupancy_pct'])} / {_num(r['occupancy_target_pct'])}",
             _e(r["note"])] for _, r in clusters.iterrows()]
    return _table(head, rows, table_id="clusters-table", numeric=set(range(2, 11)))


CRITERIA_TEXT = {
    "low_occupancy_below_pct": "low 上架率: below this [%] …",
    "occupancy_months": "… in every month of this many months",
    "occupancy_history_required": "without monthly history, low 上架率 is unknown (else the current figure decides)",
    "standard_rack_kw": "one standard rack (标准机架) [kW]",
    "small_below_racks": "small: fewer standard racks than this",
    "old_at_least_years": "old: at least this many years since commissioning or the last major refresh",
    "inefficient_above_pue": "inefficient: annual PUE above this (GB 40879-2021 limit value 1.50)",
    "target_pue": "the PUE target the evidence compares with",
    "min_pue_months": "an annual PUE needs at least this many months observed",
    "scattered_hub_km": "scattered: farther than this from the nearest hub cluster [km] …",
    "isolation_km": "… and isolated: no group of sites within this distance [km] (DBSCAN)",
    "isolation_min_sites": "… of at least this many sites (itself included)",
    "poor_margin_below_cny_per_rack_year": "poor benefit: margin per rack in service and year below this [CNY]",
    "hub_occupancy_target_pct": "hub-cluster 上架率 target [%]",
}


def criteria_rows(criteria: Any) -> list[tuple[str, Any, str]]:
    """(setting, value, meaning) of every threshold and score weight of ``criteria``."""
    data = criteria.model_dump(mode="json")
    weights = data.pop("weights", {})
    rows = [(k, v, CRITERIA_TEXT.get(k, "")) for k, v in data.items()]
    rows += [(f"weights.{k}", v, f"score points when {k} is met") for k, v in weights.items()]
    return rows


def _criteria_table(criteria: Any) -> str:
    rows = [[f"<code>{_e(k)}</code>", _e(v), _e(m)] for k, v, m in criteria_rows(criteria)]
    return _table(["Setting (retirement.criteria.…)", "Value", "Meaning"], rows, table_id="criteria-table",
                  numeric={1})


def render_html(result: Any, *, title: str = "Data-center retirement assessment") -> str:
    """The report as one self-contained HTML document (see the module docstring).

    ``result`` is an :class:`~dcpue.analytics.retirement.Assessment` or a
    :class:`~dcpue.runtime.retirement.StoreAssessment` (which adds the assessed period).
    """
    assessment, period = _unwrap(result)
    sites, plan, clusters, totals = assessment.sites, assessment.plan, assessment.clusters, assessment.totals
    map_chart = map_svg(assessment)
    bubble_chart, left_out = bubble_svg(assessment)
    parts = ['<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{_e(title)}</h1>"]
    if period:
        parts.append(f'<p class="meta">Figures from the stored PUE windows of {_e(period["start"][:10])} to '
                     f'{_e(period["as_of"][:10])} ({_e(period["timezone"])}); ages counted to '
                     f'{_e(period["as_of"][:4])}. Unknown data is reported as unknown, never as a pass or a fail.</p>')
    chips = "".join(f'<div class="tile" data-verdict="{v}">{_verdict_chip(v)}<b>{_num(totals.get(v, 0))}</b>sites'
                    f"</div>" for v in VERDICT_COLOURS)
    price_known = math.isfinite(float(totals.get("saved_cost_cny_year") or float("nan")))
    parts += ['<h2>Summary</h2><div class="totals" id="totals">',
              f'<div class="tile"><b>{_num(totals.get("sites"))}</b>sites assessed</div>', chips,
              f'<div class="tile"><b>{_num(totals.get("moved_it_kw"))}</b>kW IT load to move</div>',
              f'<div class="tile"><b>{_num(totals.get("saved_kwh_year"))}</b>kWh saved a year</div>',
              f'<div class="tile"><b>{_num(totals.get("saved_tco2_year"), 1)}</b>tCO₂ saved a year</div>',
              f'<div class="tile"><b>{_num(totals.get("saved_cost_cny_year"))}</b>CNY saved a year'
              + ("" if price_known else " (no electricity price given)") + "</div>",
              f'<div class="tile"><b>{_num(totals.get("unplaced"))}</b>sites without a destination</div></div>']
    caption_left = (f" Not shown (annual PUE or 上架率 unknown): {_e(', '.join(left_out))}." if left_out else "")
    parts += ['<h2>Charts</h2><div class="charts">',
              f"<figure>{map_chart}<figcaption>Each dot is a site, coloured by verdict; stars are hub clusters "
              f"with a ring at {_num(assessment.criteria.scattered_hub_km)} km; dashed lines are the planned moves. "
              "Hover for the site.</figcaption></figure>",
              f"<figure>{bubble_chart}<figcaption>Annual PUE against rack occupancy (上架率); bubble area is "
              "proportional to the mean IT load; hollow bubbles have an unknown IT load. The PUE is the "
              "energy-weighted figure of the months observed: below "
              f"{_num(assessment.criteria.min_pue_months, 1)} months it is drawn but not judged (see Inefficient)."
              f"{caption_left}"
              "</figcaption></figure></div>",
              "<h2>Sites</h2>", _sites_table(sites),
              "<h2>Consolidation plan</h2>",
              "<p>Each site to retire or consolidate goes to the nearest hub cluster with enough spare capacity; "
              "saved energy = IT energy × (site PUE − destination PUE).</p>", _plan_table(plan, totals),
              "<h2>Hub clusters</h2>", _clusters_table(clusters),
              "<h2>Thresholds</h2>", _criteria_table(assessment.criteria),
              '<p class="meta">Generated by dcpue (<code>dcpue retire</code>); method and policy sources in '
              "docs/retirement.md.</p></body></html>"]
    return "".join(parts)


def write_html(result: Any, path: str | Path, **kwargs: Any) -> Path:
    """Write :func:`render_html` to ``path`` (UTF-8); returns the path."""
    target = Path(path)
    target.write_text(render_html(result, **kwargs), encoding="utf-8")
    return target


# --- XLSX ---------------------------------------------------------------------------------------------

def _cell_value(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NA or (isinstance(value, float) and not math.isfinite(value)):
        return None
    if isinstance(value, bool | int | float):
        return value
    return str(value)


def _sheet(book: Any, name: str, frame: pd.DataFrame) -> None:
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
    from openpyxl.styles import Font

    ws = book.create_sheet(name)
    ws.append(list(frame.columns))
    for cell in ws[1]:
        cell.font = Font(bold=True)
    for row in frame.itertuples(index=False, name=None):
        values = [_cell_value(v) for v in row]
        ws.append([ILLEGAL_CHARACTERS_RE.sub("", v) if isinstance(v, str) else v for v in values])
        for cell, value in zip(ws[ws.max_row], values, strict=True):
            if isinstance(value, str):
                cell.data_type = "s"  # text stays text: "=…" from a registry is never a formula
    ws.freeze_panes = "B2"
    if len(frame):
        ws.auto_filter.ref = ws.dimensions
    for k, col in enumerate(frame.columns, start=1):
        width = max([len(str(col)), *(len(str(v)) for v in frame[col].head(200))]) + 2
        ws.column_dimensions[ws.cell(row=1, column=k).column_letter].width = min(max(width, 8), 60)


def write_xlsx(result: Any, path: str | Path) -> Path:
    """The assessment as an XLSX workbook: sheets Summary, Sites, Plan, Clusters and Criteria; returns the path."""
    try:
        from openpyxl import Workbook
    except ImportError as exc:
        raise missing_extra("openpyxl", "report") from exc
    assessment, period = _unwrap(result)
    book = Workbook()
    book.remove(book.active)
    summary = [("sites assessed", assessment.totals.get("sites"))]
    summary += [(f"verdict {v}", assessment.totals.get(v)) for v in VERDICT_COLOURS]
    summary += [(k, v) for k, v in assessment.totals.items() if k != "sites" and k not in VERDICT_COLOURS]
    if period:
        summary += [("period start", period["start"]), ("as of", period["as_of"]), ("timezone", period["timezone"])]
    _sheet(book, "Summary", pd.DataFrame(summary, columns=["item", "value"]))
    _sheet(book, "Sites", assessment.sites)
    _sheet(book, "Plan", assessment.plan)
    _sheet(book, "Clusters", assessment.clusters)
    _sheet(book, "Criteria", pd.DataFrame(criteria_rows(assessment.criteria), columns=["setting", "value", "meaning"]))
    target = Path(path)
    book.save(target)
    return target
