"""Cooling recommendations inside the analytics worker: history → scheduled retraining → advice.

:class:`CoolingAdvisor` sees the worker's readings. Per site it buffers them and, every
``cooling.table_every_h`` of event time, turns the complete intervals into rows of the site's cooling
table (:func:`dcpue.analytics.cooling.readings_to_table`). Once a site has ``min_history_days`` of table,
its model is trained (and every ``retrain_every_h`` again) on a background thread, saved versioned in
``model_dir`` with the table it was trained on; from then on every new table row brings a
recommendation for the site's current conditions and setpoints. Advisory only: nothing is written to a
building-management system. Training refusals (a setpoint that never changed, too little data) are
logged once per attempt and the site keeps going without a model.

Every conversion appends its new rows to the site's table file in ``model_dir`` (one write, fsynced);
the file is rewritten whole, trimmed to ``history_days``, when a training finishes and on close. A
restarted or crashed worker loads each site's newest model and that table, so no table row it made is
lost; a torn last line (a crash inside the append) is dropped on load.
"""

from __future__ import annotations

import io
import logging
import os
import threading
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd

from dcpue.registry import Registry
from dcpue.settings import CoolingSettings, Settings

log = logging.getLogger(__name__)

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


class CoolingAdvisor:
    """Per-site cooling tables, models and recommendations for the sites a worker sees."""

    def __init__(self, registry: Registry, settings: CoolingSettings, water_class: str | None = None,
                 train_in_background: bool = True, site_water_classes: Mapping[str, str] | None = None) -> None:
        """``water_class``: the fleet's facility-water class (``alerts.water_class``), used where neither
        ``site_water_classes`` (``alerts.sites.<id>.water_class``) nor ``cooling.water_class`` names one."""
        from dcpue.analytics.cooling import Envelope, site_setpoints

        self.registry = registry
        self.settings = settings
        self.model_dir = Path(settings.model_dir)
        self.freq_ms = int(pd.Timedelta(settings.freq).total_seconds() * 1000)
        self.envelope = Envelope(inlet_margin_k=settings.inlet_margin_k, w_class=settings.water_class or water_class)
        own = dict(site_water_classes or {})
        self.envelopes = {s.id: (Envelope(inlet_margin_k=settings.inlet_margin_k, w_class=own[s.id]) if s.id in own
                                 else self.envelope) for s in registry.sites}
        self.setpoints = {s.id: site_setpoints(s) for s in registry.sites}
        self._buffer: dict[str, list[pd.DataFrame]] = {}
        self._converted_to: dict[str, int] = {}  # table complete up to this interval end [ms]
        self.tables: dict[str, pd.DataFrame] = {}
        self.models: dict[str, Any] = {}
        self._trained_at: dict[str, int] = {}  # event time of the last training attempt [ms]
        self._advised_to: dict[str, int] = {}  # newest table row already advised on [ms]
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="dcpue-cooling") if train_in_background else None
        self._training: dict[str, Future[Any]] = {}
        self._lock = threading.Lock()
        self.trainings = 0
        self.refusals = 0
        self.writers = {}
        if settings.writeback:
            from dcpue.ingest.writeback import SetpointWriter

            self.writers = {site: SetpointWriter(site, target) for site, target in settings.writeback.items()
                            if target.enabled}
        self._load()

    # -- the worker's hook ---------------------------------------------------------------------------
    def observe(self, readings: pd.DataFrame | None) -> list[dict[str, Any]]:
        """Take a batch of readings; return the recommendation records it brings (``as_dict()`` + confidence)."""
        if readings is not None and not readings.empty:
            for site, frame in readings.groupby("site", sort=False):
                if self.setpoints.get(str(site)):  # sites without setpoints cannot be advised
                    self._buffer.setdefault(str(site), []).append(frame)
        records: list[dict[str, Any]] = []
        for site in list(self._buffer):
            self._convert(site)
            self._collect_training(site)
            self._maybe_train(site)
            records += self._advise(site)
        return records

    def close(self) -> None:
        """Wait for a running training, save every site's table, disconnect from the BMSs."""
        for writer in self.writers.values():
            writer.close()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        for site in list(self._training):
            self._collect_training(site)
        for site, table in self.tables.items():
            self._save_table(site, table)

    def status(self) -> dict[str, object]:
        return {"cooling_models": len(self.models), "cooling_trainings": self.trainings,
                "cooling_refusals": self.refusals, "cooling_sites_with_history": len(self.tables)}

    # -- history -----------------------------------------------------------------------------------
    def _convert(self, site: str) -> None:
        """Turn the buffered readings of whole ``table_every_h`` spans into table rows."""
        from dcpue.analytics.cooling import readings_to_table

        frames = self._buffer.get(site)
        if not frames:
            return
        buffered = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        buffered = buffered.drop_duplicates(["point", "ts"], keep="last")  # a rebalance may replay a batch
        newest = int(buffered["ts"].max())
        done = self._converted_to.get(site)
        if done is None:
            done = int(buffered["ts"].min()) // self.freq_ms * self.freq_ms
        span_ms = int(self.settings.table_every_h * HOUR_MS)
        upto = newest // self.freq_ms * self.freq_ms  # the last complete interval ends here
        if upto - done < span_ms:
            self._buffer[site] = [buffered]
            return
        part = buffered[buffered["ts"] <= upto]
        table = readings_to_table(part, self.registry.site_map[site], freq=self.settings.freq)
        table = table[table["ts"] > done] if not table.empty else table
        self._append_table(site, table)
        old = self.tables.get(site)
        table = pd.concat([old, table], ignore_index=True) if old is not None and not old.empty else table
        horizon = upto - int(self.settings.history_days * DAY_MS)
        self.tables[site] = table[table["ts"] > horizon].drop_duplicates("ts", keep="last").reset_index(drop=True)
        self._converted_to[site] = upto
        # keep one interval before the boundary: counters are differenced against their previous sample
        self._buffer[site] = [buffered[buffered["ts"] > upto - self.freq_ms]]

    # -- training ----------------------------------------------------------------------------------
    def _maybe_train(self, site: str) -> None:
        table = self.tables.get(site)
        if table is None or table.empty or site in self._training:
            return
        now = int(table["ts"].iloc[-1])
        if now - int(table["ts"].iloc[0]) < self.settings.min_history_days * DAY_MS:
            return
        last = self._trained_at.get(site)
        if last is not None and now - last < self.settings.retrain_every_h * HOUR_MS:
            return
        self._trained_at[site] = now
        snapshot = table.copy()
        if self._pool is None:
            self._training[site] = _done(self._train, site, snapshot)
        else:
            self._training[site] = self._pool.submit(self._train, site, snapshot)

    def _train(self, site: str, table: pd.DataFrame) -> Any:
        from dcpue.analytics.cooling import CoolingModel

        model = CoolingModel.train(table, site=site)
        model.save(self.model_dir)
        return model

    def _collect_training(self, site: str) -> None:
        future = self._training.get(site)
        if future is None or not future.done():
            return
        del self._training[site]
        try:
            model = future.result()
        except ValueError as exc:  # TrainingRefused and friends: the site goes on without a (new) model
            self.refusals += 1
            log.warning("cooling model of site %s not trained: %s", site, exc)
            return
        except Exception:  # noqa: BLE001 — a failing training must not stop the worker
            self.refusals += 1
            log.exception("training the cooling model of site %s failed", site)
            return
        self.models[site] = model
        self.trainings += 1
        self._save_table(site, self.tables[site])  # compact the appended file to the current table
        log.info("cooling model of site %s trained: version %s on %d rows", site, model.version, model.n_rows)

    # -- advice ------------------------------------------------------------------------------------
    def _advise(self, site: str) -> list[dict[str, Any]]:
        from dcpue.analytics.cooling import recommend

        model, table = self.models.get(site), self.tables.get(site)
        if model is None or table is None or table.empty:
            return []
        fresh = table[table["ts"] > self._advised_to.get(site, model.training_window[1])]
        records = []
        for row in fresh.to_dict("records"):
            current = {name: row.get(f"sp_{name}") for name in model.setpoints}
            if any(v is None or pd.isna(v) for v in current.values()):
                continue
            conditions = {k: row[k] for k in ("it_kw", "dry_bulb_c", "wet_bulb_c", "rh_pct")}
            # the interval's measured outcomes: a plant hotter than its model tightens the advice
            measured = {t: v for t in ("rack_inlet_c", "fw_supply_c") if (v := _value(row, t)) is not None}
            rec = recommend(model, conditions, current, self.envelopes.get(site, self.envelope), site=site,
                            ts_ms=int(row["ts"]), max_relative_error=self.settings.max_relative_error,
                            measured=measured).as_dict()
            rec["confidence"] = _confidence(model)
            writer = self.writers.get(site)
            if writer is not None:  # opted in: the outcome is watched, the advice applied within its limits
                watched = writer.watch(int(row["ts"]), _value(row, "rack_inlet_c"), _value(row, "fw_supply_c"))
                result = watched if watched is not None else writer.apply(rec)
                rec["writeback"] = {"action": result.action, "reason": result.reason}
            records.append(rec)
        if not fresh.empty:
            self._advised_to[site] = int(fresh["ts"].iloc[-1])
        return records

    # -- persistence -------------------------------------------------------------------------------
    def _table_path(self, site: str) -> Path:
        return self.model_dir / f"table-{site}.csv"

    def _save_table(self, site: str, table: pd.DataFrame) -> None:
        with self._lock:
            self.model_dir.mkdir(parents=True, exist_ok=True)
            tmp = self._table_path(site).with_suffix(".tmp")
            table.to_csv(tmp, index=False)
            tmp.replace(self._table_path(site))

    def _append_table(self, site: str, rows: pd.DataFrame) -> None:
        """Append new table rows to the site's file in one fsynced write (rewritten whole if its columns differ)."""
        if rows.empty:
            return
        path = self._table_path(site)
        with self._lock:
            self.model_dir.mkdir(parents=True, exist_ok=True)
            header = ",".join(rows.columns)
            if not path.exists() or path.stat().st_size == 0:
                text = rows.to_csv(index=False)
            else:
                with path.open("r", encoding="utf-8") as fh:
                    same = fh.readline().rstrip("\n") == header
                if not same:  # other columns (an older dcpue, a registry change): rewrite it whole, atomically
                    old = self.tables.get(site)
                    full = pd.concat([old, rows], ignore_index=True) if old is not None else rows
                    tmp = path.with_suffix(".tmp")
                    with tmp.open("w", encoding="utf-8") as fh:
                        fh.write(full.to_csv(index=False))
                        fh.flush()
                        os.fsync(fh.fileno())
                    tmp.replace(path)
                    return
                text = rows.to_csv(index=False, header=False)
            with path.open("a", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())

    def _load(self) -> None:
        from dcpue.analytics.cooling import CoolingModel

        if not self.model_dir.is_dir():
            return
        for site in self.setpoints:
            table = _read_table(self._table_path(site))
            if table is not None:
                self.tables[site] = table
                if not table.empty:
                    self._converted_to[site] = int(table["ts"].iloc[-1])
            found = sorted(self.model_dir.glob(f"cooling-{site}-*.json"), key=lambda p: p.stat().st_mtime)
            if found:
                try:
                    model = CoolingModel.load(found[-1])
                except (ValueError, OSError) as exc:
                    log.error("cooling model %s unusable, the site is retrained: %s", found[-1], exc)
                    continue
                self.models[site] = model
                self._trained_at[site] = model.training_window[1]
                self._advised_to[site] = max(model.training_window[1], self._converted_to.get(site, 0))


