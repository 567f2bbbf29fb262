"""What the container image would run, tested without a container engine.

The Dockerfile's build stage copies a list of files and runs one recipe on them,
deploy/image/build-venv.sh: the pinned runtime dependencies and the compiler into the building
Python, the compiled wheel, and a virtualenv without pip holding both. The runtime stage runs
``mta-ingress run`` from that virtualenv as uid 10001 on a read-only root filesystem, with all
capabilities dropped. These tests do the same on this machine: copy exactly the files the
Dockerfile copies, run the same recipe with a fresh virtualenv of Debian's Python standing for
the base image's, check the build is the compiled one, make the tree unwritable for the user
that runs it, and start the ingress from it as uid 10001 (``setpriv`` when the tests run as
root, as in CI) with the capability sets empty and ``no_new_privs`` set, as the Deployment's
securityContext has it.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.peers import _unavailable, free_port, require_binary, wait_for_port

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
# The Dockerfile's USER: the manifests' runAsUser says the same.
IMAGE_UID = 10001
# One pip step of the recipe (downloading the pins, compiling the request path) takes under a
# minute here; the limits leave room for a slow index without hanging CI.
PIP_TIMEOUT = 240.0
pytestmark = pytest.mark.timeout(PIP_TIMEOUT * 3 + 120)
START_TIMEOUT = 15.0


def build_stage_sources(dockerfile: str) -> list[str]:
    """The paths the build stage COPYs from the context (not ``COPY --from``), in order."""
    sources: list[str] = []
    stages = 0
    for line in dockerfile.splitlines():
        words = line.split()
        if not words:
            continue
        instruction = words[0].upper()
        if instruction == "FROM":
            stages += 1
            continue
        if stages == 1 and instruction == "COPY":
            if any(word.startswith("--from") for word in words[1:]):
                continue
            arguments = [word for word in words[1:] if not word.startswith("--")]
            sources.extend(arguments[:-1])
    return sources


@dataclass(frozen=True)
class ImageTree:
    root: Path
    venv: Path

    @property
    def entry_point(self) -> Path:
        return self.venv / "bin" / "mta-ingress"


@pytest.fixture(scope="module")
def image_tree() -> Iterator[ImageTree]:
    """The build stage's virtualenv, built once for this module.

    Under /tmp rather than pytest's tmp_path: pytest makes its directories private to the user
    running the tests, and uid 10001 must be able to read this one (it cannot write it)."""
    root = Path(tempfile.mkdtemp(prefix="mta-ingress-image-"))
    try:
        root.chmod(0o755)
        source = root / "src"
        source.mkdir()
        for name in build_stage_sources(DOCKERFILE.read_text()):
            origin = REPO / name
            if origin.is_dir():
                # As .dockerignore has it: no bytecode, no extension built in place here.
                shutil.copytree(origin, source / name,
                                ignore=shutil.ignore_patterns("__pycache__", "*.py[cod]", "*.so"))
            else:
                shutil.copy2(origin, source / name)
        # The Dockerfile's own recipe (its build stage RUNs deploy/image/build-venv.sh), with
        # Debian's Python, fresh, holding nothing but pip, standing for the base image's.
        assert "RUN sh deploy/image/build-venv.sh" in DOCKERFILE.read_text()
        if shutil.which("cc") is None:
            _unavailable("no C compiler: the image's build stage compiles the request path")
        base_python = Path(require_binary("python3.11")).resolve()
        builder = root / "builder"
        subprocess.run([str(base_python), "-m", "venv", str(builder)], check=True, timeout=120)
        venv = root / "venv"
        recipe = subprocess.run(
            ["sh", str(source / "deploy" / "image" / "build-venv.sh")],
            capture_output=True, text=True, timeout=PIP_TIMEOUT * 3, check=False,
            env={**os.environ, "PYTHON": str(builder / "bin" / "python"), "SRC": str(source),
                 "VENV": str(venv), "WHEELS": str(root / "wheels"),
                 "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_CACHE_DIR": "1"})
        if recipe.returncode != 0:
            pytest.fail(f"the image's recipe failed:\n{recipe.stdout[-4000:]}\n"
                        f"{recipe.stderr[-4000:]}", pytrace=False)
        # -I: neither the working directory (this checkout's pure-Python tree) nor PYTHONPATH
        # may stand in for what the virtualenv holds.
        build = subprocess.run([str(venv / "bin" / "python"), "-I", "-c",
                                "import ingress.process.server, ingress.process.build as b;"
                                " print(b.build_name())"],
                               capture_output=True, text=True, timeout=60, check=True, cwd="/")
        assert build.stdout.strip() == "compiled", build
        # COPY --from keeps modes; whatever the umask was here, the image's tree is world-
        # readable and root-owned.
        subprocess.run(["chmod", "-R", "a+rX,go-w", str(root)], check=True, timeout=60)
        yield ImageTree(root=root, venv=venv)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_dockerignore_admits_every_copied_path() -> None:
    # A COPY of a path the .dockerignore excludes fails the image build.
    sources = build_stage_sources(DOCKERFILE.read_text())
    assert sources, "the build stage copies nothing"
    ignore = (REPO / ".dockerignore").read_text().split()
    admitted = {line.removeprefix("!").rstrip("/") for line in ignore if line.startswith("!")}
    assert set(sources) <= admitted, f"excluded by .dockerignore: {set(sources) - admitted}"


def test_image_has_only_runtime_dependencies(image_tree: ImageTree) -> None:
    python = image_tree.venv / "bin" / "python"
    for absent in ("pytest", "pip", "mypy", "ruff", "hypothesis"):
        found = subprocess.run([str(python), "-c", f"import {absent}"], capture_output=True,
                               timeout=30, check=False)
        assert found.returncode != 0, f"{absent} is in the runtime environment"
    # Compiled at install time: nothing has to be written on the read-only root at run time.
    sources = list((image_tree.venv / "lib").glob("python3*/site-packages/ingress/*.py"))
    assert sources
    for module in sources:
        assert list((module.parent / "__pycache__").glob(f"{module.stem}.*.pyc")), module


def _as_image_user() -> list[str]:
    """The command prefix that runs a program as the image's user, as Kubernetes would."""
    if os.geteuid() != 0:
        # Already unprivileged: this user cannot write the root-owned tree either, unless the
        # tree is its own (then only the uid part of the check is weaker).
        return []
    setpriv = require_binary("setpriv")
    probe = subprocess.run(
        [setpriv, f"--reuid={IMAGE_UID}", f"--regid={IMAGE_UID}", "--clear-groups",
         "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--", "true"],
        capture_output=True, text=True, timeout=30, check=False)
    if probe.returncode != 0:
        _unavailable(f"setpriv cannot switch to uid {IMAGE_UID}: {probe.stderr.strip()}")
    return [setpriv, f"--reuid={IMAGE_UID}", f"--regid={IMAGE_UID}", "--clear-groups",
            "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--"]


