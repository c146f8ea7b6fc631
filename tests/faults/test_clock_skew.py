"""(e) A collector's clock runs ahead: its readings are stamped a day into the future for a while.

`dcpue analyze` dead-letters every reading more than ``engine.max_future_s`` (300 s) ahead of its clock,
with the reason in the ``reason`` header, and carries on. The other sites' figures must be exactly the
clean run's, and the skewed site's the clean run's over the readings that were accepted.
"""

from __future__ import annotations

import time

import pandas as pd
import pytest

from dcpue.adapters.kafka import connection_config
from tests.factories import T0
from tests.servers import tansu_broker, unique_name  # noqa: F401

from .harness import Pipeline, clean_reference, clean_run, compare, fleet, record
from .profiles import PROFILE

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(PROFILE.timeout_s)]
SKEWED = "s1"


def dead_letters(pipe: Pipeline, timeout_s: float = 30) -> list:
    """Every record of the dead-letter topic (no consumer group: assigned, read to the high watermark)."""
    import kafka as kafka_lib

    consumer = kafka_lib.KafkaConsumer(**connection_config(pipe.kafka), enable_auto_commit=False, group_id=None)
    try:
        tps = [kafka_lib.TopicPartition(pipe.topics.dead_letters, p)
               for p in sorted(consumer.partitions_for_topic(pipe.topics.dead_letters))]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=300).values():
                out += records
            if all(consumer.highwater(tp) is not None and consumer.position(tp) >= consumer.highwater(tp)
                   for tp in tps):
                return out
        raise AssertionError("dead-letter topic not read to its end")
    finally:
        consumer.close()


def test_future_stamped_readings_are_dead_lettered_and_the_rest_unchanged(tansu_broker, tmp_path):  # noqa: F811
    f = fleet()
    pipe = Pipeline(tansu_broker.bootstrap_servers, tmp_path, unique_name("skew"), f)
    pipe.create_topics()
    # a day ahead of the worker's (real) clock: far beyond max_future_s
    skew_ms = int(time.time() * 1000) - T0 + 86_400_000
    first = len(f.rounds) // 3
    skewed_rounds = range(first, first + PROFILE.skewed_batches)
    rounds, lost = [], []
    for n, batches in enumerate(f.rounds):
        out = []
        for site, frame in batches:
            if site == SKEWED and n in skewed_rounds:
                lost.append(frame)
                frame = frame.assign(ts=frame["ts"] + skew_ms)
            out.append((site, frame))
        rounds.append(out)
    lost_frame = pd.concat(lost, ignore_index=True)
    accepted = pd.concat(f.readings.values(), ignore_index=True)
    accepted = accepted[~(accepted["site"].eq(SKEWED) & accepted["ts"].isin(lost_frame["ts"]))]
    want = clean_run(f.registry, accepted)  # the clean run over what the skewed collector stamped right
    try:
        pipe.start_worker("w")
        pipe.wait_assigned("w")
        producer = pipe.producer()
        for n, batches in enumerate(rounds):
            pipe.send(producer, batches)
            time.sleep(PROFILE.pace_s)
            if n == skewed_rounds[-1]:
                fixed = time.monotonic()  # the collector's clock is right again from the next batch
        producer.close()
        done, frames, out = pipe.finish("w", want)
        letters = dead_letters(pipe)
    finally:
        pipe.close()
    cmp = compare(frames, want)
    others = [s for s in f.sites if s != SKEWED]
    reference = clean_reference()
    unchanged = compare(frames, reference[reference.index.get_level_values("id").isin(others)], set(others))
    record("e clock skew (+1 day)", done - fixed, f.reading_count, cmp, dead_lettered=len(letters),
           skewed_readings=len(lost_frame), others_equal_clean=unchanged.equal,
           note="recovery: from the collector's clock being right again until the last window is written")
    assert cmp.equal, cmp.explain()
    assert unchanged.equal, unchanged.explain()
    # every skewed reading, and nothing else, is a dead letter with the reason
    assert len(letters) == len(lost_frame), (len(letters), len(lost_frame))
    reasons = {dict(m.headers)["reason"].decode().split(" is ")[1] for m in letters}
    assert all(r.endswith("ahead of the clock (limit 300 s)") for r in reasons), reasons
    assert {m.key.decode() for m in letters} == {SKEWED}
    assert f"{len(lost_frame)} dead letters" in out, out