def _read_table(path: Path) -> pd.DataFrame | None:
    """A saved or appended table file: a torn last line (no newline: the append was cut) is dropped,
    from the file too; rows are in time order with the newest of a repeated interval kept."""
    if not path.exists():
        return None
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        log.warning("cooling table %s ends in a torn line (an interrupted append): dropped", path)
        text = text[: text.rfind("\n") + 1]
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)  # so the next append starts on a line of its own
    if not text.strip():
        return None
    table = pd.read_csv(io.StringIO(text))
    return table.drop_duplicates("ts", keep="last").sort_values("ts", kind="stable").reset_index(drop=True)


def site_water_classes(settings: Settings) -> dict[str, str]:
    """Each site's own facility-water class from ``alerts.sites.<id>.water_class`` (where one is set)."""
    return {site: str(s.water_class) for site, s in settings.alerts.sites.items() if s.water_class}


def _value(row: dict[str, Any], key: str) -> float | None:
    value = row.get(key)
    return None if value is None or pd.isna(value) else float(value)


def _confidence(model: Any) -> float:
    """1 − the worst held-out relative error of the model's power targets, within 0..1."""
    errors = [m.get("relative_error", m.get("mape")) for t, m in model.metrics.items() if t.endswith("_kw")]
    errors = [float(e) for e in errors if isinstance(e, int | float)]
    return max(0.0, min(1.0, 1.0 - max(errors))) if errors else 0.0


def _done(fn: Any, *args: Any) -> Future[Any]:
    future: Future[Any] = Future()
    try:
        future.set_result(fn(*args))
    except Exception as exc:  # noqa: BLE001 — handed to _collect_training like a background failure
        future.set_exception(exc)
    return future


def recommendation_writer(sinks: list[Any], producer: Any = None, topic: str = "") -> Any:
    """Where recommendation records go: every sink with ``write_recommendations`` and the recommendations topic."""
    import json

    targets = [s for s in sinks if hasattr(s, "write_recommendations")]

    def write(records: list[dict[str, Any]]) -> None:
        for sink in targets:
            sink.write_recommendations(records)
        if producer is not None:
            for record in records:
                producer.send(topic, json.dumps(record, ensure_ascii=False).encode(), key=record["site"])
            producer.flush()

    return write
