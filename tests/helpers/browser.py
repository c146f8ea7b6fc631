"""Headless Debian Chromium for page tests: dump the DOM after the page's JS ran, take a screenshot.

Zero dependencies beyond the ``chromium`` binary: each call starts one short-lived Chromium
with a fresh profile, lets the page run for ``budget_ms`` of virtual time (timers and fetches
proceed; Chromium waits for network before advancing), then dumps or captures and exits.
Every run is bounded by ``timeout_s``; on timeout the whole process group is killed.

Without Chromium the calling test is skipped with the install hint, or failed under ``CI=true``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

INSTALL_HINT = "install Debian's Chromium: apt-get install chromium"

BASE_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # container /dev/shm is often tiny
    "--hide-scrollbars",
    "--mute-audio",
)


class BrowserError(RuntimeError):
    """Chromium failed or timed out; the message carries its exit status and stderr tail."""


def find_chromium() -> str:
    """Path of the Chromium binary; skips the test (fails under ``CI=true``) when there is none."""
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    message = f"headless Chromium not found (/usr/bin/chromium or chromium on PATH); {INSTALL_HINT}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@dataclass(frozen=True)
class Result:
    stdout: str
    stderr: str


def run_chromium(url: str, *extra: str, budget_ms: int = 5000, timeout_s: float = 60,
                 window_size: tuple[int, int] = (1400, 1000)) -> Result:
    """Run Chromium headless on ``url`` with ``extra`` flags; returns its output or raises :class:`BrowserError`."""
    binary = find_chromium()
    profile = tempfile.mkdtemp(prefix="dcpue-chromium-")
    args = [
        binary,
        *BASE_FLAGS,
        f"--user-data-dir={profile}",
        f"--window-size={window_size[0]},{window_size[1]}",
        f"--virtual-time-budget={budget_ms}",
        *extra,
        url,
    ]
    # own session, so a timeout can kill Chromium together with its renderer/GPU children
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        raise BrowserError(f"chromium timed out after {timeout_s} s on {url}; stderr tail:\n{err[-2000:]}") from None
    finally:
        if proc.poll() is None:
            _kill_group(proc)
        shutil.rmtree(profile, ignore_errors=True)
    if proc.returncode != 0:
        raise BrowserError(f"chromium exited {proc.returncode} on {url}; stderr tail:\n{err[-2000:]}")
    return Result(out, err)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def dump_dom(url: str, *, budget_ms: int = 5000, timeout_s: float = 60) -> str:
    """The serialised DOM of ``url`` after its scripts ran for ``budget_ms`` of virtual time."""
    result = run_chromium(url, "--dump-dom", budget_ms=budget_ms, timeout_s=timeout_s)
    if "<html" not in result.stdout.lower():
        raise BrowserError(f"chromium printed no DOM for {url}; stderr tail:\n{result.stderr[-2000:]}")
    return result.stdout


def screenshot(url: str, path: str | Path, *, window_size: tuple[int, int] = (1400, 1000),
               budget_ms: int = 5000, timeout_s: float = 60) -> Path:
    """Save a PNG of ``url`` (viewport ``window_size``) after its scripts ran; returns the path."""
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    result = run_chromium(url, f"--screenshot={path}", budget_ms=budget_ms, timeout_s=timeout_s,
                          window_size=window_size)
    if not path.exists():
        raise BrowserError(f"chromium wrote no screenshot to {path}; stderr tail:\n{result.stderr[-2000:]}")
    return path
