"""The live page in real headless Chromium, served by uvicorn on 127.0.0.1 over a filled store."""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from dcpue.web.app import create_app
from dcpue.web.auth import TokenAuth, hash_token

from .conftest import REGISTRY_DOC
from .serving import LiveServer

try:  # rootdir on sys.path (tests is a package / pythonpath set) …
    from tests.helpers.browser import dump_dom, screenshot
except ImportError:  # … or pytest put tests/ itself on sys.path (tests/web is a package, tests/ is not)
    from helpers.browser import dump_dom, screenshot

pytestmark = pytest.mark.integration

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


@pytest.fixture
def served(store, registry, engine_settings, status_info) -> Iterator[str]:
    app = create_app(store, registry, engine_settings, status=lambda: status_info)
    with LiveServer(app) as server:
        yield server.url


def _element(dom: str, element_id: str) -> str:
    """The markup of the element with ``element_id`` up to its closing tag (no nesting of the same tag)."""
    match = re.search(rf'<(\w+)[^>]*\bid="{element_id}"[^>]*>(.*?)</\1>', dom, re.S)
    assert match, f"#{element_id} not in the DOM"
    return match.group(0)


def _png_info(path: Path) -> tuple[int, int, int]:
    """(width, height, distinct byte values in the decompressed image data) of a PNG, stdlib only."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    idat, pos = b"", 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    return width, height, len(set(zlib.decompress(idat)))


def test_page_shows_every_site_and_draws_charts(served):
    dom = dump_dom(f"{served}/")
    rows = re.findall(r'<tr[^>]*data-site="([^"]+)"', dom)
    assert rows == [s["id"] for s in REGISTRY_DOC["sites"]]
    assert _element(dom, "error-banner").count("hidden") == 1  # the banner stays hidden

    pue = _element(dom, "pue-chart")
    assert re.search(r'<path class="pue-line" d="M[\d.]+,[\d.]+L', pue), "no PUE line drawn"
    assert 'class="target-line"' in pue and 'stroke-dasharray' in pue and "target 1.20" in pue
    assert "PUE [–]" in pue and "time (UTC" in pue  # axis labels with units

    power = _element(dom, "power-chart")
    for component in ("it_kwh", "cooling_kwh", "losses_kwh", "lighting_kwh"):
        assert f'class="area {component}"' in power, component
    assert "power [kW]" in power

    # first site selected by default; invalid figures shown by status, not as numbers
    assert _element(dom, "selected-site").endswith(">gy-a</span>")
    b_row = re.search(r'<tr[^>]*data-site="gy-b".*?</tr>', dom, re.S).group(0)
    assert "incomplete" in b_row and "25.0 %" in b_row  # 上架率 by racks, its own column
    c_row = re.search(r'<tr[^>]*data-site="zy-c".*?</tr>', dom, re.S).group(0)
    assert "meter fault" in c_row
    d_row = re.search(r'<tr[^>]*data-site="new-d".*?</tr>', dom, re.S).group(0)
    assert "no data" in d_row
    assert "1.277" in _element(dom, "fleet-pue")  # energy-weighted fleet figure from the fleet window
    assert "2025-06-01 12:00" in _element(dom, "sim-clock")  # the simulated clock, not the wall clock


def test_site_selection_from_link_and_gaps_not_bridged(served):
    dom = dump_dom(f"{served}/#site=gy-b")
    assert _element(dom, "selected-site").endswith(">gy-b</span>")
    assert re.search(r'<tr[^>]*data-site="gy-b"[^>]*class="selected"|<tr[^>]*class="selected"[^>]*data-site="gy-b"',
                     dom)
    pue = _element(dom, "pue-chart")
    # the 20 incomplete minutes split the line into two runs instead of being drawn through or as zero
    assert len(re.findall(r'class="pue-line"', pue)) == 2
    assert pue.count("<rect") == 21  # each window without a figure is shaded


def test_error_banner_when_api_fails(store, registry, engine_settings):
    store.close()  # every data endpoint now answers 503
    with LiveServer(create_app(store, registry, engine_settings)) as server:
        dom = dump_dom(f"{server.url}/", budget_ms=3000)
    banner = _element(dom, "error-banner")
    assert "hidden" not in banner and "API unreachable" in banner


def test_screenshot(served):
    path = screenshot(f"{served}/", ARTIFACTS / "web-page.png", window_size=(1400, 1000))
    width, height, distinct = _png_info(path)
    assert (width, height) == (1400, 1000)
    assert path.stat().st_size > 30_000 and distinct > 50, "screenshot looks blank"


PAGE_TOKEN = "page-token-7d2e"


@pytest.fixture
def served_with_token(store, registry, engine_settings, status_info) -> Iterator[str]:
    app = create_app(store, registry, engine_settings, status=lambda: status_info,
                     auth=TokenAuth([hash_token(PAGE_TOKEN)]))
    with LiveServer(app) as server:
        yield server.url


def _opening_tag(dom: str, element_id: str) -> str:
    match = re.search(rf'<\w+[^>]*\bid="{element_id}"[^>]*>', dom)
    assert match, f"#{element_id} not in the DOM"
    return match.group(0)


def test_page_sends_the_token_from_the_link(served_with_token):
    dom = dump_dom(f"{served_with_token}/#token={PAGE_TOKEN}&site=gy-b")
    rows = re.findall(r'<tr[^>]*data-site="([^"]+)"', dom)
    assert rows == [s["id"] for s in REGISTRY_DOC["sites"]]
    assert _element(dom, "selected-site").endswith(">gy-b</span>")  # the rest of the link still applies
    assert " hidden" in _opening_tag(dom, "error-banner") and " hidden" in _opening_tag(dom, "token-form")
    assert re.search(r'<path class="pue-line"', _element(dom, "pue-chart"))  # the windows came with the token too


def test_page_without_a_token_asks_for_one(served_with_token):
    dom = dump_dom(f"{served_with_token}/", budget_ms=3000)
    assert " hidden" not in _opening_tag(dom, "token-form")
    banner = _element(dom, "error-banner")
    assert " hidden" not in _opening_tag(dom, "error-banner") and "API token needed" in banner and "401" in banner
    assert not re.findall(r'<tr[^>]*data-site="', dom)
