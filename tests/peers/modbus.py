"""Modbus TCP peers on 127.0.0.1 for the collector tests.

- :func:`run_modbus_server`: a real pymodbus TCP server (its own asyncio loop in a background thread)
  serving register images the test writes, per unit id; it counts the requests it receives.
- :func:`silent_tcp_server`: accepts connections and never answers (a device that hangs).
- :func:`short_reply_server`: answers every read with one register fewer than asked.
- :func:`encode_value`: a value as the registers a device would send, built with :mod:`struct` and the
  byte-order letters themselves, independently of the decoder under test.

Everything is stopped and joined on exit; a thread that does not stop fails the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.peers import serve_on_free_port
from tests.servers import free_port

HOST = "127.0.0.1"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0

RegisterImage = Mapping[str, Mapping[int, int]]
"""One unit's registers: ``{"holding": {address: value}, "input": {address: value}}``."""

STRUCT_CODES = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "int64": "q", "uint64": "Q",
                "float32": "f", "float64": "d"}


def wire_order(big_endian: bytes, byte_order: str) -> bytes:
    """Reorder a value's big-endian bytes as ``byte_order`` says they travel (letter A = most significant)."""
    letters = "ABCDEFGH"[: len(big_endian)]
    if sorted(byte_order) != list(letters):
        raise ValueError(f"byte order {byte_order!r} does not fit a {len(big_endian)}-byte value")
    return bytes(big_endian[letters.index(letter)] for letter in byte_order)


def encode_value(value: float, data_type: str, byte_order: str = "", scale: float = 1.0,
                 offset: float = 0.0) -> list[int]:
    """The registers a device sends for ``value`` (``raw = (value - offset) / scale``, rounded for integers).

    ``byte_order`` must be spelled for the type's width (``AB``/``BA``, 4 or 8 letters); empty means
    big-endian.
    """
    code = STRUCT_CODES[data_type]
    raw: float | int = (value - offset) / scale
    if code not in "fd":
        raw = int(round(raw))
    big = struct.pack(f">{code}", raw)
    wire = wire_order(big, byte_order or "ABCDEFGH"[: len(big)])
    return list(struct.unpack(f">{len(wire) // 2}H", wire))


@dataclass
class ModbusPeer:
    """A running pymodbus server: where it listens and how many read requests it has received."""

    host: str
    port: int
    requests: list[tuple[int, int]] = field(default_factory=list)  # (unit id, function code)

    @property
    def address(self) -> str:
        """``host:port``."""
        return f"{self.host}:{self.port}"


def _sim_device(unit_id: int, image: RegisterImage, fill_gaps: bool,
                readonly: frozenset[int] = frozenset()) -> Any:  # a pymodbus SimDevice
    from pymodbus.simulator import DataType, SimData, SimDevice

    def registers(kind: str) -> list[SimData]:
        values = dict(image.get(kind, {}))
        if not values:
            return [SimData(0, count=1, datatype=DataType.INVALID)]
        for address, value in values.items():
            if not 0 <= value <= 0xFFFF:
                raise ValueError(f"unit {unit_id} {kind} register {address}: {value} is not a 16-bit value")
        if fill_gaps:  # one block from the lowest to the highest address, zeros in between
            low, high = min(values), max(values)
            values = {a: values.get(a, 0) for a in range(low, high + 1)}
        # holes stay invalid (reading them gives ILLEGAL DATA ADDRESS); read-only holding registers
        # (answering a write with an exception) get blocks of their own
        locked = readonly if kind == "holding" else frozenset()
        runs: list[tuple[int, list[int], bool]] = []
        for address in sorted(values):
            ro = address in locked
            if runs and runs[-1][0] + len(runs[-1][1]) == address and runs[-1][2] == ro:
                runs[-1][1].append(values[address])
            else:
                runs.append((address, [values[address]], ro))
        return [SimData(start, values=vals, datatype=DataType.REGISTERS, readonly=ro) for start, vals, ro in runs]

    bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
    # pymodbus' non-shared layout: (coils, discrete inputs, holding registers, input registers)
    return SimDevice(unit_id, simdata=(bits, list(bits), registers("holding"), registers("input")))


class _ServerThread(threading.Thread):
    def __init__(self, devices: list[Any], port: int, peer: ModbusPeer) -> None:
        super().__init__(name=f"modbus-peer-{port}", daemon=True)
        self.devices, self.port, self.peer = devices, port, peer
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop_event: asyncio.Event | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to the test thread by start()
            self.error = exc
            self.ready.set()

    def _trace(self, sending: bool, pdu: Any) -> Any:  # pymodbus calls it with every PDU
        if not sending:
            self.peer.requests.append((pdu.dev_id, pdu.function_code))
        return pdu

    async def _serve(self) -> None:
        from pymodbus.server import ModbusTcpServer

        self.loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        server = ModbusTcpServer(self.devices, address=(HOST, self.port), trace_pdu=self._trace)
        await server.serve_forever(background=True)  # raises if it cannot listen
        self.ready.set()
        try:
            await self.stop_event.wait()
        finally:
            await server.shutdown()

    def stop(self) -> None:
        if self.loop is not None and self.stop_event is not None and not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop already finished
                self.loop.call_soon_threadsafe(self.stop_event.set)
        self.join(STOP_TIMEOUT_S)
        if self.is_alive():
            raise RuntimeError(f"Modbus peer on port {self.port} did not stop within {STOP_TIMEOUT_S} s")


