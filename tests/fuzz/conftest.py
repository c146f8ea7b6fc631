"""The fuzz suite's hypothesis profiles: ``short`` by default, ``long`` with ``FUZZ_PROFILE=long``.

The profiles are defined and documented in :mod:`tests.fuzz.profiles` (importing it registers them);
each property applies the selected one with ``@fuzz(n)``. Long run::

    FUZZ_PROFILE=long .venv/bin/pytest tests/fuzz -q -p no:cacheprovider
"""

from __future__ import annotations

import pytest

from .profiles import PROFILE


def pytest_report_header(config: pytest.Config) -> str:
    return f"dcpue fuzz profile: {PROFILE} (FUZZ_PROFILE=short|long)"
