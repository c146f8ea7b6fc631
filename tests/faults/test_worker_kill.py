"""(a) `dcpue analyze` is killed with SIGKILL mid-window while the collectors keep sending, then restarted.

No revocation, no last checkpoint: the restarted worker restores every site from the state topic and
replays from the last commit. The window rows it leaves must be the clean run's — none lost, none
double-counted — and every final row ever published must agree with them.
"""

from __future__ import annotations

import time

import pytest

from tests.servers import tansu_broker, unique_name  # noqa: F401

from .harness import Pipeline, clean_reference, compare, fleet, record, summary_count
from .profiles import PROFILE

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(PROFILE.timeout_s)]


def test_killed_worker_restarts_with_every_window_once(tansu_broker, tmp_path):  # noqa: F811
    f = fleet()
    want = clean_reference()
    pipe = Pipeline(tansu_broker.bootstrap_servers, tmp_path, unique_name("kill"), f)
    pipe.create_topics()
    recoveries = []
    try:
        pipe.start_worker("w0")
        pipe.wait_assigned("w0")
        producer = pipe.producer()
        rounds = f.rounds
        # kill points spread over the run, each mid-window (rounds are 30 min; hour and day windows are open)
        kill_at = {len(rounds) * (k + 1) // (PROFILE.kills + 1) for k in range(PROFILE.kills)}
        worker = "w0"
        restarted_at = []
        for n, batches in enumerate(rounds):
            pipe.send(producer, batches)
            time.sleep(PROFILE.pace_s)
            if n in kill_at:
                pipe.kill(worker)  # SIGKILL: no revocation, no final checkpoint, no commit
                worker = f"w{len(restarted_at) + 1}"
                pipe.start_worker(worker)
                restarted_at.append(time.monotonic())
                pipe.wait_assigned(worker)
        producer.close()
        done, frames, out = pipe.finish(worker, want)
        recoveries = [done - restarted_at[-1]]  # the last restart until every window is written
    finally:
        pipe.close()
    cmp = compare(frames, want)
    record("a worker SIGKILL + restart", recoveries, f.reading_count, cmp, kills=PROFILE.kills,
           note="recovery: from the last restart until the last window is on the metrics topic")
    assert cmp.equal, cmp.explain()
    # the replay really went through the checkpoints: the last worker restored the sites it took over
    assert summary_count(out, "sites restored") >= 1, out
