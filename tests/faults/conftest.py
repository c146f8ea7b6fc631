"""The fault suite's profile in the report header, its results in the terminal summary and, with
``FAULTS_RESULTS=path``, in a JSON file (normal runs write nothing into the repository)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .harness import RESULTS
from .profiles import PROFILE, PROFILE_ENV, RESULTS_ENV


def pytest_report_header(config: pytest.Config) -> str:
    return f"dcpue faults profile: {PROFILE.name} ({PROFILE_ENV}=short|long; {RESULTS_ENV}=path writes the results)"


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # noqa: ANN001
    if not RESULTS:
        return
    terminalreporter.section(f"fault scenarios ({PROFILE.name} profile)")
    for row in RESULTS:
        terminalreporter.write_line(
            f"{row['scenario']:<28} recovery {row['recovery_s']:>7.2f} s  readings {row['readings']:>7}  "
            f"windows {row['windows_compared']:>6}  equal {row['equal']}")
    target = os.environ.get(RESULTS_ENV)
    if target:
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"profile": PROFILE.name, "exit_status": int(exitstatus), "scenarios": RESULTS},
                                   indent=2) + "\n", encoding="utf-8")
        terminalreporter.write_line(f"written to {path}")
