"""The worker's latency histogram, and the worker measuring from a batch's send to its results written."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from dcpue.runtime.bus import InProcessBus
from dcpue.runtime.latency import LatencyHistogram
from dcpue.runtime.store import FileStore
from dcpue.runtime.worker import AnalyticsWorker
from dcpue.settings import Settings
from dcpue.wire import encode_frame
from tests.factories import counter_series, power_series, registry, simple_site


@pytest.mark.parametrize("scale", [0.002, 0.3, 40.0])
def test_quantiles_are_within_five_per_cent_above_the_exact_ones(scale):
    values = np.random.default_rng(3).lognormal(np.log(scale), 1.0, 20_000)
    hist = LatencyHistogram()
    for chunk in np.array_split(values, 7):
        hist.add(chunk)
    assert hist.count == len(values) and hist.max_s == values.max()
    for q in (0.5, 0.9, 0.99, 1.0):
        exact = np.quantile(values, q, method="inverted_cdf")
        assert exact <= hist.quantile(q) <= exact * 1.05 + 1e-12, q


def test_empty_and_odd_inputs():
    hist = LatencyHistogram()
    assert hist.quantile(0.5) is None
    hist.add([])
    assert hist.count == 0
    hist.add([-0.2, 0.0])  # clocks a little apart: counted as no delay
    assert hist.quantile(1.0) == 0.0
    hist.add([1e9])  # beyond the last bucket: reported as the largest seen
    assert hist.quantile(1.0) == 1e9


def test_the_worker_measures_from_send_to_written(tmp_path):
    reg = registry(simple_site("a"))
    settings = Settings(bus={"commit_interval_s": 0})
    bus = InProcessBus()
    store = FileStore(tmp_path / "w.sqlite").setup()
    worker = AnalyticsWorker(reg, settings, bus.consumer([settings.bus.topics.readings], "g"), store)
    readings = pd.concat([counter_series("a", "facility.main", 150, 30), power_series("a", "it.ups", 100, 30)])
    try:
        assert "write_latency_p50_s" not in worker.status()  # nothing measured yet: no figure
        bus.producer().send(settings.bus.topics.readings, encode_frame("a", readings), key="a")
        time.sleep(0.4)  # the batch waits on the bus before the worker polls it
        before = time.monotonic()
        assert worker.step(timeout_s=0.1) == 1
        took = time.monotonic() - before
    finally:
        store.close()
    status = worker.status()
    assert 0.4 <= status["write_latency_p50_s"] <= (0.4 + took + 0.1) * 1.05
    assert status["write_latency_max_s"] <= status["write_latency_p50_s"]  # one batch: max is the figure itself
