"""Analytics: pure, vectorized algorithms over readings and windows (PUE engine, rollups, quality).

Imported as ``dcpue.analytics``. Nothing here performs I/O; the worker in
:mod:`dcpue.runtime.worker` wires these functions to a bus and a store.
"""
