"""(d) The collector's spool disk fills up: the bus is cut off long enough for `dcpue collect` to hit
``collect.spool.max_bytes`` (1 MiB, the smallest allowed).

The documented behaviour (ingest/spool.py): when full, the *oldest* records are dropped to make room, and
the drop is counted (persisted in the spool file), logged at ERROR, exported as
``dcpue_spool_dropped_records_total`` and reported in the collector's health record
(``spool_dropped_total``). The test accounts for every record the collector ever made — delivered to
Kafka or counted as dropped, nothing else — checks that the lost readings are whole, oldest batches,
and that the windows away from the gap equal the clean run's.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import time

import pandas as pd
import pytest

from dcpue.adapters.kafka import create_topics
from dcpue.registry import load_registry
from dcpue.settings import KafkaSettings, TopicSettings
from dcpue.wire import decode_batch
from tests.ingest.test_collect_outage import START, expected_readings, metric, metrics_port, topic_values
from tests.peers.netcut import kafka_behind_netcut
from tests.servers import distributed_env, unique_name

from .harness import clean_run, compare, record, wait_for
from .profiles import PROFILE

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(PROFILE.timeout_s)]
MAX_BYTES = 1 << 20
WINDOW_MS = {"1m": 60_000, "15m": 900_000, "1h": 3_600_000, "1d": 86_400_000, "1mo": 31 * 86_400_000}


def test_a_full_spool_loses_exactly_what_it_counts_and_reports(tmp_path):
    with kafka_behind_netcut() as (netcut, _server):
        prefix = unique_name("spool")
        spool = tmp_path / "spool.sqlite"
        env = distributed_env(prefix, partitions=2, DCPUE_SIMULATOR__START=START,
                              DCPUE_COLLECT__SPOOL__PATH=str(spool), DCPUE_COLLECT__SPOOL__MAX_BYTES=str(MAX_BYTES),
                              DCPUE_COLLECT__COLLECTOR_ID="c-faults", DCPUE_BUS__KAFKA__SEND_TIMEOUT_S="3",
                              DCPUE_COLLECT__DRAIN_S="60")
        sites = tmp_path / "sites.yaml"
        made = subprocess.run([sys.executable, "-m", "dcpue.cli", "registry", "generate", "--sites",
                               str(PROFILE.spool_sites), "-o", str(sites)], env=env, capture_output=True, text=True,
                              timeout=60)
        assert made.returncode == 0, made.stderr
        topics = TopicSettings(**{name: f"{prefix}.{name}.v1" for name in TopicSettings.model_fields})
        create_topics(KafkaSettings(bootstrap_servers=netcut.address, partitions=2), topics)
        log = tmp_path / "collect.log"
        proc = subprocess.Popen([sys.executable, "-m", "dcpue.cli", "collect", "--kafka", netcut.address,
                                 "--registry", str(sites), "--speed", "3600", "--duration", "600"],
                                env=env, stdout=subprocess.PIPE, stderr=log.open("w"), text=True)
        try:
            port = metrics_port(proc)
            wait_for(lambda: metric(port, "dcpue_spool_forwarded_records_total") > 0, 60, "first records delivered")
            netcut.cut()
            try:
                wait_for(lambda: metric(port, "dcpue_spool_dropped_records_total") > 0, 90, "the spool to fill")
                first_drop = metric(port, "dcpue_spool_dropped_records_total")
                per_byte = metric(port, "dcpue_spool_records") / max(metric(port, "dcpue_spool_bytes"), 1)
                target = first_drop + PROFILE.spool_overfill * MAX_BYTES * per_byte
                wait_for(lambda: metric(port, "dcpue_spool_dropped_records_total") >= target, 120,
                         "the spool to overflow by the profile's share")
                # the spool can fill before the first send to the cut-off bus times out (3 s): wait until the
                # collector knows the bus is away and has reported a drop since, so a health record says both
                wait_for(lambda: metric(port, "dcpue_bus_up") == 0, 60, "the collector to see the bus away")
                known = metric(port, "dcpue_spool_dropped_records_total")
                wait_for(lambda: metric(port, "dcpue_spool_dropped_records_total") > known, 60,
                         "a drop reported while the bus is known to be away")
                assert metric(port, "dcpue_spool_bytes") <= MAX_BYTES
                backlog = metric(port, "dcpue_spool_records")
                forwarded = metric(port, "dcpue_spool_forwarded_records_total")
            finally:
                netcut.restore()
            restored = time.monotonic()
            # recovered: the backlog held at the end of the outage is on the bus (the collector keeps polling)
            done = wait_for(lambda: metric(port, "dcpue_spool_forwarded_records_total") >= forwarded + backlog,
                            120, "the spool's backlog to be forwarded")
            dropped_metric = metric(port, "dcpue_spool_dropped_records_total")
            proc.send_signal(15)
            out, _ = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        assert proc.returncode == 0, log.read_text()
        readings_values = topic_values(netcut.address, topics.readings)
        health_values = topic_values(netcut.address, topics.health)

    text = log.read_text()
    with sqlite3.connect(spool) as db:
        (made_total,) = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'records'").fetchone()
        (dropped,) = db.execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()
    health = [json.loads(v) for v in set(health_values)]
    health = [h for h in health if h.get("kind") == "collector" and h.get("collector") == "c-faults"]
    logged = sum(int(n) for n in re.findall(r"spool full: dropped oldest records count=(\d+)", text))
    # signalled the same everywhere: spool counter, metric, ERROR log lines, the last health record
    assert dropped > 0
    assert dropped_metric == dropped == logged
    assert max(h["spool_dropped_total"] for h in health) == dropped
    # reported while the bus was away: those health records travel through the same spool, so when the outage
    # overflows it by more than a spool's worth (long profile) the oldest of them are dropped in turn
    reported_in_outage = any(h["spool_dropped_total"] > 0 and not h["bus_up"] for h in health)
    if PROFILE.spool_overfill < 1:
        assert reported_in_outage
    # every record the collector ever spooled was delivered or is counted as dropped: nothing is lost uncounted.
    # The count can exceed the loss: a batch the broker took just as the link was cut (its acknowledgement
    # lost) stays in the spool, is dropped later as one of the oldest and counted, yet is on the bus.
    delivered = len(set(readings_values)) + len(health)
    overcount = delivered + dropped - made_total
    assert overcount >= 0, (made_total, delivered, dropped)

    reached = int(re.search(r"simulated time reached (\d+) ms", out).group(1))
    want = expected_readings(str(sites), reached)
    batches = [decode_batch(v) for v in set(readings_values)]
    got = pd.concat([b.readings for b in batches], ignore_index=True)
    cols = ["site", "point", "ts"]
    merged = want.merge(got[cols].drop_duplicates(), on=cols, how="left", indicator=True)
    lost = merged[merged["_merge"] == "left_only"]
    assert not lost.empty
    kept = want.merge(got[cols].drop_duplicates(), on=cols)
    # only the oldest are lost: per site one gap in time with no reading kept inside it
    for site, group in lost.groupby("site"):
        lo, hi = int(group["ts"].min()), int(group["ts"].max())
        mine = kept[kept["site"] == site]
        assert mine[(mine["ts"] >= lo) & (mine["ts"] <= hi)].empty, site
        assert (mine["ts"] < lo).any() and (mine["ts"] > hi).any(), site  # delivered before and after it
    gap_lo, gap_hi = int(lost["ts"].min()), int(lost["ts"].max())
    # the figures: windows clear of the gap are the clean run's; the gap's windows are not reported as whole
    reg = load_registry(sites)
    clean = clean_run(reg, want)
    after = clean_run(reg, want.merge(got[cols].drop_duplicates(), on=cols))
    def clear(rows: pd.DataFrame) -> pd.DataFrame:
        """Windows that end before the gap or start after it (with the engine's 300 s max gap of margin)."""
        start = rows.index.get_level_values("start_ms").to_numpy()
        length = rows.index.get_level_values("window").map(WINDOW_MS).to_numpy()
        return rows[(start + length <= gap_lo - 300_000) | (start >= gap_hi + 300_000)]

    cmp = compare([clear(after).reset_index()], clear(clean), set(reg.site_map))
    touching = len(clean) - len(clear(clean))
    record("d spool full (1 MiB cap)", done - restored, len(want), cmp, dropped_records=int(dropped),
           lost_readings=len(lost), spooled_records=int(made_total),
           counted_but_delivered=int(overcount), windows_touching_gap=touching,
           outage_report_delivered=reported_in_outage,
           note="recovery: from the bus returning until the spool is empty; loss = the counted drop")
    assert cmp.windows > 0 and cmp.equal, cmp.explain()
