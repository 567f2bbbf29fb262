"""The single-node demo: the ingress in front of stub GreenArrow SMTP services, on loopback.

Ports are a block starting at ``--base-port`` (default 20000):

    base+25   SMTP, like the ingress's port 25 (to the Event Tracker stub)
    base+587  SMTP, like port 587 (to the MTA stub)
    base+1025, base+1587   the same two with an inbound PROXY header required
    base+2025, base+2587   the stubs themselves (they require a PROXY header)

The stubs answer with the client address the PROXY header gave them, so each reply shows the
address travelling through the ingress.  Ctrl-C stops everything.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
from pathlib import Path

from ingress import config, server
from ingress.stub_smtp import StubStats, factory

GUIDE = """\
mta-ingress demo on loopback. Try, in another terminal:

  swaks --server 127.0.0.1:{smtp587} --to someone@example.org      # to the MTA stub, port 587
  swaks --server 127.0.0.1:{smtp25} --to bounce@example.org         # to the Event Tracker stub

or with Python's smtplib:

  python3 -c 'import smtplib; s = smtplib.SMTP("127.0.0.1", {smtp587}); print(s.ehlo()); s.quit()'

The stub's banner and EHLO reply name the client address it received in the PROXY header:
your own address, not the ingress's. With an outer load balancer's PROXY header (port {proxied}):

  swaks --server 127.0.0.1:{proxied} --to someone@example.org \\
        --proxy 'TCP4 203.0.113.7 127.0.0.1 40000 587'

One access-log line per session is printed below. Ctrl-C stops the demo.
"""


def demo_config_text(base_port: int) -> str:
    return f"""\
preset = "none"
workers = 1

[timeouts]
drain = "0s"
grace = "5s"

[listeners.smtp25]
bind = ["127.0.0.1:{base_port + 25}"]
backend = "event-tracker-smtp"

[listeners.smtp587]
bind = ["127.0.0.1:{base_port + 587}"]
backend = "mta-smtp"

[listeners.smtp25-proxied]
bind = ["127.0.0.1:{base_port + 1025}"]
accept_proxy = true
backend = "event-tracker-smtp"

[listeners.smtp587-proxied]
bind = ["127.0.0.1:{base_port + 1587}"]
accept_proxy = true
backend = "mta-smtp"

[backends.event-tracker-smtp]
servers = ["127.0.0.1:{base_port + 2025}"]
send_proxy = "v1"

[backends.mta-smtp]
servers = ["127.0.0.1:{base_port + 2587}"]
send_proxy = "v1"

[admin]
bind = ["127.0.0.1:{base_port + 81}"]
"""


async def _run_stubs(base_port: int) -> None:
    loop = asyncio.get_running_loop()
    stats = StubStats()
    servers = [
        await loop.create_server(factory("event-tracker.demo", stats, expect_proxy=True),
                                 "127.0.0.1", base_port + 2025),
        await loop.create_server(factory("mta.demo", stats, expect_proxy=True),
                                 "127.0.0.1", base_port + 2587),
    ]
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    for stub in servers:
        stub.close()


def _stub_process(base_port: int) -> int:
    import uvloop

    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            uvloop.run(_run_stubs(base_port))
        except OSError as error:
            print(f"demo: cannot start the stub services: {error}", file=sys.stderr)
            code = 1
        finally:
            os._exit(code)
    return pid


def main(base_port: int = 20000) -> int:
    if not 1024 <= base_port <= 60000:
        print("demo: --base-port must be between 1024 and 60000", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="mta-ingress-demo-") as workdir:
        path = Path(workdir) / "demo.toml"
        path.write_text(demo_config_text(base_port))
        effective = config.load(path, environ={})
        stubs = _stub_process(base_port)
        print(GUIDE.format(smtp587=base_port + 587, smtp25=base_port + 25,
                           proxied=base_port + 1587), flush=True)
        try:
            return server.serve(effective)
        finally:
            try:
                os.kill(stubs, signal.SIGTERM)
                os.waitpid(stubs, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
