"""Access log: one line per TCP session (and, later, per HTTP request) on stdout.

Lines are batched and written with ``os.write`` in chunks of at most ``PIPE_BUF`` bytes cut at
line ends: several worker processes share one stdout pipe, and a write of at most ``PIPE_BUF``
bytes to a pipe is atomic, so lines of different workers never interleave.  Batching keeps the
per-session cost to formatting a string; a flush happens at most ``FLUSH_DELAY`` after a line.
Operational messages (start, warnings, errors) go through :mod:`logging` to stderr.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import select
import time
from typing import Any

FLUSH_DELAY = 0.05
PIPE_BUF = select.PIPE_BUF
_MAX_BATCH = 64

log = logging.getLogger("mta_ingress")


def configure_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    formatter = logging.Formatter(
        "%(asctime)s.%(msecs)03dZ level=%(levelname)s pid=%(process)d %(message)s",
        "%Y-%m-%dT%H:%M:%S")
    # UTC, as the Z says; on this formatter only, not on every logging.Formatter of the process.
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger("mta_ingress")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


_NEEDS_QUOTES = re.compile(r'[\s"=\\]|[^\x21-\x7e]')


def address_text(address: tuple[str, int] | None, missing: str = "-") -> str:
    """``host:port``, with an IPv6 host in brackets, as every log line and the stubs write it."""
    if address is None:
        return missing
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def quote(value: str) -> str:
    """logfmt value: bare when it has no space, quote, equals sign or non-printable character."""
    if value and not _NEEDS_QUOTES.search(value):
        return value
    return json.dumps(value)


class TlsFields:
    """One HTTPS connection's TLS version and requested server name ("-" for none), with the
    text layout's form of them formatted once for all the connection's requests."""

    def __init__(self, version: str, server_name: str) -> None:
        self.version = version
        self.server_name = server_name
        self.text = f" tls={version} sni={quote(server_name)}"


class _Clock:
    """A timestamp format whose second-resolution part is formatted once per second."""

    def __init__(self, second_format: str, suffix: str = "") -> None:
        self._format = second_format
        # ".000" to ".999" with the suffix: a lookup per line instead of a number format
        self._millis = tuple(f".{ms:03d}{suffix}" for ms in range(1000))
        self._second = -1
        self._prefix = ""

    def now(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime(self._format, time.gmtime(second))
        return self._prefix + self._millis[min(int((now - second) * 1000), 999)]


class AccessLog:
    def __init__(self, log_format: str = "logfmt", fd: int = 1) -> None:
        self._json = log_format == "json"
        self._fd = fd
        self._lines: list[str] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self._clock = _Clock("%Y-%m-%dT%H:%M:%S", "Z")  # ISO 8601, UTC
        self._haproxy_clock = _Clock("%d/%b/%Y:%H:%M:%S")  # HAProxy's accept date

    def record(self, fields: dict[str, Any]) -> None:
        fields = {"ts": self._clock.now(), **fields}
        if self._json:
            line = json.dumps(fields, separators=(",", ":"))
        else:
            line = " ".join(f"{key}={quote(str(value))}" for key, value in fields.items())
        self._append(line)

    def tcp_session(self, *, listener: str, client: str, backend: str, server: str,
                    bytes_in: int, bytes_out: int, duration_ms: int, end: str, worker: int,
                    detail: str) -> None:
        """One line per TCP session.  Every value but ``detail`` is a configured name, an
        address or a number, none of which needs quoting: the line is one f-string, since this
        runs once per SMTP session."""
        if self._json:
            fields: dict[str, Any] = {
                "kind": "tcp", "listener": listener, "client": client, "backend": backend,
                "server": server, "bytes_in": bytes_in, "bytes_out": bytes_out,
                "duration_ms": duration_ms, "end": end, "worker": worker}
            if detail:
                fields["detail"] = detail
            self.record(fields)
            return
        line = (f"ts={self._clock.now()} kind=tcp listener={listener} client={client} "
                f"backend={backend} server={server} bytes_in={bytes_in} bytes_out={bytes_out} "
                f"duration_ms={duration_ms} end={end} worker={worker}")
        if detail:
            line = f"{line} detail={quote(detail)}"
        self._append(line)

    def http_rejection(self, *, listener: str, client: str, status: int, reason: str,
                       detail: str, worker: int) -> None:
        """A connection or request refused before any backend saw it (bad PROXY header,
        malformed request, failed TLS handshake); ``detail`` is cut at 200 characters."""
        self.record({"kind": "http", "listener": listener, "client": client, "status": status,
                     "end": "rejected", "reason": reason, "detail": detail[:200],
                     "worker": worker})

    def http_request(self, *, client: str, listener: str, backend: str, server: str,
                     duration_ms: int, status: int, body_bytes: int, method: bytes,
                     target: bytes, version: bytes, end: str, worker: int,
                     tls: TlsFields | None = None) -> None:
        """One line per HTTP request.  The text layout follows HAProxy's ``option httplog``
        (client, [accept date], frontend, backend/server, timers, status, bytes, ...,
        "request line") so that log pipelines built for the KRA HAProxy keep parsing it; the
        timers are reduced to the total time, the fields HAProxy fills with request-queue and
        cookie data are '-'.  The request target is cut at 200 bytes.  ``tls``: an HTTPS
        connection's version and requested server name."""
        request = (method + b" " + target[:200] + b" HTTP/" + version).decode("latin-1")
        if self._json:
            self.record({"kind": "http", "client": client, "listener": listener,
                         "backend": backend, "server": server, "duration_ms": duration_ms,
                         "status": status, "bytes": body_bytes, "request": request,
                         "end": end, "worker": worker,
                         **({"tls": tls.version, "sni": tls.server_name} if tls else {})})
            return
        # The target is printable ASCII without quotes once validated: the JSON quoting (which
        # HAProxy's log parsers see as the quoted request line) is then just the two quotes.
        quoted = (f'"{request}"' if request.isprintable() and request.isascii()
                  and '"' not in request and "\\" not in request else json.dumps(request))
        self._append(f"{client} [{self._haproxy_clock.now()}] {listener} {backend}/{server} "
                     f"-1/-1/-1/-1/{duration_ms} {status} {body_bytes} - - ---- "
                     f"{quoted} end={end if end == 'ok' else quote(end)} worker={worker}"
                     + (tls.text if tls else ""))

    def _append(self, line: str) -> None:
        self._lines.append(line)
        if len(self._lines) >= _MAX_BATCH:
            self.flush()
        elif self._flush_handle is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._flush_handle = loop.call_later(FLUSH_DELAY, self.flush)

    def flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._lines:
            return
        self._lines.append("")  # the last line's newline
        data = "\n".join(self._lines).encode("utf-8", "backslashreplace")
        self._lines.clear()
        # Encoded and joined once, then cut at the last line end within each PIPE_BUF window
        # (one line longer than PIPE_BUF goes alone): a few calls per write, none per line.
        start, size = 0, len(data)
        while start < size:
            end = start + PIPE_BUF
            if end < size:
                cut = data.rfind(b"\n", start, end)
                end = (cut if cut >= 0 else data.find(b"\n", end)) + 1
            self._write(data[start:end])
            start = end

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except BlockingIOError:
                select.select([], [self._fd], [], 1.0)
                continue
            except OSError:
                return  # stdout gone (closed pipe): losing log lines must not stop the relay
            view = view[written:]
