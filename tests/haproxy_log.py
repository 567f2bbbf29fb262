"""HAProxy's log layouts as the log pipelines of its users parse them, for tests to hold lines
of HAProxy and of mta-ingress against.

The fields and their shapes are those of HAProxy 2.6's documentation (section 8.2.3 "HTTP log
format", 8.2.2 "TCP log format", 8.2.6 "Error log format"), written as the stock parsers of log
shippers read them (Logstash's grok ``HAPROXYHTTPBASE`` and ``HAPROXYTCP``, Vector's and Fluent
Bit's haproxy parsers): a prefix match, so that what follows the last standard field (our
``end=`` and ``worker=``) does not stop a line from parsing, as it does not stop those.
"""

from __future__ import annotations

import re

_DATE = r"\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d\.\d{3}"
# An address as HAProxy writes %ci:%cp: IPv4 or bracketless IPv6, a colon, the port.
_CLIENT = r"(?P<client_ip>[0-9a-fA-F.:]+):(?P<client_port>\d+)"
_COUNTS = (r"(?P<actconn>\d+)/(?P<feconn>\d+)/(?P<beconn>\d+)/(?P<srv_conn>\d+)/"
           r"(?P<retries>\+?\d+) (?P<srv_queue>\d+)/(?P<backend_queue>\d+)")

HTTPLOG = re.compile(
    rf"{_CLIENT} \[(?P<accept_date>{_DATE})\] (?P<frontend>\S+) "
    r"(?P<backend>\S+)/(?P<server>\S+) "
    r"(?P<time_request>-?\d+)/(?P<time_queue>-?\d+)/(?P<time_connect>-?\d+)/"
    r"(?P<time_response>-?\d+)/(?P<time_active>\+?\d+) "
    r"(?P<status>-?\d+) (?P<bytes_read>\+?\d+) (?P<request_cookie>\S+) "
    r"(?P<response_cookie>\S+) (?P<termination_state>[-A-Za-z]{4}) "
    rf"{_COUNTS} "
    r'"(?P<request>[^"\\]*(?:\\.[^"\\]*)*)"')

TCPLOG = re.compile(
    rf"{_CLIENT} \[(?P<accept_date>{_DATE})\] (?P<frontend>\S+) "
    r"(?P<backend>\S+)/(?P<server>\S+) "
    r"(?P<time_queue>-?\d+)/(?P<time_connect>-?\d+)/(?P<time_total>\+?\d+) "
    r"(?P<bytes_read>\+?\d+) (?P<termination_state>[-A-Za-z]{2}) "
    rf"{_COUNTS}")

# A connection that ended before it was a session: a failed TLS handshake, a bad PROXY header.
CONNECTION_ERROR = re.compile(
    rf"{_CLIENT} \[(?P<accept_date>{_DATE})\] (?P<frontend>[^\s/]+)/(?P<bind>\S+): "
    r"(?P<message>.+?)(?= end=|$)")


def parse(pattern: re.Pattern[str], line: str) -> dict[str, str]:
    """The fields of ``line``, which must start with ``pattern`` and go on, if at all, after a
    space (our fields); an AssertionError that shows the line otherwise."""
    match = pattern.match(line)
    assert match is not None, f"not in HAProxy's layout: {line!r}"
    rest = line[match.end():]
    assert rest == "" or rest.startswith(" "), f"the layout runs into what follows: {line!r}"
    return match.groupdict()


def extras(line: str) -> dict[str, str]:
    """Our ``key=value`` fields after the layout's last one (values bare or JSON-quoted)."""
    found: dict[str, str] = {}
    for key, quoted, bare in re.findall(r' ([a-z_]+)=(?:"((?:[^"\\]|\\.)*)"|(\S*))', line):
        found[key] = quoted or bare
    return found
