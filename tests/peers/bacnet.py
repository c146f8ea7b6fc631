"""A BACnet/IP device on 127.0.0.1 for the write-back tests: a real bacpypes3 application.

:func:`run_bacnet_device` starts a device (its own asyncio loop in a background thread) on a free UDP
port, exposing analog-value objects whose present-value is commandable (a 16-slot priority array and
a relinquish default, as BMS setpoint objects are) or, with ``commandable=False``, plainly writable.
The test reads and commands the objects directly on the device (:meth:`BacnetPeer.present_value`,
:meth:`BacnetPeer.slot`, :meth:`BacnetPeer.command`), independently of the client under test, and
puts the initial image back with :meth:`BacnetPeer.reset` so one device can serve a whole module.

Everything is stopped and joined on exit; a thread that does not stop fails the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.peers import serve_on_free_port

HOST = "127.0.0.1"
START_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 10.0
DEVICE_INSTANCE = 599


@dataclass(frozen=True)
class PeerObject:
    """One analog-value object: its value with every priority slot empty, units, and preset slots."""

    value: float
    units: str = "degrees-celsius"
    commandable: bool = True
    slots: Mapping[int, float] = field(default_factory=dict)  # priority (1–16) → value at start


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that was free a moment ago (the caller retries if it is taken meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class BacnetPeer:
    """A running BACnet/IP device: where it listens and direct access to its objects."""

    def __init__(self, port: int, image: Mapping[str, PeerObject]) -> None:
        self.host, self.port = HOST, port
        self.image = dict(image)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._objects: dict[str, Any] = {}

    @property
    def address(self) -> str:
        """``host:port`` as a BACnet/IP address."""
        return f"{self.host}:{self.port}"

    def _on_loop(self, fn: Any, *args: Any) -> Any:
        async def call() -> Any:
            return fn(*args)

        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(START_TIMEOUT_S)

    def present_value(self, object_id: str) -> float:
        """The object's present-value as the device holds it (in its own units)."""
        return self._on_loop(lambda: float(self._objects[object_id].presentValue))

    def slot(self, object_id: str, priority: int) -> float | None:
        """The object's priority-array entry at ``priority`` (1–16); ``None`` for NULL."""
        def read() -> float | None:
            entry = self._objects[object_id].priorityArray[priority - 1]
            return None if entry.null is not None else float(entry.real)

        return self._on_loop(read)

    def command(self, object_id: str, value: float | None, priority: int) -> None:
        """Command the object at ``priority`` as another client (an operator) would; ``None`` relinquishes."""
        from bacpypes3.basetypes import PriorityValue

        def write() -> None:
            entry = PriorityValue(null=()) if value is None else PriorityValue(real=value)
            self._objects[object_id].priorityArray[priority - 1] = entry

        self._on_loop(write)

    def reset(self) -> None:
        """Put every object back as the image describes it."""
        self._on_loop(self._reset)

    def _reset(self) -> None:
        from bacpypes3.basetypes import PriorityValue

        for object_id, spec in self.image.items():
            obj = self._objects[object_id]
            if not spec.commandable:
                obj.presentValue = spec.value
                continue
            obj.relinquishDefault = spec.value
            for index in range(16):
                value = spec.slots.get(index + 1)
                obj.priorityArray[index] = PriorityValue(null=()) if value is None else PriorityValue(real=value)


class _DeviceThread(threading.Thread):
    def __init__(self, peer: BacnetPeer) -> None:
        super().__init__(name=f"bacnet-peer-{peer.port}", daemon=True)
        self.peer = peer
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop_event: asyncio.Event | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to the test thread
            self.error = exc
            self.ready.set()

    async def _serve(self) -> None:
        from bacpypes3.ipv4.app import NormalApplication
        from bacpypes3.local.analog import AnalogValueObject, AnalogValueObjectCmd
        from bacpypes3.local.device import DeviceObject
        from bacpypes3.pdu import IPv4Address

        self.loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        device = DeviceObject(objectIdentifier=("device", DEVICE_INSTANCE), objectName="crah-plant-peer",
                              vendorIdentifier=999)
        app = NormalApplication(device, IPv4Address(f"{HOST}:{self.peer.port}"))
        try:
            # bacpypes3 retries a failed bind forever: a port taken meanwhile shows as never ready
            await asyncio.wait_for(asyncio.gather(*app.normal.server._transport_tasks), START_TIMEOUT_S)
            for object_id, spec in self.peer.image.items():
                kind, instance = object_id.split(",")
                cls = AnalogValueObjectCmd if spec.commandable else AnalogValueObject
                obj = cls(objectIdentifier=(kind, int(instance)), objectName=f"sp-{instance}",
                          presentValue=spec.value, units=spec.units, statusFlags=[0, 0, 0, 0],
                          eventState="normal", outOfService=False)
                app.add_object(obj)
                self.peer._objects[object_id] = obj
            self.peer._loop = self.loop
            self.peer._reset()
            self.ready.set()
            await self.stop_event.wait()
        finally:
            app.close()

    def stop(self) -> None:
        if self.loop is not None and self.stop_event is not None and not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop already finished
                self.loop.call_soon_threadsafe(self.stop_event.set)
        self.join(STOP_TIMEOUT_S)
        if self.is_alive():
            raise RuntimeError(f"BACnet peer on port {self.peer.port} did not stop within {STOP_TIMEOUT_S} s")


@contextlib.contextmanager
def run_bacnet_device(image: Mapping[str, PeerObject], attempts: int = 3) -> Iterator[BacnetPeer]:
    """A BACnet/IP device on a free 127.0.0.1 UDP port serving ``{"analog-value,N": PeerObject}``."""
    def make() -> tuple[BacnetPeer, _DeviceThread]:
        peer = BacnetPeer(free_udp_port(), image)
        return peer, _DeviceThread(peer)

    with serve_on_free_port(make, "BACnet peer", START_TIMEOUT_S + 2, STOP_TIMEOUT_S, attempts) as peer:
        yield peer
