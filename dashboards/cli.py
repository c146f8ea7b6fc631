"""``dcpue dashboards build|push``: the Grafana dashboards as files, or into a running Grafana."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from dcpue.errors import ConfigError, DcpueError


def cmd_build(args: argparse.Namespace) -> int:
    """Write (or ``--check``) the provisioned dashboard JSON."""
    _require_sdk()
    from dcpue.dashboards.build import main

    return main(["--dir", str(args.dir), *(["--check"] if args.check else [])])


def _token(args: argparse.Namespace) -> str:
    if args.token_file:
        try:
            return Path(args.token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"--token-file {args.token_file}: {exc.strerror or exc}") from None
    token = os.environ.get("DCPUE_GRAFANA_TOKEN", "")
    if not token:
        raise ConfigError("a Grafana service-account token is needed: --token-file FILE or DCPUE_GRAFANA_TOKEN")
    return token


def cmd_push(args: argparse.Namespace) -> int:
    """Create or update the dcpue folder, the InfluxDB datasource and every dashboard in a running Grafana."""
    _require_sdk()
    from grafana_client import GrafanaApi
    from grafana_client.client import GrafanaException

    from dcpue.dashboards.push import push
    from dcpue.settings import load_settings

    settings = load_settings(args.config)
    influx = settings.store.influxdb
    influx_token = influx.token.get_secret_value() or None
    api = GrafanaApi.from_url(args.url, credential=_token(args), timeout=args.timeout)
    try:
        report = push(api, args.influx_url or influx.url, args.database or influx.bucket, influx_token,
                      args.datasource_uid)
    except GrafanaException as exc:
        raise DcpueError(f"Grafana at {args.url} answered {getattr(exc, 'status_code', '?')}: {exc}") from None
    except OSError as exc:  # connection refused, DNS, TLS
        raise DcpueError(f"Grafana at {args.url}: {exc}") from None
    print("\n".join([f"dcpue dashboards push → {args.url}", *report.lines()]))
    return 0


DEFAULT_DIR = Path("deploy/grafana/provisioning/dashboards")
DEFAULT_DATASOURCE_UID = "dcpue-influxdb"
MISSING = ("the dashboards need the Grafana Foundation SDK and grafana-client: "
           "pip install 'dcpue[dashboards]' (make test installs them)")


def _require_sdk() -> None:
    try:
        import grafana_client  # noqa: F401
        import grafana_foundation_sdk  # noqa: F401
    except ImportError:
        raise DcpueError(MISSING) from None


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``dcpue dashboards …`` to the main parser (the SDK is imported only when a command runs)."""
    dash = sub.add_parser("dashboards", help="Grafana dashboards as code: build the JSON, push to a Grafana",
                          description="The fleet, site, cooling, retirement and data-quality dashboards "
                                      "(docs/grafana.md).")
    dsub = dash.add_subparsers(dest="dashboards_command", required=True, metavar="ACTION")
    build = dsub.add_parser("build", help="write the dashboard JSON for Grafana's file provisioning")
    build.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"output folder (default: {DEFAULT_DIR})")
    build.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is out of date")
    build.set_defaults(func=cmd_build)
    push = dsub.add_parser("push", parents=[common], help="create or update folder, datasource and dashboards")
    push.add_argument("--url", required=True, help="Grafana base URL, e.g. https://grafana.example:3000")
    push.add_argument("--token-file", help="file holding a Grafana service-account token (else DCPUE_GRAFANA_TOKEN)")
    push.add_argument("--influx-url", help="InfluxDB URL as Grafana reaches it (default: store.influxdb.url)")
    push.add_argument("--database", help="InfluxQL database / DBRP name (default: store.influxdb.bucket)")
    push.add_argument("--datasource-uid", default=DEFAULT_DATASOURCE_UID)
    push.add_argument("--timeout", type=float, default=10.0, help="per request [s]")
    push.set_defaults(func=cmd_push)