@contextlib.contextmanager
def run_modbus_server(devices: Mapping[int, RegisterImage], fill_gaps: bool = True,
                      attempts: int = 3, readonly: Mapping[int, set[int]] | None = None) -> Iterator[ModbusPeer]:
    """A pymodbus TCP server on a free 127.0.0.1 port serving ``{unit_id: register image}``.

    With ``fill_gaps`` each register type of a unit is one block from its lowest to its highest
    address (zeros between), as on a real meter whose map has no holes there; without, only the given
    addresses exist. A unit id not in ``devices`` gets exception 4 (SERVER DEVICE FAILURE).
    ``readonly`` ({unit id: holding-register addresses}) makes those registers refuse writes.
    """
    locked = readonly or {}
    sim = [_sim_device(unit, image, fill_gaps, frozenset(locked.get(unit, ()))) for unit, image in devices.items()]
    def make() -> tuple[ModbusPeer, _ServerThread]:
        peer = ModbusPeer(HOST, free_port())
        return peer, _ServerThread(sim, peer.port, peer)

    with serve_on_free_port(make, "Modbus peer", START_TIMEOUT_S, STOP_TIMEOUT_S, attempts) as peer:
        yield peer


@contextlib.contextmanager
def _tcp_listener(handle: Callable[[socket.socket], None]) -> Iterator[tuple[str, int]]:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((HOST, 0))
    listener.listen()
    connections: list[socket.socket] = []
    stopping = threading.Event()

    def accept() -> None:
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            connections.append(conn)
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    acceptor = threading.Thread(target=accept, name="tcp-peer", daemon=True)
    acceptor.start()
    try:
        yield listener.getsockname()
    finally:
        stopping.set()
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        acceptor.join(STOP_TIMEOUT_S)
        if acceptor.is_alive():
            raise RuntimeError("TCP peer acceptor did not stop")


@contextlib.contextmanager
def silent_tcp_server() -> Iterator[tuple[str, int]]:
    """``(host, port)`` of a server that accepts connections, reads requests and never answers."""

    def swallow(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while conn.recv(1024):
                pass

    with _tcp_listener(swallow) as address:
        yield address


@contextlib.contextmanager
def short_reply_server() -> Iterator[tuple[str, int]]:
    """``(host, port)`` of a Modbus TCP server that answers each read with one register fewer than asked."""

    def reply(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while request := conn.recv(260):
                tid, _, _, unit, function, _, count = struct.unpack(">HHHBBHH", request[:12])
                n = max(count - 1, 0)
                body = struct.pack(">BB", function, 2 * n) + struct.pack(f">{n}H", *range(n))
                conn.sendall(struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body)

    with _tcp_listener(reply) as address:
        yield address


@dataclass
class FlakyBms:
    """A Modbus TCP BMS (holding registers, FC 3 and 16) whose link can fail: ``drop_on_write`` = n closes
    the connection instead of answering the n-th write (nothing written) and stops serving until
    ``serving`` is set again; meanwhile a new connection is closed at once."""

    host: str
    port: int
    registers: dict[int, int]
    drop_on_write: int | None = None
    serving: threading.Event = field(default_factory=threading.Event)
    writes: int = 0


def _flaky_session(conn: socket.socket, bms: FlakyBms) -> None:
    import struct

    with conn:
        while True:
            head = conn.recv(7)
            if len(head) < 7:
                return
            tid, _, length, unit = struct.unpack(">HHHB", head)
            pdu = conn.recv(length - 1)
            code, address, count = pdu[0], *struct.unpack(">HH", pdu[1:5])
            if code == 3:
                data = b"".join(struct.pack(">H", bms.registers[address + k]) for k in range(count))
                reply = bytes([3, len(data)]) + data
            elif code == 16:
                bms.writes += 1
                if bms.writes == bms.drop_on_write:
                    bms.serving.clear()
                    return  # the link dies: no answer, nothing written
                for k, value in enumerate(struct.unpack(f">{count}H", pdu[6:6 + 2 * count])):
                    bms.registers[address + k] = value
                reply = struct.pack(">BHH", 16, address, count)
            else:
                reply = bytes([code | 0x80, 1])
            conn.sendall(struct.pack(">HHHB", tid, 0, len(reply) + 1, unit) + reply)


@contextlib.contextmanager
def flaky_bms(registers: Mapping[int, int], drop_on_write: int | None = None) -> Iterator[FlakyBms]:
    """A :class:`FlakyBms` on a free 127.0.0.1 port, one connection at a time."""
    def handle(conn: socket.socket) -> None:
        if not bms.serving.is_set():
            conn.close()
            return
        _flaky_session(conn, bms)

    bms = FlakyBms(HOST, 0, dict(registers), drop_on_write)
    bms.serving.set()
    with _tcp_listener(handle) as (host, port):
        bms.host, bms.port = host, port
        yield bms
