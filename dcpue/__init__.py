"""dcpue: data-center energy and PUE monitoring pipeline.

The core package holds what every part imports: the reading model and wire
format (:mod:`dcpue.model`, :mod:`dcpue.wire`), the site registry
(:mod:`dcpue.registry`), settings (:mod:`dcpue.settings`) and the ports that
adapters implement (:mod:`dcpue.ports`). Collectors live in
:mod:`dcpue.ingest`, the pure algorithms in :mod:`dcpue.analytics`.
"""

__version__ = "0.1.0"
