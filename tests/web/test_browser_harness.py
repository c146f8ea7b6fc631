"""The Chromium harness without Chromium: skip with the install hint locally, fail under CI=true."""

from __future__ import annotations

import pytest

try:
    from tests.helpers import browser
except ImportError:  # tests/ itself on sys.path (see test_page.py)
    from helpers import browser


@pytest.fixture
def no_chromium(monkeypatch):
    monkeypatch.setattr(browser.os, "access", lambda *a, **k: False)
    monkeypatch.setattr(browser.shutil, "which", lambda *a, **k: None)


def test_missing_chromium_skips_with_hint(no_chromium, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install chromium"):
        browser.find_chromium()


def test_missing_chromium_fails_under_ci(no_chromium, monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="apt-get install chromium"):
        browser.find_chromium()
