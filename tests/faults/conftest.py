"""The fault suite's profile in the report header; each scenario's result row goes into its test's report, for
the terminal summary and ``FAULTS_RESULTS=path`` (tests/conftest.py; normal runs write nothing into the
repository)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .harness import RESULTS
from .profiles import FAULT_ROW, PROFILE, PROFILE_ENV, RESULTS_ENV


def pytest_report_header(config: pytest.Config) -> str:
    return f"dcpue faults profile: {PROFILE.name} ({PROFILE_ENV}=short|long; {RESULTS_ENV}=path writes the results)"


@pytest.fixture(autouse=True)
def _scenario_rows_to_the_report(request: pytest.FixtureRequest) -> Iterator[None]:
    recorded = len(RESULTS)
    yield
    request.node.user_properties.extend((FAULT_ROW, row) for row in RESULTS[recorded:])