def _config(ports: dict[str, int], admin_port: int, cert_dir: Path, closed_port: int) -> str:
    listeners = "".join(f'[listeners.{name}]\nbind = ["127.0.0.1:{port}"]\n\n'
                        for name, port in ports.items())
    # Backends on a loopback port where nothing listens: the preset's Service names would send
    # name lookups off the machine.
    backends = "".join(f'[backends.{name}]\nservers = ["127.0.0.1:{closed_port}"]\n\n'
                       for name in ("mta-smtp", "event-tracker-smtp", "mta-http",
                                    "event-tracker-http", "tls-http"))
    return (
        'preset = "greenarrow"\nrelease = "image-test"\nworkers = 1\n\n'
        f'{listeners}{backends}'
        f'[admin]\nbind = ["127.0.0.1:{admin_port}"]\n\n'
        f'[tls]\ncert_dir = "{cert_dir}"\n\n'
        '[timeouts]\ndrain = "0s"\ngrace = "2s"\n'
    )


def _get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^Uid:\s+(\d+)\s+(\d+)", status, re.MULTILINE)
    assert match is not None
    return int(match.group(2))  # the effective uid


def test_runs_as_non_root_from_the_image_tree(image_tree: ImageTree) -> None:
    prefix = _as_image_user()
    run = Path(tempfile.mkdtemp(prefix="run-", dir=image_tree.root))
    try:
        run.chmod(0o755)
        # The emptyDir mounted at /tmp: the one place the process may write.
        scratch = run / "tmp"
        scratch.mkdir()
        if prefix:
            os.chown(scratch, IMAGE_UID, IMAGE_UID)
        ports = {name: free_port() for name in (
            "smtp25", "smtp25-proxied", "smtp587", "smtp587-proxied",
            "http", "http-proxied", "https", "https-proxied")}
        admin_port = free_port()
        config = run / "ingress.toml"
        # No certificate directory: the self-signed fallback, as with the chart's empty volume.
        config.write_text(_config(ports, admin_port, run / "no-certificates", free_port()))
        config.chmod(0o644)
        environment = {
            "PATH": f"{image_tree.venv / 'bin'}:/usr/bin:/bin",
            "HOME": "/nonexistent",
            "TMPDIR": str(scratch),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        with open(run / "stdout", "wb") as stdout, open(run / "stderr", "wb") as stderr:
            process = subprocess.Popen(
                [*prefix, str(image_tree.entry_point), "run", "--config", str(config)],
                stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, env=environment,
                cwd="/")
        try:
            wait_for_port("127.0.0.1", ports["http"], timeout=START_TIMEOUT)
            if prefix:
                assert _uid_of(process.pid) == IMAGE_UID
            # The Deployment's readiness probe, then its liveness probe.
            assert _get(ports["http"], "/.kubernetes-readiness-probe") == (200, b"ready\n")
            assert _get(admin_port, "/livez")[0] == 200
            # What the kubelet sends after the preStop hook: drain 0 s, grace 2 s here.
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=20) == 0
        except (AssertionError, OSError, subprocess.TimeoutExpired, TimeoutError) as exc:
            log = (run / "stderr").read_text(errors="replace")
            pytest.fail(f"{exc!r}\n--- the ingress's stderr ---\n{log}", pytrace=False)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        errors = (run / "stderr").read_text(errors="replace")
        assert "Traceback" not in errors, errors
        # What the image runs is the compiled request path (ingress.process.build), not the
        # fallback.
        assert re.search(r'msg="ready" workers=1 build=compiled ', errors), errors
        assert "Permission denied" not in errors, errors
    finally:
        shutil.rmtree(run, ignore_errors=True)
