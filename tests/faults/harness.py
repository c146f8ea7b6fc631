"""What every fault scenario shares: a fleet of readings, the clean-run reference, the comparison, the clock.

The fleet is the test's "collectors": per site a facility energy counter and a varying IT power meter,
sent as batches keyed by site (one round = every site's next batch). The reference is a clean run: the
embedded :class:`~dcpue.analytics.stream.StreamEngine` over the same readings, no bus, no fault. A
scenario's result is the newest row per (scope, id, window, start) on the metrics topic, which is what
InfluxDB, ``dcpue serve`` and ``dcpue aggregate`` are fed with.
"""

from __future__ import annotations

import functools
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dcpue.adapters.kafka import KafkaProducerAdapter, create_topics
from dcpue.analytics.stream import StreamEngine
from dcpue.registry import Registry, dump_registry
from dcpue.settings import KafkaSettings, Settings, TopicSettings
from dcpue.wire import encode_frame
from tests.adapters.test_rebalance import KEY, MetricsReader, assignments
from tests.factories import MIN, T0, counter_series, power_series, registry, simple_site
from tests.servers import distributed_env, stop_process

from .profiles import PROFILE, Profile

# the figures compared: every energy of the row, the PUE and how much of the window had data
FIGURES = ["facility_kwh", "it_kwh", "cooling_kwh", "total_kwh", "losses_kwh", "pue", "coverage"]
# float summation order follows how readings were grouped into polls: a clean run polled differently differs
# by ~1e-12 relative (observed ≤ 2e-9 kWh on a 4000 kWh day). One 30-min batch is ≥ 50 kWh.
RTOL = 1e-9
ATOL = 1e-6  # [kWh] for figures that are 0


@dataclass
class Fleet:
    """Sites, their readings, and the collector batches in publishing order (round after round)."""

    profile: Profile
    sites: list[str]
    registry: Registry
    readings: dict[str, pd.DataFrame]
    rounds: list[list[tuple[str, pd.DataFrame]]]

    @property
    def batches(self) -> list[tuple[str, pd.DataFrame]]:
        return [b for r in self.rounds for b in r]

    @property
    def reading_count(self) -> int:
        return sum(len(f) for f in self.readings.values())

    def write_registry(self, path: Path) -> Path:
        path.write_text(dump_registry(self.registry), encoding="utf-8")
        return path


@functools.cache
def fleet(profile: Profile = PROFILE) -> Fleet:
    sites = [f"s{i}" for i in range(profile.sites)]
    reg = registry(*[simple_site(s) for s in sites])
    minutes = np.arange(profile.minutes + 1)
    readings = {}
    for i, site in enumerate(sites):
        it_kw = 100 + 10 * i + 20 * np.sin(2 * np.pi * minutes / 1440 + i)
        readings[site] = pd.concat([counter_series(site, "facility.main", 150 + 12 * i, profile.minutes),
                                    power_series(site, "it.ups", it_kw, profile.minutes)], ignore_index=True)
    rounds = []
    for start in range(0, profile.minutes + 1, profile.batch_min):
        lo, hi = T0 + start * MIN, T0 + (start + profile.batch_min) * MIN
        rounds.append([(s, readings[s][(readings[s]["ts"] >= lo) & (readings[s]["ts"] < hi)]) for s in sites])
    return Fleet(profile, sites, reg, readings, rounds)


def clean_run(reg: Registry, readings: pd.DataFrame, settings: Settings | None = None) -> pd.DataFrame:
    """The final site rows a clean run computes from ``readings`` (newest row per key, indexed by KEY)."""
    engine = StreamEngine(reg, (settings or Settings()).engine, emit_groups=False)
    engine.add(readings)
    rows = engine.advance()
    rows = rows.drop_duplicates(KEY, keep="last").set_index(KEY).sort_index()
    return rows[rows["final"]]


@functools.cache
def clean_reference(profile: Profile = PROFILE) -> pd.DataFrame:
    f = fleet(profile)
    return clean_run(f.registry, pd.concat(f.readings.values(), ignore_index=True))


