"""The container image itself, built from the Dockerfile and run with podman.

No registry is needed: the base image is made here from Debian's own packages (debootstrap,
bookworm, python3.11) and given to the Dockerfile as ``--build-arg PYTHON_IMAGE=``, with the
Python headers that such a base lacks added through ``BUILD_PACKAGES``. The image is then run
as the Deployment runs it: read-only root, /tmp a tmpfs, the certificate directory a read-only
volume, the supervisor as pid 1 of the container. Everything lives in a private podman storage
root that is removed afterwards, and the container shares the host's network only to listen on
loopback.

Two things about the machines this runs on are deliberate in the commands below:

- ``--ulimit`` is given explicitly, below this process's hard limits: podman otherwise asks the
  runtime for more open files than this process may have, and runc fails to set them.
- ``--runtime runc --cgroup-manager cgroupfs``: crun refuses a host with cgroups v1 and v2 mounted
  side by side, and there is no systemd to manage cgroups in a CI container.
"""

from __future__ import annotations

import faulthandler
import os
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.peers import _unavailable, free_port, require_binary, wait_for_port
from tests.integration.test_packaging import IMAGE_UID, _config, _get, _uid_of

REPO = Path(__file__).resolve().parents[2]
BASE_TAG = "localhost/mta-ingress-test-base:bookworm"
IMAGE_TAG = "localhost/mta-ingress:test"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
# What a python:3.11-slim-bookworm base has and a minimal Debian lacks: the interpreter, venv,
# the pip the build stage uses, and the CA bundle pip verifies PyPI with.
BASE_PACKAGES = "python3.11,python3.11-venv,python3-pip,ca-certificates"
# A cold debootstrap takes under a minute, a cold image build (pip downloads, mypyc) about three
# on a two-core machine; the limits leave room for a slow mirror without hanging CI.
DEBOOTSTRAP_TIMEOUT = 600.0
BUILD_TIMEOUT = 1200.0
START_TIMEOUT = 30.0

pytestmark = [pytest.mark.interop,
              pytest.mark.timeout(DEBOOTSTRAP_TIMEOUT + BUILD_TIMEOUT + 300)]


@dataclass(frozen=True)
class Podman:
    command: list[str]

    def __call__(self, *arguments: str, timeout: float = 120.0,
                 check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*self.command, *arguments], capture_output=True, text=True,
                              timeout=timeout, check=False)
        if check and done.returncode != 0:
            pytest.fail(f"podman {' '.join(arguments[:2])} failed ({done.returncode}):\n"
                        f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}", pytrace=False)
        return done


def _ulimits() -> list[str]:
    # podman asks runc for nofile 1048576, and runc fails when that is above this process's
    # hard limit; an nproc equal to the hard limit fails too (EPERM from setrlimit in the
    # container's init). Modest limits below the hard ones work on every machine seen so far.
    arguments = []
    for name, limit, wanted in (("nofile", resource.RLIMIT_NOFILE, 4096),
                                ("nproc", resource.RLIMIT_NPROC, 1024)):
        _soft, hard = resource.getrlimit(limit)
        value = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        arguments.append(f"--ulimit={name}={value}:{value}")
    return arguments


@pytest.fixture(scope="module")
def podman() -> Iterator[Podman]:
    if os.geteuid() != 0:
        _unavailable("building a base with debootstrap and running podman need root")
    for program in ("podman", "runc", "debootstrap"):
        require_binary(program)
    # /var/tmp: the vfs driver copies every layer in full, a few hundred megabytes each.
    storage = Path(tempfile.mkdtemp(prefix="mta-ingress-podman-", dir="/var/tmp"))
    command = [shutil.which("podman") or "podman",
               f"--root={storage / 'root'}", f"--runroot={storage / 'run'}",
               "--storage-driver=vfs", "--runtime=runc", "--cgroup-manager=cgroupfs",
               "--events-backend=file"]
    try:
        yield Podman(command)
    finally:
        subprocess.run([*command, "rm", "--all", "--force"], capture_output=True, timeout=120,
                       check=False)
        shutil.rmtree(storage, ignore_errors=True)


