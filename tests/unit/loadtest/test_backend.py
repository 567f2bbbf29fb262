"""loadtest/backend.py: the thread-per-connection server its sink shares with the egress
benchmark's."""

from __future__ import annotations

import socket
import threading
import time

from loadtest import backend


class Counting(backend.ThreadSink):
    def session(self, conn: socket.socket, counter: list[int]) -> None:
        with conn:
            while data := conn.recv(1024):
                counter[0] += len(data)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"sessions": self.connections,
                    "bytes": sum(counter[0] for counter in self.per_connection)}


def test_thread_sink_counts_connections_and_what_each_received() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    sink = Counting()
    server = threading.Thread(target=sink.serve, args=(listener,), daemon=True)
    server.start()
    for payload in (b"abc", b"defgh"):
        with socket.create_connection(listener.getsockname()) as conn:
            conn.sendall(payload)
    deadline = time.monotonic() + 5
    while sink.stats()["bytes"] < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sink.stats() == {"sessions": 2, "bytes": 8}
    assert sorted(counter[0] for counter in sink.per_connection) == [3, 5]
    listener.shutdown(socket.SHUT_RDWR)  # accept() fails: serve() returns
    listener.close()
    server.join(5)
    assert not server.is_alive()
