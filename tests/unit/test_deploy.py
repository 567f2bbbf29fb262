"""The Kubernetes manifests in deploy/: schema-valid, and true to the KRA contract.

Schemas: kubernetes-validate, which ships the JSON schemas of every Kubernetes release it knows
inside the package, so validation needs neither a cluster nor the network. Strict mode rejects
fields the schema does not know, so a misspelt or misplaced key (``readOnlyRootFilesytem``,
``securityContext`` one level too high) fails here instead of being dropped by the API server
with a warning nobody reads.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from ingress import config
from ingress.config import presets
from tests.integration.peers import _unavailable

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
# The oldest release the manifests promise to work on (every field used exists there), and the
# newest the validator knows.
OLDEST_KUBERNETES = "1.28"

# The contract (shared/docs/kra-ingress-contract.md and the chart's templates/ingress.yaml):
# the Service <release>-ingress-default selects exactly this label and targets these ports.
KRA_SELECTOR = {"role": "ingress-haproxy"}
KRA_PORTS = {10025, 11025, 10587, 11587, 10080, 11080, 10443, 11443}
KRA_READINESS = ("/.kubernetes-readiness-probe", 10080)
CONFIG_PATH = "/etc/mta-ingress/ingress.toml"

Manifest = dict[str, Any]


def _documents() -> list[tuple[Path, Manifest]]:
    found = []
    for path in sorted(DEPLOY.rglob("*.y*ml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                found.append((path, document))
    return found


DOCUMENTS = _documents()


def _ids(item: tuple[Path, Manifest]) -> str:
    path, manifest = item
    return f"{path.relative_to(DEPLOY)}:{manifest['kind']}/{manifest['metadata']['name']}"


def _of_kind(kind: str, directory: Path | None = None) -> list[tuple[Path, Manifest]]:
    return [(path, manifest) for path, manifest in DOCUMENTS
            if manifest["kind"] == kind and (directory is None or path.parent == directory)]


def _validator() -> Any:
    try:
        import kubernetes_validate
    except ImportError:
        _unavailable("kubernetes-validate not installed (pip install -e '.[test]')")
    return kubernetes_validate


def _kubernetes_versions() -> list[str]:
    validator = _validator()
    newest = validator.utils.major_minor(validator.utils.latest_version())
    return [OLDEST_KUBERNETES, newest]


def test_deploy_has_manifests() -> None:
    kinds = {manifest["kind"] for _, manifest in DOCUMENTS}
    assert {"Deployment", "ConfigMap", "PodDisruptionBudget"} <= kinds


@pytest.mark.parametrize("item", DOCUMENTS, ids=[_ids(item) for item in DOCUMENTS])
def test_manifest_is_schema_valid(item: tuple[Path, Manifest]) -> None:
    validator = _validator()
    _, manifest = item
    for version in _kubernetes_versions():
        try:
            validator.validate(manifest, version, strict=True)
        except validator.utils.ValidationError as error:
            where = ".".join(str(part) for part in error.path)
            pytest.fail(f"Kubernetes {version}: {where}: {error.message}", pytrace=False)
        except validator.utils.SchemaNotFoundError as error:
            # The command-line tool only warns here; an unknown kind or apiVersion is a typo.
            pytest.fail(error.message, pytrace=False)


def test_validator_is_strict() -> None:
    # Without this, a validator that quietly stopped being strict would pass anything.
    validator = _validator()
    (_, deployment), *_ = _of_kind("Deployment", DEPLOY)
    container = dict(deployment["spec"]["template"]["spec"]["containers"][0])
    container["readOnlyRootFilesytem"] = True
    spec = {**deployment["spec"], "template": {
        **deployment["spec"]["template"],
        "spec": {**deployment["spec"]["template"]["spec"], "containers": [container]}}}
    with pytest.raises(validator.utils.ValidationError):
        validator.validate({**deployment, "spec": spec}, OLDEST_KUBERNETES, strict=True)


# --------------------------------------------------------------------------------------------
# What every Deployment of ours must have
# --------------------------------------------------------------------------------------------


def _container(deployment: Manifest) -> Manifest:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: Manifest = containers[0]
    return container


def _container_ports(container: Manifest) -> dict[str, int]:
    return {port["name"]: port["containerPort"] for port in container["ports"]}


def _resolve_port(container: Manifest, port: int | str) -> int:
    return port if isinstance(port, int) else _container_ports(container)[port]


def _config_map_for(path: Path, deployment: Manifest) -> dict[str, Any]:
    """The parsed ingress.toml of the ConfigMap the Deployment mounts, from the same folder."""
    volumes = {volume["name"]: volume for volume in deployment["spec"]["template"]["spec"]
               ["volumes"]}
    mounts = {mount["mountPath"]: mount for mount in _container(deployment)["volumeMounts"]}
    mount = mounts[str(Path(CONFIG_PATH).parent)]
    assert mount.get("readOnly") is True
    name = volumes[mount["name"]]["configMap"]["name"]
    (_, config_map), = [(p, m) for p, m in _of_kind("ConfigMap", path.parent)
                        if m["metadata"]["name"] == name]
    return tomllib.loads(config_map["data"][Path(CONFIG_PATH).name])


def _dockerfile_user() -> int:
    match = re.search(r"^USER\s+(\d+)", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    assert match is not None
    return int(match.group(1))


def _dockerfile_exposed() -> set[int]:
    ports: set[int] = set()
    for match in re.finditer(r"^EXPOSE\s+(.+)$", (REPO / "Dockerfile").read_text(),
                             re.MULTILINE):
        ports.update(int(word.partition("/")[0]) for word in match.group(1).split())
    return ports


DEPLOYMENTS = _of_kind("Deployment")


@pytest.fixture(params=DEPLOYMENTS, ids=[_ids(item) for item in DEPLOYMENTS])
def deployment(request: pytest.FixtureRequest) -> tuple[Path, Manifest]:
    item: tuple[Path, Manifest] = request.param
    return item


def test_runs_the_configuration_file(deployment: tuple[Path, Manifest]) -> None:
    path, manifest = deployment
    container = _container(manifest)
    assert container.get("command") is None, "the image's ENTRYPOINT is mta-ingress"
    assert container["args"] == ["run", "--config", CONFIG_PATH]
    assert _config_map_for(path, manifest)


def test_security_context(deployment: tuple[Path, Manifest]) -> None:
    _, manifest = deployment
    pod = manifest["spec"]["template"]["spec"]
    container = _container(manifest)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == _dockerfile_user()
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    # Unprivileged ports only, so no capability (NET_BIND_SERVICE) is needed to bind them.
    assert all(port > 1024 for port in _container_ports(container).values())


def test_writable_tmp_for_a_read_only_root(deployment: tuple[Path, Manifest]) -> None:
    _, manifest = deployment
    mounts = {mount["mountPath"]: mount["name"] for mount in _container(manifest)["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in manifest["spec"]["template"]["spec"]
               ["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_admin_listener_probes_and_scrape(deployment: tuple[Path, Manifest]) -> None:
    path, manifest = deployment
    container = _container(manifest)
    admin_binds = _config_map_for(path, manifest)["admin"]["bind"]
    admin_port = int(admin_binds[0].rpartition(":")[2])
    assert _container_ports(container)["admin"] == admin_port
    liveness = container["livenessProbe"]["httpGet"]
    assert liveness["path"] == "/livez"
    assert _resolve_port(container, liveness["port"]) == admin_port
    annotations = manifest["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(admin_port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_grace_period_covers_drain_and_grace(deployment: tuple[Path, Manifest]) -> None:
    path, manifest = deployment
    pod = manifest["spec"]["template"]["spec"]
    timeouts = _config_map_for(path, manifest).get("timeouts", {})
    drain = config.parse_duration(timeouts.get("drain", config.TIMEOUT_DEFAULTS["drain"]))
    grace = config.parse_duration(timeouts.get("grace", config.TIMEOUT_DEFAULTS["grace"]))
    command = _container(manifest)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain + grace


def test_rollout_keeps_capacity(deployment: tuple[Path, Manifest]) -> None:
    path, manifest = deployment
    spec = manifest["spec"]
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert spec["replicas"] >= 2
    budgets = [m for _, m in _of_kind("PodDisruptionBudget", path.parent)
               if m["spec"]["selector"] == spec["selector"]]
    assert len(budgets) == 1


def test_resources(deployment: tuple[Path, Manifest]) -> None:
    _, manifest = deployment
    resources = _container(manifest)["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    # The CPU limit sets the number of workers (workers = 0); memory must be capped with it.
    assert {"cpu", "memory"} <= set(resources["limits"])


def test_image_exposes_the_container_ports(deployment: tuple[Path, Manifest]) -> None:
    _, manifest = deployment
    assert set(_container_ports(_container(manifest)).values()) <= _dockerfile_exposed()


# --------------------------------------------------------------------------------------------
# The GreenArrow KRA replacement (deploy/*.yaml): the contract's values exactly
# --------------------------------------------------------------------------------------------


def _kra_deployment() -> Manifest:
    (_, manifest), = _of_kind("Deployment", DEPLOY)
    return manifest


def test_kra_labels_and_selector() -> None:
    manifest = _kra_deployment()
    assert manifest["metadata"]["name"] == "ga1-ingress-haproxy"
    # Immutable on a Deployment, and what the Service selects: exactly the chart's.
    assert manifest["spec"]["selector"] == {"matchLabels": KRA_SELECTOR}
    labels = manifest["spec"]["template"]["metadata"]["labels"]
    assert KRA_SELECTOR.items() <= labels.items()
    # bin/pod-run execs GreenArrow commands in the pods labelled `app`.
    assert "app" not in labels


def test_kra_ports_and_readiness() -> None:
    container = _container(_kra_deployment())
    ports = set(_container_ports(container).values())
    assert ports >= KRA_PORTS
    assert all(port["protocol"] == "TCP" for port in container["ports"])
    readiness = container["readinessProbe"]["httpGet"]
    assert (readiness["path"], _resolve_port(container, readiness["port"])) == KRA_READINESS


def test_kra_certificate_volume() -> None:
    manifest = _kra_deployment()
    mounts = {mount["mountPath"]: mount for mount in _container(manifest)["volumeMounts"]}
    assert mounts["/mnt/tls"]["name"] == "tls-volume"
    settings = _config_map_for(DEPLOY / "deployment.yaml", manifest)
    cert_dir = settings.get("tls", {}).get("cert_dir", "/mnt/tls/haproxy")
    assert cert_dir == "/mnt/tls/haproxy"
    assert not settings.get("tls", {}).get("acme", {}).get("enabled", False)
    # Only read here: GreenArrow's TLS pod owns the files.
    assert mounts["/mnt/tls"].get("readOnly") is True
    assert "fsGroup" not in manifest["spec"]["template"]["spec"]["securityContext"]


def test_kra_configuration() -> None:
    settings = _config_map_for(DEPLOY / "deployment.yaml", _kra_deployment())
    assert settings["preset"] == "greenarrow"
    assert settings["release"] == "ga1"


# --------------------------------------------------------------------------------------------
# Every configuration in deploy/ loads
# --------------------------------------------------------------------------------------------

CONFIG_MAPS = _of_kind("ConfigMap")


@pytest.mark.parametrize("item", CONFIG_MAPS, ids=[_ids(item) for item in CONFIG_MAPS])
def test_configuration_loads(item: tuple[Path, Manifest], tmp_path: Path) -> None:
    _, manifest = item
    text = manifest["data"][Path(CONFIG_PATH).name]
    preset = tomllib.loads(text).get("preset", "greenarrow")
    # A fail, not a skip: an example naming a preset that does not exist is a broken example.
    assert preset in presets.NAMES, f"unknown preset {preset!r}"
    path = tmp_path / "ingress.toml"
    path.write_text(text)
    environment: Mapping[str, str] = {}
    try:
        config.load(path, environ=environment)
    except config.ConfigError as error:
        pytest.fail("\n".join(error.problems), pytrace=False)


def test_kumomta_service_targets_the_container() -> None:
    directory = DEPLOY / "kumomta"
    (_, service), = _of_kind("Service", directory)
    (_, deployment), = _of_kind("Deployment", directory)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["externalTrafficPolicy"] == "Local"
    ports = set(_container_ports(_container(deployment)).values())
    assert {port["targetPort"] for port in service["spec"]["ports"]} <= ports


def test_kumomta_configuration(tmp_path: Path) -> None:
    directory = DEPLOY / "kumomta"
    (path, deployment), = _of_kind("Deployment", directory)
    settings = _config_map_for(path, deployment)
    assert settings["preset"] == "kumomta"
    config_path = tmp_path / "ingress.toml"
    (_, config_map), = _of_kind("ConfigMap", directory)
    config_path.write_text(config_map["data"][Path(CONFIG_PATH).name])
    effective = config.load(config_path, environ={})
    service = settings.get("kumomta_service", config.DEFAULT_KUMOMTA_SERVICE)
    assert {name: [str(server) for server in backend.servers]
            for name, backend in effective.backends.items()} == {
        "kumod-smtp": [f"{service}:25"], "kumod-http": [f"{service}:8000"]}
    # The Service's targets are listeners of the preset, on every interface.
    (_, service_manifest), = _of_kind("Service", directory)
    bound = {address.port for listener in effective.enabled_listeners
             for address in listener.bind}
    assert {port["targetPort"] for port in service_manifest["spec"]["ports"]} <= bound
