"""Publish the API's OpenAPI document: ``python -m dcpue.web.openapi [-o docs/openapi.json] [--check]``.

The document is what ``GET /api/openapi.json`` serves when API tokens are configured, as in production (the
endpoints do not depend on the store or the registry): generated over an empty store, the demo registry and
one placeholder token digest, written with sorted keys so the checked-in file only changes when the API does.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

DEFAULT_PATH = Path("docs/openapi.json")


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document of :func:`dcpue.web.app.create_app`."""
    from dcpue.ingest.simulator import generate_fleet
    from dcpue.runtime.store import FileStore
    from dcpue.settings import EngineSettings
    from dcpue.web.app import create_app
    from dcpue.web.auth import TokenAuth

    with tempfile.TemporaryDirectory() as tmp:
        store = FileStore(Path(tmp) / "empty.sqlite").setup()
        try:
            return create_app(store, generate_fleet(1, seed=7), EngineSettings(), auth=TokenAuth(["0" * 64])).openapi()
        finally:
            store.close()


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dcpue.web.openapi", description=__doc__.splitlines()[0])
    parser.add_argument("--output", "-o", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if the file is out of date")
    args = parser.parse_args(argv)
    text = render(openapi_document())
    if args.check:
        if not args.output.is_file() or args.output.read_text(encoding="utf-8") != text:
            print(f"{args.output} is out of date: run python -m dcpue.web.openapi", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
