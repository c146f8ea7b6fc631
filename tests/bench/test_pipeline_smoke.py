"""A small run of the pipeline benchmark (bench/pipeline.py): it runs, counts every reading and reports a rate.

The benchmark itself is not a timed test; its results live in bench/results/ and docs/performance.md.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_pipeline", ROOT / "bench" / "pipeline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_embedded_smoke_run_counts_every_reading(tmp_path):
    out = tmp_path / "result.json"
    result = _bench().main(["--mode", "embedded", "--sites", "3", "--minutes", "30", "--batch-minutes", "5",
                            "--json", str(out)])
    assert json.loads(out.read_text()) == result
    # three sites, 30 one-minute samples of every point: the worker saw exactly what was sent
    assert result["readings"] > 3 * 30 * 15 and result["batches"] == 3 * 6
    assert result["windows_written"] > 0 and result["dead_letters"] == 0
    assert result["readings_per_s"] > 0 and result["cpu_s"] > 0 and result["peak_rss_mb"] > 0
