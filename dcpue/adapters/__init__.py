"""Adapters to external systems (Kafka, InfluxDB), one module each, behind the ports of :mod:`dcpue.ports`.

Optional dependencies are imported inside each module and fail with a pip-extra hint.
"""
