"""deploy/: compose file, Kubernetes manifests, Grafana provisioning and Dockerfile, checked statically.

Docker and Kubernetes are not run here; these tests pin what can go wrong without them: YAML that does
not parse, DCPUE_* names or values the Settings model rejects, missing resources or a root container,
secrets written into a file, an image without the Kafka, InfluxDB and device clients, a collector spool
or an alert outbox that would not survive a restart, receiver credentials in a ConfigMap, ports opened
to more than their one client, a provincial feed that could run twice, lose its outbox or read its
platform credentials from anywhere but a Secret, and a `dcpue serve` bound beyond loopback without API
tokens (which it refuses at start) or with its tokens from anywhere but a Secret.
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import BaseModel

from dcpue.errors import ConfigError
from dcpue.feed.config import MIN_KEEP_DAYS, FeedSettings
from dcpue.feed.sender import FeedService
from dcpue.settings import CollectSettings, Settings, SpoolSettings, TopicSettings, load_settings
from dcpue.web.auth import OPEN_PATHS, hash_token, is_loopback

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "k8s"
DATASOURCE = DEPLOY / "grafana" / "provisioning" / "datasources" / "influxdb.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
SETTINGS_EXAMPLE = DEPLOY / "config" / "dcpue.example.yaml"
ALERTING_EXAMPLE = DEPLOY / "config" / "alerting.example.yaml"
FEED_EXAMPLE = DEPLOY / "config" / "feed.example.yaml"
FEED_DIR = "/etc/dcpue-feed"  # where the feed's settings, key and certificate files are mounted (k8s and compose)
DCPUE_SERVICES = ("topics", "collector", "analytics", "aggregator", "notify", "api", "feed")
SECRET_KEY = re.compile(r"TOKEN|PASSWORD|SECRET|SASL_PASSWORD", re.IGNORECASE)
INTERPOLATION = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")
OPERATOR_VALUE = "set-by-operator"  # what a required variable stands for in these tests
# required variables whose value must have a form: the API's accepted tokens, a JSON list of SHA-256 digests
OPERATOR_VALUES = {"DCPUE_HTTP__TOKENS": json.dumps([hash_token(OPERATOR_VALUE)])}
API_TOKENS_SECRET = "dcpue-api-tokens"  # the Secret holding the accepted API token digests (k8s)


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
    """Compose interpolation as an operator with the required variables set would see it (the API's tokens
    as the digests of a token, in the form the setting takes)."""
    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.groups()
        if op in (":-", "-"):
            return arg
        return OPERATOR_VALUES.get(name, OPERATOR_VALUE)
    return INTERPOLATION.sub(sub, value)


def _cli_options(command: list[str]) -> dict[str, Any]:
    """The overrides `dcpue <command>` makes of its command line on the distributed path, as the entry point
    merges them over file and environment: the Kafka bus, and serve's ``--host``/``--port``."""
    http: dict[str, Any] = {}
    if "--host" in command:
        http["host"] = _flag(command, "--host")
    if "--port" in command:
        http["port"] = int(_flag(command, "--port"))
    return {"bus": {"kind": "kafka"}, "http": http}


def _validate_env(env: dict[str, str], args: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Load settings exactly as the entry point would with this environment (other DCPUE_* cleared)."""
    import os

    for name in [n for n in os.environ if n.startswith("DCPUE_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings(None, **args)


def _feed_example_files() -> list[str]:
    """Every file the feed example names (key, secret and TLS files), as written there."""
    data = yaml.safe_load(FEED_EXAMPLE.read_text(encoding="utf-8"))
    files = []
    for dest in data["feed"]["destinations"]:
        files += [dest[k] for k in ("api_key_file", "secret_file") if k in dest]
        files += [v for k, v in dest.get("tls", {}).items() if k.endswith("_file")]
    return files


def _feed_example_copy(tmp_path: Path) -> Path:
    """The feed example with FEED_DIR moved under ``tmp_path`` and every file it names created there (with a
    placeholder), as the mounted Secret would provide them: FeedDestination checks they exist at load."""
    directory = tmp_path / "dcpue-feed"
    directory.mkdir(exist_ok=True)
    for name in _feed_example_files():
        assert name.startswith(FEED_DIR + "/"), name
        (directory / name.removeprefix(FEED_DIR + "/")).write_text("REPLACE_WITH_FILE_CONTENT\n", encoding="utf-8")
    copy = directory / "feed.yaml"
    copy.write_text(FEED_EXAMPLE.read_text(encoding="utf-8").replace(FEED_DIR + "/", f"{directory}/"),
                    encoding="utf-8")
    return copy


def _with_feed_example(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """``env`` with DCPUE_CONFIG pointing at a loadable copy of the feed example when it names the feed's
    mounted feed.yaml (the file the operator puts into the Secret `dcpue-feed` or FEED_CONFIG_DIR)."""
    if env.get("DCPUE_CONFIG") == f"{FEED_DIR}/feed.yaml":
        return {**env, "DCPUE_CONFIG": str(_feed_example_copy(tmp_path))}
    return env


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
    for name in DCPUE_SERVICES:  # every service given a registry finds it mounted there
        if "--registry" in services[name]["command"]:
            assert _flag(services[name]["command"], "--registry") == "/etc/dcpue/sites.yaml"
            assert "./sites/guizhou-demo.yaml:/etc/dcpue/sites.yaml:ro" in services[name]["volumes"], name
    assert (DEPLOY / "sites" / "guizhou-demo.yaml").is_file()
    assert services["notify"]["command"][0] == "notify"


def test_compose_services_cannot_gain_privileges() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert not service.get("privileged", False) and not service.get("cap_add"), name
    # dcpue and the images that run as non-root from the start hold no capability at all
    for name in (*DCPUE_SERVICES, "kafka", "grafana"):
        assert services[name]["cap_drop"] == ["ALL"], name
    for name in DCPUE_SERVICES:
        assert services[name]["read_only"] is True, name


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
    # no InfluxDB token: the only credential is the API's own (digests of the accepted tokens)
    assert [n for n in api["environment"] if SECRET_KEY.search(n)] == ["DCPUE_HTTP__TOKENS"]
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
    assert {"kafka", "influxdb", "grafana", "api", "collector", "notify"} <= publishing


def _seconds(duration: str | int) -> float:
    """A compose duration (``30s``, ``1m30s``) in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", str(duration))
    assert parts and "".join(n + u for n, u in parts) == str(duration), duration
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}
    return sum(float(n) * scale[u] for n, u in parts)


def _compose_collector_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    env = {k: _resolve(str(v)) for k, v in _compose()["services"]["collector"]["environment"].items()}
    return _validate_env(env, {"bus": {"kind": "kafka"}}, monkeypatch)


def test_compose_collector_spool_is_on_a_named_volume(monkeypatch: pytest.MonkeyPatch) -> None:
    compose = _compose()
    collector = compose["services"]["collector"]
    spool = _compose_collector_settings(monkeypatch).collect.spool.path
    assert spool.is_absolute(), "a relative spool path is under the read-only root filesystem"
    assert collector["read_only"] is True
    mounts = {}
    for entry in collector["volumes"]:
        source, target, *_ = entry.split(":")
        mounts[target] = source
    (volume,) = [source for target, source in mounts.items() if spool.is_relative_to(target)]
    # a named volume, kept across `docker compose up` and restarts (a tmpfs or anonymous volume is not)
    assert volume in compose["volumes"], f"{spool} is not on a named volume"
    # a new named volume takes the ownership of the image's directory: it must be the dcpue user's
    spool_dir = next(t for t, s in mounts.items() if s == volume)
    uid = re.findall(r"^USER\s+(\d+)", DOCKERFILE.read_text(encoding="utf-8"), re.MULTILINE)[-1]
    assert re.search(rf"chown {uid}:\d+ {re.escape(spool_dir)}\b", DOCKERFILE.read_text(encoding="utf-8"))
    assert collector.get("deploy", {}).get("replicas", 1) == 1  # one spool, one reader per device


