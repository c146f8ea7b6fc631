"""Real device peers for the collector and write-back tests (Modbus, SNMP, Redfish, MQTT, BACnet) on 127.0.0.1."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

P = TypeVar("P")


class PeerThread(Protocol):
    """A peer served on its own thread: ``ready`` is set once it listens or failed (then ``error``)."""

    ready: threading.Event
    error: BaseException | None

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def join(self, timeout: float | None = None) -> None: ...


@contextlib.contextmanager
def serve_on_free_port(make: Callable[[], tuple[P, PeerThread]], what: str, start_timeout_s: float,
                       stop_timeout_s: float, attempts: int = 3) -> Iterator[P]:
    """Start ``make()``'s peer thread, retrying on another free port when the bind fails (a port can be
    taken between picking it and binding it); yield its peer and stop the thread afterwards."""
    last: Any = None
    for _ in range(attempts):
        peer, thread = make()
        thread.start()
        if not thread.ready.wait(start_timeout_s):
            thread.stop()
            raise RuntimeError(f"{what} did not start within {start_timeout_s} s")
        if thread.error is not None:
            thread.join(stop_timeout_s)
            last = thread.error
            continue
        try:
            yield peer
        finally:
            thread.stop()
        return
    raise RuntimeError(f"{what} could not listen on 127.0.0.1: {last!r}")

