"""Webhook receivers on loopback for the webhook benchmark and its regression tests: an honest one that
records when each webhook arrived, and hostile ones that hold the sender's connection.

``TarpitReceiver`` reads the POST, then answers one byte every ``drip_s`` and never finishes its
headers (``body=False``) or, after a complete ``200`` head, never finishes its body (``body=True``):
what a slow or malicious receiver does to a sender whose timeout is per read. Both are plain sockets
on threads, so the sender under test is the only asyncio code in play.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class HonestReceiver:
    """Answers 200 at once; ``arrivals`` maps each body's ``request_id`` to its ``time.time()`` of arrival."""

    arrivals: dict[str, float] = field(default_factory=dict)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def start(self) -> HonestReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                receiver.arrivals.setdefault(str(body.get("request_id")), time.time())
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@dataclass
class TarpitReceiver:
    """Drips its answer, ``chunk_bytes`` every ``drip_s``, forever, until the sender hangs up.

    ``connections`` counts the connections accepted, ``open_connections`` those the sender still
    holds, ``held_s`` how long each closed one was held and ``bytes_sent`` what it managed to send.
    """

    drip_s: float = 0.5
    body: bool = False  # False: never end the headers; True: a 200 head, then an endless body
    chunk_bytes: int = 1
    connections: int = 0
    open_connections: int = 0
    bytes_sent: int = 0
    held_s: list[float] = field(default_factory=list)
    _listener: socket.socket | None = None
    _stopped: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self._listener is not None
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}/hook"

    def start(self) -> TarpitReceiver:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=256)
        self._listener.settimeout(0.2)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self.open_connections += 1
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        started = time.monotonic()
        try:
            conn.settimeout(30.0)
            if select.select([conn], [], [], 5.0)[0]:
                conn.recv(65536)  # the request (headers and the small JSON body)
            if self.body:
                self._send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n")
            else:
                self._send(conn, b"HTTP/1.1 200 OK\r\nX-Drip: ")  # a header that never ends
            while not self._stopped.is_set() and not self._peer_closed(conn):
                self._send(conn, b"a" * self.chunk_bytes)
        except OSError:  # the sender hung up
            return
        finally:
            conn.close()
            with self._lock:
                self.open_connections -= 1
                self.held_s.append(time.monotonic() - started)

    def _send(self, conn: socket.socket, data: bytes) -> None:
        conn.sendall(data)
        with self._lock:
            self.bytes_sent += len(data)

    def _peer_closed(self, conn: socket.socket) -> bool:
        """Wait one drip interval; True when the sender closed its end meanwhile."""
        if not select.select([conn], [], [], self.drip_s)[0]:
            return False
        return conn.recv(1) == b""

    def stop(self) -> None:
        self._stopped.set()
        if self._listener is not None:
            self._listener.close()