def test_compose_collector_metrics_drain_and_config(monkeypatch: pytest.MonkeyPatch) -> None:
    collector = _compose()["services"]["collector"]
    collect = _compose_collector_settings(monkeypatch).collect
    port = collect.metrics_port
    assert port == 9108 and collect.metrics_host == "0.0.0.0"  # reachable through the published port
    assert [_published(e) for e in collector["ports"]] == [("127.0.0.1", str(port))]
    assert f"http://127.0.0.1:{port}/metrics" in " ".join(collector["healthcheck"]["test"])
    # on stop the collector keeps forwarding its spool for drain_s; compose must not kill it sooner
    assert _seconds(collector["stop_grace_period"]) > collect.drain_s
    assert collector["stop_signal"] == "SIGINT"
    # the demo runs the simulator: no settings file unless the operator names one in deploy/config
    assert collector["environment"]["DCPUE_CONFIG"] == "${COLLECTORS_CONFIG:-}"
    assert "./config:/etc/dcpue/config:ro" in collector["volumes"]
    assert collector["command"] == ["collect", "--registry", "/etc/dcpue/sites.yaml"]


def _compose_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path → source of a compose service's ``volumes`` entries."""
    mounts = {}
    for entry in service["volumes"]:
        source, target, *_ = entry.split(":")
        mounts[target] = source
    return mounts


