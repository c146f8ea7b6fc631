"""Alerting, the pure part: rules turn results into conditions, the lifecycle turns conditions into alerts.

Imported as ``dcpue.analytics.alerts``. No I/O here: delivery (webhooks, outbox) is ``dcpue.alerting``.
"""
