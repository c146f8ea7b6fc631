"""The streaming engine of this tree against an earlier commit's, step by step, on the same readings.

    PYTHONPATH=. .venv/bin/python bench/engine_compare.py d61fdb3 [--tz Asia/Shanghai] [--minutes 1560]

Three sites' meters (a counter, an IT power meter, a cooling meter, jittered timestamps) go into both engines
in chunks of 1 to 8 minutes; one site lags (its readings of a chunk arrive two steps later, some past the
lateness). After every step both engines' rows must be equal exactly; every 25th step their checkpoints of
every site must be the same bytes; every 50th step each engine restores one site from its own checkpoint; at
step 120 each drops a site. Exits non-zero at the first difference. For changes to the engine's state that
must not change its results (docs/performance.md, eighth series).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.encode_compare import _module_at
from dcpue.analytics import stream as new
from dcpue.settings import EngineSettings
from tests.factories import GUI_AN, MIN, T0, readings_frame, registry, simple_site


def readings(minutes: int) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    parts = []
    for site in "abc":
        ts = T0 + np.arange(minutes + 1, dtype=np.int64) * MIN + rng.integers(0, 20_000, minutes + 1)
        parts.append(readings_frame(site, "facility.main", ts, 1000 + np.cumsum(rng.random(minutes + 1) * 3)))
        parts.append(readings_frame(site, "it.ups", ts, rng.random(minutes + 1) * 100))
        parts.append(readings_frame(site, "cool.crah", ts, rng.random(minutes + 1) * 40))
    return pd.concat(parts, ignore_index=True)


def compare(old: object, tz: str, minutes: int) -> int:
    """Steps run with both engines equal; raises AssertionError at the first difference."""
    reg = registry(*(simple_site(site, cluster="gui-an") for site in "abc"), clusters=[GUI_AN])
    data = readings(minutes)
    settings = EngineSettings(timezone=tz)
    before, after = old.StreamEngine(reg, settings), new.StreamEngine(reg, settings)
    rng = np.random.default_rng(2)
    t, step = T0, 0
    while t < T0 + minutes * MIN:
        step += 1
        width = int(rng.integers(1, 9)) * MIN
        chosen = (data["ts"] >= t) & (data["ts"] < t + width)
        if step % 3 == 0:  # site c lags: this chunk's readings of it come two steps later
            chosen &= data["site"] != "c"
        if step % 3 == 2:
            chosen |= (data["site"] == "c") & (data["ts"] >= t - 40 * MIN) & (data["ts"] < t + width)
        chunk = data[chosen]
        t += width
        assert before.add(chunk) == after.add(chunk), f"step {step}: late counts differ"
        pd.testing.assert_frame_equal(before.advance().reset_index(drop=True), after.advance().reset_index(drop=True),
                                      check_exact=True, obj=f"step {step}'s rows")
        if step % 25 == 0:
            old_blobs = old.snapshot_sites(before, {"a", "b", "c"})
            new_blobs = new.snapshot_sites(after, {"a", "b", "c"})
            assert old_blobs == new_blobs, f"step {step}: checkpoints differ"
            if step % 50 == 0:
                old.restore_site(before, old_blobs["b"])
                new.restore_site(after, new_blobs["b"])
        if step == 120:
            before.drop_sites({"c"})
            after.drop_sites({"c"})
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revision")
    parser.add_argument("--tz", default="Asia/Shanghai")
    parser.add_argument("--minutes", type=int, default=26 * 60)
    args = parser.parse_args()
    subprocess.run(["git", "rev-parse", "--verify", args.revision], check=True, capture_output=True)
    with tempfile.TemporaryDirectory() as tmp:
        old = _module_at(args.revision, "analytics/stream.py", "old_stream", Path(tmp))
    started = time.perf_counter()
    steps = compare(old, args.tz, args.minutes)
    print(f"{steps} steps over {args.minutes} minutes in {args.tz}: rows and checkpoints the same as "
          f"{args.revision}'s ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    sys.exit(main())
