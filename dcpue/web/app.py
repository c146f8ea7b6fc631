"""The HTTP API and the built-in live page, as one FastAPI application.

:func:`create_app` wires an already-open :class:`~dcpue.ports.ResultStore`, the site
:class:`~dcpue.registry.Registry` and the engine settings into an app; it performs no I/O
itself and reads no environment (the entry point builds and hands everything in). The only
files it touches are the packaged static assets of the page.

Every JSON number that is not valid (NaN, ±inf) is sent as ``null``; the row's ``status``
says why. Energies are [kWh], powers [kW], water [L]; ratios are dimensionless.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from jsonschema import Draft202012Validator
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, ValidationError, create_model

from dcpue.alerting.outbox import DeliveryDisabled, DeliveryStatus, NotRetryable, OutboxError, UnknownDelivery
from dcpue.errors import DcpueError
from dcpue.ports import ResultStore
from dcpue.registry import Registry
from dcpue.results import ALL_WINDOWS, WINDOW_DTYPES, Scope, Status
from dcpue.settings import EngineSettings, RetirementSettings
from dcpue.web.auth import OPEN_PATHS, OPEN_PREFIXES, TokenAuth, TokenAuthMiddleware
from dcpue.web.metrics import build_registry

STATIC_DIR = Path(__file__).parent / "static"

API_PREFIX = "/api/v1"
# windows the fleet and site tables summarise (newest row of each)
SUMMARY_WINDOWS = ("1m", "1h", "1d", "12mo")
LIVE_WINDOW = "1m"
MAX_LIMIT = 50_000


# ---------------------------------------------------------------------------------------------
# response models
# ---------------------------------------------------------------------------------------------

def _column_description(col: str) -> str:
    """A short description with the unit, derived from the schema's naming convention."""
    if col.endswith("_kwh"):
        return "energy in the window [kWh]"
    if col == "water_l":
        return "water consumed in the window [L]"
    if col.endswith("_kw"):
        return "mean power over the window [kW]"
    if col.endswith("_ms"):
        return "UTC epoch milliseconds (start inclusive, end exclusive)"
    return {
        "scope": "site, cluster or fleet",
        "id": "site, cluster or fleet id",
        "window": f"window length, one of {', '.join(ALL_WINDOWS)}",
        "final": "true once the window can no longer change",
        "status": "ok, incomplete, meter_fault or no_data; figures are null unless ok",
        "coverage": "share of the window with valid data [0..1]",
        "it_category": "ISO/IEC 30134-2 IT measurement category (1 UPS out, 2 PDU out, 3 IT input; 0 unknown)",
        "pue": "power usage effectiveness = facility / IT energy [-]",
        "pue_gap": "pue - target PUE [-]",
        "wue": "water usage effectiveness [L/kWh]",
        "cue": "carbon usage effectiveness [kgCO2/kWh]",
        "grade": "GB 40879-2021 energy-efficiency grade, empty when not graded",
        "occupancy": "上架率: racks in service / racks installed [-]",
        "it_utilization": "IT load / design IT load, by power [-]",
    }.get(col, "")


def _window_field(col: str, dtype: object) -> tuple[Any, Any]:
    desc = _column_description(col)
    if dtype is np.int64:
        return int, Field(description=desc)
    if dtype is bool:
        return bool, Field(description=desc)
    if dtype is str:
        return str, Field(description=desc)
    return float | None, Field(description=desc)


# Built from the schema so the API can never drift from dcpue.results.
WindowRow = create_model(  # type: ignore[call-overload]
    "WindowRow",
    __doc__="One window result (dcpue.results schema); null where a figure is not valid.",
    **{col: _window_field(col, dtype) for col, dtype in WINDOW_DTYPES.items()},
)


class ErrorDetail(BaseModel):
    detail: str = Field(description="what went wrong, and what is valid")


class Unprocessable(BaseModel):
    detail: str | list[dict[str, Any]] = Field(
        description="what is wrong with the parameters: a message, or FastAPI's list of errors (loc, msg, type)")


class Health(BaseModel):
    status: str = Field(description="'ok' when alive/ready")
    detail: str | None = None


