"""Access log: one line per TCP session and per HTTP request on stdout, in HAProxy's layouts.

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


def _counts_fields(active: int, frontend: int, backend: int, server: int,
                   retries: int) -> dict[str, Any]:
    """The JSON layout's names (HAProxy's) for the ``%ac/%fc/%bc/%sc/%rc %sq/%bq`` fields."""
    return {"actconn": active, "feconn": frontend, "beconn": backend, "srv_conn": server,
            "retries": retries, "srv_queue": 0, "backend_queue": 0}


def address_text(address: tuple[str, int] | None, missing: str = "-") -> str:
    """``host:port``, with an IPv6 host in brackets, as every log line and the stubs write it."""
    if address is None:
        return missing
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def log_address(address: tuple[str, int] | None) -> str:
    """``host:port`` as HAProxy's ``%ci:%cp`` writes it, an IPv6 host without brackets (its log
    parsers split at the last colon), for the access log."""
    if address is None:
        return "-"
    return f"{address[0]}:{address[1]}"


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
        return self.at(time.time())

    def at(self, moment: float) -> str:
        second = int(moment)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime(self._format, time.gmtime(second))
        return self._prefix + self._millis[min(int((moment - second) * 1000), 999)]


# With log_normal off (HAProxy's dontlog-normal), a line is written only for an error: a
# termination state whose first letter (what ended the session) is neither "-" (nothing) nor
# "L" (the proxy answered locally), a retry, or a 5xx status. HAProxy's rule (its strm_log).
_NOT_ERRORS = ("-", "L")


def is_normal(termination: str, retries: int, status: int = 0) -> bool:
    return termination[:1] in _NOT_ERRORS and not retries and status < 500


# HAProxy's names for a request answered without a server and for a request it could not parse,
# in the server and request-line fields of its log.
NO_SERVER = "<NOSRV>"
BAD_REQUEST = "<BADREQ>"

# What HAProxy's connection-error line says for the ways a connection ends before it is a
# session (its "frontend/bind: message" lines); an unlisted reason is written as it is.
_CONNECTION_ERRORS = {
    "bad-proxy-header": "Received something which does not look like a PROXY protocol header",
    "proxy-header-timeout": "Timeout while waiting for PROXY protocol header",
    "client-closed-before-proxy-header": "Connection closed while waiting for PROXY protocol "
                                         "header",
}


def connection_error_message(reason: str) -> str:
    message = _CONNECTION_ERRORS.get(reason)
    if message is not None:
        return message
    return "SSL handshake failure" if reason.startswith("tls") else reason


class AccessLog:
    """The worker's access log, and the worker's connection counts that its lines carry (the
    ``actconn`` and ``feconn`` fields of HAProxy's layouts): one object per worker, so both are
    per worker."""

    def __init__(self, log_format: str = "logfmt", fd: int = 1, *,
                 log_normal: bool = True) -> None:
        """``log_normal`` False is HAProxy's ``option dontlog-normal``: a request or TCP
        session that ended normally (``is_normal``) writes no line; errors, timeouts,
        retries, 5xx answers, rejections and connection errors are written as always, and so
        are egress sessions, the record of which client sent from which address."""
        self._json = log_format == "json"
        self._log_normal = log_normal
        self._fd = fd
        self._lines: list[str] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self._clock = _Clock("%Y-%m-%dT%H:%M:%S", "Z")  # ISO 8601, UTC
        self._haproxy_clock = _Clock("%d/%b/%Y:%H:%M:%S")  # HAProxy's accept date
        self.active = 0  # the worker's client connections open now, all listeners
        self._frontends: dict[str, int] = {}

    def connection_opened(self, frontend: str) -> None:
        self.active += 1
        frontends = self._frontends
        frontends[frontend] = frontends.get(frontend, 0) + 1

    def connection_closed(self, frontend: str) -> None:
        self.active -= 1
        frontends = self._frontends
        frontends[frontend] = frontends.get(frontend, 1) - 1

    def record(self, fields: dict[str, Any]) -> None:
        fields = {"ts": self._clock.now(), **fields}
        if self._json:
            line = json.dumps(fields, separators=(",", ":"))
        else:
            line = " ".join(f"{key}={quote(str(value))}" for key, value in fields.items())
        self._append(line)

    def tcp_session(self, *, frontend: str, client: str, backend: str, server: str,
                    queue_ms: int, connect_ms: int, total_ms: int, bytes_out: int,
                    bytes_in: int, termination: str, backend_connections: int,
                    server_connections: int, retries: int, end: str, worker: int,
                    detail: str) -> None:
        """One line per TCP session, in HAProxy's ``option tcplog`` layout (``%ci:%cp [%t] %ft
        %b/%s %Tw/%Tc/%Tt %B %ts %ac/%fc/%bc/%sc/%rc %sq/%bq``), then our fields.  Every value
        but ``detail`` is a configured name, an address or a number, none of which needs
        quoting: the line is one f-string, since this runs once per SMTP session."""
        if not self._log_normal and is_normal(termination, retries):
            return
        accepted = self._haproxy_clock.at(time.time() - total_ms / 1000)
        open_here = self._frontends.get(frontend, 0)
        if self._json:
            fields: dict[str, Any] = {
                "kind": "tcp", "client": client, "accept_date": accepted, "frontend": frontend,
                "listener": frontend, "backend": backend, "server": server,
                "time_queue": queue_ms, "time_connect": connect_ms, "time_total": total_ms,
                "bytes_read": bytes_out, "termination_state": termination,
                **_counts_fields(self.active, open_here, backend_connections,
                                 server_connections, retries),
                "bytes_in": bytes_in, "bytes_out": bytes_out,
                "duration_ms": total_ms, "end": end, "worker": worker}
            if detail:
                fields["detail"] = detail
            self.record(fields)
            return
        line = (f"{client} [{accepted}] {frontend} {backend}/{server} "
                f"{queue_ms}/{connect_ms}/{total_ms} {bytes_out} {termination} "
                f"{self.active}/{open_here}/{backend_connections}/{server_connections}/"
                f"{retries} 0/0 "
                f"end={end} bytes_in={bytes_in} worker={worker}")
        if detail:
            line = f"{line} detail={quote(detail)}"
        self._append(line)

    def egress_session(self, *, listener: str, client: str, user: str, source: str,
                       destination: str, bytes_to_remote: int, bytes_to_client: int,
                       connect_ms: int, duration_ms: int, end: str, reason: str, worker: int,
                       detail: str) -> None:
        """One line per egress session (HAProxy has no layout for what a SOCKS5 session
        carries): who, as whom, from which source to which remote, the bytes each way, how long
        and how it ended; ``reason`` when it was refused, ``detail`` when there is more to say.
        ``user`` is the RFC 1929 name, ``-`` without one. logfmt (or JSON) like the program's
        own lines; the logfmt line is one f-string, as tcp_session's, since all but ``user`` and
        ``detail`` are names, addresses and numbers that need no quoting."""
        if not self._json:
            line = (f"ts={self._clock.now()} kind=egress listener={listener} client={client} "
                    f"user={quote(user)} source={source} destination={destination} "
                    f"bytes_to_remote={bytes_to_remote} bytes_to_client={bytes_to_client} "
                    f"connect_ms={connect_ms} duration_ms={duration_ms} end={end} "
                    f"worker={worker}")
            if reason:
                line = f"{line} reason={reason}"
            if detail:
                line = f"{line} detail={quote(detail)}"
            self._append(line)
            return
        fields: dict[str, Any] = {
            "kind": "egress", "listener": listener, "client": client, "user": user,
            "source": source, "destination": destination, "bytes_to_remote": bytes_to_remote,
            "bytes_to_client": bytes_to_client, "connect_ms": connect_ms,
            "duration_ms": duration_ms, "end": end, "worker": worker}
        if reason:
            fields["reason"] = reason
        if detail:
            fields["detail"] = detail
        self.record(fields)

    def connection_error(self, *, frontend: str, client: str, end: str, reason: str,
                         detail: str, worker: int, age_ms: int = 0) -> None:
        """A connection that ended before it carried a request or a session (a bad or late
        PROXY header, a failed TLS handshake), as HAProxy's connection-error line
        (``%ci:%cp [%t] %ft/%bind: message``; our listeners have one bind each, HAProxy's first
        is ``1``), then our fields: ``end``, and ``reason`` when it says more; ``detail`` is
        cut at 200 characters."""
        accepted = self._haproxy_clock.at(time.time() - age_ms / 1000)
        message = connection_error_message(reason)
        if self._json:
            self.record({"kind": "error", "client": client, "accept_date": accepted,
                         "frontend": frontend, "listener": frontend, "message": message,
                         "end": end, "reason": reason, "detail": detail[:200],
                         "worker": worker})
            return
        line = f"{client} [{accepted}] {frontend}/1: {message} end={quote(end)}"
        if reason != end:
            line = f"{line} reason={quote(reason)}"
        line = f"{line} worker={worker}"
        if detail:
            line = f"{line} detail={quote(detail[:200])}"
        self._append(line)

    def http_rejection(self, *, listener: str, client: str, status: int, reason: str,
                       detail: str, worker: int, termination: str = "PR--",
                       request_ms: int = -1, active_ms: int = 0, bytes_read: int = 0,
                       tls: TlsFields | None = None) -> None:
        """A request refused before any backend saw it (malformed, too large, too slow), in
        the httplog layout with HAProxy's ``<NOSRV>`` and ``"<BADREQ>"``; a connection refused
        before any request (``status`` 0) gets the connection-error line.  ``detail`` is cut
        at 200 characters."""
        if status == 0:
            self.connection_error(frontend=listener, client=client, end="rejected",
                                  reason=reason, detail=detail, worker=worker,
                                  age_ms=active_ms)
            return
        frontend = listener + "~" if tls is not None else listener
        accepted = self._haproxy_clock.at(time.time() - active_ms / 1000)
        open_here = self._frontends.get(listener, 0)
        if self._json:
            self.record({"kind": "http", "client": client, "accept_date": accepted,
                         "frontend": frontend, "listener": listener, "backend": listener,
                         "server": NO_SERVER, "time_request": request_ms, "time_queue": -1,
                         "time_connect": -1, "time_response": -1, "time_active": active_ms,
                         "status": status, "bytes_read": bytes_read,
                         "termination_state": termination,
                         **_counts_fields(self.active, open_here, 0, 0, 0),
                         "request": BAD_REQUEST, "end": "rejected", "reason": reason,
                         "detail": detail[:200], "worker": worker,
                         **({"tls": tls.version, "sni": tls.server_name} if tls else {})})
            return
        line = (f"{client} [{accepted}] {frontend} {listener}/{NO_SERVER} "
                f"{request_ms}/-1/-1/-1/{active_ms} {status} {bytes_read} - - {termination} "
                f'{self.active}/{open_here}/0/0/0 0/0 "{BAD_REQUEST}" end=rejected '
                f"reason={quote(reason)} "
                f"worker={worker}")
        if detail:
            line = f"{line} detail={quote(detail[:200])}"
        self._append(line + (tls.text if tls else ""))

    def http_request(self, *, client: str, listener: str, backend: str, server: str,
                     request_ms: int, queue_ms: int, connect_ms: int, response_ms: int,
                     active_ms: int, status: int, bytes_read: int, termination: str,
                     backend_connections: int, server_connections: int, retries: int,
                     method: bytes, target: bytes, version: bytes, end: str, worker: int,
                     tls: TlsFields | None = None) -> None:
        """One line per HTTP request, in HAProxy's ``option httplog`` layout (``%ci:%cp [%tr]
        %ft %b/%s %TR/%Tw/%Tc/%Tr/%Ta %ST %B %CC %CS %tsc %ac/%fc/%bc/%sc/%rc %sq/%bq
        %{+Q}r``), then our fields, so that log pipelines built for the KRA HAProxy keep
        parsing it.  There are no queues, cookies or captures: those fields are ``0`` and
        ``-``.  The request target is cut at 200 bytes.  ``tls``: an HTTPS connection's
        version and requested server name (its frontend is written with HAProxy's ``~``)."""
        if not self._log_normal and is_normal(termination, retries, status):
            return
        request = (method + b" " + target[:200] + b" HTTP/" + version).decode("latin-1")
        accepted = self._haproxy_clock.at(time.time() - active_ms / 1000)
        frontend = listener + "~" if tls is not None else listener
        open_here = self._frontends.get(listener, 0)
        if self._json:
            self.record({"kind": "http", "client": client, "accept_date": accepted,
                         "frontend": frontend, "listener": listener, "backend": backend,
                         "server": server, "time_request": request_ms, "time_queue": queue_ms,
                         "time_connect": connect_ms, "time_response": response_ms,
                         "time_active": active_ms, "status": status, "bytes_read": bytes_read,
                         "termination_state": termination,
                         **_counts_fields(self.active, open_here, backend_connections,
                                          server_connections, retries),
                         "request": request, "duration_ms": active_ms, "end": end,
                         "worker": worker,
                         **({"tls": tls.version, "sni": tls.server_name} if tls else {})})
            return
        # The target is printable ASCII without quotes once validated: the JSON quoting (which
        # HAProxy's log parsers see as the quoted request line) is then just the two quotes.
        quoted = (f'"{request}"' if request.isprintable() and request.isascii()
                  and '"' not in request and "\\" not in request else json.dumps(request))
        self._append(f"{client} [{accepted}] {frontend} {backend}/{server} "
                     f"{request_ms}/{queue_ms}/{connect_ms}/{response_ms}/{active_ms} "
                     f"{status} {bytes_read} - - {termination} {self.active}/{open_here}/"
                     f"{backend_connections}/{server_connections}/{retries} 0/0 "
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