@dataclass
class Comparison:
    """The pipeline's window rows against a clean run's."""

    windows: int  # windows of the clean run compared
    missing: list[Any] = field(default_factory=list)  # clean-run windows absent or not final in the pipeline
    extra: list[Any] = field(default_factory=list)  # final windows the clean run does not have
    differing: pd.DataFrame | None = None  # windows whose figures differ
    disagreeing: list[Any] = field(default_factory=list)  # windows published final twice with different figures
    max_rel_diff: float = 0.0

    @property
    def equal(self) -> bool:
        return not self.missing and not self.extra and not self.disagreeing and (
            self.differing is None or self.differing.empty)

    def explain(self) -> str:
        parts = [f"{self.windows} windows compared"]
        if self.missing:
            parts.append(f"{len(self.missing)} missing or open, e.g. {self.missing[:5]}")
        if self.extra:
            parts.append(f"{len(self.extra)} not in the clean run, e.g. {self.extra[:5]}")
        if self.differing is not None and not self.differing.empty:
            parts.append(f"{len(self.differing)} differ:\n{self.differing.head(10).to_string()}")
        if self.disagreeing:
            parts.append(f"{len(self.disagreeing)} published final with different figures, e.g. {self.disagreeing[:5]}")
        return "; ".join(parts)


def newest(frames: list[pd.DataFrame]) -> pd.DataFrame:
    rows = pd.concat(frames, ignore_index=True)
    return rows.drop_duplicates(KEY, keep="last").set_index(KEY).sort_index()


