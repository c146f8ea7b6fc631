"""The collector contract every ingest module follows.

A collector turns one kind of data source (Modbus devices, SNMP agents, the fleet
simulator, …) into readings DataFrames. The lifecycle is::

    collector = SomeCollector(config)      # no I/O here: only remember the configuration
    collector.setup()                      # open connections, start sessions
    for ...:
        for site, frame in collector.poll(now_ms):
            ...                            # frame: dcpue.model readings columns, one site
    collector.close()                      # release everything; safe to call twice

Errors reading a device are raised as :class:`dcpue.errors.CollectorError` (translated
with ``raise … from exc``) so the caller can log, count and skip the device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import pandas as pd

from dcpue.wire import encode_frame

if TYPE_CHECKING:
    from dcpue.ports import Producer

SiteFrames = list[tuple[str, pd.DataFrame]]
"""What :meth:`Collector.poll` returns: ``(site id, readings DataFrame)`` pairs."""


@runtime_checkable
class Collector(Protocol):
    """Something that can be polled for readings.

    Readings DataFrames have the canonical columns of :func:`dcpue.model.readings_frame`:
    ``site`` [str], ``point`` [str], ``ts`` [int64 ms since the Unix epoch, UTC],
    ``value`` [float64, in the point's registry unit] and ``quality``
    [int64 :class:`dcpue.model.Quality` flags].
    """

    def setup(self) -> None:
        """Open connections and sessions; called once before the first :meth:`poll`."""

    def poll(self, now_ms: int) -> SiteFrames:
        """Return the readings that became available up to ``now_ms`` [ms, UTC], grouped per site.

        Each reading is returned once; sites with nothing new are left out.
        """

    def close(self) -> None:
        """Release connections; idempotent."""


def publish_polls(collector: Collector, producer: Producer, topic: str, now_ms: Callable[[], int]) -> int:
    """Send one poll of ``collector`` to ``topic`` (a batch per site, keyed by site); returns the batch count.

    Returns only once the producer acknowledged every batch (:meth:`~dcpue.ports.Producer.flush`),
    so a collector never treats readings as delivered before the bus has them.
    """
    sent = 0
    for site, frame in collector.poll(now_ms()):
        producer.send(topic, encode_frame(site, frame), key=site)
        sent += 1
    producer.flush()
    return sent
