"""BACnet/IP: object and address parsing (pure) and a small synchronous client over bacpypes3.

- :func:`parse_object_id` and :func:`parse_device_address` check the spellings a configuration uses
  (``analog-value,1``; ``10.20.0.60`` or ``10.20.0.60:47808``) without importing bacpypes3, so settings
  validate on a host without the ``collectors`` extra.
- :class:`BacnetClient` reads and writes single properties of a device addressed directly over
  BACnet/IP. bacpypes3 is asyncio-only; the client runs its own event loop in a daemon thread, started
  by :meth:`BacnetClient.open` (never in the constructor) and stopped by :meth:`BacnetClient.close`.
  Every request is bounded: ``timeout_s`` per attempt, ``1 + retries`` attempts (BACnet's own APDU
  timeout and retry), and an outer deadline in case the stack never answers at all. Errors, rejects,
  aborts and timeouts become :class:`~dcpue.errors.CollectorError` naming the device, object and
  property.

Devices behind a BACnet router (MS/TP trunks reached through an IP router, ``network:mac``
addresses) are not supported: the client binds an ephemeral UDP port and talks unicast only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from dcpue.errors import CollectorError, missing_extra

log = logging.getLogger(__name__)

DEFAULT_PORT = 47808  # 0xBAC0, the BACnet/IP UDP port
MAX_INSTANCE = 4_194_302  # 22-bit instance number; 4194303 is the wildcard
# analog objects whose present-value is a setpoint in engineering units (REAL or Double)
SETPOINT_OBJECT_TYPES = ("analog-value", "analog-output", "large-analog-value")
STOP_TIMEOUT_S = 5.0
CLIENT_INSTANCE = 4_194_302  # the client's own device object; devices never see it in Read/WriteProperty
CLIENT_VENDOR_ID = 999  # bacpypes3's id for unregistered applications; dcpue has no ASHRAE vendor id


class BacnetDeviceError(CollectorError):
    """The device answered a request with a BACnet error, reject or abort; ``code`` is its reason
    (``unknown-object``, ``unknown-property``, ``write-access-denied``, ``no-response`` …)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def parse_object_id(text: str) -> tuple[str, int]:
    """``"analog-value,1"`` → ``("analog-value", 1)``; only object types listed in ``SETPOINT_OBJECT_TYPES``."""
    kind, sep, instance = str(text).replace(":", ",").partition(",")
    kind = kind.strip()
    if not sep or not instance.strip().isdecimal():
        raise ValueError(f"{text!r} is not an object identifier like 'analog-value,1' (type,instance)")
    if kind not in SETPOINT_OBJECT_TYPES:
        raise ValueError(f"object type {kind!r} cannot hold a setpoint; use one of {', '.join(SETPOINT_OBJECT_TYPES)}")
    number = int(instance)
    if number > MAX_INSTANCE:
        raise ValueError(f"object instance {number} is above the BACnet maximum {MAX_INSTANCE}")
    return kind, number


def parse_device_address(text: str) -> tuple[str, int]:
    """``"10.20.0.60"`` or ``"10.20.0.60:47808"`` → ``(host, port)``; the host must be an IPv4 address."""
    host, sep, port_text = str(text).strip().partition(":")
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        raise ValueError(f"{text!r}: a BACnet/IP device is addressed as IPv4 'a.b.c.d' or 'a.b.c.d:port'") from None
    if not sep:
        return host, DEFAULT_PORT
    if not port_text.isdecimal() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    return host, int(port_text)


def parse_local_address(text: str) -> str:
    """The client's own UDP address, ``"0.0.0.0:0"`` style (IPv4, port 0 = ephemeral), checked."""
    host, sep, port_text = str(text).strip().partition(":")
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        raise ValueError(f"{text!r}: the client binds an IPv4 'a.b.c.d:port' (0.0.0.0:0: any, ephemeral)") from None
    if sep and (not port_text.isdecimal() or int(port_text) > 65535):
        raise ValueError(f"{text!r}: the port must be a number from 0 to 65535")
    return f"{host}:{int(port_text) if sep else 0}"


def _import_bacpypes3() -> Any:
    try:
        import bacpypes3.apdu
        import bacpypes3.ipv4.app
        import bacpypes3.local.device
        import bacpypes3.pdu
        import bacpypes3.primitivedata  # noqa: F401  (the client needs all of these)
    except ImportError as exc:
        raise missing_extra("bacpypes3", "collectors") from exc
    return bacpypes3


def require_bacpypes3() -> None:
    """Raise :class:`~dcpue.errors.MissingExtraError` with the install hint if bacpypes3 is missing."""
    _import_bacpypes3()


def priority_slot(value: Any) -> float | None:
    """A ``priority-array`` entry as a number, ``None`` for NULL (an empty slot)."""
    if getattr(value, "null", None) is not None:
        return None
    choice = getattr(value, "_choice", None)
    if choice is None:
        raise TypeError(f"not a priority value: {value!r}")
    return float(getattr(value, choice))


def _log_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    # bacpypes3's own callbacks and tasks fail here (a socket closed under them, tasks cancelled at
    # close): to this module's logger, not asyncio's default stderr dump
    exc = context.get("exception")
    level = logging.DEBUG if isinstance(exc, asyncio.CancelledError) else logging.WARNING
    log.log(level, "BACnet client loop: %s", context.get("message"), exc_info=exc)


