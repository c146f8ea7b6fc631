"""Suite-wide hooks. The fault scenarios' results table (tests/faults) is printed here, in the process that
reports: under pytest-xdist (`make test` runs two processes) the scenarios run in the workers, and their
rows reach this process in each test's report (``user_properties``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.faults.profiles import FAULT_ROW, PROFILE, RESULTS_ENV

FAULT_ROWS: list[dict[str, Any]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "teardown":
        FAULT_ROWS.extend(value for name, value in report.user_properties if name == FAULT_ROW)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # noqa: ANN001
    if not FAULT_ROWS or hasattr(config, "workerinput"):  # an xdist worker: the controller reports
        return
    FAULT_ROWS.sort(key=lambda row: row["scenario"])
    terminalreporter.section(f"fault scenarios ({PROFILE.name} profile)")
    for row in FAULT_ROWS:
        terminalreporter.write_line(
            f"{row['scenario']:<28} recovery {row['recovery_s']:>7.2f} s  readings {row['readings']:>7}  "
            f"windows {row['windows_compared']:>6}  equal {row['equal']}")
    target = os.environ.get(RESULTS_ENV)
    if target:
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"profile": PROFILE.name, "exit_status": int(exitstatus), "scenarios": FAULT_ROWS},
                                   indent=2) + "\n", encoding="utf-8")
        terminalreporter.write_line(f"written to {path}")