def compare(frames: list[pd.DataFrame], want: pd.DataFrame, scope_ids: set[str] | None = None) -> Comparison:
    """Every row ever published (``frames``, in publishing order) against the clean run's final rows ``want``.

    Equal means: every clean-run window is there, final, with the same figures (to ``RTOL``); no other final
    window exists (for the site ids in ``want``, or ``scope_ids``); and every final row ever published for a
    window agrees with the newest one (a wrong row later overwritten would still be caught).
    """
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*KEY, "final", *FIGURES])
    rows = rows[rows["scope"] == "site"]
    ids = scope_ids if scope_ids is not None else set(want.index.get_level_values("id"))
    rows = rows[rows["id"].isin(ids)]
    got = rows.drop_duplicates(KEY, keep="last").set_index(KEY).sort_index()
    result = Comparison(windows=len(want))
    present = want.index.isin(got.index)
    final = got.reindex(want.index)["final"].fillna(False).astype(bool).to_numpy()
    result.missing = list(want.index[~(present & final)])
    got_final = got[got["final"].astype(bool)]
    result.extra = list(got_final.index[~got_final.index.isin(want.index)])
    both = want.index[present & final]
    actual = got.loc[both, FIGURES].to_numpy(float)
    expected = want.loc[both, FIGURES].to_numpy(float)
    close = np.isclose(actual, expected, rtol=RTOL, atol=ATOL, equal_nan=True)
    same = close.all(axis=1)
    if (~same).any():
        result.differing = pd.concat([got.loc[both[~same], FIGURES],
                                      want.loc[both[~same], FIGURES].add_suffix("_clean")], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.abs(actual - expected) / np.maximum(np.abs(expected), 1e-12)
    rel = rel[np.isfinite(rel)]
    result.max_rel_diff = float(rel.max()) if rel.size else 0.0
    finals = rows[rows["final"].astype(bool)]
    if not finals.empty:
        grouped = finals.groupby(KEY)[["facility_kwh", "it_kwh"]]
        spread = (grouped.max() - grouped.min()).fillna(0.0)  # max/min skip NaN; all-NaN → NaN → no spread
        bad = spread[(spread > ATOL).any(axis=1)]
        result.disagreeing = list(bad.index)
    return result


# --- the pipeline: topics, producer, `dcpue analyze` processes --------------------------------------------


@dataclass
class Pipeline:
    """Topics of one scenario on ``bootstrap``, and the environment of its ``dcpue`` processes."""

    bootstrap: str
    tmp: Path
    prefix: str
    fleet: Fleet
    extra_env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.env = distributed_env(self.prefix, partitions=4, DCPUE_BUS__COMMIT_INTERVAL_S="1",
                                   DCPUE_ALERTS__NO_DATA_AFTER_S="7200", **self.extra_env)
        self.topics = TopicSettings(**{f: f"{self.prefix}.{f}.v1" for f in TopicSettings.model_fields})
        self.kafka = KafkaSettings(bootstrap_servers=self.bootstrap, partitions=4)
        self.sites_file = self.fleet.write_registry(self.tmp / "sites.yaml")

    def create_topics(self) -> None:
        create_topics(self.kafka, self.topics)

    def start_worker(self, name: str, *extra: str) -> subprocess.Popen[bytes]:
        """``dcpue analyze`` as a process (its own file store beside the metrics topic), log in ``name.log``."""
        env = {**self.env, "DCPUE_STORE__PATH": str(self.tmp / f"{name}.sqlite")}
        log = self.log(name)
        proc = subprocess.Popen([sys.executable, "-m", "dcpue.cli", "analyze", "--kafka", self.bootstrap,
                                 "--registry", str(self.sites_file), *extra],
                                env=env, stdout=subprocess.PIPE, stderr=log.open("ab"))
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> Path:
        return self.tmp / f"{name}.log"

    def wait_assigned(self, name: str, count: int = 4, timeout_s: float = 60) -> None:
        proc = self.procs[name]
        wait_for(lambda: bool(assignments(self.log(name))) and len(assignments(self.log(name))[-1]) == count,
                 timeout_s, f"worker {name} to hold {count} partitions", proc)

    def producer(self) -> KafkaProducerAdapter:
        return KafkaProducerAdapter(self.kafka).setup()

    def send(self, producer: KafkaProducerAdapter, batches: list[tuple[str, pd.DataFrame]]) -> None:
        for site, frame in batches:
            producer.send(self.topics.readings, encode_frame(site, frame), key=site)
        producer.flush()

    def reader(self) -> MetricsReader:
        return MetricsReader(self.kafka, self.topics.metrics)

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop(self, name: str) -> str:
        """SIGTERM (checkpoint, commit, exit); returns the worker's summary line."""
        proc = self.procs[name]
        stop_process(proc)
        return proc.stdout.read().decode() if proc.stdout else ""

    def finish(self, worker: str, want: pd.DataFrame) -> tuple[float, list[pd.DataFrame], str]:
        """Wait until every clean-run window is final on the metrics topic, stop ``worker`` (SIGTERM) and read
        the topic once more; returns (when it was complete, every frame read, the worker's summary line)."""
        reader = self.reader()
        try:
            try:
                done, _ = wait_complete(reader, want, timeout_s=PROFILE.timeout_s, proc=self.procs[worker])
            except AssertionError as exc:  # the worker's own account, for a failure on a CI machine
                raise AssertionError(f"{exc}\n{self.failure_report(worker)}") from None
            out = self.stop(worker)
            return done, reader.read(), out
        finally:
            reader.close()

    def failure_report(self, worker: str) -> str:
        """What tells a lost record from a stuck or dead worker: the readings partitions, a py-spy dump of the
        worker (where py-spy is installed), its dcpue log lines, its log's tail and the dcpue frames of any
        traceback in it (a kafka-python traceback is longer than the tail)."""
        lines = self.log(worker).read_text(errors="replace").splitlines()
        spy = shutil.which("py-spy", path=str(Path(sys.executable).parent))
        dump = subprocess.run([spy, "dump", "--pid", str(self.procs[worker].pid)], capture_output=True, text=True,
                              timeout=60).stdout if spy else "(py-spy not installed)"
        ours = [line for line in lines if "logger=dcpue" in line][-30:]
        frames = [line for line in lines
                  if 'File "' in line and any(part in line for part in ("/dcpue/", "/analytics/", "/ingest/"))]
        return "\n".join([f"--- readings topic: {self.readings_state()}", "--- py-spy:", dump,
                          f"--- worker {worker}'s dcpue log, last lines:", *ours,
                          "--- its log's last lines:", *lines[-40:], "--- dcpue frames in its log:", *frames])

    def readings_state(self) -> str:
        """Per partition of the readings topic: its end offset, the group's committed offset and the site keys
        it holds: tells a record the broker lost from one the worker did not consume."""
        from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

        try:
            consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                     auto_offset_reset="earliest", consumer_timeout_ms=3000)
            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
            try:
                parts = [TopicPartition(self.topics.readings, p)
                         for p in sorted(consumer.partitions_for_topic(self.topics.readings) or ())]
                ends = consumer.end_offsets(parts)
                group = self.env["DCPUE_BUS__KAFKA__GROUP_ID"]
                committed = admin.list_group_offsets({group: None}).get(group, {})
                consumer.assign(parts)
                keys: dict[int, dict[str, int]] = {}
                for rec in consumer:
                    per = keys.setdefault(rec.partition, {})
                    per[rec.key.decode()] = per.get(rec.key.decode(), 0) + 1
                return "; ".join(
                    f"p{tp.partition} end={ends[tp]} committed="
                    f"{committed[tp].offset if tp in committed else None} keys={keys.get(tp.partition, {})}"
                    for tp in parts)
            finally:
                consumer.close()
                admin.close()
        except Exception as exc:  # noqa: BLE001 - a diagnostic must not hide the failure it explains
            return f"(could not read: {exc!r})"

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                stop_process(proc)


