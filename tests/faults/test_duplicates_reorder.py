"""(f) Batches duplicated and reordered on the bus, as at-least-once delivery and many collectors produce them.

What arrives at `dcpue analyze`: sites in a different order every round; every n-th batch sent twice in a
row (a producer retry) and once more a round later (a collector resending after a lost acknowledgement,
after newer readings of its site); and within each batch the last two minutes swapped (a reading up to
60 s late, inside ``engine.allowed_lateness_s``). The window rows must be the clean run's: duplicates
counted once, reordered readings in their windows.
"""

from __future__ import annotations

import random
import time

import pandas as pd
import pytest

from tests.factories import MIN
from tests.servers import tansu_broker, unique_name  # noqa: F401

from .harness import Pipeline, clean_reference, compare, fleet, record
from .profiles import PROFILE

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(PROFILE.timeout_s)]


def scrambled(rounds: list[list[tuple[str, pd.DataFrame]]], every: int, seed: int = 11) -> tuple[list, int]:
    """The rounds as messages with sites shuffled, duplicates and late minutes; returns (messages, duplicates)."""
    rng = random.Random(seed)
    out: list[list[tuple[str, pd.DataFrame]]] = []
    resend: list[tuple[str, pd.DataFrame]] = []
    duplicates = n = 0
    for batches in rounds:
        messages, resend = list(resend), []  # last round's resends arrive after this round's start
        order = list(batches)
        rng.shuffle(order)
        for site, frame in order:
            n += 1
            last, before_last = frame["ts"].max(), frame["ts"].max() - MIN
            body = frame[frame["ts"] < before_last]
            parts = [(site, body), (site, frame[frame["ts"] == last]), (site, frame[frame["ts"] == before_last])]
            messages += [(s, p) for s, p in parts if not p.empty]
            if n % every == 0:
                messages.append((site, frame))  # a producer retry: the same batch again at once
                resend.append((site, frame))  # and once more, after newer batches of its site
                duplicates += 2
        out.append(messages)
    out.append(resend)
    return out, duplicates


def test_duplicated_and_reordered_batches_count_once(tansu_broker, tmp_path):  # noqa: F811
    f = fleet()
    want = clean_reference()
    pipe = Pipeline(tansu_broker.bootstrap_servers, tmp_path, unique_name("dup"), f)
    pipe.create_topics()
    rounds, duplicates = scrambled(f.rounds, PROFILE.duplicate_every)
    try:
        pipe.start_worker("w")
        pipe.wait_assigned("w")
        producer = pipe.producer()
        for messages in rounds:
            pipe.send(producer, messages)
            time.sleep(PROFILE.pace_s)
        sent = time.monotonic()
        producer.close()
        done, frames, out = pipe.finish("w", want)
    finally:
        pipe.close()
    cmp = compare(frames, want)
    record("f duplicate + reorder", done - sent, f.reading_count, cmp, duplicate_batches=duplicates,
           messages=sum(len(r) for r in rounds),
           note="recovery: from the last message sent until the last window is written")
    assert cmp.equal, cmp.explain()
    assert f"{sum(len(r) for r in rounds)} batches" in out, out  # the worker did receive every copy
