"""The OpenAPI document is published in docs/openapi.json and is exactly what the API serves."""

from __future__ import annotations

import json
from pathlib import Path

from dcpue.web.openapi import DEFAULT_PATH, main, openapi_document, render

ROOT = Path(__file__).resolve().parents[2]


def test_the_published_document_is_the_served_one(tmp_path, monkeypatch) -> None:
    published = ROOT / DEFAULT_PATH
    assert published.read_text(encoding="utf-8") == render(openapi_document()), (
        "docs/openapi.json is out of date: run python -m dcpue.web.openapi")
    document = json.loads(published.read_text(encoding="utf-8"))
    assert set(document["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    protected = [(path, method) for path, ops in document["paths"].items() for method, op in ops.items()
                 if path not in ("/healthz", "/readyz")]
    assert protected and all("401" in document["paths"][p][m]["responses"] and document["paths"][p][m]["security"]
                             for p, m in protected)
    monkeypatch.chdir(ROOT)
    assert main(["--check"]) == 0
    assert main(["--check", "--output", str(tmp_path / "missing.json")]) == 1
    assert main(["--output", str(tmp_path / "openapi.json")]) == 0
    assert (tmp_path / "openapi.json").read_text(encoding="utf-8") == published.read_text(encoding="utf-8")
