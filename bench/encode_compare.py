"""Checkpoint and metrics-topic encoding, this tree against an earlier commit, on the same engine state.

    PYTHONPATH=. .venv/bin/python bench/encode_compare.py 47b6034

Builds the engine state of 200 sites × 100 racks after 20 simulated minutes, then times (best of 3)
``snapshot_sites`` of every site and the metrics-topic messages of 10,000 window rows with both versions,
and the InfluxDB lines of the same rows, and checks that they decode to the same frames and are the same
bytes and text. Figures: docs/performance.md.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import pandas as pd

from bench.pipeline import make_batches
from dcpue.adapters.lineprotocol import windows_to_lines
from dcpue.analytics.stream import StreamEngine, _named_buffer, _obj_to_frame, snapshot_sites
from dcpue.settings import load_settings
from dcpue.wire import decode_batch, encode_windows_by_id, readings_of_batches


def _module_at(revision: str, path: str, name: str, workdir: Path):
    source = subprocess.run(["git", "show", f"{revision}:{path}"], check=True, capture_output=True, text=True).stdout
    file = workdir / f"{name}.py"
    file.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


class _NamedBufferEngine:
    """The engine as revisions before ae17c1d kept it, for their ``snapshot_sites``: a buffer with site and
    point names beside each reading's ``pid``, open windows and running sums in a frame each; everything else
    is the engine's own."""

    def __init__(self, engine: StreamEngine) -> None:
        self._engine = engine
        named = _named_buffer(engine, set(engine._site_code))  # every site: every buffered row, in order
        named = named.astype({"site": object, "point": object})  # names as those revisions held them
        self._buffer = named.assign(pid=engine._buffer["pid"].to_numpy())
        # open windows and running sums as one frame each, as revisions before the eighth series kept them
        self._open = engine._open.frame()
        self._acc = {label: acc.frame() for label, acc in engine._acc.items()}

    def __getattr__(self, name: str):
        return getattr(self._engine, name)


def _best(f, *args):
    best, result = float("inf"), None
    for _ in range(3):
        started = time.perf_counter()
        result = f(*args)
        best = min(best, time.perf_counter() - started)
    return best, result


def main(revision: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        old_stream = _module_at(revision, "analytics/stream.py", "old_stream", Path(tmp))
        old_wire = _module_at(revision, "dcpue/wire.py", "old_wire", Path(tmp))
        old_lines = _module_at(revision, "dcpue/adapters/lineprotocol.py", "old_lineprotocol", Path(tmp))
    registry, batches, _ = make_batches(200, 20, 1, racks=100)
    engine = StreamEngine(registry, load_settings(None).engine, emit_groups=False)
    rows = []
    for i in range(0, len(batches), 2000):
        engine.add(readings_of_batches([decode_batch(data) for _, data, _ in batches[i:i + 2000]]))
        rows.append(engine.advance())
    sites = set(registry.site_map)
    new_s, new = _best(snapshot_sites, engine, sites)
    old_s, old = _best(old_stream.snapshot_sites, _NamedBufferEngine(engine), sites)
    for site in sites:
        a, b = msgspec.msgpack.decode(old[site]), msgspec.msgpack.decode(new[site])
        for x, y in [(a["buffer"], b["buffer"]), (a["open"], b["open"]),
                     *((a["acc"][label], b["acc"][label]) for label in a["acc"])]:
            pd.testing.assert_frame_equal(_obj_to_frame(x, None), _obj_to_frame(y, None))
    print(f"snapshot_sites, {len(sites)} sites: {revision} {old_s:.3f} s, now {new_s:.3f} s (same frames)")
    windows = pd.concat(rows, ignore_index=True)
    windows = pd.concat([windows] * (10_000 // len(windows) + 1), ignore_index=True).head(10_000)
    new_s, new_messages = _best(encode_windows_by_id, windows)
    old_s, old_messages = _best(
        lambda w: [(str(k), old_wire.encode_windows(part)) for k, part in w.groupby("id", sort=False)], windows)
    assert new_messages == old_messages
    print(f"metrics-topic messages, {len(windows)} rows: {revision} {old_s:.3f} s, now {new_s:.3f} s (same bytes)")
    new_s, new_lines = _best(windows_to_lines, windows, registry.sites_table)
    old_s, old_lines_out = _best(old_lines.windows_to_lines, windows, registry.sites_table)
    assert new_lines == old_lines_out
    print(f"InfluxDB line protocol, {len(windows)} rows: {revision} {old_s / len(windows) * 1e6:.1f} µs a row, "
          f"now {new_s / len(windows) * 1e6:.1f} µs (same lines)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "HEAD~1")