def wait_for(condition, timeout_s: float, what: str, proc: subprocess.Popen[bytes] | None = None) -> float:  # noqa: ANN001
    """Poll ``condition`` every 0.2 s; returns when it held (monotonic seconds)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.2)
    return time.monotonic()


def wait_complete(reader: MetricsReader, want: pd.DataFrame, timeout_s: float,
                  proc: subprocess.Popen[bytes] | None = None) -> tuple[float, list[pd.DataFrame]]:
    """Read the metrics topic until every clean-run window is there and final; returns (when, frames).

    Each poll looks only at the rows published since the last one (whether a window's newest row is final), so
    a poll costs the same on the third day of a long run as on the first; the full :func:`compare` runs once,
    after, or on a timeout to say what is missing. A worker ``proc`` that exits meanwhile fails it at once.
    """
    frames: list[pd.DataFrame] = []
    wanted = set(want.index)
    waiting = set(wanted)

    def complete() -> bool:
        nonlocal frames
        seen = len(frames)
        frames = reader.read()
        for frame in frames[seen:]:
            rows = frame[frame["scope"] == "site"]
            for key, final in zip(rows[KEY].itertuples(index=False, name=None), rows["final"].astype(bool),
                                  strict=True):
                if key in wanted:
                    (waiting.discard if final else waiting.add)(key)
        return not waiting

    try:
        done = wait_for(complete, timeout_s, "every clean-run window final on the metrics topic", proc)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {compare(frames, want).explain()}") from None
    return done, frames


def summary_count(out: str, what: str) -> int:
    """A number from ``dcpue analyze``'s exit summary ("… 4 sites restored from checkpoints")."""
    match = re.search(rf"(\d+) {what}", out)
    assert match, out
    return int(match.group(1))


# --- results ---------------------------------------------------------------------------------------------

RESULTS: list[dict[str, Any]] = []


def record(scenario: str, recovery_s: float | list[float], readings: int, cmp: Comparison | None,
           **details: Any) -> dict[str, Any]:
    """Keep one scenario's outcome for the terminal summary and ``FAULTS_RESULTS``."""
    recoveries = recovery_s if isinstance(recovery_s, list) else [recovery_s]
    row = {"scenario": scenario, "profile": PROFILE.name, "recovery_s": round(max(recoveries), 2),
           "recoveries_s": [round(r, 2) for r in recoveries], "readings": readings,
           "windows_compared": cmp.windows if cmp else 0, "equal": bool(cmp.equal) if cmp else None,
           "max_rel_diff": cmp.max_rel_diff if cmp else None, **details}
    RESULTS.append(row)
    return row
