"""Real network faults for tests: a TCP proxy in front of a server (moto, a fake API) that can be told
to drop, reset or stall connections while the code under test talks through it.

    with TcpProxy("127.0.0.1", moto_port) as proxy:
        env AWS_ENDPOINT_URL = proxy.url
        proxy.set("drop")    # new connections are closed at once, open ones are closed
        proxy.set("reset")   # open connections get a TCP RST, new ones too
        proxy.set("stall")   # connections are accepted and held, nothing is forwarded
        proxy.set("pass")    # back to normal (held stalled connections are closed)
        proxy.set_when(b"checkpoints/step-", "drop")   # switch when a request carrying this passes

Threads, not asyncio: a test drives it from any thread, and its faults reach connections already
open (a keep-alive connection of botocore's pool is cut as surely as a new one).
"""

from __future__ import annotations

import select
import socket
import struct
import threading
from pathlib import Path

MODES = ("pass", "drop", "reset", "stall")


def _close(sock: socket.socket, rst: bool = False) -> None:
    try:
        if rst:
            # linger 0: close() sends RST instead of FIN, as a crashed middlebox or peer does
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``host``:``target_port``; ``set(mode)`` injects a fault."""

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.mode = "pass"
        self.connections = 0  # accepted so far, for tests that want to see traffic arrive
        self._trigger: tuple[bytes, str] | None = None
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket | None]] = []
        self._closed = threading.Event()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._threads = [threading.Thread(target=self._accept_loop, daemon=True, name="tcpproxy-accept")]
        self._threads[0].start()

    # -- control ---------------------------------------------------------------------------------

    def set(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {', '.join(MODES)}, got {mode!r}")
        with self._lock:
            self.mode = mode
            if mode in ("drop", "reset"):
                victims, self._pairs = self._pairs, []
            elif mode == "pass":
                # connections accepted during a stall never reached the server: end them
                victims = [p for p in self._pairs if p[1] is None]
                self._pairs = [p for p in self._pairs if p[1] is not None]
            else:
                victims = []
        for client, upstream in victims:
            _close(client, rst=mode == "reset")
            if upstream is not None:
                _close(upstream, rst=mode == "reset")

    def set_when(self, pattern: bytes, mode: str) -> None:
        """Switch to ``mode`` as soon as a client sends bytes containing ``pattern`` (that chunk is
        not forwarded): a fault that starts exactly at a chosen request."""
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {', '.join(MODES)}, got {mode!r}")
        with self._lock:
            self._trigger = (pattern, mode)

    def close(self) -> None:
        self._closed.set()
        _close(self._listener)
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for client, upstream in pairs:
            _close(client)
            if upstream is not None:
                _close(upstream)
        for t in self._threads:
            t.join(timeout=2)

    def __enter__(self) -> "TcpProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- plumbing --------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.connections += 1
            mode = self.mode
            if mode in ("drop", "reset"):
                _close(client, rst=mode == "reset")
                continue
            if mode == "stall":
                with self._lock:
                    self._pairs.append((client, None))
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client, rst=True)
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            pair, left = (client, upstream), [2]
            for src, dst, inbound in ((client, upstream, True), (upstream, client, False)):
                t = threading.Thread(target=self._pump, args=(src, dst, inbound, pair, left), daemon=True,
                                     name="tcpproxy-pump")
                t.start()
                self._threads.append(t)
            self._threads = [t for t in self._threads if t.is_alive()]

    def _pump(self, src, dst, inbound: bool, pair, left: list[int]) -> None:
        try:
            self._forward(src, dst, inbound)
        finally:
            with self._lock:
                left[0] -= 1
                last = left[0] == 0
                if last and pair in self._pairs:
                    self._pairs.remove(pair)
            if last:  # both directions ended: a long chaos run must not pile up sockets
                _close(pair[0])
                _close(pair[1])

    def _forward(self, src: socket.socket, dst: socket.socket, inbound: bool) -> None:
        while not self._closed.is_set():
            if self.mode == "stall":
                self._closed.wait(0.05)  # hold the bytes: the peer sees silence, not an error
                continue
            try:
                ready, _, _ = select.select([src], [], [], 0.1)
                if not ready:
                    continue
                data = src.recv(65536)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                if inbound and self._fire_trigger(data):
                    continue
                if self.mode != "pass":
                    continue
                dst.sendall(data)
            except (OSError, ValueError):  # closed by set() or close(): the fault did its job
                return

    def _fire_trigger(self, data: bytes) -> bool:
        with self._lock:
            trig = self._trigger
            if trig is None or trig[0] not in data:
                return False
            self._trigger = None
        self.set(trig[1])
        return True


def live_group(pgid: int) -> list[int]:
    """Pids of the process group that are alive (zombies, which nobody may reap here, do not count)."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                rest = (p / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(rest[2]) == pgid and rest[0] not in ("Z", "X"):
                out.append(int(p.name))
    return out
