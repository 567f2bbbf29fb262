"""An HTTP origin for tests: a real HTTP/1.1 server (h11, a thread per connection) on loopback
that records every request it receives and answers with a JSON echo of it.

Special paths change the answer, to play a misbehaving backend:
  /big/N          a body of N bytes (Content-Length)
  /chunked/N      a body of N bytes, chunked
  /close/N        a body of N bytes delimited by closing the connection (no length)
  /reset          half a response, then a reset
  /slow/S         answers after S seconds
  /status/N       an empty response with status N
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import h11


@dataclass
class ReceivedRequest:
    method: str
    target: str
    headers: list[tuple[str, str]]   # names lowercased by h11, in order
    body: bytes
    peer: tuple[str, int]
    connection_id: int

    def header_values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name.lower()]


@dataclass
class EchoOrigin:
    name: str = "origin"
    host: str = "127.0.0.1"
    requests: list[ReceivedRequest] = field(default_factory=list)
    connections: int = 0
    bind_port: int = 0  # 0: any free port; DNS discovery tests put origins on one shared port

    def __post_init__(self) -> None:
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((self.host, self.bind_port))
        self._sock.listen(128)
        self.port: int = self._sock.getsockname()[1]
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self._open: set[socket.socket] = set()

    def start(self) -> None:
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self._stopped.set()
        try:
            # close() alone does not wake a thread blocked in accept() on Linux; shutdown does.
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        with self._lock:
            for conn in self._open:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        for thread in self._threads:
            thread.join(5)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def wait_for_requests(self, n: int, timeout: float = 10.0) -> list[ReceivedRequest]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.requests) >= n:
                    return list(self.requests)
            time.sleep(0.01)
        raise TimeoutError(f"{self.name}: {len(self.requests)} requests, expected {n}")

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, peer = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                connection_id = self.connections
                self._open.add(conn)
            thread = threading.Thread(target=self._serve, args=(conn, peer, connection_id),
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket, peer: tuple[str, int], connection_id: int) -> None:
        http = h11.Connection(h11.SERVER)
        conn.settimeout(30)
        try:
            while True:
                request, body = self._read_request(conn, http)
                if request is None:
                    return
                received = ReceivedRequest(
                    request.method.decode(), request.target.decode("latin-1"),
                    [(k.decode(), v.decode("latin-1")) for k, v in request.headers], body,
                    peer, connection_id)
                with self._lock:
                    self.requests.append(received)
                if not self._respond(conn, http, received):
                    return
                if http.our_state is h11.MUST_CLOSE or http.their_state is h11.MUST_CLOSE:
                    return
                http.start_next_cycle()
        except (OSError, h11.ProtocolError):
            return
        finally:
            with self._lock:
                self._open.discard(conn)
            conn.close()

    @staticmethod
    def _read_request(conn: socket.socket, http: h11.Connection
                      ) -> tuple[h11.Request | None, bytes]:
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                if http.they_are_waiting_for_100_continue:
                    conn.sendall(http.send(h11.InformationalResponse(status_code=100,
                                                                     headers=[])))
                data = conn.recv(65536)
                http.receive_data(data)
                if not data and request is None:
                    return None, b""
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return request, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                return None, b""

    def _respond(self, conn: socket.socket, http: h11.Connection,
                 request: ReceivedRequest) -> bool:
        parts = request.target.split("?")[0].strip("/").split("/")
        kind, argument = parts[0], parts[1] if len(parts) > 1 else ""
        if kind == "slow":
            time.sleep(float(argument))
        if kind == "reset":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        if kind == "status":
            conn.sendall(http.send(h11.Response(status_code=int(argument),
                                                headers=[("Content-Length", "0")]
                                                if int(argument) not in (204, 304) else [])))
            conn.sendall(http.send(h11.EndOfMessage()))
            return True
        if kind in ("big", "chunked", "close"):
            body = b"x" * int(argument)
            if kind == "close":
                conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body)
                return False
            headers = [("Content-Length", str(len(body)))] if kind == "big" else \
                [("Transfer-Encoding", "chunked")]
            conn.sendall(http.send(h11.Response(status_code=200, headers=headers)))
            for start in range(0, len(body), 65536):
                conn.sendall(http.send(h11.Data(data=body[start:start + 65536])))
            conn.sendall(http.send(h11.EndOfMessage()))
            return True
        echo = json.dumps({"origin": self.name, "method": request.method,
                           "target": request.target, "headers": request.headers,
                           "body_length": len(request.body)}).encode()
        conn.sendall(http.send(h11.Response(status_code=200, headers=[
            ("Content-Type", "application/json"), ("Content-Length", str(len(echo)))])))
        if request.method != "HEAD":
            conn.sendall(http.send(h11.Data(data=echo)))
        conn.sendall(http.send(h11.EndOfMessage()))
        return True


class RawOrigin(EchoOrigin):
    """Loopback HTTP origin for bodiless requests: records every request head byte for byte
    (EchoOrigin's h11 lowercases names) and answers each with ``response``. The listener, its
    threads and their stop are EchoOrigin's."""

    def __init__(self, response: bytes) -> None:
        self.response = response
        self.heads: list[bytes] = []
        super().__init__(name="raw")

    def _serve(self, conn: socket.socket, peer: tuple[str, int], connection_id: int) -> None:
        buffer = b""
        conn.settimeout(30)
        with conn:
            try:
                while data := conn.recv(65536):
                    buffer += data
                    while b"\r\n\r\n" in buffer:
                        head, _, buffer = buffer.partition(b"\r\n\r\n")
                        with self._lock:
                            self.heads.append(head + b"\r\n\r\n")
                        conn.sendall(self.response)
            except OSError:
                return


class Cluster:
    """Three origins standing in for the MTA, Event Tracker and TLS services."""

    def __init__(self) -> None:
        self.mta = EchoOrigin("mta")
        self.event_tracker = EchoOrigin("event-tracker")
        self.tls = EchoOrigin("tls")

    def backends_toml(self) -> str:
        """The greenarrow preset's HTTP backends, pointed at these origins."""
        return (
            f'[backends.mta-http]\nservers = ["127.0.0.1:{self.mta.port}"]\n'
            f'[backends.event-tracker-http]\nservers = ["127.0.0.1:{self.event_tracker.port}"]\n'
            f'[backends.tls-http]\nservers = ["127.0.0.1:{self.tls.port}"]\n'
        )

    def config(self, http_port: int, proxied_port: int, *, timeouts: str = "",
               extra: str = "") -> str:
        disabled = "".join(f"[listeners.{name}]\nenabled = false\n" for name in (
            "smtp25", "smtp25-proxied", "smtp587", "smtp587-proxied", "https", "https-proxied"))
        return (
            f'preset = "greenarrow"\nworkers = 1\n[timeouts]\ndrain = "0s"\n{timeouts}\n'
            f"{disabled}"
            f'[listeners.http]\nbind = ["127.0.0.1:{http_port}"]\n'
            f'[listeners.http-proxied]\nbind = ["127.0.0.1:{proxied_port}"]\n'
            f"{self.backends_toml()}{extra}"
        )