class SiteRow(BaseModel):
    """One row of the fleet table: registry metadata plus the newest figures of the site."""

    id: str
    name: str
    city: str
    cluster: str = Field(description="hub cluster id, empty when none")
    cooling: str = Field(description="cooling architecture: air, liquid or hybrid")
    commissioned: int = Field(description="year the site was commissioned")
    racks_installed: int = Field(description="racks installed [count]")
    racks_in_service: int = Field(description="racks in service [count]")
    occupancy: float | None = Field(
        description="上架率 by rack count: racks_in_service / racks_installed [-]; null when no racks installed"
    )
    design_it_kw: float = Field(description="design IT load [kW]")
    it_utilization: float | None = Field(
        description="IT-load utilization by power: live it_kw / design_it_kw [-]; null without live data "
                    "or when the live window is a meter fault"
    )
    target_pue: float = Field(description="the site's PUE target (site override, else the engine target) [-]")
    status: str = Field(description="status of the newest 1m window; 'no_data' when the site has none")
    start_ms: int | None = Field(description="start of the newest 1m window [UTC epoch ms]")
    end_ms: int | None = Field(description="end of the newest 1m window [UTC epoch ms]")
    pue: float | None = Field(description="live PUE, newest 1m window [-]")
    pue_gap: float | None = Field(description="pue - target_pue [-]; negative is better than target")
    coverage: float | None = Field(description="share of the newest 1m window with valid data [0..1]")
    it_kw: float | None = Field(description="live IT load [kW]")
    facility_kw: float | None = Field(description="live facility load [kW]")
    it_category: int | None = Field(description="ISO/IEC 30134-2 IT measurement category, null without data")
    grade: str | None = Field(description="GB 40879-2021 grade from the newest 1m window, null when not graded")
    pue_1h: float | None = Field(description="PUE of the newest 1h window [-]")
    status_1h: str
    pue_1d: float | None = Field(description="PUE of the newest 1d window [-]")
    status_1d: str
    pue_12mo: float | None = Field(description="annualized PUE, rolling 365 days to the newest data [-]")
    status_12mo: str


class SitesResponse(BaseModel):
    target_pue: float = Field(description="engine target PUE [-]")
    sites: list[SiteRow]


class FleetResponse(BaseModel):
    target_pue: float
    fleet: dict[str, WindowRow | None] = Field(  # type: ignore[valid-type]
        description="newest fleet-scope window per window length (1m, 1h, 1d, 12mo); null when none"
    )
    clusters: dict[str, list[WindowRow]] = Field(  # type: ignore[valid-type]
        description="newest cluster-scope window of each cluster per window length"
    )


class WindowsResponse(BaseModel):
    site: str
    window: str
    count: int
    rows: list[WindowRow]  # type: ignore[valid-type]


class DeadLetter(BaseModel):
    received_ms: int = Field(description="when the store received it [UTC epoch ms]")
    topic: str
    key: str | None
    reason: str
    payload: Any


class DeadLettersResponse(BaseModel):
    count: int
    dead_letters: list[DeadLetter]


# the body of POST /api/v1/silences as documented; dcpue.analytics.alerts.silences.Silence validates it
SILENCE_BODY: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["matchers", "ends_at_ms", "created_by"],
    "properties": {
        "matchers": {
            "type": "array", "minItems": 1,
            "description": "all must match; at least one must not match the empty string",
            "items": {"type": "array", "minItems": 3, "maxItems": 3,
                      "prefixItems": [{"type": "string", "minLength": 1, "description": "label, e.g. site"},
                                      {"enum": ["=", "!=", "=~", "!~"]},
                                      {"type": "string", "description": "value; a regular expression for =~ and "
                                                                        "!~, matching the whole label value"}]},
        },
        "ends_at_ms": {"type": "integer", "description": "end, exclusive [UTC epoch ms]; after starts_at_ms"},
        "starts_at_ms": {"type": "integer", "description": "start [UTC epoch ms]; default: now (event time)"},
        "created_by": {"type": "string", "minLength": 1},
        "comment": {"type": "string"},
        "id": {"type": "string", "minLength": 1, "description": "default: a new random id"},
    },
    "example": {"matchers": [["site", "=", "tr-02"]], "ends_at_ms": 1767225600000, "created_by": "noc",
                "comment": "UPS retrofit"},
}
_SILENCE_VALIDATOR = Draft202012Validator(SILENCE_BODY)


