"""Window results as InfluxDB line protocol (pure, no I/O); the schema lives in docs/influxdb.md.

One measurement, ``pue``, one point per (scope, id, window, start): tags identify the series
(``site`` first, because InfluxDB 3 fixes tag order at the first write), fields carry the
figures, and the timestamp is the window end. Writing the same window again overwrites its point.

Line protocol has no NaN: a figure that is not valid is left out of the point, and because
InfluxDB merges the fields of repeated writes, a figure written while a window was ``ok`` could
outlive a later ``incomplete`` state. Every point therefore carries ``status``; queries must
filter on ``status = 'ok'`` (the shipped dashboards do).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dcpue.results import ENERGY_COLUMNS, METRIC_COLUMNS, conform_windows

MEASUREMENT = "pue"
FLOAT_FIELDS = (*ENERGY_COLUMNS, "facility_kw", "it_kw", *METRIC_COLUMNS, "coverage", "hierarchy_error",
                "occupancy", "it_utilization")
INT_FIELDS = ("start_ms", "it_category", "racks_installed", "racks_in_service")
STRING_FIELDS = ("status", "grade", "flags")


def _escape_tag(values: pd.Series) -> pd.Series:
    return (values.astype(str).str.replace("\\", "\\\\", regex=False).str.replace(",", "\\,", regex=False)
            .str.replace("=", "\\=", regex=False).str.replace(" ", "\\ ", regex=False))


def _quote(values: pd.Series) -> pd.Series:
    return '"' + values.astype(str).str.replace("\\", "\\\\", regex=False).str.replace('"', '\\"', regex=False) + '"'


def windows_to_lines(windows: pd.DataFrame, sites: pd.DataFrame | None = None) -> list[str]:
    """Line-protocol lines (ms precision) for window results; ``sites`` adds city/cluster tags to site rows."""
    if windows.empty:
        return []
    frame = conform_windows(windows)
    n = len(frame)
    scope = frame["scope"]
    is_site = (scope == "site").to_numpy()
    site_tag = pd.Series(np.where(is_site, frame["id"], ""), dtype=object)
    cluster = pd.Series(np.where(scope == "cluster", frame["id"], ""), dtype=object)
    city = pd.Series("", index=frame.index, dtype=object)
    if sites is not None and is_site.any():
        meta = sites.reindex(frame["id"].where(is_site))
        city = pd.Series(np.where(is_site, meta["city"].fillna("").to_numpy(), ""), dtype=object)
        cluster = pd.Series(np.where(is_site, meta["cluster"].fillna("").to_numpy(), cluster), dtype=object)
    # tag keys in a fixed order, site first; empty tags are left out
    tags = pd.Series(MEASUREMENT, index=frame.index, dtype=object)
    for key, values in (("site", site_tag), ("scope", scope), ("cluster", cluster), ("city", city),
                        ("window", frame["window"])):
        present = values.astype(str) != ""
        tags = tags + np.where(present, "," + key + "=" + _escape_tag(values), "")
    fields = pd.Series("", index=frame.index, dtype=object)

    def add(part: pd.Series, mask: np.ndarray | None = None) -> None:
        nonlocal fields
        piece = np.where(fields == "", part, "," + part)
        fields = fields + (piece if mask is None else np.where(mask, piece, ""))

    for col in STRING_FIELDS:
        add(col + "=" + _quote(frame[col]))
    add("final=" + np.where(frame["final"], "true", "false"))
    for col in INT_FIELDS:
        add(col + "=" + frame[col].astype(np.int64).astype(str) + "i")
    for col in FLOAT_FIELDS:
        values = frame[col].to_numpy(np.float64)
        finite = np.isfinite(values)
        add(pd.Series(col + "=" + pd.Series(values).map(repr), index=frame.index), finite)
    stamps = frame["end_ms"].astype(np.int64).astype(str)
    lines = tags + " " + fields + " " + stamps
    assert len(lines) == n
    return lines.tolist()