class BacnetClient:
    """Synchronous ReadProperty/WriteProperty to BACnet/IP devices (its own asyncio loop in a thread).

    ``local_address`` is the UDP address the client binds (``0.0.0.0:0``: every interface, an ephemeral
    port; devices answer confirmed requests to the sender's port). ``timeout_s`` [s] bounds one attempt,
    ``retries`` more attempts follow a timeout.
    """

    def __init__(self, local_address: str = "0.0.0.0:0", timeout_s: float = 3.0, retries: int = 2) -> None:
        self.local_address = local_address
        self.timeout_s = timeout_s
        self.retries = retries
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._app: Any = None

    @property
    def deadline_s(self) -> float:
        """Longest a single request can take [s]: every attempt plus a margin."""
        return self.timeout_s * (1 + self.retries) + 1.0

    def open(self) -> None:
        """Start the event loop thread and bind the client's UDP socket."""
        if self._app is not None:
            return
        _import_bacpypes3()
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(_log_loop_error)
        thread = threading.Thread(target=loop.run_forever, name="dcpue-bacnet", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            self._app = self._call(self._make_app, "opening the BACnet/IP client")
        except BaseException:
            self.close()
            raise

    async def _make_app(self) -> Any:
        from bacpypes3.ipv4.app import NormalApplication
        from bacpypes3.local.device import DeviceObject
        from bacpypes3.pdu import IPv4Address

        device = DeviceObject(objectIdentifier=("device", CLIENT_INSTANCE), objectName="dcpue",
                              vendorIdentifier=CLIENT_VENDOR_ID, apduTimeout=int(self.timeout_s * 1000),
                              numberOfApduRetries=self.retries)
        app = NormalApplication(device, IPv4Address(self.local_address))
        # bacpypes3 retries a failed bind forever in the background; wait for it here so that a wrong
        # local_address reads as such rather than as a device that never answers
        binding = getattr(getattr(getattr(app, "normal", None), "server", None), "_transport_tasks", [])
        if binding and (await asyncio.wait(binding, timeout=self.timeout_s))[1]:
            app.close()
            raise OSError(f"cannot bind the client's UDP socket to {self.local_address}")
        return app

    def read(self, device: str, object_id: str, prop: str, index: int | None = None) -> Any:
        """ReadProperty: the decoded value of ``prop`` (``[index]``) of ``object_id`` at ``device`` (host:port)."""
        what = f"reading {object_id} {prop}{'' if index is None else f'[{index}]'} from {device}"
        return self._call(lambda: self._app.read_property(device, object_id, prop, array_index=index), what)

    def write(self, device: str, object_id: str, prop: str, value: float | None, priority: int | None) -> None:
        """WriteProperty ``value`` at ``priority`` (1–16, ``None``: none sent); ``value=None`` writes NULL
        (relinquishes the priority's slot of a commandable property)."""

        async def send() -> None:
            from bacpypes3.primitivedata import Null

            await self._app.write_property(device, object_id, prop, Null(()) if value is None else value,
                                           priority=priority)

        shown = "NULL" if value is None else f"{value:g}"
        self._call(send, f"writing {object_id} {prop} = {shown} at priority {priority} to {device}")

    def _call(self, make: Callable[[], Awaitable[Any]], what: str) -> Any:
        from bacpypes3.apdu import AbortPDU, ErrorPDU, ErrorRejectAbortNack

        loop = self._loop
        if loop is None or loop.is_closed():
            raise CollectorError(f"{what}: the BACnet client is not open")

        async def bounded() -> Any:
            return await asyncio.wait_for(make(), self.deadline_s)

        future = asyncio.run_coroutine_threadsafe(bounded(), loop)
        try:
            return future.result(self.deadline_s + 1.0)
        except ErrorRejectAbortNack as exc:  # bacpypes3 raises these as BaseException, not Exception
            code = str(exc.reason)
            if isinstance(exc, AbortPDU) and code == "no-response":
                raise BacnetDeviceError(f"{what}: no response within {self.timeout_s:g} s × "
                                        f"{1 + self.retries} attempts", code) from None
            if isinstance(exc, ErrorPDU):
                answer = f"error {code} (class {exc.errorClass})"
            else:
                answer = f"{'abort' if isinstance(exc, AbortPDU) else 'reject'} {code}"
            raise BacnetDeviceError(f"{what}: the device answered {answer}", code) from None
        except TimeoutError:
            future.cancel()
            raise CollectorError(f"{what}: no answer within {self.deadline_s:g} s") from None
        except concurrent.futures.CancelledError:
            raise CollectorError(f"{what}: cancelled (the client is closing)") from None
        except (OSError, ValueError, TypeError, RuntimeError) as exc:
            raise CollectorError(f"{what}: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        """Close the socket and stop the loop thread (idempotent)."""
        loop, thread, app = self._loop, self._thread, self._app
        self._loop = self._thread = self._app = None
        if loop is None:
            return

        async def shut() -> None:
            if app is not None:
                app.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if not loop.is_closed() and loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(shut(), loop).result(STOP_TIMEOUT_S)
            except Exception as exc:  # closing must not raise; the thread is a daemon either way
                log.warning("BACnet client shutdown: %s", exc)
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(STOP_TIMEOUT_S)
            if thread.is_alive():
                log.warning("BACnet client thread did not stop within %s s", STOP_TIMEOUT_S)
                return
        loop.close()
