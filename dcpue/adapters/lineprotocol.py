"""Window results, raw readings and the site inventory as InfluxDB line protocol (pure, no I/O).

The schema of every measurement lives in docs/influxdb.md. Common rules:

* tags identify a series and come in a fixed order with ``site`` first (InfluxDB 3 fixes the tag
  column order at the first write to a table); an empty tag value is left out, since line protocol
  has no empty tags;
* every tag value is a property of the series (site, point, window …), never of one reading, so the
  number of series stays bounded;
* line protocol has no NaN: a value that is not finite is left out of its point;
* timestamps are milliseconds since the Unix epoch (write with precision ``ms``); writing the same
  series and timestamp again overwrites the point, which makes replay safe.

``pue`` (window results): one point per (scope, id, window, start), timestamp = window end. Because
InfluxDB merges the fields of repeated writes, a figure written while a window was ``ok`` could
outlive a later ``incomplete`` state. Every point therefore carries ``status``; queries must filter
on ``status = 'ok'`` (the shipped dashboards do).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
import numpy as np
import pandas as pd

from dcpue.results import ENERGY_COLUMNS, METRIC_COLUMNS, conform_windows

MEASUREMENT = "pue"
FLOAT_FIELDS = (*ENERGY_COLUMNS, "facility_kw", "it_kw", *METRIC_COLUMNS, "coverage", "hierarchy_error",
                "occupancy", "it_utilization")
INT_FIELDS = ("start_ms", "it_category", "racks_installed", "racks_in_service")
STRING_FIELDS = ("status", "grade", "flags")

READING_MEASUREMENT = "reading"
# tag order of `reading`: the first two identify the series, the rest are properties of the point/site
READING_TAGS = ("site", "point", "role", "quantity", "cluster", "city")

INVENTORY_MEASUREMENT = "site_inventory"
# sites_table column -> tag key, in tag order
INVENTORY_TAGS = {"cluster": "cluster", "city": "city", "cooling": "cooling"}  # same order as `pue`, `reading`
# sites_table column -> (field key, line-protocol type). The type is fixed here, not inferred from the
# frame's dtype, because InfluxDB fixes a field's type at its first write and rejects later conflicts.
INVENTORY_FIELDS: dict[str, tuple[str, str]] = {
    "name": ("site_name", "string"),  # `name` is an InfluxQL keyword
    "latitude": ("latitude", "float"),  # [°]
    "longitude": ("longitude", "float"),  # [°]
    "commissioned": ("commissioned", "int"),  # year
    "refreshed": ("refreshed", "int"),  # year of the last major refresh, when the table has it
    "racks_installed": ("racks_installed", "int"),
    "racks_in_service": ("racks_in_service", "int"),
    "design_it_kw": ("design_it_kw", "float"),  # [kW]
    "design_pue": ("design_pue", "float"),  # when the table has it
    "grid_emission_factor": ("grid_emission_factor", "float"),  # [kgCO2/kWh]
}


def _escape_tag(values: pd.Series) -> pd.Series:
    return (values.astype(str).str.replace("\\", "\\\\", regex=False).str.replace(",", "\\,", regex=False)
            .str.replace("=", "\\=", regex=False).str.replace(" ", "\\ ", regex=False))


def _quote(values: pd.Series) -> pd.Series:
    return '"' + values.astype(str).str.replace("\\", "\\\\", regex=False).str.replace('"', '\\"', regex=False) + '"'


def _text(values: object, index: pd.Index) -> pd.Series:
    """Strings for tag values: missing → "" (so the tag is left out)."""
    return pd.Series(np.asarray(values, dtype=object), index=index, dtype=object).fillna("").astype(str)


def _tag_set(measurement: str, tags: Iterable[tuple[str, pd.Series]], index: pd.Index) -> pd.Series:
    """``measurement,key=value,…`` per row, keys in the given order, empty values left out."""
    out = pd.Series(measurement, index=index, dtype=object)
    for key, values in tags:
        present = (values != "").to_numpy()
        out = out + np.where(present, "," + key + "=" + _escape_tag(values), "")
    return out


def _float_fields(key: str, values: np.ndarray) -> list[str]:
    """``key=repr(value)`` for each value: the shortest text that reads back as the same number (what is not
    finite comes out as ``key=null``, for the caller to mask).

    msgspec's JSON encoder writes the same digits as ``repr`` about four times faster, and the same text
    outside scientific notation, which ``repr`` uses below 1e-4 and from 1e16 on (with ``e+16``, ``e-05``):
    those few take ``repr``, so the lines stay byte-for-byte what they were.
    """
    if not len(values):
        return []
    if "," in key:  # never for dcpue's field keys; the joined text below is split at commas
        return [f"{key}={v!r}" for v in values.tolist()]
    texts = msgspec.json.encode(values.tolist())[1:-1].decode()
    fields = (key + "=" + texts.replace(",", "," + key + "=")).split(",")
    for i in np.flatnonzero(np.isfinite(values) & _scientific(np.abs(values))):
        fields[i] = f"{key}={float(values[i])!r}"
    return fields


def _scientific(magnitude: np.ndarray) -> np.ndarray:
    """Where ``repr`` writes a number of this magnitude in scientific notation and msgspec does not."""
    return (magnitude >= 1e16) | ((magnitude < 1e-4) & (magnitude > 0))


class _FieldSet:
    """Builds the comma-separated field set of every row; a part can be masked out per row. The parts are
    kept and joined once at the end (adding each to the growing text copied it once per field)."""

    def __init__(self, index: pd.Index) -> None:
        self.index = index
        self._parts: list[np.ndarray] = []

    @property
    def fields(self) -> pd.Series:
        """The field set of every row (``""`` where every part was masked out)."""
        if not self._parts:
            return pd.Series("", index=self.index, dtype=object)
        joined = [",".join([part for part in row if part]) for row in zip(*self._parts, strict=True)]
        return pd.Series(joined, index=self.index, dtype=object)

    def add(self, part: pd.Series | np.ndarray | Sequence[str], mask: np.ndarray | None = None) -> None:
        values = np.asarray(part, dtype=object)
        self._parts.append(values if mask is None else np.where(mask, values, ""))

    def add_float(self, key: str, values: object) -> None:
        array = np.asarray(values, dtype=np.float64)
        self.add(_float_fields(key, array), np.isfinite(array))

    def add_int(self, key: str, values: object) -> None:
        numbers = pd.to_numeric(pd.Series(np.asarray(values), index=self.index), errors="coerce")
        valid = numbers.notna().to_numpy()
        self.add([f"{key}={v}i" for v in numbers.where(valid, 0).astype(np.int64).tolist()], valid)

    def add_string(self, key: str, values: object) -> None:
        series = pd.Series(np.asarray(values, dtype=object), index=self.index, dtype=object)
        valid = series.notna().to_numpy()
        self.add(key + "=" + _quote(series.fillna("")), valid)

    def add_bool(self, key: str, values: object) -> None:
        series = pd.Series(np.asarray(values, dtype=object), index=self.index, dtype=object)
        text = pd.Series(np.where(series.fillna(False).astype(bool), "true", "false"), index=self.index)
        self.add(key + "=" + text, series.notna().to_numpy())

    def add_kind(self, key: str, kind: str, values: object) -> None:
        """A field of ``kind`` ``float`` (non-numbers left out), ``int``, ``bool`` or ``string``."""
        if kind == "float":
            self.add_float(key, pd.to_numeric(pd.Series(np.asarray(values)), errors="coerce").to_numpy(np.float64))
        elif kind == "int":
            self.add_int(key, values)
        elif kind == "bool":
            self.add_bool(key, values)
        else:
            self.add_string(key, values)


def windows_to_lines(windows: pd.DataFrame, sites: pd.DataFrame | None = None) -> list[str]:
    """Line-protocol lines (ms precision) for window results; ``sites`` adds city/cluster tags to site rows."""
    if windows.empty:
        return []
    frame = conform_windows(windows)
    scope = frame["scope"]
    is_site = (scope == "site").to_numpy()
    site_tag = pd.Series(np.where(is_site, frame["id"], ""), dtype=object)
    cluster = pd.Series(np.where(scope == "cluster", frame["id"], ""), dtype=object)
    city = pd.Series("", index=frame.index, dtype=object)
    if sites is not None and is_site.any():
        meta = sites.reindex(frame["id"].where(is_site))
        city = pd.Series(np.where(is_site, meta["city"].fillna("").to_numpy(), ""), dtype=object)
        cluster = pd.Series(np.where(is_site, meta["cluster"].fillna("").to_numpy(), cluster), dtype=object)
    tags = _tag_set(MEASUREMENT, (("site", site_tag), ("scope", scope), ("cluster", cluster), ("city", city),
                                  ("window", frame["window"])), frame.index)
    # the tag set and the fields every row has (strings, final, integers), one formatting per row
    head = "%s " + ",".join([f"{col}=%s" for col in STRING_FIELDS]) + ",final=%s," + ",".join(
        [f"{col}=%di" for col in INT_FIELDS])
    heads = [head % row for row in zip(
        tags.tolist(), *(_quote(frame[col]).tolist() for col in STRING_FIELDS),
        np.where(frame["final"].to_numpy(bool), "true", "false").tolist(),
        *(frame[col].to_numpy(np.int64).tolist() for col in INT_FIELDS), strict=True)]
    return _with_float_fields(heads, np.column_stack([frame[col].to_numpy(np.float64) for col in FLOAT_FIELDS]),
                              FLOAT_FIELDS, frame["end_ms"].to_numpy(np.int64).tolist())


def _with_float_fields(heads: list[str], values: np.ndarray, keys: Sequence[str], stamps: list[int]) -> list[str]:
    """``head,key=value,… stamp`` per row: the finite ``values`` (rows × keys) as :func:`_float_fields` writes
    them, what is not finite left out.

    Rows that leave out the same keys share one template, filled from one msgspec encoding of their values
    (window rows come in a few such shapes: a template per row and field cost most of the lines' time).
    """
    lines: list[str] = [""] * len(heads)
    finite = np.isfinite(values)
    shapes = np.packbits(finite, axis=1)
    shapes = np.ascontiguousarray(shapes).view(np.dtype((np.void, shapes.shape[1]))).ravel()
    _, shape_of_row = np.unique(shapes, return_inverse=True)
    order = np.argsort(shape_of_row, kind="stable")
    bounds = np.flatnonzero(np.diff(shape_of_row[order])) + 1
    for rows in np.split(order, bounds):
        present = np.flatnonzero(finite[rows[0]])
        if not len(present):
            for r in rows.tolist():
                lines[r] = f"{heads[r]} {stamps[r]}"
            continue
        template = "%s," + ",".join([f"{keys[k]}=%s" for k in present]) + " %d"
        block = values[np.ix_(rows, present)]
        texts = msgspec.json.encode(block.tolist())[2:-2].decode().split("],[")
        for r, text in zip(rows.tolist(), texts, strict=True):
            lines[r] = template % (heads[r], *text.split(","), stamps[r])
        scientific = _scientific(np.abs(block))  # repr's text kept for these (see _float_fields)
        for i in np.flatnonzero(scientific.any(axis=1)):
            fields = texts[i].split(",")
            for k in np.flatnonzero(scientific[i]):
                fields[k] = repr(float(block[i, k]))
            lines[rows[i]] = template % (heads[rows[i]], *fields, stamps[rows[i]])
    return lines


def readings_to_lines(readings: pd.DataFrame, points: pd.DataFrame | None = None,
                      sites: pd.DataFrame | None = None) -> list[str]:
    """Raw readings as line protocol (measurement ``reading``, ms precision), one point per reading.

    ``readings`` has the columns of :func:`dcpue.model.readings_frame` (``ts`` [ms], ``value`` in the
    point's own unit, ``quality`` flags). ``points`` is ``Registry.points_table`` (indexed by (site,
    point)): it adds the ``role`` and ``quantity`` tags and converts ``value`` with the point's
    ``factor`` to the canonical unit of its quantity ([kW], [kWh], [°C], [%], [m3/h], [L]), so W and kW
    meters can be summed; a reading whose (site, point) it does not list keeps only the ``site`` and
    ``point`` tags and its value as received. ``sites`` is ``Registry.sites_table``: it adds the
    ``cluster`` and ``city`` tags. Fields: ``value`` (float, left out when NaN or infinite, so the point
    still records the reading's ``quality``) and ``quality`` (integer flags of :class:`dcpue.model.Quality`).
    """
    if readings.empty:
        return []
    index = pd.RangeIndex(len(readings))
    site = _text(readings["site"].to_numpy(), index)
    point = _text(readings["point"].to_numpy(), index)
    empty = pd.Series("", index=index, dtype=object)
    role, quantity, cluster, city = empty, empty, empty, empty
    values = readings["value"].to_numpy(np.float64)
    if points is not None and not points.empty:
        meta = points.reindex(pd.MultiIndex.from_arrays([site, point]))
        role = _text(meta["role"].to_numpy(), index)
        quantity = _text(meta["quantity"].to_numpy(), index)
        if "factor" in meta:  # unknown points (NaN factor) stay as received
            values = values * np.nan_to_num(meta["factor"].to_numpy(np.float64), nan=1.0)
    if sites is not None and not sites.empty:
        meta = sites.reindex(site)
        cluster = _text(meta["cluster"].to_numpy(), index) if "cluster" in meta else empty
        city = _text(meta["city"].to_numpy(), index) if "city" in meta else empty
    tags = _tag_set(READING_MEASUREMENT, zip(READING_TAGS, (site, point, role, quantity, cluster, city),
                                             strict=True), index)
    fields = _FieldSet(index)
    fields.add_float("value", values)
    fields.add_int("quality", readings["quality"].to_numpy(np.int64))
    stamps = pd.Series(readings["ts"].to_numpy(np.int64).astype(str), index=index)
    return (tags + " " + fields.fields + " " + stamps).tolist()


def inventory_to_lines(sites: pd.DataFrame, ts_ms: int) -> list[str]:
    """The site registry as line protocol (measurement ``site_inventory``), one point per site at ``ts_ms``.

    ``sites`` is ``Registry.sites_table`` (indexed by site id). Tags: ``site``, then those of
    :data:`INVENTORY_TAGS`; fields: the columns of :data:`INVENTORY_FIELDS` the table has (a missing
    value is left out). Pass the start of the current UTC day as ``ts_ms`` [ms]: rewriting the
    inventory on the same day overwrites its points, and each day keeps one snapshot.
    """
    if sites.empty:
        return []
    index = pd.RangeIndex(len(sites))
    tags = [("site", _text(sites.index.to_numpy(), index))]
    tags += [(key, _text(sites[col].to_numpy(), index)) for col, key in INVENTORY_TAGS.items() if col in sites]
    fields = _FieldSet(index)
    for col, (key, kind) in INVENTORY_FIELDS.items():
        if col in sites:
            fields.add_kind(key, kind, sites[col].to_numpy())
    field_set = fields.fields
    lines = _tag_set(INVENTORY_MEASUREMENT, tags, index) + " " + field_set + " " + str(int(ts_ms))
    # a site none of whose attributes is known has no field, and a point without fields is invalid
    return lines[(field_set != "").to_numpy()].tolist()


DEAD_LETTER_MEASUREMENT = "dead_letter"


def dead_letters_to_lines(letters: pd.DataFrame, now_ms: int) -> list[str]:
    """Dead letters (measurement ``dead_letter``, tag ``site``), stamped ``now_ms`` + row number so none collide."""
    if letters.empty:
        return []
    index = pd.RangeIndex(len(letters))
    keys = pd.Series(letters["key"].to_numpy(dtype=object), index=index).fillna("").astype(str)
    payloads = [json.dumps(p, ensure_ascii=False, default=str) for p in letters["payload"]]
    fields = _FieldSet(index)
    for key, values in (("reason", letters["reason"]), ("topic", letters["topic"]), ("payload", payloads)):
        fields.add(key + "=" + _quote(pd.Series(np.asarray(values, dtype=object), index=index)))
    stamps = pd.Series(np.arange(len(letters), dtype=np.int64) + now_ms, index=index).astype(str)
    return (_tag_set(DEAD_LETTER_MEASUREMENT, [("site", keys)], index) + " " + fields.fields + " " + stamps).tolist()


ALERT_MEASUREMENT = "alert"
ALERT_TAGS = ("site", "rule", "severity", "family", "subject")


def alerts_to_lines(events: Sequence[Any]) -> list[str]:
    """Alert state changes (measurement ``alert``) for Grafana annotations and history.

    ``events`` are :class:`dcpue.analytics.alerts.model.AlertEvent` s. Tags ``site``, ``rule`` (the
    alertname), ``severity``, ``family`` and ``subject`` (the point, device or fault the alert is about);
    fields ``state`` (``firing``/``resolved``), ``value`` (the rule's value, left out when NaN),
    ``threshold`` and ``message`` (text), ``fingerprint``, ``silenced``. Timestamp: when the state changed
    (firing: the breach start, resolved: its end), so writing the same event again overwrites it.
    """
    if not events:
        return []
    index = pd.RangeIndex(len(events))
    labels = [e.labels for e in events]
    subject = [lab.get("point") or lab.get("device") or lab.get("fault") or lab.get("collector") or ""
               for lab in labels]
    tag_values = {"site": [e.site for e in events], "rule": [lab.get("alertname", "") for lab in labels],
                  "severity": [lab.get("severity", "") for lab in labels],
                  "family": [lab.get("family", "") for lab in labels], "subject": subject}
    tags = _tag_set(ALERT_MEASUREMENT, [(k, _text(tag_values[k], index)) for k in ALERT_TAGS], index)
    fields = _FieldSet(index)
    fields.add_string("state", [e.status.value for e in events])
    fields.add_float("value", [e.value for e in events])
    fields.add_string("threshold", [e.annotations.get("threshold", "") for e in events])
    fields.add_string("message", [e.annotations.get("summary", "") for e in events])
    fields.add_string("fingerprint", [e.fingerprint for e in events])
    fields.add("silenced=" + pd.Series(["true" if e.silenced else "false" for e in events], index=index))
    stamps = pd.Series([str(e.ends_at_ms if e.ends_at_ms is not None else e.starts_at_ms) for e in events],
                       index=index)
    return (tags + " " + fields.fields + " " + stamps).tolist()


RECOMMENDATION_MEASUREMENT = "recommendation"
RECOMMENDATION_TAGS = ("site", "loop", "setpoint")
SETPOINT_LOOPS = {"supply_air": "air", "chw_supply": "chilled_water", "fw_supply": "facility_water",
                  "cw_supply": "condenser_water"}


def recommendations_to_lines(records: Sequence[dict[str, Any]]) -> list[str]:
    """Cooling recommendations (measurement ``recommendation``): one point per record and setpoint.

    ``records`` are :meth:`dcpue.analytics.cooling.Recommendation.as_dict` dicts, optionally with a
    ``confidence`` [0–1]. Tags ``site``, ``loop`` (``air``, ``chilled_water``, ``facility_water``,
    ``condenser_water``) and
    ``setpoint``; fields ``current`` and ``recommended`` [°C] (the latter left out when refused),
    ``expected_saving_kw`` and ``expected_saving_pct`` (the record's predicted saving),
    ``predicted_facility_kw``, ``predicted_pue``, ``confidence``, the predicted hottest rack inlet
    ``rack_inlet_c`` and its upper bound ``rack_inlet_c_hi``, the facility water ``fw_supply_c`` and
    ``fw_supply_c_hi`` [°C] (unknown values left out), ``ok``, and the text fields ``action``,
    ``reason`` and ``model_version``. Timestamp: the data time the recommendation is for, so recomputing it overwrites.
    """
    rows = [(r, name) for r in records for name in sorted({*(r.get("current") or {}), *(r.get("recommended") or {})})]
    if not rows:
        return []
    index = pd.RangeIndex(len(rows))
    tag_values = {"site": [str(r["site"]) for r, _ in rows], "loop": [SETPOINT_LOOPS.get(n, n) for _, n in rows],
                  "setpoint": [n for _, n in rows]}
    tags = _tag_set(RECOMMENDATION_MEASUREMENT, [(k, _text(tag_values[k], index)) for k in RECOMMENDATION_TAGS],
                    index)
    fields = _FieldSet(index)
    fields.add_float("current", [_number((r.get("current") or {}).get(n)) for r, n in rows])
    fields.add_float("recommended", [_number((r.get("recommended") or {}).get(n)) for r, n in rows])
    for field_name, key in (("expected_saving_kw", "saving_kw"), ("expected_saving_pct", "saving_pct"),
                            ("predicted_facility_kw", "facility_kw_recommended"), ("confidence", "confidence"),
                            ("predicted_pue", "predicted_pue"), ("rack_inlet_c", "rack_inlet_c"),
                            ("rack_inlet_c_hi", "rack_inlet_c_hi"), ("fw_supply_c", "fw_supply_c"),
                            ("fw_supply_c_hi", "fw_supply_c_hi")):
        fields.add_float(field_name, [_number(r.get(key)) for r, _ in rows])
    fields.add("ok=" + pd.Series(["true" if r.get("ok") else "false" for r, _ in rows], index=index))
    for key in ("action", "reason", "model_version"):
        fields.add_string(key, [str(r.get(key) or "") for r, _ in rows])
    stamps = pd.Series([str(int(r["ts_ms"])) for r, _ in rows], index=index)
    return (tags + " " + fields.fields + " " + stamps).tolist()


def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)


RETIREMENT_MEASUREMENT = "retirement"
RETIREMENT_TAGS = ("site", "verdict", "cluster")
# Assessment.sites column -> (field key, line-protocol type); types fixed here, as for the inventory
RETIREMENT_SITE_FIELDS: dict[str, tuple[str, str]] = {
    "name": ("site_name", "string"),  # `name` is an InfluxQL keyword
    "score": ("score", "float"),  # [0–100] from the met criteria
    "score_max": ("score_max", "float"),  # [0–100] if every unknown criterion were met
    "criteria_met": ("criteria_met", "int"),
    "criteria_unknown": ("criteria_unknown", "int"),
    "verdict_certain": ("verdict_certain", "bool"),
    "verdict_alternatives": ("verdict_alternatives", "string"),
    "verdict_reason": ("verdict_reason", "string"),
    "annual_pue": ("annual_pue", "float"),  # [–]
    "grade": ("grade", "string"),  # GB 40879-2021
    "occupancy_pct": ("occupancy_pct", "float"),  # [%] 上架率
    "occupancy_source": ("occupancy_source", "string"),  # history, racks or power
    "it_kw_mean": ("it_kw_mean", "float"),  # [kW]
    "racks_installed": ("racks_installed", "int"),
    "racks_in_service": ("racks_in_service", "int"),
    "standard_racks": ("standard_racks", "float"),  # [2.5 kW standard racks]
    "size_class": ("size_class", "string"),
    "age_years": ("age_years", "float"),  # [years]
    "nearest_cluster": ("nearest_cluster", "string"),
    "hub_distance_km": ("hub_distance_km", "float"),  # [km]
}
# Assessment.plan column -> field key (floats unless named in the string set); only movers have them
RETIREMENT_PLAN_FIELDS: dict[str, tuple[str, str]] = {
    "destination": ("destination", "string"),
    "distance_km": ("destination_distance_km", "float"),  # [km]
    "moved_it_kw": ("moved_it_kw", "float"),  # [kW]
    "destination_pue": ("destination_pue", "float"),  # [–]
    "saved_kwh_year": ("saved_kwh_year", "float"),  # [kWh/year]
    "saved_tco2_year": ("saved_tco2_year", "float"),  # [tCO2/year]
    "saved_cost_cny_year": ("saved_cost_cny_year", "float"),  # [CNY/year]
    "note": ("plan_note", "string"),
}


def retirement_to_lines(assessment: Any, ts_ms: int) -> list[str]:
    """A retirement assessment as line protocol (measurement ``retirement``): one point per site at ``ts_ms``.

    ``assessment`` is a :class:`dcpue.analytics.retirement.Assessment` (or anything with its ``sites``
    and ``plan`` tables, e.g. :class:`dcpue.runtime.retirement.StoreAssessment`). Tags ``site``,
    ``verdict`` (retire, consolidate, upgrade, keep) and ``cluster`` (the site's hub cluster, left out
    when it has none). Fields: those of :data:`RETIREMENT_SITE_FIELDS`, each criterion's status
    (``low_occupancy`` … ``poor_benefit``: ``met``, ``not_met``, ``unknown``) and its evidence
    (``<criterion>_evidence``) as strings, and for sites in the consolidation plan those of
    :data:`RETIREMENT_PLAN_FIELDS`; unknown values are left out. Pass the assessment's as-of time as
    ``ts_ms`` [ms]: writing the same assessment again overwrites its points.
    """
    from dcpue.analytics.retirement import CRITERIA

    assessment = getattr(assessment, "assessment", assessment)
    sites: pd.DataFrame = assessment.sites
    if sites.empty:
        return []
    index = pd.RangeIndex(len(sites))
    plan = assessment.plan
    planned = (plan.drop_duplicates("site").set_index("site").reindex(sites["site"]) if len(plan)
               else pd.DataFrame(index=sites["site"], columns=list(RETIREMENT_PLAN_FIELDS)))
    tags = _tag_set(RETIREMENT_MEASUREMENT, [(key, _text(sites[key].to_numpy(), index)) for key in RETIREMENT_TAGS],
                    index)
    fields = _FieldSet(index)
    columns = [(sites, col, spec) for col, spec in RETIREMENT_SITE_FIELDS.items()]
    columns += [(sites, c, (c, "string")) for c in CRITERIA] + [(sites, f"{c}_evidence", (f"{c}_evidence", "string"))
                                                                for c in CRITERIA]
    columns += [(planned, col, spec) for col, spec in RETIREMENT_PLAN_FIELDS.items()]
    for table, col, (key, kind) in columns:
        if col in table:
            fields.add_kind(key, kind, table[col].to_numpy())
    return (tags + " " + fields.fields + " " + str(int(ts_ms))).tolist()
