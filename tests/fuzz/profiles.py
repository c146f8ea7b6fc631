"""Hypothesis profiles of the fuzz suite: ``short`` (default) and ``long`` (``FUZZ_PROFILE=long``).

``short`` keeps the whole package within about 40 s on two cores and is deterministic (``derandomize``), so
it runs with the rest of the suite and a failure reproduces from the same command. ``long`` runs 50 times
as many examples with fresh random inputs on every run, for a fuzzing session of its own::

    FUZZ_PROFILE=long .venv/bin/pytest tests/fuzz -q

A failure in ``long`` prints the failing example and how to reproduce it, and is saved in the
``.hypothesis`` example database, so the next run (either profile) tries it first.

The variable is deliberately not ``DCPUE_*``: :func:`dcpue.settings.load_settings` reads every ``DCPUE_*``
variable as a setting and rejects unknown ones, so ``DCPUE_FUZZ`` would make every settings load fail.

The profiles are applied per test (``@fuzz(n)``), never loaded globally, so the other hypothesis tests of
the suite keep their own settings when everything runs in one session.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, settings

PROFILE_ENV = "FUZZ_PROFILE"
PROFILE = os.environ.get(PROFILE_ENV, "short")
if PROFILE not in ("short", "long"):
    raise RuntimeError(f"{PROFILE_ENV}={PROFILE!r}: use 'short' (default) or 'long'")
LONG_FACTOR = 50  # examples per property in ``long`` relative to ``short``

_common: dict[str, Any] = {
    "deadline": None,  # timing varies on a shared 2-core host; hangs are bounded explicitly where they matter
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
}
settings.register_profile("dcpue-fuzz-short", max_examples=60, derandomize=True, **_common)
settings.register_profile("dcpue-fuzz-long", max_examples=60 * LONG_FACTOR, derandomize=False, **_common)


def fuzz(examples: int = 60) -> settings:
    """Settings for one property: ``examples`` in the short profile, ``LONG_FACTOR`` times more in ``long``."""
    base = settings.get_profile(f"dcpue-fuzz-{PROFILE}")
    return settings(base, max_examples=examples * (LONG_FACTOR if PROFILE == "long" else 1))
