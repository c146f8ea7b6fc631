"""Ingest: collectors turn devices (and the fleet simulator) into readings on the bus.

Imported as ``dcpue.ingest``. Every collector follows :class:`dcpue.ingest.base.Collector`.
"""
