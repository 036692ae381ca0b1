"""Static checks of deploy/: compose, Prometheus, Grafana and Kubernetes files.

No network and no Docker daemon: the files are parsed and checked for the contracts the
app relies on, and kustomize builds the Kubernetes manifests. (kubeconform needs to fetch
its schemas and `docker compose` is not in Debian: checks that could only skip here.)
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "k8s"
ADAPTER_DIR = "/var/lib/loramem/adapters"


class ComposeLoader(yaml.SafeLoader):
    """SafeLoader that also accepts Compose's `!reset` / `!override` merge tags."""


for _tag in ("!reset", "!override"):
    ComposeLoader.add_constructor(_tag, lambda loader, node: None)


def load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.load_all(path.read_text(), Loader=ComposeLoader) if doc]


def k8s_objects() -> list[dict]:
    return [
        doc
        for path in sorted(K8S.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in load_all(path)
    ]


def workloads(component: str | None = None) -> list[dict]:
    return [
        o
        for o in k8s_objects()
        if o["kind"] in ("Deployment", "StatefulSet") and component in (None, o["metadata"]["name"])
    ]


def compose() -> dict:
    return load_all(DEPLOY / "docker-compose.yml")[0]


@pytest.mark.parametrize("path", sorted(DEPLOY.rglob("*.y*ml")), ids=lambda p: p.name)
def test_every_yaml_file_parses(path: Path) -> None:
    assert load_all(path), f"{path} is empty"


def test_k8s_objects_are_named_and_in_the_namespace() -> None:
    for obj in k8s_objects():
        assert obj.get("apiVersion") and obj.get("kind"), obj
        assert obj["metadata"].get("name"), obj
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "loramem", obj["metadata"]["name"]


def test_kustomization_lists_every_manifest() -> None:
    listed = set(load_all(K8S / "kustomization.yaml")[0]["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def test_workload_selectors_match_their_pod_labels() -> None:
    for workload in workloads():
        selector = workload["spec"]["selector"]["matchLabels"]
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), workload["metadata"]["name"]


def test_every_container_has_an_image() -> None:
    for workload in workloads():
        for container in workload["spec"]["template"]["spec"]["containers"]:
            assert container.get("image"), (workload["metadata"]["name"], container["name"])


def test_gateway_probes() -> None:
    (gateway,) = workloads("gateway")
    for container in gateway["spec"]["template"]["spec"]["containers"]:
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_engine_has_replicas_gpus_and_health_probes() -> None:
    (engine,) = workloads("engine")
    assert engine["spec"]["replicas"] >= 2
    (container,) = engine["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"


def test_every_pod_has_its_own_adapter_folder_in_k8s() -> None:
    # No shared volume: engines fetch module versions from Redis (loramem/vllm_resolver.py).
    assert not [o for o in k8s_objects() if o["kind"] == "PersistentVolumeClaim"]
    (config,) = [o for o in k8s_objects() if o["kind"] == "ConfigMap"]
    assert config["data"]["LORAMEM_ENGINE_ADAPTER_CACHE_DIR"] == ADAPTER_DIR
    for name in ("engine", "gateway", "trainer"):
        (workload,) = workloads(name)
        pod = workload["spec"]["template"]["spec"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == "adapters"]
        assert "emptyDir" in volume, name
        mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        assert mounts["adapters"] == ADAPTER_DIR, name


def test_redis_persists_with_append_only_file() -> None:
    (redis,) = workloads("redis")
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    assert "--appendonly yes" in " ".join(container["args"])
    assert redis["spec"]["volumeClaimTemplates"]
    assert "--appendonly yes" in " ".join(compose()["services"]["redis"]["command"])


def test_compose_services_without_a_shared_adapter_volume() -> None:
    services = compose()["services"]
    assert {"redis", "engine", "gateway", "trainer", "prometheus", "grafana"} <= services.keys()
    assert "adapters" not in compose()["volumes"]
    for name in ("engine", "gateway", "trainer"):
        assert not any(ADAPTER_DIR in v for v in services[name].get("volumes", [])), name
        assert services[name]["environment"]["LORAMEM_ADAPTER_DIR"] == ADAPTER_DIR
    assert services["engine"]["depends_on"]["redis"]["condition"] == "service_healthy"
    devices = services["engine"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert "/readyz" in " ".join(services["gateway"]["healthcheck"]["test"])
    assert "/health" in " ".join(services["engine"]["healthcheck"]["test"])


def test_cpu_override_builds_cpu_and_drops_the_gpu() -> None:
    override = load_all(DEPLOY / "docker-compose.cpu.yml")[0]["services"]
    assert override["engine"]["deploy"] is None  # `!reset`
    for name in ("engine", "gateway", "trainer"):
        assert override[name]["build"]["args"]["VARIANT"] == "cpu"


def test_prometheus_scrapes_gateway_trainer_and_engine() -> None:
    config = load_all(DEPLOY / "prometheus" / "prometheus.yml")[0]
    targets = set()
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            targets.update(static["targets"])
        for dns in job.get("dns_sd_configs", []):
            targets.update(f"{name}:{dns['port']}" for name in dns["names"])
    assert {"gateway:8000", "trainer:8200", "engine:8100"} <= targets


def test_grafana_provisioning() -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    (source,) = load_all(provisioning / "datasources" / "prometheus.yml")[0]["datasources"]
    assert (source["name"], source["uid"]) == ("Prometheus", "prometheus")
    assert source["url"] == "http://prometheus:9090"
    (provider,) = load_all(provisioning / "dashboards" / "loramem.yml")[0]["providers"]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_kustomize_builds() -> None:
    # scripts/test-services.sh installs Debian's kubectl where none is there.
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not on PATH (scripts/test-services.sh installs it)")
    result = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_deployment_requires_keys() -> None:
    services = compose()["services"]
    for name in ("engine", "gateway", "trainer"):
        assert services[name]["environment"]["LORAMEM_AUTH"] == "required", name
    (config,) = [o for o in k8s_objects() if o["kind"] == "ConfigMap"]
    assert config["data"]["LORAMEM_AUTH"] == "required"
    (gateway,) = workloads("gateway")
    for container in gateway["spec"]["template"]["spec"]["containers"]:
        assert {"name": "loramem-config"} in [e["configMapRef"] for e in container["envFrom"]]


def test_prometheus_scrapes_the_gateway_with_an_admin_key() -> None:
    config = load_all(DEPLOY / "prometheus" / "prometheus.yml")[0]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "gateway"]
    key_file = job["authorization"]["credentials_file"]
    assert job["authorization"].get("type", "Bearer") == "Bearer"
    services = compose()
    (secret,) = services["services"]["prometheus"]["secrets"]
    assert key_file == f"/run/secrets/{secret}"
    assert services["secrets"][secret]["file"].startswith("./secrets/")
    assert (DEPLOY / "secrets" / ".gitignore").exists()
    # Kubernetes: no annotation scraping (it cannot send a key); a ServiceMonitor does.
    (gateway,) = workloads("gateway")
    annotations = gateway["spec"]["template"]["metadata"].get("annotations", {})
    assert "prometheus.io/scrape" not in annotations
    (monitor,) = [o for o in k8s_objects() if o["kind"] == "ServiceMonitor"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics" and endpoint["authorization"]["type"] == "Bearer"
    assert endpoint["authorization"]["credentials"]["name"] == "loramem-metrics-key"


def _secret_env(container: dict) -> dict[str, str]:
    """Environment variables a container takes from a Secret: name -> secret/key."""
    return {
        e[
            "name"
        ]: f"{e['valueFrom']['secretKeyRef']['name']}/{e['valueFrom']['secretKeyRef']['key']}"
        for e in container.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }


def _container(name: str) -> dict:
    (workload,) = workloads(name)
    return workload["spec"]["template"]["spec"]["containers"][0]


def test_redis_has_a_password_the_gateway_trainer_and_engine_send() -> None:
    redis = _container("redis")
    args = " ".join(redis["args"])
    assert "--requirepass $(REDIS_PASSWORD)" in args
    assert _secret_env(redis)["REDIS_PASSWORD"] == "loramem-redis/password"
    assert _secret_env(redis)["REDISCLI_AUTH"] == "loramem-redis/password"  # the probes
    (config,) = [o for o in k8s_objects() if o["kind"] == "ConfigMap"]
    assert "LORAMEM_REDIS_URL" not in config["data"]  # no password-less URL to fall back on
    for name in ("gateway", "trainer", "engine"):
        container = _container(name)
        assert _secret_env(container)["REDIS_PASSWORD"] == "loramem-redis/password", name
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["LORAMEM_REDIS_URL"] == "redis://:$(REDIS_PASSWORD)@redis:6379/0", name
        names = [e["name"] for e in container["env"]]
        assert names.index("REDIS_PASSWORD") < names.index("LORAMEM_REDIS_URL")  # $() order
    services = compose()["services"]
    assert "--requirepass" in " ".join(services["redis"]["command"])
    assert services["redis"]["secrets"] == ["redis-password"]
    assert "REDISCLI_AUTH" in " ".join(services["redis"]["healthcheck"]["test"])
    for name in ("engine", "gateway", "trainer"):
        assert services[name]["env_file"] == ["./secrets/loramem.env"], name
        assert "LORAMEM_REDIS_URL" not in services[name]["environment"], name


def test_the_engine_key_is_a_secret_of_engine_gateway_and_trainer() -> None:
    for name in ("engine", "gateway", "trainer"):
        key = _secret_env(_container(name)).get("LORAMEM_ENGINE_API_KEY")
        assert key == "loramem-engine-key/key", name
    # loramem.engine.engine_env hands it to vLLM as VLLM_API_KEY (not on the command line).
    assert _container("engine")["command"] == ["loramem", "engine"]


def test_network_policies_let_only_our_pods_reach_engines_and_redis() -> None:
    policies = [o for o in k8s_objects() if o["kind"] == "NetworkPolicy"]
    guarded = {}
    for policy in policies:
        spec = policy["spec"]
        component = spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        assert spec["policyTypes"] == ["Ingress"]
        (rule,) = spec["ingress"]
        (peer,) = rule["from"]
        assert peer.keys() == {"podSelector"}  # no namespaceSelector, no ipBlock
        expressions = {e["key"]: e for e in peer["podSelector"]["matchExpressions"]}
        allowed = expressions["app.kubernetes.io/component"]
        assert allowed["operator"] == "In"
        guarded[component] = (set(allowed["values"]), [p["port"] for p in rule["ports"]])
    assert guarded == {
        "engine": ({"gateway", "trainer"}, [8100]),
        "redis": ({"gateway", "trainer", "engine"}, [6379]),  # engines: the resolver
    }
    # The policies select the pods the workloads actually run.
    for name in ("engine", "redis"):
        (workload,) = workloads(name)
        assert (
            workload["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
            == name
        )


def test_grafana_admin_password_comes_from_a_secret() -> None:
    grafana = compose()["services"]["grafana"]
    environment = grafana["environment"]
    assert "GF_SECURITY_ADMIN_PASSWORD" not in environment  # no `admin` default
    (secret,) = grafana["secrets"]
    assert environment["GF_SECURITY_ADMIN_PASSWORD__FILE"] == f"/run/secrets/{secret}"
    assert compose()["secrets"][secret]["file"].startswith("./secrets/")