@pytest.fixture(scope="module")
def image(podman: Podman) -> str:
    # A build takes minutes by nature; pytest's faulthandler would dump every thread's stack
    # into the log at faulthandler_timeout. The module's timeout mark still bounds it.
    faulthandler.cancel_dump_traceback_later()
    with tempfile.TemporaryDirectory(prefix="rootfs-", dir="/var/tmp") as scratch:
        rootfs = Path(scratch) / "rootfs"
        bootstrap = subprocess.run(
            [require_binary("debootstrap"), "--variant=minbase", f"--include={BASE_PACKAGES}",
             DEBIAN_SUITE, str(rootfs), DEBIAN_MIRROR],
            capture_output=True, text=True, timeout=DEBOOTSTRAP_TIMEOUT, check=False)
        if bootstrap.returncode != 0:
            pytest.fail(f"debootstrap failed:\n{bootstrap.stdout[-3000:]}\n"
                        f"{bootstrap.stderr[-3000:]}", pytrace=False)
        archive = Path(scratch) / "rootfs.tar"
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(archive), "."], check=True,
                       timeout=300)
        podman("import", str(archive), BASE_TAG, timeout=300)
    build = ["build", *_ulimits(), "--network=host", "--pull=never",
             f"--build-arg=PYTHON_IMAGE={BASE_TAG}",
             "--build-arg=BUILD_PACKAGES=gcc libc6-dev python3.11-dev",
             f"--tag={IMAGE_TAG}", "--file", str(REPO / "Dockerfile")]
    # pip in the build stage verifies PyPI against the base's CA bundle; where this machine's
    # own bundle holds more (an intercepting proxy's CA), it is the one that works here.
    host_bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if host_bundle.is_file():
        build.append(f"--volume={host_bundle}:{host_bundle}:ro")
    podman(*build, str(REPO), timeout=BUILD_TIMEOUT)
    return IMAGE_TAG


@dataclass(frozen=True)
class RunningImage:
    container: str
    host_pid: int
    http_port: int
    admin_port: int


@pytest.fixture
def running(podman: Podman, image: str) -> Iterator[RunningImage]:
    run = Path(tempfile.mkdtemp(prefix="mta-ingress-run-", dir="/var/tmp"))
    try:
        run.chmod(0o755)
        certs = run / "tls"
        certs.mkdir(mode=0o755)
        ports = {"http": free_port(), "smtp25": free_port()}
        admin_port = free_port()
        config = run / "ingress.toml"
        config.write_text(_config(ports, admin_port, Path("/mnt/tls"), free_port()))
        config.chmod(0o644)
        started = podman(
            "run", "--detach", *_ulimits(), "--network=host", "--read-only", "--tmpfs=/tmp",
            f"--volume={config}:/etc/mta-ingress/ingress.toml:ro",
            f"--volume={certs}:/mnt/tls:ro",
            image, "run", "--config", "/etc/mta-ingress/ingress.toml")
        container = started.stdout.strip()
        try:
            try:
                wait_for_port("127.0.0.1", admin_port, timeout=START_TIMEOUT)
            except Exception:
                logs = podman("logs", container, check=False)
                pytest.fail(f"the image did not start:\n{logs.stdout}{logs.stderr}",
                            pytrace=False)
            pid = podman("inspect", "--format={{.State.Pid}}", container).stdout.strip()
            yield RunningImage(container=container, host_pid=int(pid),
                               http_port=ports["http"], admin_port=admin_port)
        finally:
            podman("rm", "--force", container, check=False)
    finally:
        shutil.rmtree(run, ignore_errors=True)


def _wait_ready(admin_port: int) -> tuple[int, bytes]:
    deadline = time.monotonic() + START_TIMEOUT
    status, body = 0, b""
    while time.monotonic() < deadline:
        status, body = _get(admin_port, "/readyz")
        if status == 200:
            break
        time.sleep(0.2)
    return status, body


def test_image_serves_as_its_user_on_a_read_only_root(podman: Podman,
                                                      running: RunningImage) -> None:
    assert _wait_ready(running.admin_port) == (200, b"ready\n")
    # The supervisor is the container's pid 1, as the kubelet's SIGTERM expects it.
    status = Path(f"/proc/{running.host_pid}/status").read_text()
    namespace_pids = next(line for line in status.splitlines() if line.startswith("NSpid:"))
    assert namespace_pids.split()[-1] == "1", namespace_pids
    assert _uid_of(running.host_pid) == IMAGE_UID
    # Every backend is down: the listener answers at once, the way the contract says.
    assert _get(running.http_port, "/")[0] == 503
    logs = podman("logs", running.container)
    assert "build=compiled" in logs.stdout + logs.stderr
    # Nothing in the image can be written, installed or compiled at run time.
    write = podman("exec", running.container, "sh", "-c", "touch /opt/mta-ingress/probe",
                   check=False)
    assert write.returncode != 0, write
    assert "Read-only file system" in write.stderr, write
    for absent in ("python3 -m pip --version", "command -v cc gcc"):
        found = podman("exec", running.container, "sh", "-c", absent, check=False)
        assert found.returncode != 0, (absent, found)


def test_image_stops_cleanly(podman: Podman, running: RunningImage) -> None:
    assert _wait_ready(running.admin_port)[0] == 200
    began = time.monotonic()
    podman("stop", "--time=10", running.container, timeout=30)
    stopped_in = time.monotonic() - began
    exit_code = podman("inspect", "--format={{.State.ExitCode}}", running.container)
    assert exit_code.stdout.strip() == "0"
    # Under the grace the config gives (2 s), not podman's kill after 10.
    assert stopped_in < 5.0, stopped_in
    logs = podman("logs", running.container)
    assert 'msg="stopped"' in logs.stdout + logs.stderr