def test_compose_notify_keeps_its_outbox_and_history_on_a_named_volume(monkeypatch: pytest.MonkeyPatch) -> None:
    compose = _compose()
    notify, analytics = compose["services"]["notify"], compose["services"]["analytics"]
    command = notify["command"]
    assert command[0] == "notify"
    env = {k: _resolve(str(v)) for k, v in notify["environment"].items()}
    settings = _validate_env(env, {"bus": {"kind": "kafka"}}, monkeypatch)
    outbox = Path(settings.alerts.delivery.outbox_path)
    history = Path(_flag(command, "--history"))
    assert outbox.is_absolute() and history.is_absolute()  # not under the read-only root filesystem
    assert notify["read_only"] is True
    mounts = _compose_mounts(notify)
    for path in (outbox, history):
        (volume,) = [source for target, source in mounts.items() if path.is_relative_to(target)]
        assert volume in compose["volumes"], f"{path} is not on a named volume: lost with the container"
        # a new named volume takes the ownership of the image's directory: it must be the dcpue user's
        target = next(t for t, s in mounts.items() if s == volume)
        assert re.search(rf"chown \d+:\d+ {re.escape(target)}\b", DOCKERFILE.read_text(encoding="utf-8"))
    # one outbox, one dispatcher: never scaled
    assert notify.get("deploy", {}).get("replicas", 1) == 1
    # its consumer group is the analytics group id + "-notify"
    group = "DCPUE_BUS__KAFKA__GROUP_ID"
    assert notify["environment"][group] == analytics["environment"][group]
    # receivers come from the operator's settings file in the read-only, git-ignored config directory
    assert notify["environment"]["DCPUE_CONFIG"] == "${ALERTING_CONFIG:-}"
    assert "./config:/etc/dcpue/config:ro" in notify["volumes"]
    assert "config/alerting.yaml" in (DEPLOY / ".gitignore").read_text(encoding="utf-8").split()
    # metrics: on all container interfaces, published on loopback only
    port = int(_flag(command, "--metrics-port"))
    assert _flag(command, "--metrics-host") == "0.0.0.0"
    assert [_published(e) for e in notify["ports"]] == [("127.0.0.1", str(port))]
    assert port != _compose_collector_port()
    # Kafka only: no InfluxDB, no token
    assert "influxdb" not in notify["depends_on"]
    assert notify["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert not [n for n in notify["environment"] if SECRET_KEY.search(n)]
    assert notify["stop_signal"] == "SIGINT"


def test_compose_feed_is_one_optional_service_with_its_outbox_on_a_named_volume(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    compose = _compose()
    services = compose["services"]
    feed = services["feed"]
    # optional: `docker compose up` without the profile starts no feed (it needs the operator's destinations)
    assert feed["profiles"] == ["feed"]
    assert all("profiles" not in services[n] for n in DCPUE_SERVICES if n != "feed")
    # the only service with the feed enabled, and never scaled: one outbox, one sender
    assert [n for n, svc in services.items()
            if str((svc.get("environment") or {}).get("DCPUE_FEED__ENABLED", "")).lower() == "true"] == ["feed"]
    assert feed.get("deploy", {}).get("replicas", 1) == 1
    command = feed["command"]
    assert command[0] == "serve"
    assert _flag(command, "--host") == "0.0.0.0"
    # view and settings file from the environment, which `docker compose exec feed dcpue feed status` shares
    assert "--store" not in command and "--config" not in command
    env = {k: _resolve(str(v)) for k, v in feed["environment"].items()}
    settings = _validate_env(_with_feed_example(env, tmp_path), _cli_options(command), monkeypatch)
    assert settings.feed.enabled and settings.feed.destinations
    # the view and the outbox on a named volume, kept across restarts (not the read-only root, not a tmpfs)
    assert feed["read_only"] is True
    mounts = {}
    for entry in feed["volumes"]:
        source, target, *_ = _resolve(entry).split(":")
        mounts[target] = source
    for path in (Path(settings.feed.outbox_path), Path(settings.store.path)):
        assert path.is_absolute(), path
        (volume,) = [source for target, source in mounts.items() if path.is_relative_to(target)]
        assert volume in compose["volumes"], f"{path} is not on a named volume: lost with the container"
        target = next(t for t, s in mounts.items() if s == volume)
        assert re.search(rf"chown \d+:\d+ {re.escape(target)}\b", DOCKERFILE.read_text(encoding="utf-8"))
    # settings and key files: read-only, from a directory the operator chooses, outside the repository
    config = Path(env["DCPUE_CONFIG"])
    assert config == Path(FEED_DIR) / "feed.yaml"
    (entry,) = [e for e in feed["volumes"] if e.endswith(f":{FEED_DIR}:ro")]
    # the operator's directory; the default is absolute, so never a (committable) path in the repository
    assert re.fullmatch(r"\$\{FEED_CONFIG_DIR:-/[^}]+\}", entry.removesuffix(f":{FEED_DIR}:ro")), entry
    assert f"./sites/guizhou-demo.yaml:{settings.registry}:ro" in feed["volumes"]  # the stack's registry
    # HTTP: all container interfaces, published on loopback only, health-checked, on a port of its own
    port = int(_flag(command, "--port"))
    published = [_published(e) for e in feed["ports"]]
    assert [target for _, target in published] == [str(port)]
    host_ports = [str(e).rsplit(":", 2)[1] for svc in services.values() for e in svc.get("ports", [])]
    assert len(host_ports) == len(set(host_ports))  # it runs next to `api`: a host port of its own
    assert f"http://127.0.0.1:{port}/healthz" in " ".join(feed["healthcheck"]["test"])
    # Kafka only, no InfluxDB token: the only credential is the API's own, the same as `api`'s
    assert "influxdb" not in feed["depends_on"]
    assert feed["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert [n for n in feed["environment"] if SECRET_KEY.search(n)] == ["DCPUE_HTTP__TOKENS"]
    assert feed["stop_signal"] == "SIGINT"


def _compose_collector_port() -> int:
    (entry,) = _compose()["services"]["collector"]["ports"]
    return int(_published(entry)[1])


@pytest.mark.parametrize("service", DCPUE_SERVICES)
def test_compose_dcpue_env_names_are_settings(service: str) -> None:
    env = _compose()["services"][service]["environment"]
    unknown = sorted(n for n in env if n.startswith("DCPUE_") and n not in SETTING_NAMES)
    assert not unknown, f"{service}: not settings in dcpue/settings.py: {unknown}"


@pytest.mark.parametrize("service", DCPUE_SERVICES)
def test_compose_dcpue_env_values_validate(service: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    svc = _compose()["services"][service]
    env = {k: _resolve(str(v)) for k, v in svc["environment"].items()}
    # with the command line's options, as the entry point validates them (serve's --host among them)
    settings = _validate_env(_with_feed_example(env, tmp_path), _cli_options(svc["command"]), monkeypatch)
    assert settings.bus.kafka.bootstrap_servers == "kafka:9092"
    # one sender: a second would have its own outbox and double every destination's traffic
    assert settings.feed.enabled == (service == "feed"), service
    if service in ("analytics", "aggregator"):
        assert settings.store.influxdb.token.get_secret_value() == OPERATOR_VALUE
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


SERVE_SERVICES = ("api", "feed")  # the compose services that run `dcpue serve`


def test_compose_serve_services_are_api_and_feed() -> None:
    services = _compose()["services"]
    assert tuple(n for n, svc in services.items() if (svc.get("command") or [""])[0] == "serve") == SERVE_SERVICES
    # one set of tokens for the one API: the feed's port answers the same clients
    tokens = {services[n]["environment"]["DCPUE_HTTP__TOKENS"] for n in SERVE_SERVICES}
    assert len(tokens) == 1


@pytest.mark.parametrize("service", SERVE_SERVICES)
def test_compose_serve_beyond_loopback_has_api_tokens(service: str, monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    svc = _compose()["services"][service]
    command = svc["command"]
    options = _cli_options(command)
    env = _with_feed_example({k: _resolve(str(v)) for k, v in svc["environment"].items()}, tmp_path)
    settings = _validate_env(env, options, monkeypatch)
    # bound to every container interface (the published port and the health check come in there) ...
    assert settings.http.host == _flag(command, "--host") and not is_loopback(settings.http.host)
    assert settings.http.port == int(_flag(command, "--port"))
    # ... which serve allows only with tokens: the digest of the operator's token, a required variable, so
    # compose refuses to start without it (rather than serve failing to start)
    assert re.fullmatch(r"\$\{DCPUE_HTTP__TOKENS:\?[^}]+\}", svc["environment"]["DCPUE_HTTP__TOKENS"])
    assert settings.http.tokens == (hash_token(OPERATOR_VALUE),)
    assert not settings.http.allow_anonymous and "DCPUE_HTTP__ALLOW_ANONYMOUS" not in env
    without = {k: v for k, v in env.items() if k != "DCPUE_HTTP__TOKENS"}
    with pytest.raises(ConfigError, match="not a loopback address"):
        _validate_env(without, options, monkeypatch)
    # the health check asks an open path: it has no token
    (url,) = re.findall(r"https?://[^'\"\s]+", " ".join(svc["healthcheck"]["test"]))
    assert urlsplit(url).path in OPEN_PATHS


def test_readme_lists_every_required_compose_variable() -> None:
    required = {m.group(1) for m in INTERPOLATION.finditer(COMPOSE.read_text(encoding="utf-8")) if m.group(2) == ":?"}
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"(?m)^\| `(\w+)` \| yes \|", readme))
    assert required == documented
    env_file = re.search(r"cat > \.env <<ENV\n(.*?)\nENV\n", readme, re.DOTALL)
    assert env_file and required == set(re.findall(r"(?m)^(\w+)=", env_file.group(1)))


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
WORKLOADS = [("Deployment", "dcpue-analytics"), ("Deployment", "dcpue-aggregator"), ("StatefulSet", "dcpue-collector"),
             ("StatefulSet", "dcpue-notify"), ("Deployment", "dcpue-api"), ("Job", "dcpue-topics-create"),
             ("StatefulSet", "dcpue-feed")]
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "ReplicaSet", "Pod")


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


def _container_args(kind: str, name: str) -> list[str]:
    """The first container's command line (after the image's `dcpue` entrypoint)."""
    return _pod(kind, name)["containers"][0].get("args", [])


def _container_env(kind: str, name: str) -> dict[str, str]:
    """The first container's environment as the pod sees it: the settings ConfigMap, then its ``env``."""
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
    return env


@pytest.mark.parametrize(("kind", "name"), WORKLOADS)
def test_k8s_env_names_are_settings_and_validate(kind: str, name: str, monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    env = _container_env(kind, name)
    unknown = sorted(n for n in env if n not in SETTING_NAMES)
    assert not unknown, f"{name}: not settings in dcpue/settings.py: {unknown}"
    # with the command line's options, as the entry point validates them (serve's --host among them)
    options = _cli_options(_container_args(kind, name))
    settings = _validate_env(_with_feed_example(env, tmp_path), options, monkeypatch)
    # exactly one process runs the feed: a second would have its own outbox and double every destination's
    # traffic (the settings ConfigMap, read by every pod, must not enable it)
    assert settings.feed.enabled == (name == "dcpue-feed"), name


def test_k8s_every_workload_is_checked() -> None:
    found = {(d["kind"], d["metadata"]["name"]) for d in _k8s_docs() if d["kind"] in WORKLOAD_KINDS}
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
    assert _k8s("StatefulSet", "dcpue-collector")["spec"]["replicas"] == 1


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


def _named_ports(kind: str, name: str) -> dict[str, int]:
    """Every container port of a workload's pod, by name (name → containerPort)."""
    return {p["name"]: p["containerPort"] for c in _pod(kind, name)["containers"] for p in c.get("ports", [])}


def test_k8s_networkpolicy_admits_only_the_api_and_metrics_ports() -> None:
    policies = [d for d in _k8s_docs() if d["kind"] == "NetworkPolicy"]
    assert all(set(p["spec"]["policyTypes"]) <= {"Ingress", "Egress"} for p in policies)
    ingress_policies = [p for p in policies if "Ingress" in p["spec"]["policyTypes"]]
    deny = [p for p in ingress_policies if not p["spec"].get("ingress")]
    allow = [p for p in ingress_policies if p["spec"].get("ingress")]
    for kind, name in WORKLOADS:
        assert any(_matches(p["spec"]["podSelector"], _pod_labels(kind, name)) for p in deny), f"{name}: not denied"
    admitted: set[tuple[str, str, int]] = set()  # (workload, source namespace, port)
    for policy in allow:
        where = policy["metadata"]["name"]
        # listing Egress too would need egress rules, or it would cut the pods off from Kafka
        assert policy["spec"]["policyTypes"] == ["Ingress"], where
        targets = [(kind, name) for kind, name in WORKLOADS
                   if _matches(policy["spec"]["podSelector"], _pod_labels(kind, name))]
        assert targets, f"{where} selects no workload"
        for rule in policy["spec"]["ingress"]:
            # without `ports` a rule admits every port; without `from`, every source
            assert rule.get("ports"), where
            assert rule.get("from"), where
            sources = []
            for peer in rule["from"]:
                # one named namespace (optionally narrowed by a podSelector): never an ipBlock, never
                # `namespaceSelector: {}` (every namespace) nor a podSelector alone (every pod of dcpue)
                assert set(peer) <= {"namespaceSelector", "podSelector"} and "namespaceSelector" in peer, where
                selector = peer["namespaceSelector"]
                assert set(selector) == {"matchLabels"}, where
                sources.append(selector["matchLabels"]["kubernetes.io/metadata.name"])
            for p in rule["ports"]:
                assert p.get("protocol", "TCP") == "TCP" and "endPort" not in p, where
                for kind, name in targets:
                    named = _named_ports(kind, name)
                    port = named.get(p["port"], p["port"])
                    assert port in named.values(), f"{where}: {name} has no port {p['port']}"
                    admitted |= {(name, source, port) for source in sources}
    collector_metrics = _named_ports("StatefulSet", "dcpue-collector")["metrics"]
    notify_metrics = _named_ports(*NOTIFY)["metrics"]
    assert admitted == {("dcpue-api", "ingress-nginx", _api_port()),
                        ("dcpue-collector", "monitoring", collector_metrics),
                        ("dcpue-notify", "monitoring", notify_metrics)}


def _kafka_bootstrap() -> tuple[str, int]:
    """(namespace, port) of the settings ConfigMap's in-cluster Kafka bootstrap address (``svc.ns.svc:port``)."""
    address = _k8s("ConfigMap", "dcpue-settings")["data"]["DCPUE_BUS__KAFKA__BOOTSTRAP_SERVERS"].split(",")[0]
    host, port = address.rsplit(":", 1)
    labels = host.split(".")
    assert len(labels) >= 3 and labels[2] == "svc", f"not an in-cluster Service address: {address}"
    return labels[1], int(port)


EGRESS_LIMITED = ("dcpue-notify", "dcpue-feed")  # the pods that talk to the internet (receivers, the platform)


def _egress_policies() -> list[dict[str, Any]]:
    return [d for d in _k8s_docs() if d["kind"] == "NetworkPolicy" and "Egress" in d["spec"]["policyTypes"]]


def test_k8s_networkpolicy_egress_is_limited_for_notify_and_feed_only() -> None:
    # any Egress policy must name everything its pods need; the other pods' egress stays open
    selected: list[str] = []
    for policy in _egress_policies():
        targets = {name for kind, name in WORKLOADS if _matches(policy["spec"]["podSelector"], _pod_labels(kind, name))}
        assert len(targets) == 1 and targets <= set(EGRESS_LIMITED), (policy["metadata"]["name"], targets)
        selected += targets
    assert sorted(selected) == sorted(EGRESS_LIMITED)  # one policy each: its rules are all the pod may use


@pytest.mark.parametrize("name", EGRESS_LIMITED)
def test_k8s_networkpolicy_egress_reaches_what_it_needs(name: str) -> None:
    kind = next(k for k, n in WORKLOADS if n == name)
    (policy,) = [p for p in _egress_policies() if _matches(p["spec"]["podSelector"], _pod_labels(kind, name))]
    rules = policy["spec"]["egress"]
    assert all(rule.get("to") and rule.get("ports") for rule in rules)  # no rule opens every address or port

    def allowed(protocol: str, port: int, peer_ok: Any) -> bool:
        return any(any(peer_ok(peer) for peer in rule["to"])
                   and any(p.get("protocol", "TCP") == protocol and p["port"] == port for p in rule["ports"])
                   for rule in rules)

    def namespace(name: str) -> Any:
        return lambda peer: peer.get("namespaceSelector", {}).get("matchLabels", {}) == {
            "kubernetes.io/metadata.name": name}

    # DNS over UDP and TCP, to the cluster DNS
    for protocol in ("UDP", "TCP"):
        assert allowed(protocol, 53, namespace("kube-system")), f"DNS over {protocol}"
    # the Kafka bootstrap Service and brokers of the settings ConfigMap
    kafka_namespace, kafka_port = _kafka_bootstrap()
    assert allowed("TCP", kafka_port, namespace(kafka_namespace)), "Kafka"
    # HTTPS to public addresses (chat robots, webhooks, the platform), not to private ranges or the
    # metadata endpoint
    blocks = [peer["ipBlock"] for rule in rules for peer in rule["to"] if "ipBlock" in peer]
    assert allowed("TCP", 443, lambda peer: peer.get("ipBlock", {}).get("cidr") == "0.0.0.0/0"), "HTTPS"
    for block in blocks:
        if block["cidr"] == "0.0.0.0/0":
            assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= set(block["except"])
    # no ipBlock anywhere else opens the internet on another port
    for rule in rules:
        if any(peer.get("ipBlock", {}).get("cidr") == "0.0.0.0/0" for peer in rule["to"]):
            assert [(p.get("protocol", "TCP"), p["port"]) for p in rule["ports"]] == [("TCP", 443)]
    if name == "dcpue-feed":  # the example's destinations are reachable (HTTPS, default port)
        for dest in yaml.safe_load(FEED_EXAMPLE.read_text(encoding="utf-8"))["feed"]["destinations"]:
            url = urlsplit(dest["url"])
            assert url.scheme == "https" and (url.port or 443) == 443, dest["name"]


# -- Kubernetes: the collector ---------------------------------------------------------------------
COLLECTOR = ("StatefulSet", "dcpue-collector")
BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
DECIMAL = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "": 1}


def _bytes(quantity: str) -> float:
    """A Kubernetes storage quantity (``2Gi``, ``500M``, ``1073741824``) in bytes."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]i|[kMGT]?)", str(quantity))
    assert m, f"unsupported quantity {quantity!r}"
    return float(m.group(1)) * {**BINARY, **DECIMAL}[m.group(2)]


def _collector_container() -> dict[str, Any]:
    (container,) = _pod(*COLLECTOR)["containers"]
    return container


def _collectors_file(tmp_path: Path) -> Path:
    """collectors.yaml from the ConfigMap `dcpue-collectors`, written where --config can read it."""
    data = yaml.safe_load(_k8s("ConfigMap", "dcpue-collectors")["data"]["collectors.yaml"])
    assert data["collect"]["devices"] == []  # shipped empty: the simulator; docs/collectors.md says how to fill it
    if "devices" not in CollectSettings.model_fields:  # collect.devices is being added to dcpue/settings.py
        del data["collect"]["devices"]
    path = tmp_path / "collectors.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _collector_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    """The collector pod's settings: its environment over the mounted collectors.yaml, as `dcpue collect` loads them."""
    import os

    for name in [n for n in os.environ if n.startswith("DCPUE_")]:
        monkeypatch.delenv(name)
    for name, value in _container_env(*COLLECTOR).items():
        monkeypatch.setenv(name, value)
    return load_settings(_collectors_file(tmp_path), bus={"kind": "kafka"})


def test_k8s_collector_reads_the_collectors_config() -> None:
    container = _collector_container()
    args = container["args"]
    assert args[:3] == ["collect", "--registry", "/etc/dcpue/sites.yaml"]
    config = Path(_flag(args, "--config"))
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    mount = mounts[str(config.parent)]
    assert mount["readOnly"] is True
    volumes = {v["name"]: v for v in _pod(*COLLECTOR)["volumes"]}
    source = volumes[mount["name"]]
    # a ConfigMap, or the Secret of the same name once the file holds device credentials
    assert source.get("configMap", {}).get("name") == "dcpue-collectors" \
        or source.get("secret", {}).get("secretName") == "dcpue-collectors"
    assert "collectors.yaml" in _k8s("ConfigMap", "dcpue-collectors")["data"]
    assert config.name == "collectors.yaml"
    # not inside the registry's ConfigMap mount (a mount point inside a read-only ConfigMap volume)
    assert not any(config.is_relative_to(p) for p in mounts if p != str(config.parent) and p != "/")


def test_k8s_collector_spool_is_on_its_volume_claim(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    statefulset = _k8s(*COLLECTOR)
    # one pod: a second replica of the same device list would read every device twice
    assert statefulset["spec"]["replicas"] == 1
    spool = _collector_settings(monkeypatch, tmp_path).collect.spool
    assert spool.path.is_absolute(), "a relative spool path is under the read-only root filesystem"
    container = _collector_container()
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    (mount,) = [m for m in container["volumeMounts"] if spool.path.is_relative_to(m["mountPath"])]
    claims = {t["metadata"]["name"]: t for t in statefulset["spec"]["volumeClaimTemplates"]}
    assert mount["name"] in claims, f"{spool.path} is not on a volumeClaimTemplate: lost with the pod"
    assert mount["name"] not in {v["name"] for v in _pod(*COLLECTOR)["volumes"]}  # a pod volume would shadow it
    assert not mount.get("readOnly")
    claim = claims[mount["name"]]["spec"]
    assert claim["accessModes"] == ["ReadWriteOnce"]
    # room for the spool's cap plus SQLite's WAL and free pages
    requested = _bytes(claim["resources"]["requests"]["storage"])
    assert requested >= 1.5 * spool.max_bytes, (requested, spool.max_bytes)
    # a cap set nowhere is the settings default, which the volume must cover too
    env = _container_env(*COLLECTOR)
    cap = int(env.get("DCPUE_COLLECT__SPOOL__MAX_BYTES", SpoolSettings().max_bytes))
    assert requested > cap
    # the volume is writable by the dcpue user (uid 10001, fsGroup)
    pod = _pod(*COLLECTOR)
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]


def test_k8s_collector_stops_after_its_drain(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    drain_s = _collector_settings(monkeypatch, tmp_path).collect.drain_s
    # SIGKILL comes after the grace period: it must leave the drain its whole time
    assert _pod(*COLLECTOR)["terminationGracePeriodSeconds"] > drain_s


def test_k8s_collector_metrics_port_matches_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    collect = _collector_settings(monkeypatch, tmp_path).collect
    assert collect.metrics_port
    assert collect.metrics_host in ("0.0.0.0", "::")  # the kubelet and Prometheus come in on the pod's IP
    container = _collector_container()
    named = _named_ports(*COLLECTOR)
    assert named == {"metrics": collect.metrics_port}
    assert all(p.get("protocol", "TCP") == "TCP" for p in container["ports"])
    probe = container["livenessProbe"]
    if "httpGet" in probe:
        assert probe["httpGet"]["path"] == "/metrics"
        port = probe["httpGet"]["port"]
    else:
        port = probe["tcpSocket"]["port"]
    assert named.get(port, port) == collect.metrics_port
    annotations = _k8s(*COLLECTOR)["spec"]["template"]["metadata"].get("annotations", {})
    if annotations.get("prometheus.io/scrape") == "true":
        assert annotations["prometheus.io/port"] == str(collect.metrics_port)
        assert annotations.get("prometheus.io/path", "/metrics") == "/metrics"


def test_k8s_collector_headless_service() -> None:
    statefulset = _k8s(*COLLECTOR)
    service = _k8s("Service", statefulset["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    selector = {"matchLabels": service["spec"]["selector"]}
    for kind, name in WORKLOADS:
        assert _matches(selector, _pod_labels(kind, name)) == (name == "dcpue-collector"), name
    named = _named_ports(*COLLECTOR)
    (port,) = service["spec"]["ports"]
    assert port["name"] == "metrics" and port.get("protocol", "TCP") == "TCP"
    assert named.get(port["targetPort"], port["targetPort"]) == named["metrics"] == port["port"]
    # the StatefulSet's own selector picks its pods only (copies for other device lists differ in it)
    assert _matches(statefulset["spec"]["selector"], _pod_labels(*COLLECTOR))


def test_k8s_collector_config_validates(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = _collector_settings(monkeypatch, tmp_path)
    assert not getattr(settings.collect, "devices", ())  # no invented devices in the shipped file
    text = _k8s("ConfigMap", "dcpue-collectors")["data"]["collectors.yaml"]
    assert not SECRET_KEY.search(text)  # credentials go into the Secret `dcpue-collectors`, never this ConfigMap


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
                if key == "secretName":  # a pod volume naming a Secret object: a reference, not a value
                    continue
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


# -- Kubernetes: alert delivery (notify) -------------------------------------------------------------
NOTIFY = ("StatefulSet", "dcpue-notify")


def _notify_container() -> dict[str, Any]:
    (container,) = _pod(*NOTIFY)["containers"]
    return container


def _notify_config_source() -> tuple[Path, dict[str, Any]]:
    """(path of --config, the pod volume it is mounted from)."""
    container = _notify_container()
    config = Path(_flag(container["args"], "--config"))
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    mount = mounts[str(config.parent)]
    assert mount["readOnly"] is True
    volumes = {v["name"]: v for v in _pod(*NOTIFY)["volumes"]}
    return config, volumes[mount["name"]]


def _notify_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The notify pod's settings over the shipped example as its alerting.yaml, as `dcpue notify` loads them."""
    import os

    for name in [n for n in os.environ if n.startswith("DCPUE_")]:
        monkeypatch.delenv(name)
    for name, value in _container_env(*NOTIFY).items():
        monkeypatch.setenv(name, value)
    return load_settings(ALERTING_EXAMPLE, bus={"kind": "kafka"})


def test_k8s_notify_is_one_pod_with_the_command_line_it_needs() -> None:
    statefulset = _k8s(*NOTIFY)
    # one outbox, one dispatcher: a second replica would double rate limits and resend after a rebalance
    assert statefulset["spec"]["replicas"] == 1
    assert statefulset["spec"].get("updateStrategy", {}).get("type", "RollingUpdate") == "RollingUpdate"
    assert _matches(statefulset["spec"]["selector"], _pod_labels(*NOTIFY))
    args = _notify_container()["args"]
    assert args[0] == "notify"
    assert _flag(args, "--metrics-host") in ("0.0.0.0", "::")  # the kubelet and Prometheus come in on the pod IP
    # Kafka only: no InfluxDB token
    assert "DCPUE_STORE__INFLUXDB__TOKEN" not in {v["name"] for v in _notify_container().get("env", [])}
    # SIGKILL only after a request in flight (a receiver's timeout, 10 s by default) could finish
    assert _pod(*NOTIFY)["terminationGracePeriodSeconds"] > 10


def test_k8s_notify_outbox_and_history_are_on_its_volume_claim(monkeypatch: pytest.MonkeyPatch) -> None:
    statefulset = _k8s(*NOTIFY)
    container = _notify_container()
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    outbox = Path(_notify_settings(monkeypatch).alerts.delivery.outbox_path)
    history = Path(_flag(container["args"], "--history"))
    claims = {c["metadata"]["name"]: c for c in statefulset["spec"]["volumeClaimTemplates"]}
    pod_volumes = {v["name"] for v in _pod(*NOTIFY)["volumes"]}
    for path in (outbox, history):
        assert path.is_absolute(), f"{path}: a relative path is under the read-only root filesystem"
        (mount,) = [m for m in container["volumeMounts"] if path.is_relative_to(m["mountPath"])]
        assert mount["name"] in claims, f"{path} is not on a volumeClaimTemplate: lost with the pod"
        assert mount["name"] not in pod_volumes  # a pod volume of that name would shadow the claim
        assert not mount.get("readOnly")
    claim = next(iter(claims.values()))["spec"]
    assert claim["accessModes"] == ["ReadWriteOnce"]
    assert _bytes(claim["resources"]["requests"]["storage"]) >= 2**30
    # the volume is writable by the dcpue user (uid 10001, fsGroup)
    pod = _pod(*NOTIFY)
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
    # the outbox path comes from the environment, so an alerting.yaml cannot move it off the volume
    assert "DCPUE_ALERTS__DELIVERY__OUTBOX_PATH" in {v["name"] for v in container["env"]}


def test_k8s_notify_reads_its_receivers_from_a_secret_never_a_configmap() -> None:
    config, source = _notify_config_source()
    # receiver URLs carry robot tokens and `secret` signs requests: a Secret, created by the operator
    assert "configMap" not in source
    assert source["secret"]["secretName"] == "dcpue-alerting"
    assert not source["secret"].get("optional", False)  # no receivers file, no pod (rather than a silent notify)
    assert config.name == "alerting.yaml"
    assert not [d for d in _k8s_docs() if d["metadata"]["name"] == "dcpue-alerting"]  # no Secret with values shipped
    mode = source["secret"].get("defaultMode", 0o644)
    assert mode & 0o007 == 0, oct(mode)  # not world-readable
    # no ConfigMap anywhere holds alert receivers or routes
    for doc in _k8s_docs():
        if doc["kind"] == "ConfigMap":
            for key, text in doc["data"].items():
                assert not re.search(r"(?m)^\s*(receivers|routes)\s*:", text), f"{doc['metadata']['name']}/{key}"
                assert not key.startswith("DCPUE_ALERTS__RECEIVERS"), doc["metadata"]["name"]


def test_k8s_notify_metrics_port_probe_and_service() -> None:
    container = _notify_container()
    named = _named_ports(*NOTIFY)
    port = int(_flag(container["args"], "--metrics-port"))
    assert named == {"metrics": port}
    assert port != _named_ports("StatefulSet", "dcpue-collector")["metrics"]
    assert all(p.get("protocol", "TCP") == "TCP" for p in container["ports"])
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/metrics" and named.get(probe["port"], probe["port"]) == port
    annotations = _k8s(*NOTIFY)["spec"]["template"]["metadata"].get("annotations", {})
    if annotations.get("prometheus.io/scrape") == "true":
        assert annotations["prometheus.io/port"] == str(port)
        assert annotations.get("prometheus.io/path", "/metrics") == "/metrics"
    statefulset = _k8s(*NOTIFY)
    service = _k8s("Service", statefulset["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    selector = {"matchLabels": service["spec"]["selector"]}
    for kind, name in WORKLOADS:
        assert _matches(selector, _pod_labels(kind, name)) == (name == "dcpue-notify"), name
    (service_port,) = service["spec"]["ports"]
    assert service_port["name"] == "metrics" and service_port.get("protocol", "TCP") == "TCP"
    assert named.get(service_port["targetPort"], service_port["targetPort"]) == port == service_port["port"]


def test_k8s_notify_group_and_settings_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _notify_settings(monkeypatch)
    assert settings.alerts.receivers and settings.alerts.routes  # the example, as the Secret's file
    # the consumer group is the shared group id + "-notify", which the Secret template grants
    template = (K8S / "secret.template.yaml").read_text(encoding="utf-8")
    assert f"`{settings.bus.kafka.group_id}-notify`" in template


# -- Kubernetes: the provincial feed ------------------------------------------------------------------
FEED = ("StatefulSet", "dcpue-feed")


def _feed_container() -> dict[str, Any]:
    (container,) = _pod(*FEED)["containers"]
    return container


def _feed_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    """The feed pod's settings over the shipped example as its feed.yaml, as `dcpue serve` loads them."""
    import os

    for name in [n for n in os.environ if n.startswith("DCPUE_")]:
        monkeypatch.delenv(name)
    for name, value in _with_feed_example(_container_env(*FEED), tmp_path).items():
        monkeypatch.setenv(name, value)
    return load_settings(None, **_cli_options(_feed_container()["args"]))


def _feed_secret_volume() -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """(the DCPUE_CONFIG path, its volume mount, the pod volume it comes from)."""
    container = _feed_container()
    config = Path(_container_env(*FEED)["DCPUE_CONFIG"])
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    mount = mounts[str(config.parent)]
    volumes = {v["name"]: v for v in _pod(*FEED)["volumes"]}
    return config, mount, volumes[mount["name"]]


def test_k8s_feed_is_one_pod_running_serve_with_the_feed() -> None:
    statefulset = _k8s(*FEED)
    # one outbox, one sender: a second replica would send every report again at twice the rate limits
    assert statefulset["spec"]["replicas"] == 1
    # a StatefulSet update deletes the old pod before creating the new one: never two senders
    assert statefulset["spec"].get("updateStrategy", {}).get("type", "RollingUpdate") == "RollingUpdate"
    assert statefulset["spec"].get("podManagementPolicy", "OrderedReady") == "OrderedReady"
    assert _matches(statefulset["spec"]["selector"], _pod_labels(*FEED))
    args = _feed_container()["args"]
    assert args[0] == "serve"
    assert _flag(args, "--host") in ("0.0.0.0", "::")  # the kubelet's probes come in on the pod IP
    # view, settings file and registry from the environment, which `kubectl exec … dcpue feed status` shares
    assert not {"--store", "--config", "--registry"} & set(args)
    env = _container_env(*FEED)
    assert env["DCPUE_FEED__ENABLED"] == "true"  # whatever feed.yaml says
    # Kafka only: no InfluxDB token
    assert "DCPUE_STORE__INFLUXDB__TOKEN" not in {v["name"] for v in _feed_container().get("env", [])}
    # SIGKILL only after the sender's run and a request in flight could finish (FeedService.stop waits for
    # each up to its timeout)
    stop_timeout = inspect.signature(FeedService.stop).parameters["timeout_s"].default
    assert _pod(*FEED)["terminationGracePeriodSeconds"] > 2 * stop_timeout


def test_k8s_feed_is_the_only_workload_that_enables_the_feed() -> None:
    # the settings ConfigMap goes to every dcpue pod: a feed setting there would reach the api pods too
    assert not [k for k in _k8s("ConfigMap", "dcpue-settings")["data"] if k.startswith("DCPUE_FEED__")]
    for kind, name in WORKLOADS:
        names = {v["name"] for c in _pod(kind, name)["containers"] for v in c.get("env", [])}
        assert ("DCPUE_FEED__ENABLED" in names) == ((kind, name) == FEED), name
        # nor does any run `dcpue feed send`
        assert all(c.get("args", [""])[0] != "feed" for c in _pod(kind, name)["containers"]), name


def test_k8s_feed_outbox_and_view_are_on_its_volume_claim(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    statefulset = _k8s(*FEED)
    container = _feed_container()
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    settings = _feed_settings(monkeypatch, tmp_path)
    outbox, view = Path(settings.feed.outbox_path), Path(settings.store.path)
    assert outbox != view
    claims = {c["metadata"]["name"]: c for c in statefulset["spec"]["volumeClaimTemplates"]}
    pod_volumes = {v["name"] for v in _pod(*FEED)["volumes"]}
    for path in (outbox, view):
        assert path.is_absolute(), f"{path}: a relative path is under the read-only root filesystem"
        (mount,) = [m for m in container["volumeMounts"] if path.is_relative_to(m["mountPath"])]
        assert mount["name"] in claims, f"{path} is not on a volumeClaimTemplate: lost with the pod"
        assert mount["name"] not in pod_volumes  # a pod volume of that name would shadow the claim
        assert not mount.get("readOnly")
    # both come from the environment, so a feed.yaml cannot move them off the volume
    names = {v["name"] for v in container["env"]}
    assert {"DCPUE_FEED__OUTBOX_PATH", "DCPUE_STORE__PATH"} <= names
    claim = next(iter(claims.values()))["spec"]
    assert claim["accessModes"] == ["ReadWriteOnce"]
    # room for months of reports (keep_days ≥ 183) besides a view as large as an api pod's
    api_view = next(v for v in _pod("Deployment", "dcpue-api")["volumes"] if v["name"] == "view")
    assert _bytes(claim["resources"]["requests"]["storage"]) >= _bytes(api_view["emptyDir"]["sizeLimit"]) + 2**30
    # the volume is writable by the dcpue user (uid 10001, fsGroup)
    pod = _pod(*FEED)
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]


def test_k8s_feed_reads_its_destinations_and_keys_from_a_secret_never_a_configmap(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config, mount, source = _feed_secret_volume()
    assert config == Path(FEED_DIR) / "feed.yaml"
    assert mount["readOnly"] is True
    assert "subPath" not in mount  # a subPath mount never sees a rotated key
    # platform keys, HMAC secrets and the client key: a Secret, created by the operator
    assert "configMap" not in source
    assert source["secret"]["secretName"] == "dcpue-feed"
    assert not source["secret"].get("optional", False)  # no destinations, no pod (rather than a silent feed)
    shipped = [d for d in _k8s_docs() if d["kind"] in ("Secret", "ConfigMap") and d["metadata"]["name"] == "dcpue-feed"]
    assert not shipped  # no Secret with values (or placeholders to apply by mistake) is shipped
    mode = source["secret"].get("defaultMode", 0o644)
    assert mode & 0o007 == 0, oct(mode)  # not world-readable
    # every file the example names is in the Secret's mount, and the documented command creates each one
    files = _feed_example_files()
    assert all(Path(f).parent == config.parent for f in files)
    header = (K8S / "feed-statefulset.yaml").read_text(encoding="utf-8")
    created = set(re.findall(r"--from-file=([\w.-]+)=", header))
    assert created == {config.name} | {Path(f).name for f in files}
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    assert created <= set(re.findall(r"--from-file=([\w.-]+)=", readme))
    # no ConfigMap anywhere holds destinations or feed settings
    for doc in _k8s_docs():
        if doc["kind"] == "ConfigMap":
            for key, text in doc["data"].items():
                assert not re.search(r"(?m)^\s*(feed|destinations)\s*:", text), f"{doc['metadata']['name']}/{key}"
    # the registry the reports are made for: the registry ConfigMap, as the api pods read it
    settings = _feed_settings(monkeypatch, tmp_path)
    mounts = {m["mountPath"]: m for m in _feed_container()["volumeMounts"]}
    registry_mount = mounts[str(Path(settings.registry).parent)]
    volumes = {v["name"]: v for v in _pod(*FEED)["volumes"]}
    assert volumes[registry_mount["name"]]["configMap"]["name"] == "dcpue-registry"
    assert Path(settings.registry).name in _k8s("ConfigMap", "dcpue-registry")["data"]


def test_k8s_feed_probes_port_and_headless_service() -> None:
    container = _feed_container()
    named = _named_ports(*FEED)
    port = int(_flag(container["args"], "--port"))
    assert named == {"http": port}
    assert all(p.get("protocol", "TCP") == "TCP" for p in container["ports"])
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert named.get(get["port"], get["port"]) == port, probe
    statefulset = _k8s(*FEED)
    service = _k8s("Service", statefulset["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    selector = {"matchLabels": service["spec"]["selector"]}
    for kind, name in WORKLOADS:
        assert _matches(selector, _pod_labels(kind, name)) == (name == "dcpue-feed"), name
    (service_port,) = service["spec"]["ports"]
    assert service_port.get("protocol", "TCP") == "TCP"
    assert named.get(service_port["targetPort"], service_port["targetPort"]) == port
    # no Service other than its own headless one selects the feed pod (the api Service must not send it users)
    for doc in _k8s_docs():
        if doc["kind"] == "Service" and doc["metadata"]["name"] != service["metadata"]["name"]:
            assert not _matches({"matchLabels": doc["spec"]["selector"]}, _pod_labels(*FEED)), doc["metadata"]["name"]


def test_k8s_feed_admits_no_ingress() -> None:
    # its port serves the api's API (behind the same tokens): nothing in the cluster needs it (the kubelet's
    # probes, port-forward and exec do not pass through NetworkPolicies)
    policies = [d for d in _k8s_docs() if d["kind"] == "NetworkPolicy" and "Ingress" in d["spec"]["policyTypes"]]
    selecting = [p for p in policies if _matches(p["spec"]["podSelector"], _pod_labels(*FEED))]
    assert selecting and all(not p["spec"].get("ingress") for p in selecting)


# -- Kubernetes: the API's tokens ------------------------------------------------------------------
SERVE_WORKLOADS = [("Deployment", "dcpue-api"), FEED]  # the workloads that run `dcpue serve`


def test_k8s_serve_workloads_are_the_api_and_the_feed() -> None:
    assert [(k, n) for k, n in WORKLOADS if _container_args(k, n)[:1] == ["serve"]] == SERVE_WORKLOADS
    assert all(len(_pod(k, n)["containers"]) == 1 for k, n in SERVE_WORKLOADS)


@pytest.mark.parametrize(("kind", "name"), SERVE_WORKLOADS)
def test_k8s_serve_reads_api_tokens_from_the_secret(kind: str, name: str, monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    pod = _pod(kind, name)
    (container,) = pod["containers"]
    options = _cli_options(container["args"])
    env = _with_feed_example(_container_env(kind, name), tmp_path)
    settings = _validate_env(env, options, monkeypatch)
    # bound to the pod's IP (the Service and the kubelet come in there) ...
    assert not is_loopback(settings.http.host)
    assert settings.http.port in {p["containerPort"] for p in container["ports"]}
    # ... which serve allows only with tokens: here a file of digests, from the environment
    assert not settings.http.allow_anonymous and not settings.http.tokens
    tokens_file = settings.http.tokens_file
    assert tokens_file is not None and tokens_file.is_absolute()
    assert "DCPUE_HTTP__TOKENS_FILE" in {v["name"] for v in container["env"]}
    assert not [k for k in _k8s("ConfigMap", "dcpue-settings")["data"] if k.startswith("DCPUE_HTTP__")]
    without = {k: v for k, v in env.items() if k != "DCPUE_HTTP__TOKENS_FILE"}
    with pytest.raises(ConfigError, match="not a loopback address"):
        _validate_env(without, options, monkeypatch)
    # the file is the key of the Secret, mounted where the variable points: read-only, no subPath (a subPath
    # mount never sees an update, and the tokens are re-read when the file changes)
    (mount,) = [m for m in container["volumeMounts"] if tokens_file.is_relative_to(m["mountPath"])]
    assert mount["mountPath"] == str(tokens_file.parent)
    assert mount["readOnly"] is True and "subPath" not in mount
    source = {v["name"]: v for v in pod["volumes"]}[mount["name"]]
    assert set(source) == {"name", "secret"}  # never a ConfigMap (nor a projection of one)
    secret = source["secret"]
    assert secret["secretName"] == API_TOKENS_SECRET
    assert not secret.get("optional", False)  # no tokens, no pod
    assert "items" not in secret and tokens_file.name == "tokens"  # the Secret's key is the file's name
    # readable by the dcpue user and no one else: the files are root's, their group is fsGroup
    mode = secret.get("defaultMode", 0o644)
    assert mode & 0o007 == 0, oct(mode)
    assert mode & 0o040 and pod["securityContext"].get("fsGroup") == pod["securityContext"]["runAsGroup"]
    # the probes ask open paths: the kubelet has no token
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        if probe in container:
            assert container[probe]["httpGet"]["path"] in OPEN_PATHS, probe


def test_k8s_api_tokens_secret_is_created_by_the_operator_as_documented() -> None:
    # no Secret with digests (nor a ConfigMap) is shipped to be applied by mistake
    assert not [d for d in _k8s_docs() if d["metadata"]["name"] == API_TOKENS_SECRET]
    key = Path(_container_env("Deployment", "dcpue-api")["DCPUE_HTTP__TOKENS_FILE"]).name
    create = re.compile(rf"create secret generic {API_TOKENS_SECRET} --from-file=([\w.-]+)=")
    digest = "sha256sum | cut -d' ' -f1 > tokens"  # a digest per line, never the token
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    header = (K8S / "api-deployment.yaml").read_text(encoding="utf-8")
    for text in (readme, header):
        assert set(create.findall(text)) == {key}
        assert digest in text and "Authorization: Bearer" in text
    # created before the workloads that wait for it
    created = readme.index(f"create secret generic {API_TOKENS_SECRET}")
    assert all(created < readme.index(f"-f k8s/{m}") for m in ("api-deployment.yaml", "feed-statefulset.yaml"))
    assert API_TOKENS_SECRET in (K8S / "feed-statefulset.yaml").read_text(encoding="utf-8")


# -- settings files in deploy/config ------------------------------------------------------------------
def test_alerting_example_loads_as_notify_settings_with_placeholders_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in [n for n in os.environ if n.startswith("DCPUE_")]:
        monkeypatch.delenv(name)
    settings = load_settings(ALERTING_EXAMPLE)
    alerts = settings.alerts
    assert {r.kind.value for r in alerts.receivers} >= {"webhook"}
    for receiver in alerts.receivers:
        if receiver.secret is not None:
            assert receiver.secret.get_secret_value().startswith("REPLACE_WITH_"), receiver.name
        for name, value in receiver.headers.items():
            assert "REPLACE_WITH_" in value, f"{receiver.name}: header {name}"
        query = receiver.url.partition("?")[2]
        for pair in filter(None, query.split("&")):  # a token in the URL (DingTalk access_token, WeCom key)
            assert pair.partition("=")[2].startswith("REPLACE_WITH_"), f"{receiver.name}: {pair}"
    # only what notify reads: rules, per-site overrides and maintenance windows are analyze's
    data = yaml.safe_load(ALERTING_EXAMPLE.read_text(encoding="utf-8"))
    assert set(data) == {"alerts"}
    assert set(data["alerts"]) <= {"receivers", "routes", "delivery"}
    # the deployments put the outbox on their volume through the environment, which beats the file
    assert "outbox_path" not in data["alerts"].get("delivery", {})


def test_feed_example_loads_as_feed_settings_with_placeholders_only(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in [n for n in os.environ if n.startswith("DCPUE_")]:
        monkeypatch.delenv(name)
    settings = load_settings(_feed_example_copy(tmp_path))
    feed = settings.feed
    assert isinstance(feed, FeedSettings) and feed.enabled
    data = yaml.safe_load(FEED_EXAMPLE.read_text(encoding="utf-8"))
    assert set(data) == {"feed"}  # the Secret's file holds the feed's settings only
    assert FeedSettings.model_validate(yaml.safe_load(_feed_example_copy(tmp_path).read_text(encoding="utf-8"))["feed"])
    # two destinations; one with HMAC-SM3 and mutual TLS
    assert len(feed.destinations) == 2
    assert {d.algorithm for d in feed.destinations} == {"hmac-sm3", "hmac-sha256"}
    sm3 = next(d for d in feed.destinations if d.algorithm == "hmac-sm3")
    assert sm3.tls.cert_file and sm3.tls.key_file and sm3.tls.ca_file and sm3.tls.verify
    for dest, raw in zip(feed.destinations, data["feed"]["destinations"], strict=True):
        # credentials only as files in the Secret's mount, never inline
        assert dest.api_key is None and dest.secret is None, dest.name
        assert "api_key" not in raw and "secret" not in raw, dest.name
        assert raw["api_key_file"].startswith(FEED_DIR + "/") and raw["secret_file"].startswith(FEED_DIR + "/")
        assert dest.api_key_value() == dest.secret_value() == "REPLACE_WITH_FILE_CONTENT"
        for name, value in dest.headers.items():
            assert "REPLACE_WITH_" in value, f"{dest.name}: header {name}"
        url = urlsplit(dest.url)
        assert url.scheme == "https" and url.hostname and url.hostname.endswith("example.com"), dest.url
        assert not url.query and not url.username and not url.password, dest.url
    # the deployments put the outbox on their volume and enable the feed through the environment
    assert "outbox_path" not in data["feed"]
    assert data["feed"].get("keep_days", MIN_KEEP_DAYS) >= MIN_KEEP_DAYS
    # the file drop is shown, not enabled
    assert "file_drop" not in data["feed"] and "# file_drop:" in FEED_EXAMPLE.read_text(encoding="utf-8")


def test_settings_example_lists_every_topic_with_its_default() -> None:
    topics = yaml.safe_load(SETTINGS_EXAMPLE.read_text(encoding="utf-8"))["bus"]["topics"]
    assert topics == TopicSettings().model_dump()


# -- Dockerfile ----------------------------------------------------------------------------
def test_dockerfile_installs_extras_as_non_root() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.MULTILINE)
    install = re.search(r"pip install [^\n]*\.\[([\w,]+)\]", text)
    assert install, "the Dockerfile must pip install the repository with extras"
    # collectors: pymodbus, pysnmp, paho-mqtt, httpx, prometheus-client for `dcpue collect` and `dcpue probe`
    assert {"kafka", "influx", "collectors"} <= set(install.group(1).split(","))
    check = re.search(r'python -c "import ([^"]+)"', text)
    assert check, "the image must import its clients at build time"
    imported = {m.strip() for m in check.group(1).split(",")}
    assert {"kafka", "influxdb_client", "pymodbus", "pysnmp", "paho.mqtt", "httpx", "prometheus_client"} <= imported
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \["dcpue"\]', text, re.MULTILINE)
    k8s_uid = _pod("Deployment", "dcpue-analytics")["securityContext"]["runAsUser"]
    assert users[-1].split(":")[0] == str(k8s_uid)