def _silence_problem(body: dict[str, Any]) -> str | None:
    """Why ``body`` does not follow :data:`SILENCE_BODY` strictly (pydantic alone takes true or "5" for an
    integer), or None. Where the Silence model also refuses it, its message, which names the field."""
    errors = sorted(_SILENCE_VALIDATOR.iter_errors(body), key=lambda e: [str(p) for p in e.absolute_path])
    if not errors:
        return None
    from dcpue.analytics.alerts.silences import Silence

    try:
        Silence.model_validate({"starts_at_ms": 0, **body})
    except ValidationError as exc:
        return "invalid silence: " + "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'silence'}: {e['msg']}" for e in exc.errors())
    where = ".".join(str(p) for p in errors[0].absolute_path) or "silence"
    return f"invalid silence: {where}: {errors[0].message}"


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def _clean(value: Any) -> Any:
    """A JSON-safe Python value: numpy scalars unwrapped, NaN/inf → None, containers recursed."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if value is pd.NaT:
        return None
    return value


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows of ``frame`` as JSON-safe dicts (NaN → None)."""
    cols = list(frame.columns)
    return [
        {c: _clean(v) for c, v in zip(cols, row, strict=True)}
        for row in frame.itertuples(index=False, name=None)
    ]


def _newest_by_id(store: ResultStore, scope: str, window: str) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in _records(store.latest_windows(scope, window))}


_YEAR_2200_MS = 7_258_118_400_000
_INTEGER = re.compile(r"[+-]?[0-9]+")


