"""The exactly-once check of the load test (pure): what locust says it sent against what the
counting backends say they received.

Locust's side is its *ledger* (``loadtest/locustfile.py`` writes it): one JSON object a line per
logical request or message, written once it is settled::

    {"id": "...", "kind": "http"|"smtp", "service": "mta", "client": "203.0.113.7",
     "ok": true, "t0": 1700000000.1, "t1": 1700000000.2, "attempts": 1, "ambiguous": false,
     "error": null, "name": "click http"}

``client`` is the address the backend must see (the PROXY header's, or the loopback source the
client bound), or null when the client cannot know it (no bound source against a remote host).
``ambiguous`` marks an SMTP message of which at least one attempt sent the whole DATA but never
read the reply: the backend may have queued it, so a retry can deliver it twice, and that
duplicate is the protocol's, not the ingress's (RFC 5321 section 4.5.3.1.7 allows no better).

The backends' side is each service's id log (``GET /_stub/received`` of its HTTP stub):
``(kind, id, client)`` in arrival order, plus arrivals that carried no id.

``compare`` sorts every id into the verdicts of ``Comparison``; a run passes when nothing is
lost, duplicated (unless ambiguous), misrouted, wrongly addressed or unknown, no log dropped
entries, and every failure is explained: a failed HTTP request whose span overlaps a fault
window and that arrived at most once, where it should.  An SMTP message that locust gave up on
is always a failure: the promise is that no message is lost, whatever the fault.
"""

from __future__ import annotations

import ipaddress
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Sent:
    ident: str
    kind: str
    service: str
    client: str | None
    ok: bool
    t0: float
    t1: float
    name: str = ""
    attempts: int = 1
    ambiguous: bool = False
    error: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Sent:
        return cls(ident=str(data["id"]), kind=str(data["kind"]), service=str(data["service"]),
                   client=None if data.get("client") is None else str(data["client"]),
                   ok=bool(data["ok"]), t0=float(data["t0"]), t1=float(data["t1"]),
                   name=str(data.get("name", "")), attempts=int(data.get("attempts", 1)),
                   ambiguous=bool(data.get("ambiguous", False)),
                   error=None if data.get("error") is None else str(data["error"]))

    def to_json(self) -> dict[str, Any]:
        return {"id": self.ident, "kind": self.kind, "service": self.service,
                "client": self.client, "ok": self.ok, "t0": self.t0, "t1": self.t1,
                "name": self.name, "attempts": self.attempts, "ambiguous": self.ambiguous,
                "error": self.error}


@dataclass(frozen=True, slots=True)
class Arrival:
    service: str
    kind: str
    ident: str
    client: str


@dataclass(frozen=True, slots=True)
class ServiceLog:
    """One service's ``/_stub/received`` answer."""

    service: str
    arrivals: tuple[Arrival, ...]
    unidentified: int
    dropped: int

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ServiceLog:
        service = str(data["service"])
        arrivals = tuple(Arrival(service, str(kind), str(ident), str(client))
                         for kind, ident, client in data["entries"])
        return cls(service, arrivals, sum(int(n) for n in data["unidentified"].values()),
                   int(data["dropped"]))


def same_address(expected: str, seen: str) -> bool:
    """Whether two address texts name the same IP (``2001:db8::1`` and ``2001:db8:0::1``, or a
    bracketed form, are one); texts that are not addresses compare as strings."""
    try:
        return ipaddress.ip_address(expected.strip("[]")) == ipaddress.ip_address(seen.strip("[]"))
    except ValueError:
        return expected == seen


