"""Write the provisioned Grafana dashboards from code: ``dcpue dashboards build [--check]`` (also
``python -m dcpue.dashboards.build``).

Run from the repository root; the JSON goes to ``deploy/grafana/provisioning/dashboards/`` (``--dir`` for
another folder), where Grafana's file provider (``dcpue.yaml`` beside it) loads it. ``--check`` writes
nothing and exits 1 when a checked-in file differs from what the code generates.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dcpue.dashboards.cli import DEFAULT_DIR
from dcpue.dashboards.cooling import cooling_dashboard
from dcpue.dashboards.fleet import fleet_dashboard
from dcpue.dashboards.quality import quality_dashboard
from dcpue.dashboards.retirement import retirement_dashboard
from dcpue.dashboards.site import site_dashboard

# file name -> builder(datasource_uid) of each provisioned dashboard
DASHBOARDS: dict[str, Callable[..., dict[str, Any]]] = {
    "dcpue-fleet.json": fleet_dashboard,
    "dcpue-site.json": site_dashboard,
    "dcpue-cooling.json": cooling_dashboard,
    "dcpue-retirement.json": retirement_dashboard,
    "dcpue-quality.json": quality_dashboard,
}


def render(dashboard: dict[str, Any]) -> str:
    """The dashboard as the checked-in file holds it: 2-space indented JSON, UTF-8 text, final newline."""
    return json.dumps(dashboard, indent=2, ensure_ascii=False) + "\n"


def dashboards(datasource_uid: str | None = None) -> dict[str, dict[str, Any]]:
    """File name → dashboard JSON (dict) of every dashboard, reading ``datasource_uid`` (default: provisioned)."""
    return {name: build() if datasource_uid is None else build(datasource_uid) for name, build in DASHBOARDS.items()}


def generated() -> dict[str, str]:
    """File name → file text of every provisioned dashboard."""
    return {name: render(d) for name, d in dashboards().items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dcpue dashboards build", description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"output folder (default: {DEFAULT_DIR})")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is out of date")
    args = parser.parse_args(argv)
    if not args.dir.is_dir():
        print(f"{args.dir} is not a folder: run from the repository root or give --dir", file=sys.stderr)
        return 2
    stale = []
    for name, text in generated().items():
        path = args.dir / name
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(path)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if stale:
        print(f"out of date: {', '.join(map(str, stale))}; run dcpue dashboards build", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