def _parse_time(value: str | None, name: str) -> int | None:
    """``start``/``end`` query values: epoch milliseconds or an ISO-8601 time (naive = UTC)."""
    if value is None or value == "":
        return None
    text = value.strip()
    bad = HTTPException(422, f"{name}={value!r} is not a time; give epoch milliseconds or ISO-8601 "
                             f"(e.g. 2025-06-01T00:00Z) from 1970 to 2199")
    if _INTEGER.fullmatch(text):  # ASCII digits only: str.isdigit() also takes "²", which int() refuses
        ms = int(text)
    else:
        try:
            ts = pd.Timestamp(text)
            if ts is pd.NaT:
                raise bad
            ms = int((ts.tz_localize("UTC") if ts.tzinfo is None else ts).value // 1_000_000)
        except (ValueError, TypeError, OverflowError):  # OutOfBoundsDatetime is a ValueError
            raise bad from None
    if not 0 <= ms < _YEAR_2200_MS:  # beyond it period arithmetic overflows pandas' nanosecond timestamps
        raise bad
    return ms


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den <= 0:
        return None
    out = num / den
    return out if math.isfinite(out) else None


# ---------------------------------------------------------------------------------------------
# the app
# ---------------------------------------------------------------------------------------------

def create_app(
    store: ResultStore,
    registry: Registry,
    engine_settings: EngineSettings,
    status: Callable[[], dict[str, Any]] | None = None,
    not_ready: Callable[[], str | None] | None = None,
    alerts: Any = None,
    retirement: RetirementSettings | None = None,
    feed: Callable[[], dict[str, Any]] | None = None,
    auth: TokenAuth | None = None,
) -> FastAPI:
    """Build the API and page over an open ``store``.

    ``not_ready`` (optional) returns why the results are not yet complete enough to serve — e.g. a
    view still rebuilding from the metrics topic — or None; ``/readyz`` answers 503 with that reason.

    ``status`` is called on every ``GET /api/v1/status`` and should be cheap; whatever it returns
    (simulated clock, counters) is passed through, NaN made null. The page shows ``sim_time_ms``
    (epoch ms) or ``sim_time`` (ISO text) as the simulated clock when present.

    ``alerts`` (a :class:`dcpue.runtime.alerts.AlertsApi`, optional) adds the alert, delivery-log and
    silence endpoints; without it they answer 404.

    ``retirement`` (the ``retirement:`` settings; default: their defaults) configures
    ``GET /api/v1/retirement``.

    ``feed`` (optional) returns the provincial feed's status for ``GET /api/v1/feed``; without it
    that answers 404.

    ``auth`` (a :class:`~dcpue.web.auth.TokenAuth`, optional) requires an accepted token on every path but
    ``/healthz``, ``/readyz``, the page and its assets and the OpenAPI document; without it the API is open
    (the settings allow that only on a loopback host). ``GET /metrics`` serves ``status``, ``feed`` and
    ``alerts`` in the Prometheus text format (:mod:`dcpue.web.metrics`).
    """
    target = float(engine_settings.target_pue)
    sites_meta = registry.sites_table
    site_ids = {s.id for s in registry.sites}

    app = FastAPI(
        title="dcpue",
        summary="Data-center energy and PUE monitoring: window results, fleet table, live page",
        version="1",
        docs_url="/api/docs",
        openapi_url="/api/openapi.json",
        redoc_url=None,
    )

    def readiness() -> str | None:
        """Why the results cannot be served now, or None."""
        reason = not_ready() if not_ready is not None else None
        if reason:
            return reason
        try:
            store.query_windows(Scope.FLEET.value, LIVE_WINDOW, ids=["__readyz__"])
        except Exception as exc:  # noqa: BLE001 — any failure means "not ready", and says why
            return str(exc)
        return None

    @app.exception_handler(405)
    async def _method_not_allowed(request: Request, exc: Exception) -> JSONResponse:
        # Starlette names only the first route's methods; a path with GET and POST routes allows both
        path = request.scope["path"]
        allowed = sorted({m for route in app.router.routes if isinstance(route, APIRoute)
                          and route.path_regex.match(path) for m in route.methods or ()})
        return JSONResponse({"detail": "Method Not Allowed"}, status_code=405, headers={"Allow": ", ".join(allowed)})

    @app.exception_handler(DcpueError)
    async def _store_unavailable(request: Request, exc: DcpueError) -> JSONResponse:
        # the store is the only thing the handlers call that raises DcpueError (closed, locked, …)
        return JSONResponse({"detail": f"result store unavailable: {exc}"}, status_code=503)

    @app.get("/healthz", response_model=Health, tags=["health"], summary="The process is alive")
    def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get(
        "/readyz", response_model=Health, tags=["health"], summary="The result store answers queries",
        responses={503: {"model": Health, "description": "the store does not answer"}},
    )
    def readyz() -> Any:
        reason = readiness()
        if reason:
            return JSONResponse({"status": "unavailable", "detail": reason}, status_code=503)
        return {"status": "ok"}

    store_down: dict[int | str, dict[str, Any]] = {
        503: {"model": ErrorDetail, "description": "the result store does not answer"}}

    @app.get(f"{API_PREFIX}/sites", response_model=SitesResponse, tags=["fleet"], responses=store_down,
             summary="Fleet table: one row per registry site with its newest figures")
    def sites() -> dict[str, Any]:
        newest = {w: _newest_by_id(store, Scope.SITE.value, w) for w in SUMMARY_WINDOWS}
        rows = []
        for site_id, meta in sites_meta.iterrows():
            live = newest[LIVE_WINDOW].get(site_id)
            pue = live["pue"] if live else None
            it_kw = live["it_kw"] if live else None
            # a meter-fault window's IT figure cannot be true, so it yields no utilization
            trusted_it_kw = it_kw if live and live["status"] != Status.METER_FAULT.value else None
            row: dict[str, Any] = {
                "id": site_id,
                "name": meta["name"],
                "city": meta["city"],
                "cluster": meta["cluster"],
                "cooling": meta["cooling"],
                "commissioned": int(meta["commissioned"]),
                "racks_installed": int(meta["racks_installed"]),
                "racks_in_service": int(meta["racks_in_service"]),
                # two different questions, never merged: how full by racks vs how loaded by power
                "occupancy": _ratio(float(meta["racks_in_service"]), float(meta["racks_installed"])),
                "design_it_kw": float(meta["design_it_kw"]),
                "it_utilization": _ratio(trusted_it_kw, float(meta["design_it_kw"])),
                "target_pue": target,
                "status": live["status"] if live else Status.NO_DATA.value,
                "start_ms": live["start_ms"] if live else None,
                "end_ms": live["end_ms"] if live else None,
                "pue": pue,
                "pue_gap": None if pue is None else pue - target,
                "coverage": live["coverage"] if live else None,
                "it_kw": it_kw,
                "facility_kw": live["facility_kw"] if live else None,
                "it_category": live["it_category"] if live else None,
                "grade": (live["grade"] or None) if live else None,
            }
            for w in SUMMARY_WINDOWS[1:]:
                r = newest[w].get(site_id)
                row[f"pue_{w}"] = r["pue"] if r else None
                row[f"status_{w}"] = r["status"] if r else Status.NO_DATA.value
            rows.append(row)
        return {"target_pue": target, "sites": rows}

    @app.get(f"{API_PREFIX}/fleet", response_model=FleetResponse, tags=["fleet"], responses=store_down,
             summary="Newest fleet and cluster windows (1m, 1h, 1d, 12mo)")
    def fleet() -> dict[str, Any]:
        fleet_rows: dict[str, Any] = {}
        clusters: dict[str, Any] = {}
        for w in SUMMARY_WINDOWS:
            rows = _records(store.latest_windows(Scope.FLEET.value, w))
            # one fleet id is expected; if several exist, the newest window wins
            fleet_rows[w] = max(rows, key=lambda r: r["start_ms"]) if rows else None
            clusters[w] = _records(store.latest_windows(Scope.CLUSTER.value, w))
        return {"target_pue": target, "fleet": fleet_rows, "clusters": clusters}

    @app.get(
        f"{API_PREFIX}/sites/{{site_id}}/windows", response_model=WindowsResponse, tags=["fleet"],
        summary="Time series of one site's windows, oldest first",
        responses={**store_down, 404: {"model": ErrorDetail, "description": "unknown site"},
                   422: {"model": Unprocessable, "description": "unknown window, bad time or limit"}},
    )
    def site_windows(
        site_id: str = PathParam(description="site id from the registry"),
        window: str = Query("1h", description=f"window length: {', '.join(ALL_WINDOWS)}",
                            json_schema_extra={"enum": list(ALL_WINDOWS)}),
        start: str | None = Query(None, description="windows starting at or after this (epoch ms or ISO-8601)"),
        end: str | None = Query(None, description="windows starting before this (epoch ms or ISO-8601)"),
        limit: int = Query(1000, ge=1, le=MAX_LIMIT, description="at most this many of the newest rows"),
    ) -> dict[str, Any]:
        if site_id not in site_ids:
            raise HTTPException(
                404, f"unknown site {site_id!r}: the registry has {len(site_ids)} sites; "
                     f"GET {API_PREFIX}/sites lists them"
            )
        if window not in ALL_WINDOWS:
            raise HTTPException(422, f"unknown window {window!r}; valid windows: {', '.join(ALL_WINDOWS)}")
        start_ms, end_ms = _parse_time(start, "start"), _parse_time(end, "end")
        frame = store.query_windows(Scope.SITE.value, window, ids=[site_id], start_ms=start_ms, end_ms=end_ms)
        rows = _records(frame.tail(limit))
        return {"site": site_id, "window": window, "count": len(rows), "rows": rows}

    @app.get(f"{API_PREFIX}/status", tags=["runtime"],
             summary="Runtime status (simulated clock, counters) and the target PUE")
    def runtime_status() -> dict[str, Any]:
        info = _clean(dict(status())) if status is not None else {}
        info["target_pue"] = target
        info.setdefault("site_count", len(site_ids))
        return info

    metrics_registry = build_registry(status, feed, alerts, readiness, len(site_ids), auth)

    @app.get("/metrics", tags=["runtime"], response_class=Response,
             summary="Self-monitoring in the Prometheus text format: readings in, windows out, lag, errors, "
                     "collector health, alerts, feed queues (docs/api.md#metrics)",
             responses={200: {"description": "Prometheus text exposition format 0.0.4",
                              "content": {"text/plain": {"schema": {"type": "string"}}}}})
    def metrics() -> Response:
        return Response(generate_latest(metrics_registry), media_type=CONTENT_TYPE_LATEST)

    @app.get(f"{API_PREFIX}/dead-letters", response_model=DeadLettersResponse, tags=["runtime"], responses=store_down,
             summary="The newest records that could not be used, newest first")
    def dead_letters(limit: int = Query(100, ge=1, le=10_000)) -> dict[str, Any]:
        reader = getattr(store, "dead_letters", None)
        if reader is None:  # a store that keeps no dead letters (not part of the ResultStore port)
            return {"count": 0, "dead_letters": []}
        rows = _records(reader(limit=limit))
        return {"count": len(rows), "dead_letters": rows}

    @app.get(f"{API_PREFIX}/recommendations", tags=["cooling"],
             summary="The newest cooling-setpoint recommendations (advisory), newest first",
             responses={**store_down, 404: {"model": ErrorDetail, "description": "unknown site"}})
    def recommendations(site: str | None = Query(None, description="only this site (empty: all sites)"),
                        limit: int = Query(100, ge=1, le=10_000)) -> dict[str, Any]:
        site = site or None
        if site is not None and site not in site_ids:
            raise HTTPException(404, f"unknown site {site!r}: GET {API_PREFIX}/sites lists them")
        reader = getattr(store, "recommendations", None)
        rows = reader(site=site, limit=limit) if reader is not None else []
        return {"count": len(rows), "recommendations": rows}

    retirement_settings = retirement or RetirementSettings()
    retirement_cache: dict[tuple[int, float | None, int | None], dict[str, Any]] = {}
    retirement_lock = threading.Lock()

    @app.get(f"{API_PREFIX}/retirement", tags=["retirement"],
             summary="Retirement assessment of every site: verdicts, evidence, consolidation plan (docs/retirement.md)",
             responses={**store_down, 422: {"model": Unprocessable, "description": "bad as_of or price"},
                        500: {"model": ErrorDetail, "description": "the retirement settings do not fit the registry"}})
    def retirement_view(
        as_of: str | None = Query(None, description="end of the assessed period (epoch ms or ISO-8601, naive = UTC); "
                                                    "default: the end of the newest closed day in the store"),
        price: float | None = Query(None, ge=0, description="electricity price [CNY/kWh], overrides the settings"),
    ) -> JSONResponse:
        from dcpue.errors import ConfigError
        from dcpue.runtime.retirement import assess_store, newest_data_ms

        newest = newest_data_ms(store)
        as_of_ms = _parse_time(as_of, "as_of")
        key = (as_of_ms if as_of_ms is not None else newest or 0, price, newest)
        with retirement_lock:  # one computation at a time; a repeated question is answered from the cache
            body = retirement_cache.get(key)
            if body is None:
                try:
                    result = assess_store(store, registry, retirement_settings, as_of_ms=key[0] or None,
                                          tz=engine_settings.timezone, price_cny_per_kwh=price)
                except ConfigError as exc:
                    raise HTTPException(500, f"retirement settings: {exc}") from None
                body = _clean(result.to_dict())
                if len(retirement_cache) >= 8:
                    retirement_cache.pop(next(iter(retirement_cache)))
                retirement_cache[key] = body
        return JSONResponse(body)

    @app.get(f"{API_PREFIX}/feed", tags=["feed"],
             summary="The provincial feed: queues per destination, reported-until times, refusals (docs/feed.md)",
             responses={404: {"model": ErrorDetail, "description": "the feed is not enabled in this process"},
                        503: {"model": ErrorDetail, "description": "the feed outbox does not answer"}})
    def feed_status() -> dict[str, Any]:
        if feed is None:
            raise HTTPException(404, "the provincial feed is not enabled in this process (feed.enabled)")
        return _clean(feed())

    def _alerts() -> Any:
        if alerts is None:
            raise HTTPException(404, "alerting is not running in this process")
        return alerts

    alerts_off: dict[int | str, dict[str, Any]] = {
        404: {"model": ErrorDetail, "description": "alerting is not running in this process"}}

    @app.get(f"{API_PREFIX}/alerts", tags=["alerts"], responses=alerts_off,
             summary="Pending and firing alerts, and the newest alert events (firing/resolved)")
    def alerts_view(limit: int = Query(100, ge=1, le=10_000), site: str | None = None) -> dict[str, Any]:
        api = _alerts()
        active = api.active()
        if site:
            active = [a for a in active if a.get("labels", {}).get("site") == site]
        return _clean({"active": active, "events": api.recent(limit, site)})

    @app.get(f"{API_PREFIX}/alerts/deliveries", tags=["alerts"], responses=alerts_off,
             summary="The webhook delivery log, newest first")
    def alert_deliveries(limit: int = Query(100, ge=1, le=10_000),
                         receiver: str | None = Query(None, description="only this receiver (empty: all)"),
                         status: DeliveryStatus | None = Query(None, description="only rows in this state"),
                         ) -> dict[str, Any]:
        rows = _alerts().deliveries(limit, receiver or None, status)
        return {"count": len(rows), "deliveries": rows}

    @app.post(f"{API_PREFIX}/alerts/deliveries/{{delivery_id}}/retry", tags=["alerts"],
              summary="Send a failed delivery again: same body and Idempotency-Key, due now",
              responses={404: {"model": ErrorDetail,
                               "description": "no delivery with this id, or alert delivery not configured"},
                         409: {"model": ErrorDetail,
                               "description": "the delivery is not failed, or its receiver is not configured"},
                         503: {"model": ErrorDetail, "description": "the alert outbox does not answer"}})
    def alert_delivery_retry(delivery_id: int = PathParam(ge=1, le=2**63 - 1)) -> dict[str, Any]:  # SQLite INTEGER
        api = _alerts()
        try:
            return api.retry_delivery(delivery_id)
        except (DeliveryDisabled, UnknownDelivery) as exc:
            raise HTTPException(404, str(exc)) from None
        except NotRetryable as exc:
            raise HTTPException(409, str(exc)) from None
        except OutboxError as exc:
            raise HTTPException(503, f"alert outbox unavailable: {exc}") from None

    @app.get(f"{API_PREFIX}/silences", tags=["alerts"], summary="Silences and maintenance windows",
             responses=alerts_off)
    def silences_view() -> dict[str, Any]:
        return {"silences": _alerts().silences()}

    @app.post(f"{API_PREFIX}/silences", tags=["alerts"], status_code=201,
              summary="Add a silence: matchers [[label, op, value]], ends_at_ms, created_by, comment",
              openapi_extra={"requestBody": {"content": {"application/json": {"schema": SILENCE_BODY}}}},
              responses={**alerts_off, 400: {"model": ErrorDetail, "description": "not a valid silence: the detail "
                                             "names the field and the problem (e.g. ends before it starts)"}})
    def silence_add(body: dict[str, Any]) -> dict[str, Any]:
        api = _alerts()
        problem = _silence_problem(body)
        if problem is not None:
            raise HTTPException(400, problem)
        try:
            return api.add_silence(body)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None

    @app.delete(f"{API_PREFIX}/silences/{{silence_id}}", tags=["alerts"], status_code=204,
                summary="Expire a silence now",
                responses={404: {"model": ErrorDetail, "description": "no silence with this id, or alerting not "
                                 "running in this process"}})
    def silence_expire(silence_id: str) -> None:
        try:
            _alerts().expire_silence(silence_id)
        except KeyError as exc:
            raise HTTPException(404, str(exc)) from None

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    if auth is not None:
        app.add_middleware(TokenAuthMiddleware, auth=auth)
        _document_security(app)
    return app


UNAUTHORIZED = {
    "description": "no API token, or one that is not accepted (docs/api.md#authentication)",
    "headers": {"WWW-Authenticate": {"description": 'Bearer realm="dcpue"', "schema": {"type": "string"}}},
    "content": {"application/json": {"schema": {
        "type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"]}}},
}


def _document_security(app: FastAPI) -> None:
    """Declare the token schemes in the OpenAPI document, and a 401 on every operation that needs a token."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "Authorization: Bearer <token>; the settings hold its SHA-256 digest"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key",
                       "description": "the same token in the X-Api-Key header"},
        }
        for path, operations in schema.get("paths", {}).items():
            if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
                continue
            for operation in operations.values():
                operation["security"] = [{"bearer": []}, {"apiKey": []}]
                operation.setdefault("responses", {})["401"] = UNAUTHORIZED
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