@dataclass(slots=True)
class Comparison:
    sent_ok: int = 0
    sent_failed: int = 0
    received: int = 0
    # ids locust counted as successful that no backend received
    lost: list[str] = field(default_factory=list)
    # ids received more than once where the protocol does not excuse it
    duplicated: list[str] = field(default_factory=list)
    # duplicates of ambiguous SMTP messages (see the module docstring): reported, not failures
    ambiguous_duplicates: list[str] = field(default_factory=list)
    # ids received by another service or over another protocol than the one they were sent to
    misrouted: list[str] = field(default_factory=list)
    # ids received with a client address other than the one the client used
    wrong_address: list[str] = field(default_factory=list)
    # ids received that locust never sent, and arrivals without any id
    unknown: list[str] = field(default_factory=list)
    unidentified: int = 0
    dropped: int = 0
    # failed requests that overlap a fault window and arrived at most once where they should
    failed_explained: list[str] = field(default_factory=list)
    # of those, how many reached the backend anyway (the answer was lost on the way back)
    failed_arrived: int = 0
    failed_unexplained: list[str] = field(default_factory=list)
    retried_messages: int = 0

    @property
    def passed(self) -> bool:
        return not (self.lost or self.duplicated or self.misrouted or self.wrong_address
                    or self.unknown or self.unidentified or self.dropped
                    or self.failed_unexplained)

    def problems(self) -> list[str]:
        """One line per kind of failure, with up to five example ids."""
        lines = []
        for label, ids in (("lost", self.lost), ("duplicated", self.duplicated),
                           ("misrouted", self.misrouted), ("wrong address", self.wrong_address),
                           ("unknown arrivals", self.unknown),
                           ("unexplained failures", self.failed_unexplained)):
            if ids:
                lines.append(f"{label}: {len(ids)} (e.g. {', '.join(sorted(ids)[:5])})")
        if self.unidentified:
            lines.append(f"arrivals without an id: {self.unidentified}")
        if self.dropped:
            lines.append(f"id log entries dropped (log full): {self.dropped}")
        return lines

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "sent_ok": self.sent_ok, "sent_failed": self.sent_failed,
                "received": self.received, "lost": self.lost, "duplicated": self.duplicated,
                "ambiguous_duplicates": self.ambiguous_duplicates, "misrouted": self.misrouted,
                "wrong_address": self.wrong_address, "unknown": self.unknown,
                "unidentified": self.unidentified, "dropped": self.dropped,
                "failed_explained": self.failed_explained, "failed_arrived": self.failed_arrived,
                "failed_unexplained": self.failed_unexplained,
                "retried_messages": self.retried_messages}


def in_window(sent: Sent, windows: Sequence[tuple[float, float]]) -> bool:
    return any(sent.t0 <= end and sent.t1 >= start for start, end in windows)


def compare(sent: Iterable[Sent], logs: Iterable[ServiceLog],
            fault_windows: Sequence[tuple[float, float]] = ()) -> Comparison:
    result = Comparison()
    ledger: dict[str, Sent] = {}
    for record in sent:
        if record.ident in ledger:
            # The client reused an id: every later verdict about it would be meaningless.
            result.duplicated.append(record.ident)
            continue
        ledger[record.ident] = record
    arrivals: dict[str, list[Arrival]] = defaultdict(list)
    for log in logs:
        result.unidentified += log.unidentified
        result.dropped += log.dropped
        for arrival in log.arrivals:
            result.received += 1
            arrivals[arrival.ident].append(arrival)
    for ident in arrivals.keys() - ledger.keys():
        result.unknown.append(ident)
    for ident, record in ledger.items():
        seen = arrivals.get(ident, [])
        if record.ok:
            result.sent_ok += 1
        else:
            result.sent_failed += 1
        if record.attempts > 1:
            result.retried_messages += 1
        if any(a.service != record.service or a.kind != record.kind for a in seen):
            result.misrouted.append(ident)
        if record.client is not None and any(not same_address(record.client, a.client)
                                             for a in seen):
            result.wrong_address.append(ident)
        if len(seen) > 1:
            if record.ambiguous:
                result.ambiguous_duplicates.append(ident)
            else:
                result.duplicated.append(ident)
        if record.ok:
            if not seen:
                result.lost.append(ident)
        elif record.kind == "http" and in_window(record, fault_windows):
            result.failed_explained.append(ident)
            result.failed_arrived += 1 if seen else 0
        else:
            result.failed_unexplained.append(ident)
    return result


def read_ledger(lines: Iterable[str]) -> list[Sent]:
    return [Sent.from_json(json.loads(line)) for line in lines if line.strip()]
