"""deploy/: compose file, Kubernetes manifests, Grafana provisioning and Dockerfile, checked statically.

Docker and Kubernetes are not run here; these tests pin what can go wrong without them: YAML that does
not parse, DCPUE_* names or values the Settings model rejects, missing resources or a root container,
secrets written into a file, and an image without the Kafka and InfluxDB clients.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from dcpue.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "k8s"
DATASOURCE = DEPLOY / "grafana" / "provisioning" / "datasources" / "influxdb.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
DCPUE_SERVICES = ("topics", "collector", "analytics", "aggregator", "api")
SECRET_KEY = re.compile(r"TOKEN|PASSWORD|SECRET|SASL_PASSWORD", re.IGNORECASE)
INTERPOLATION = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def _env_names(model: type[BaseModel], prefix: str = "DCPUE_") -> set[str]:
    """Every DCPUE_* variable the settings model accepts (``__`` between nesting levels)."""
    names: set[str] = set()
    for field_name, info in model.model_fields.items():
        name = prefix + field_name.upper()
        names.add(name)
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= _env_names(annotation, name + "__")
    return names


SETTING_NAMES = _env_names(Settings) | {"DCPUE_CONFIG"}


def _yaml_files() -> list[Path]:
    return sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])


def _k8s_docs() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d)
    return docs


def _k8s(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in _k8s_docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def _resolve(value: str) -> str:
    """Compose interpolation as an operator with the required variables set would see it."""
    def sub(m: re.Match[str]) -> str:
        op, arg = m.group(2), m.group(3)
        if op in (":-", "-"):
            return arg
        return "set-by-operator"
    return INTERPOLATION.sub(sub, value)


def _validate_env(env: dict[str, str], args: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Load settings exactly as the entry point would with this environment (other DCPUE_* cleared)."""
    import os

    for name in [n for n in os.environ if n.startswith("DCPUE_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings(None, **args)


# -- every file parses ----------------------------------------------------------------------
@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    assert docs, f"{path} is empty"


def test_k8s_docs_have_kind_and_namespace() -> None:
    for doc in _k8s_docs():
        assert {"apiVersion", "kind", "metadata"} <= doc.keys()
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "dcpue", doc["metadata"]["name"]


# -- compose ----------------------------------------------------------------------------------
def test_compose_has_the_stack() -> None:
    services = _compose()["services"]
    assert {"kafka", "influxdb", "grafana", *DCPUE_SERVICES} <= services.keys()
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "healthcheck" in services["kafka"]
    assert services["influxdb"]["image"] == "influxdb:2.7"
    init = services["influxdb"]["environment"]
    assert init["DOCKER_INFLUXDB_INIT_ORG"] == "dcpue" and init["DOCKER_INFLUXDB_INIT_BUCKET"] == "dcpue"
    assert services["grafana"]["image"].startswith("grafana/grafana-oss")
    assert services["topics"]["command"] == ["topics", "create"]
    assert services["topics"]["restart"] == "no"  # quoted: a bare no would be YAML false
    assert services["collector"]["command"][:3] == ["collect", "--registry", "/etc/dcpue/sites.yaml"]
    assert services["analytics"]["command"][0] == "analyze"
    assert "--influx" in services["analytics"]["command"]
    assert "--groups" not in services["analytics"]["command"]  # safe with any number of replicas
    assert isinstance(services["analytics"]["deploy"]["replicas"], int)
    aggregator = services["aggregator"]
    assert aggregator["command"][0] == "aggregate"
    assert aggregator["command"][1:3] == ["--registry", "/etc/dcpue/sites.yaml"]
    assert "--influx" in aggregator["command"]
    assert aggregator["deploy"]["replicas"] == 1  # two would split the metrics partitions: no group rows
    assert {"topics", "influxdb"} <= aggregator["depends_on"].keys()
    # the aggregator's group is the analytics group id + "-aggregate"
    group = "DCPUE_BUS__KAFKA__GROUP_ID"
    assert aggregator["environment"][group] == services["analytics"]["environment"][group]
    for name in DCPUE_SERVICES:
        assert "./sites/guizhou-demo.yaml:/etc/dcpue/sites.yaml:ro" in services[name]["volumes"]
    assert (DEPLOY / "sites" / "guizhou-demo.yaml").is_file()


def _flag(args: list[str], name: str) -> str:
    """The value after ``name`` in a command line."""
    assert name in args, f"{name} missing from {args}"
    return args[args.index(name) + 1]


def test_compose_api_serves_on_all_container_interfaces() -> None:
    api = _compose()["services"]["api"]
    command = api["command"]
    assert command[0] == "serve"
    assert _flag(command, "--registry") == "/etc/dcpue/sites.yaml"
    assert _flag(command, "--host") == "0.0.0.0"  # 127.0.0.1 inside a container is unreachable from outside
    port = int(_flag(command, "--port"))
    assert port == 8600
    # the view lives on a writable mount: the root filesystem is read-only
    store = _flag(command, "--store")
    assert api["read_only"] is True
    mounts = [entry.split(":")[0] for entry in api["tmpfs"]]
    assert "/tmp" in mounts and str(Path(store).parent) in mounts
    assert api["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert "influxdb" not in api["depends_on"]  # serve reads Kafka only
    assert not [n for n in api["environment"] if SECRET_KEY.search(n)]  # and so needs no token
    healthcheck = " ".join(api["healthcheck"]["test"])
    assert f"http://127.0.0.1:{port}/healthz" in healthcheck
    assert "curl" not in healthcheck and "wget" not in healthcheck  # neither is in the image
    assert api["ports"] == [f"127.0.0.1:{port}:{port}"]


def _published(entry: str | dict[str, Any]) -> tuple[str | None, str]:
    """(host address or None for all interfaces, container port) of one compose ``ports`` entry."""
    if isinstance(entry, dict):
        return entry.get("host_ip"), str(entry["target"])
    parts = str(entry).rsplit(":", 2)
    return (parts[0] if len(parts) == 3 else None), parts[-1]


def test_compose_ports_are_published_on_loopback_only() -> None:
    publishing = set()
    for name, service in _compose()["services"].items():
        for entry in service.get("ports", []):
            host_ip, target = _published(entry)
            assert host_ip == "127.0.0.1", f"{name}: port {target} reachable from other hosts"
            publishing.add(name)
    assert {"kafka", "influxdb", "grafana", "api"} <= publishing


@pytest.mark.parametrize("service", DCPUE_SERVICES)
def test_compose_dcpue_env_names_are_settings(service: str) -> None:
    env = _compose()["services"][service]["environment"]
    unknown = sorted(n for n in env if n.startswith("DCPUE_") and n not in SETTING_NAMES)
    assert not unknown, f"{service}: not settings in dcpue/settings.py: {unknown}"


@pytest.mark.parametrize("service", DCPUE_SERVICES)
def test_compose_dcpue_env_values_validate(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {k: _resolve(str(v)) for k, v in _compose()["services"][service]["environment"].items()}
    settings = _validate_env(env, {"bus": {"kind": "kafka"}}, monkeypatch)
    assert settings.bus.kafka.bootstrap_servers == "kafka:9092"
    if service in ("analytics", "aggregator"):
        assert settings.store.influxdb.token.get_secret_value() == "set-by-operator"
        assert (settings.store.influxdb.org, settings.store.influxdb.bucket) == ("dcpue", "dcpue")


def test_compose_interpolated_names_are_never_stray_dcpue_names() -> None:
    # `export DCPUE_INFLUX_TOKEN=…` in a shell would make every dcpue command fail ("unknown setting")
    names = set(m.group(1) for m in INTERPOLATION.finditer(COMPOSE.read_text(encoding="utf-8")))
    stray = sorted(n for n in names if n.startswith("DCPUE_") and n not in SETTING_NAMES)
    assert not stray


def test_compose_secrets_are_required_variables() -> None:
    for name, service in _compose()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_KEY.search(key):
                assert re.fullmatch(r"\$\{\w+:\?[^}]+\}", str(value)), f"{name}.{key} must be ${{VAR:?…}}"


def test_grafana_datasource() -> None:
    doc = yaml.safe_load(DATASOURCE.read_text(encoding="utf-8"))
    (ds,) = doc["datasources"]
    assert ds["uid"] == "dcpue-influxdb" and ds["type"] == "influxdb"
    assert ds["jsonData"]["version"] == "InfluxQL" and ds["jsonData"]["dbName"] == "dcpue"
    assert ds["jsonData"]["httpHeaderName1"] == "Authorization"
    assert ds["secureJsonData"]["httpHeaderValue1"] == "Token ${INFLUXDB_TOKEN}"
    grafana_env = _compose()["services"]["grafana"]["environment"]
    assert grafana_env["INFLUXDB_TOKEN"] == "${DCPUE_STORE__INFLUXDB__TOKEN:?set it}"


# -- Kubernetes -------------------------------------------------------------------------------
WORKLOADS = [("Deployment", "dcpue-analytics"), ("Deployment", "dcpue-aggregator"), ("Deployment", "dcpue-collector"),
             ("Deployment", "dcpue-api"), ("Job", "dcpue-topics-create")]


def _pod(kind: str, name: str) -> dict[str, Any]:
    return _k8s(kind, name)["spec"]["template"]["spec"]


@pytest.mark.parametrize(("kind", "name"), WORKLOADS)
def test_k8s_workload_is_non_root_with_resources(kind: str, name: str) -> None:
    pod = _pod(kind, name)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"]:
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
        for part in ("requests", "limits"):
            assert {"cpu", "memory"} <= container["resources"][part].keys()


@pytest.mark.parametrize(("kind", "name"), WORKLOADS)
def test_k8s_env_names_are_settings_and_validate(kind: str, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    container = _pod(kind, name)["containers"][0]
    settings_cm = _k8s("ConfigMap", "dcpue-settings")["data"]
    secret = _k8s("Secret", "dcpue-secrets")["stringData"]
    assert [r["configMapRef"]["name"] for r in container["envFrom"]] == ["dcpue-settings"]
    env = dict(settings_cm)
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "dcpue-secrets" and ref["key"] in secret
            env[var["name"]] = secret[ref["key"]]
    unknown = sorted(n for n in env if n not in SETTING_NAMES)
    assert not unknown, f"{name}: not settings in dcpue/settings.py: {unknown}"
    _validate_env(env, {"bus": {"kind": "kafka"}}, monkeypatch)


def test_k8s_every_workload_is_checked() -> None:
    found = {(d["kind"], d["metadata"]["name"]) for d in _k8s_docs() if d["kind"] in ("Deployment", "Job")}
    assert found == set(WORKLOADS)


def test_k8s_analytics_replicas_match_partitions() -> None:
    partitions = int(_k8s("ConfigMap", "dcpue-settings")["data"]["DCPUE_BUS__KAFKA__PARTITIONS"])
    analytics = _k8s("Deployment", "dcpue-analytics")
    assert analytics["spec"]["replicas"] == partitions == 12
    strategy = analytics["spec"]["strategy"]
    # never more members than partitions during an update: a surge pod would only cause rebalances
    assert strategy["type"] == "Recreate" or strategy["rollingUpdate"]["maxSurge"] == 0
    args = _pod("Deployment", "dcpue-analytics")["containers"][0]["args"]
    assert args[0] == "analyze" and "--groups" not in args
    assert _k8s("Deployment", "dcpue-collector")["spec"]["replicas"] == 1


def test_k8s_aggregator_is_one_pod_that_never_overlaps() -> None:
    aggregator = _k8s("Deployment", "dcpue-aggregator")
    assert aggregator["spec"]["replicas"] == 1
    assert aggregator["spec"]["strategy"]["type"] == "Recreate"  # an update stops the old pod first
    args = _pod("Deployment", "dcpue-aggregator")["containers"][0]["args"]
    assert args[0] == "aggregate"
    assert args[1:3] == ["--registry", "/etc/dcpue/sites.yaml"]


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector (``matchLabels`` only, as in these manifests) selects ``labels``."""
    assert set(selector) <= {"matchLabels"}, f"only matchLabels is checked here: {selector}"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _pod_labels(kind: str, name: str) -> dict[str, str]:
    return _k8s(kind, name)["spec"]["template"]["metadata"]["labels"]


def _api_container() -> tuple[dict[str, Any], dict[str, int]]:
    """The api container and its named ports (name → containerPort)."""
    (container,) = _pod("Deployment", "dcpue-api")["containers"]
    return container, {p["name"]: p["containerPort"] for p in container["ports"]}


def _api_port() -> int:
    container, ports = _api_container()
    (port,) = ports.values()
    assert int(_flag(container["args"], "--port")) == port == 8600
    return port


def test_k8s_api_serves_on_its_container_port_with_probes() -> None:
    api = _k8s("Deployment", "dcpue-api")
    assert api["spec"]["replicas"] >= 2  # any number can run: the pods share nothing
    strategy = api["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate" and strategy["rollingUpdate"]["maxUnavailable"] == 0
    container, named = _api_container()
    args = container["args"]
    assert args[0] == "serve"
    assert args[1:3] == ["--registry", "/etc/dcpue/sites.yaml"]
    assert _flag(args, "--host") == "0.0.0.0"  # the Service and the kubelet come in on the pod's IP
    port = _api_port()
    assert [(p.get("protocol", "TCP"), p["containerPort"]) for p in container["ports"]] == [("TCP", port)]
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert named.get(get["port"], get["port"]) == port, probe
    # the view: on a writable emptyDir with a size limit (read-only root filesystem)
    store = Path(_flag(args, "--store"))
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in _pod("Deployment", "dcpue-api")["volumes"]}
    view = volumes[mounts[str(store.parent)]]
    assert view["emptyDir"]["sizeLimit"]
    # serve talks to Kafka only: no InfluxDB token in its environment
    assert "DCPUE_STORE__INFLUXDB__TOKEN" not in {v["name"] for v in container.get("env", [])}


def test_k8s_api_service_targets_the_container_port() -> None:
    service = _k8s("Service", "dcpue-api")
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    selector = {"matchLabels": service["spec"]["selector"]}
    for kind, name in WORKLOADS:
        assert _matches(selector, _pod_labels(kind, name)) == (name == "dcpue-api"), name
    _, named = _api_container()
    (port,) = service["spec"]["ports"]
    assert port["port"] == 80 and port.get("protocol", "TCP") == "TCP"
    assert named.get(port["targetPort"], port["targetPort"]) == _api_port()


def test_k8s_networkpolicy_admits_only_the_api_port() -> None:
    policies = [d for d in _k8s_docs() if d["kind"] == "NetworkPolicy"]
    # policyTypes Ingress only: listing Egress without egress rules would cut the pods off from Kafka
    assert all(p["spec"]["policyTypes"] == ["Ingress"] for p in policies)
    deny = [p for p in policies if not p["spec"].get("ingress")]
    allow = [p for p in policies if p["spec"].get("ingress")]
    for kind, name in WORKLOADS:
        labels = _pod_labels(kind, name)
        assert any(_matches(p["spec"]["podSelector"], labels) for p in deny), f"{name}: ingress not denied"
        assert any(_matches(p["spec"]["podSelector"], labels) for p in allow) == (name == "dcpue-api"), name
    port = _api_port()
    _, named = _api_container()
    assert allow
    for policy in allow:
        for rule in policy["spec"]["ingress"]:
            # without `ports` a rule admits every port; without `from`, every source
            assert rule.get("ports"), policy["metadata"]["name"]
            assert rule.get("from"), policy["metadata"]["name"]
            for p in rule["ports"]:
                assert p.get("protocol", "TCP") == "TCP" and "endPort" not in p
                assert named.get(p["port"], p["port"]) == port
            for peer in rule["from"]:
                # the API has no authentication: name who may call it, never every address or namespace
                assert not peer.get("ipBlock", {}).get("cidr", "").endswith("/0"), "every address"
                assert peer.get("namespaceSelector") != {}, "every namespace of the cluster"


def test_readme_applies_every_k8s_manifest() -> None:
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    applied = set(re.findall(r"-f (k8s/[\w.-]+\.yaml)", readme))
    manifests = {f"k8s/{p.name}" for p in K8S.glob("*.yaml")} - {"k8s/secret.template.yaml"}
    assert manifests == applied


def test_k8s_registry_configmap_is_the_demo_registry() -> None:
    data = _k8s("ConfigMap", "dcpue-registry")["data"]["sites.yaml"]
    assert data == (DEPLOY / "sites" / "guizhou-demo.yaml").read_text(encoding="utf-8")


def test_k8s_secret_is_placeholders_only() -> None:
    secret = _k8s("Secret", "dcpue-secrets")
    assert "data" not in secret  # base64 values could hide a real secret
    for key, value in secret["stringData"].items():
        assert key in SETTING_NAMES
        assert value.startswith("REPLACE_WITH_"), key
    for doc in _k8s_docs():
        if doc["kind"] == "ConfigMap":
            assert not [k for k in doc["data"] if SECRET_KEY.search(k)], doc["metadata"]["name"]


def _walk(node: Any, path: str = "") -> Any:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}")
            yield f"{path}.{key}", str(key), value
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


def test_no_secret_values_anywhere_in_deploy() -> None:
    """Every string under a token/password/secret key is ${VAR}, $VAR or a REPLACE_WITH_ placeholder."""
    placeholder = re.compile(r"^(Token )?(\$\{\w+(:\?[^}]+)?\}|\$\w+|REPLACE_WITH_\w+)$")
    checked = 0
    for path in _yaml_files():
        if path.parent.name in ("sites", "examples", "config") or path.name == "registry-configmap.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            for where, key, value in _walk(doc):
                if SECRET_KEY.search(key) and isinstance(value, str):
                    checked += 1
                    assert placeholder.match(value), f"{path.relative_to(ROOT)}{where}: hard-coded secret?"
            for where, key, value in _walk(doc):
                if key == "secureJsonData":
                    for field, secret in value.items():
                        checked += 1
                        assert placeholder.match(secret), f"{path.relative_to(ROOT)}{where}.{field}"
    assert checked >= 8
    assert not re.search(r"(?im)^(ENV|ARG)\b.*(TOKEN|PASSWORD|SECRET)", DOCKERFILE.read_text(encoding="utf-8"))


# -- Dockerfile ----------------------------------------------------------------------------
def test_dockerfile_installs_extras_as_non_root() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.MULTILINE)
    install = re.search(r"pip install [^\n]*\.\[([\w,]+)\]", text)
    assert install, "the Dockerfile must pip install the repository with extras"
    assert {"kafka", "influx"} <= set(install.group(1).split(","))
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \["dcpue"\]', text, re.MULTILINE)
    k8s_uid = _pod("Deployment", "dcpue-analytics")["securityContext"]["runAsUser"]
    assert users[-1].split(":")[0] == str(k8s_uid)
