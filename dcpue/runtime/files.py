"""Reading meter exports: CSV or Parquet in the long form ``timestamp,site,point,value[,quality]``.

``timestamp`` is ISO-8601 (an offset such as ``+08:00`` or ``Z`` is honoured; a timestamp
without one is taken in ``naive_tz``, by default the engine's timezone) or integer
milliseconds since the Unix epoch. ``value`` is in the unit the registry declares for the
point. Rows that cannot be used are returned with their line number and reason; they never
stop the rest of the file from being read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dcpue.errors import ConfigError
from dcpue.model import readings_frame
from dcpue.registry import Registry
from dcpue.wire import TS_MAX_MS, TS_MIN_MS

REQUIRED = ("timestamp", "site", "point", "value")


def read_readings_file(path: str | Path, registry: Registry, naive_tz: str = "Asia/Shanghai"
                       ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read an export into a readings DataFrame and a DataFrame of rejected rows (line, reason)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: readings file not found")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            raw = pd.read_parquet(path)
            first_line = 1
        elif suffix in (".csv", ".txt", ".gz"):
            raw = pd.read_csv(path, dtype={"site": str, "point": str, "timestamp": str}, keep_default_na=False,
                              na_values=[""])
            first_line = 2  # header is line 1
        else:
            raise ConfigError(f"{path}: unknown file type {suffix!r} (use .csv or .parquet)")
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    missing = [c for c in REQUIRED if c not in raw.columns]
    if missing:
        raise ConfigError(f"{path}: missing column(s) {', '.join(missing)}; expected "
                          "timestamp,site,point,value[,quality]")
    line = np.arange(len(raw)) + first_line
    ts = _parse_timestamps(raw["timestamp"], naive_tz)
    value = pd.to_numeric(raw["value"], errors="coerce").to_numpy(np.float64)
    quality = (pd.to_numeric(raw["quality"], errors="coerce") if "quality" in raw.columns
               else pd.Series(0, index=raw.index)).to_numpy(np.float64)
    site = raw["site"].astype("string").fillna("").to_numpy(object)
    point = raw["point"].astype("string").fillna("").to_numpy(object)
    keys = pd.MultiIndex.from_arrays([site, point])
    known = keys.isin(registry.points_table.index)
    site_known = pd.Index(site).isin(list(registry.site_map))

    ts_ms = ts.astype("Float64").to_numpy(np.float64, na_value=np.nan)
    looks_like_seconds = (ts_ms >= TS_MIN_MS / 1000) & (ts_ms < TS_MAX_MS / 1000)
    out_of_range = ~((ts_ms >= TS_MIN_MS) & (ts_ms < TS_MAX_MS))
    reasons = np.select(
        [
            ts.isna().to_numpy(),
            looks_like_seconds,
            out_of_range,
            ~np.isfinite(value),
            ~np.isfinite(quality) | (quality < 0),
            ~site_known,
            ~known,
        ],
        [
            "timestamp is not ISO-8601 or epoch milliseconds",
            "timestamp looks like epoch seconds; expected milliseconds",
            "timestamp is outside 2000-01-01..2100-01-01",
            "value is not a finite number",
            "quality is not a non-negative integer",
            "unknown site",
            "unknown point for this site",
        ],
        "",
    )
    bad = reasons != ""
    rejects = pd.DataFrame({"line": line[bad], "site": site[bad], "point": point[bad], "reason": reasons[bad]})
    good = ~bad
    frame = readings_frame(site[good], point[good], ts[good].astype(np.int64).to_numpy(), value[good],
                           quality[good].astype(np.int64))
    return frame, rejects


def _parse_timestamps(column: pd.Series, naive_tz: str) -> pd.Series:
    """Epoch milliseconds [Int64, NA where unparseable] from ISO strings or integers."""
    text = column.astype("string").str.strip()
    numeric = pd.to_numeric(text, errors="coerce")
    out = pd.Series(pd.NA, index=column.index, dtype="Int64")
    is_num = numeric.notna() & np.isfinite(numeric.astype("float64")) & (numeric.abs() < 2**62)
    out[is_num] = numeric[is_num].astype("int64")
    iso = text[~is_num & text.notna()]
    if not iso.empty:
        has_offset = iso.str.contains(r"(?:Z|[+-]\d\d:?\d\d)$", regex=True)
        aware = pd.to_datetime(iso[has_offset], errors="coerce", utc=True, format="ISO8601")
        naive = pd.to_datetime(iso[~has_offset], errors="coerce", format="ISO8601")
        naive = naive.dt.tz_localize(naive_tz, ambiguous="NaT", nonexistent="NaT").dt.tz_convert("UTC")
        parsed = pd.concat([aware, naive])
        ok = parsed.notna()
        out[parsed.index[ok]] = parsed[ok].dt.as_unit("ms").astype("int64")
    return out
