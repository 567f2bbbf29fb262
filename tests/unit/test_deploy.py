"""The Kubernetes manifests in deploy/: schema-valid, and true to the KRA contract.

Schemas: kubernetes-validate, which ships the JSON schemas of every Kubernetes release it knows
inside the package, so validation needs neither a cluster nor the network. Strict mode rejects
fields the schema does not know, so a misspelt or misplaced key (``readOnlyRootFilesytem``,
``securityContext`` one level too high) fails here instead of being dropped by the API server
with a warning nobody reads.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from ingress import config
from ingress.config import presets
from ingress.config.users import hash_password, load_users
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


def _users_overrides(text: str, tmp_path: Path) -> dict[str, str]:
    """The environment that points every users_file of a configuration at a users file made
    here (in the cluster it is a Secret's, which deploy/ does not hold)."""
    listeners = tomllib.loads(text).get("listeners", {})
    named = [name for name, body in listeners.items() if "users_file" in body]
    if not named:
        return {}
    users = tmp_path / "egress-users"
    users.write_text(f"kumo:{hash_password(b'test password', log2_n=10)}\n")
    return {"MTA_INGRESS_SET": "\n".join(f'listeners.{name}.users_file="{users}"'
                                          for name in named)}


@pytest.mark.parametrize("item", CONFIG_MAPS, ids=[_ids(item) for item in CONFIG_MAPS])
def test_configuration_loads(item: tuple[Path, Manifest], tmp_path: Path) -> None:
    _, manifest = item
    files = [key for key in manifest["data"] if key.endswith(".toml")]
    assert files, "a ConfigMap of ours holds a configuration file"
    for name in files:
        text = manifest["data"][name]
        preset = tomllib.loads(text).get("preset", "greenarrow")
        # A fail, not a skip: an example naming a preset that does not exist is a broken example.
        assert preset in presets.NAMES, f"unknown preset {preset!r}"
        path = tmp_path / name
        path.write_text(text)
        environment: Mapping[str, str] = _users_overrides(text, tmp_path)
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


# --------------------------------------------------------------------------------------------
# The egress tier (deploy/egress/, examples/egress.toml): a DaemonSet on the nodes that own
# the sending addresses, and a systemd unit for a host outside the cluster
# --------------------------------------------------------------------------------------------

EGRESS = DEPLOY / "egress"
EGRESS_CONFIG_PATH = "/etc/mta-ingress/egress.toml"
EGRESS_NODE_LABEL = "mta-ingress.example/egress"
EGRESS_UNIT = EGRESS / "mta-ingress-egress.service"
EXAMPLES = REPO / "examples"
# The pod's address as the test supplies it for $(HOST_IP) (a documentation address).
TEST_HOST_IP = "192.0.2.1"
# RFC 5737 and RFC 3849: the example sources are in these, which no host has, so an example
# applied as it is sends nothing.
DOCUMENTATION_NETWORKS = tuple(ipaddress.ip_network(network) for network in (
    "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"))


def _egress_daemonset() -> Manifest:
    (_, manifest), = _of_kind("DaemonSet", EGRESS)
    return manifest


def _egress_toml() -> str:
    (_, config_map), = _of_kind("ConfigMap", EGRESS)
    text: str = config_map["data"][Path(EGRESS_CONFIG_PATH).name]
    return text


def _expand(value: str, variables: Mapping[str, str]) -> str:
    """Kubernetes' $(NAME) expansion of an env value from the variables defined before it."""
    return re.sub(r"\$\((\w+)\)", lambda match: variables.get(match[1], match[0]), value)


def _egress_environment(manifest: Manifest) -> dict[str, str]:
    """The container's environment as the kubelet builds it, status.hostIP being TEST_HOST_IP."""
    environment: dict[str, str] = {}
    for variable in _container(manifest).get("env", []):
        if "valueFrom" in variable:
            assert variable["valueFrom"] == {"fieldRef": {"fieldPath": "status.hostIP"}}
            environment[variable["name"]] = TEST_HOST_IP
        else:
            environment[variable["name"]] = _expand(variable["value"], environment)
    return environment


def _egress_effective(tmp_path: Path) -> config.Config:
    """The configuration the DaemonSet's pods run: the ConfigMap's file, the container's
    environment, the users file of the Secret (made here)."""
    text = _egress_toml()
    path = tmp_path / "egress.toml"
    path.write_text(text)
    environment = _egress_environment(_egress_daemonset())
    users = _users_overrides(text, tmp_path).get("MTA_INGRESS_SET")
    if users is not None:
        environment["MTA_INGRESS_SET"] = f"{environment.get('MTA_INGRESS_SET', '')}\n{users}"
    return config.load(path, environ=environment)


def _mounted_files(manifest: Manifest) -> dict[str, tuple[str, str, str, int | None]]:
    """Each file of the container's ConfigMap, Secret and projected volumes by its path in the
    container: (kind, object name, key, mode)."""
    volumes = {volume["name"]: volume for volume in manifest["spec"]["template"]["spec"]
               ["volumes"]}
    files: dict[str, tuple[str, str, str, int | None]] = {}
    for mount in _container(manifest)["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "projected" in volume:
            mode = volume["projected"].get("defaultMode")
            sources = volume["projected"]["sources"]
        else:
            sources = [{kind: volume[kind]} for kind in ("configMap", "secret") if kind in volume]
            mode = None
        for source in sources:
            for kind, body in source.items():
                name = body.get("name") or body.get("secretName")
                for item in body.get("items", []):
                    files[f"{mount['mountPath']}/{item['path']}"] = (
                        kind, name, item["key"], item.get("mode", mode))
    return files


def test_egress_runs_on_the_sending_nodes() -> None:
    manifest = _egress_daemonset()
    pod = manifest["spec"]["template"]["spec"]
    # The node's own addresses are the sources: the pod shares the node's network namespace.
    assert pod["hostNetwork"] is True
    assert pod["nodeSelector"] == {EGRESS_NODE_LABEL: "true"}
    assert [toleration["key"] for toleration in pod["tolerations"]] == [EGRESS_NODE_LABEL]
    assert not pod.get("hostPID")
    assert not pod.get("hostIPC")
    selector = manifest["spec"]["selector"]["matchLabels"]
    assert selector.items() <= manifest["spec"]["template"]["metadata"]["labels"].items()


def test_egress_runs_the_egress_configuration() -> None:
    manifest = _egress_daemonset()
    container = _container(manifest)
    assert container.get("command") is None, "the image's ENTRYPOINT is mta-ingress"
    assert container["args"] == ["run", "--config", EGRESS_CONFIG_PATH]
    # The ingress's image: one build serves both tiers.
    assert container["image"] == _container(_kra_deployment())["image"]
    kind, name, key, _ = _mounted_files(manifest)[EGRESS_CONFIG_PATH]
    (_, config_map), = _of_kind("ConfigMap", EGRESS)
    assert (kind, name, key) == ("configMap", config_map["metadata"]["name"], "egress.toml")


def test_egress_security_context() -> None:
    manifest = _egress_daemonset()
    pod = manifest["spec"]["template"]["spec"]
    container = _container(manifest)
    # As strict as the ingress Deployment's (test_security_context), hostNetwork aside.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == _dockerfile_user()
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["privileged"] is False
    # Nothing added back: binding ports above 1024 and the node's own addresses needs nothing.
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert all(port > 1024 for port in _container_ports(container).values())
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_egress_configuration_loads_as_the_pods_run_it(tmp_path: Path) -> None:
    effective = _egress_effective(tmp_path)
    assert effective.preset == "egress"
    listeners = effective.enabled_listeners
    assert {listener.mode for listener in listeners} == {"socks5", "forward"}
    for listener in listeners:
        # The container's environment binds every port to the node's address, never 0.0.0.0.
        assert [address.host for address in listener.bind] == [TEST_HOST_IP]
        # Placeholders that send nothing until replaced, and say so.
        assert listener.egress_sources
        assert all(any(ipaddress.ip_address(source) in network
                       for network in DOCUMENTATION_NETWORKS)
                   for source in listener.egress_sources), listener.egress_sources
        assert listener.allow_clients
    assert "REPLACE" in _egress_toml()
    socks = effective.listeners["egress-socks"]
    assert socks.users is not None
    assert set(socks.users) == {b"kumo"}
    assert {address.host for address in effective.admin.bind} == {TEST_HOST_IP, "127.0.0.1"}


def test_egress_ports_and_probes(tmp_path: Path) -> None:
    manifest = _egress_daemonset()
    container = _container(manifest)
    effective = _egress_effective(tmp_path)
    ports = _container_ports(container)
    listened = {address.port for listener in effective.enabled_listeners
                for address in listener.bind}
    admin_ports = {address.port for address in effective.admin.bind}
    assert len(admin_ports) == 1
    assert set(ports.values()) == listened | admin_ports
    # With hostNetwork a container port is the node's port.
    assert all(port["hostPort"] == port["containerPort"] for port in container["ports"])
    assert all(port["protocol"] == "TCP" for port in container["ports"])
    (admin_port,) = admin_ports
    assert ports["admin"] == admin_port
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/livez")):
        check = container[probe]["httpGet"]
        assert check["path"] == path
        assert _resolve_port(container, check["port"]) == admin_port
    annotations = manifest["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(admin_port)


def test_egress_grace_period_covers_drain_and_grace(tmp_path: Path) -> None:
    manifest = _egress_daemonset()
    timeouts = _egress_effective(tmp_path).timeouts
    pre_stop = 0.0
    hook = _container(manifest).get("lifecycle", {}).get("preStop")
    if hook is not None:
        pre_stop = float(hook["exec"]["command"][1])
    # The supervisor kills its workers at drain + grace + 5 s; the kubelet must wait that long.
    needed = pre_stop + timeouts.drain + timeouts.grace + 5
    assert manifest["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= needed


def test_egress_users_file_comes_from_a_secret(tmp_path: Path) -> None:
    manifest = _egress_daemonset()
    pod = manifest["spec"]["template"]["spec"]
    path = tomllib.loads(_egress_toml())["listeners"]["egress-socks"]["users_file"]
    kind, _, _, mode = _mounted_files(manifest)[path]
    assert kind == "secret"
    # Readable by the process's group only, which fsGroup makes the files'.
    assert mode == 0o440
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
    mounts = [mount for mount in _container(manifest)["volumeMounts"]
              if path.startswith(mount["mountPath"] + "/")]
    assert len(mounts) == 1
    assert mounts[0]["readOnly"] is True
    # A projected volume, not a subPath: only then does the kubelet update the file in place
    # for SIGHUP to reread.
    assert "subPath" not in mounts[0]


def _unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit's sections, each key with its values in order (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert current is not None, f"a key before any [section]: {raw!r}"
        assert sep, f"not a key=value line: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _example_config() -> config.Config:
    return config.load(EXAMPLES / "egress.toml", environ={})


def test_systemd_unit_runs_and_reloads_the_egress_configuration() -> None:
    service = _unit(EGRESS_UNIT)["Service"]
    (start,) = service["ExecStart"]
    assert start.split()[1:] == ["run", "--config", EGRESS_CONFIG_PATH]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["Restart"] == ["on-failure"]
    assert service["KillSignal"] == ["SIGTERM"]
    # The signal to the supervisor alone, as the kubelet sends it to the container's pid 1.
    assert service["KillMode"] == ["mixed"]
    timeouts = _example_config().timeouts
    (stop,) = service["TimeoutStopSec"]
    assert re.fullmatch(r"\d+s?", stop), "whole seconds"
    assert int(stop.rstrip("s")) >= timeouts.drain + timeouts.grace + 5
    assert _unit(EGRESS_UNIT)["Install"]["WantedBy"] == ["multi-user.target"]


def test_systemd_unit_is_unprivileged_and_hardened() -> None:
    service = _unit(EGRESS_UNIT)["Service"]
    (user,) = service["User"]
    assert user not in ("root", "0")
    expected = {
        "CapabilityBoundingSet": [""], "AmbientCapabilities": [""],
        "NoNewPrivileges": ["yes"], "ProtectSystem": ["strict"], "ProtectHome": ["yes"],
        "PrivateTmp": ["yes"], "PrivateDevices": ["yes"], "RestrictSUIDSGID": ["yes"],
    }
    assert {key: service.get(key) for key in expected} == expected
    assert int(service["LimitNOFILE"][0]) >= 65536


def test_example_egress_configuration_loads() -> None:
    effective = _example_config()
    assert effective.preset == "egress"
    assert {listener.mode for listener in effective.enabled_listeners} == {"socks5", "forward"}
    for listener in effective.enabled_listeners:
        assert all(any(ipaddress.ip_address(source) in network
                       for network in DOCUMENTATION_NETWORKS)
                   for source in listener.egress_sources)
    # The users file template holds no account: every login through it is refused.
    assert load_users(str(EXAMPLES / "egress-users")) == {}
    with_users = config.load(EXAMPLES / "egress.toml", environ={
        "MTA_INGRESS_SET": f'listeners.egress-socks.users_file="{EXAMPLES / "egress-users"}"'})
    assert with_users.listeners["egress-socks"].users == {}
