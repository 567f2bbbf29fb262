"""HTTP/1.1 messages for the proxy's per-request path (RFC 9112), sans-IO.

Theory of operation
-------------------
A request smuggling hole opens wherever two parsers on the path disagree about where a message
ends. This module is therefore the strictest parser on the path: whatever it accepts, llhttp
(httptools), h11 and Apache all read the same way; everything ambiguous is an ``HttpError``
whose ``status`` is the answer to send (4xx for requests, 502 for responses) and whose
``reason`` is a stable label for logs and metrics.

The parts, each its own module:

* ``message``: the types every part shares: the heads, body events, ``Limits``, ``HttpError``
  (the error that carries the status to answer with and a stable reason), and the serializers.
* ``rules``: the pure rules, over parsed fields and over a raw head: what is refused, and the
  framing a valid head asks for.
* ``parser``: the general parsers, ``RequestParser`` and ``ResponseParser``, which own framing.
* ``fast``: the fast path for one common message in one read, a strict subset of the general
  path that builds the same head.

Importers use this package's names; the modules import one another only downwards:
message <- rules <- fast <- parser.
"""

from __future__ import annotations

from ingress.protocol.http1.fast import fast_request, fast_response
from ingress.protocol.http1.message import (
    LAST_CHUNK,
    Data,
    EndOfMessage,
    HttpError,
    Limits,
    RequestHead,
    ResponseHead,
    chunk,
    serialize_request_head,
    serialize_response_head,
)
from ingress.protocol.http1.parser import RequestParser, ResponseParser
from ingress.protocol.http1.rules import (
    FORWARDED_FIELDS,
    FORWARDED_PROTO_FIELDS,
    HOP_BY_HOP,
    response_has_body,
    validate_request,
    validate_response,
)

__all__ = [
    "FORWARDED_FIELDS",
    "FORWARDED_PROTO_FIELDS",
    "HOP_BY_HOP",
    "LAST_CHUNK",
    "Data",
    "EndOfMessage",
    "HttpError",
    "Limits",
    "RequestHead",
    "RequestParser",
    "ResponseHead",
    "ResponseParser",
    "chunk",
    "fast_request",
    "fast_response",
    "response_has_body",
    "serialize_request_head",
    "serialize_response_head",
    "validate_request",
    "validate_response",
]
