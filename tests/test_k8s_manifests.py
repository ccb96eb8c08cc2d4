"""k8s/ agrees with itself, the settings classes and nats.conf; its cluster config really runs."""

from __future__ import annotations

import os
import re
import secrets

import nats
import pytest
import yaml
from conftest import wait_until
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import Error as JetStreamError
from support.nats_configs import K8S, REPO, parse_conf

from orchestrator.service.runtime.nats_server import NatsServer
from orchestrator.service.runtime.settings import AgentSettings, OrchestratorSettings
from orchestrator.service.store.streams import ensure_resources
from orchestrator.subjects import Role, Subjects
from orchestrator.subjects.permissions import inbox_prefix

CLIENT_PORT, CLUSTER_PORT, MONITOR_PORT = 4222, 6222, 8222


def load_manifests() -> dict[tuple[str, str], dict]:
    """Every object in the kustomization's resources, by (kind, name)."""
    objects: dict[tuple[str, str], dict] = {}
    for resource in kustomization()["resources"]:
        for doc in yaml.safe_load_all((K8S / resource).read_text()):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in objects, f"{key} defined twice"
            objects[key] = doc
    return objects


def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


OBJECTS = load_manifests()


def obj(kind: str, name: str) -> dict:
    return OBJECTS[(kind, name)]


def container(workload: dict) -> dict:
    [only] = workload["spec"]["template"]["spec"]["containers"]
    return only


def config_env(workload: dict) -> dict[str, str]:
    """The env a workload's container sees from its ConfigMaps and literal values."""
    env: dict[str, str] = {}
    for source in container(workload).get("envFrom", []):
        if "configMapRef" in source:
            env.update(obj("ConfigMap", source["configMapRef"]["name"])["data"])
    for var in container(workload).get("env", []):
        env[var["name"]] = var.get("value", "<from valueFrom>")
    return env


def secret_refs(workload: dict) -> dict[str, tuple[str, str]]:
    """env name -> (Secret name, key)."""
    return {
        var["name"]: (
            var["valueFrom"]["secretKeyRef"]["name"],
            var["valueFrom"]["secretKeyRef"]["key"],
        )
        for var in container(workload).get("env", [])
        if "secretKeyRef" in var.get("valueFrom", {})
    }


def real_setting(name: str) -> bool:
    """True if `name` is an ORCH_* variable some settings class reads."""
    agent = name.removeprefix("ORCH_AGENT_").lower()
    if name.startswith("ORCH_AGENT_") and agent in AgentSettings.model_fields:
        return True
    return name.removeprefix("ORCH_").lower() in OrchestratorSettings.model_fields


def settings_of(workload: dict, monkeypatch: pytest.MonkeyPatch) -> OrchestratorSettings:
    """OrchestratorSettings built from the workload's env, secrets replaced by sample values."""
    env = config_env(workload)
    env["ORCH_INSTANCE_ID"] = "orchestrator-7d9c5-x2k4q"
    for name in secret_refs(workload):
        env[name] = f"p{secrets.token_hex(24)}"
    for name in [n for n in os.environ if n.startswith("ORCH_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return OrchestratorSettings()


def nats_statefulset() -> dict:
    return obj("StatefulSet", "nats")


def node_urls(port: int) -> list[str]:
    sts = nats_statefulset()
    name, service = sts["metadata"]["name"], sts["spec"]["serviceName"]
    return [f"nats://{name}-{i}.{service}:{port}" for i in range(sts["spec"]["replicas"])]


def test_kustomization_lists_every_manifest_and_generated_file() -> None:
    listed = set(kustomization()["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    [generator] = kustomization()["configMapGenerator"]
    assert generator["name"] == "nats-config" and generator["files"]
    for file in generator["files"]:
        assert (K8S / file).is_file(), file


def test_k8s_nats_conf_is_the_repository_nats_conf() -> None:
    assert (K8S / "nats" / "nats.conf").read_text() == (REPO / "nats.conf").read_text(), (
        "run: cp nats.conf k8s/nats/nats.conf"
    )


def test_selectors_match_pod_labels_everywhere() -> None:
    pods = {
        name: workload["spec"]["template"]["metadata"]["labels"]
        for (kind, name), workload in OBJECTS.items()
        if kind in {"Deployment", "StatefulSet"}
    }
    for (kind, name), workload in OBJECTS.items():
        if kind in {"Deployment", "StatefulSet"}:
            assert workload["spec"]["selector"]["matchLabels"].items() <= pods[name].items()
        if kind == "Service":
            assert any(workload["spec"]["selector"].items() <= p.items() for p in pods.values()), (
                name
            )
        if kind == "PodDisruptionBudget":
            assert workload["spec"]["selector"]["matchLabels"].items() <= pods[name].items()
    hpa = obj("HorizontalPodAutoscaler", "orchestrator")["spec"]
    assert hpa["scaleTargetRef"]["kind"] == "Deployment"
    assert (hpa["scaleTargetRef"]["kind"], hpa["scaleTargetRef"]["name"]) in OBJECTS
    assert hpa["minReplicas"] >= 3 and hpa["maxReplicas"] >= hpa["minReplicas"]


def test_nats_statefulset_runs_three_clustered_nodes_on_the_generated_config() -> None:
    sts = nats_statefulset()
    spec = sts["spec"]
    assert spec["replicas"] == 3
    headless = obj("Service", spec["serviceName"])["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
    ports = {p["name"]: p["containerPort"] for p in container(sts)["ports"]}
    assert ports == {"client": CLIENT_PORT, "cluster": CLUSTER_PORT, "monitor": MONITOR_PORT}
    assert {p["port"] for p in obj("Service", "nats")["spec"]["ports"]} >= {CLIENT_PORT}
    cluster_text = (K8S / "nats" / "cluster.conf").read_text()
    cluster = parse_conf(cluster_text)
    assert cluster["include"] == "./nats.conf"
    assert cluster["server_name"] == "$POD_NAME"
    [pod_name] = [e for e in container(sts)["env"] if e["name"] == "POD_NAME"]
    assert pod_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert cluster["cluster"]["listen"].endswith(f":{CLUSTER_PORT}")
    assert cluster["cluster"]["routes"] == node_urls(CLUSTER_PORT)
    mounts = {m["name"]: m["mountPath"] for m in container(sts)["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == "nats-config"
    assert container(sts)["command"][-1] == f"{mounts['config']}/cluster.conf"
    assert cluster["pid_file"].startswith(mounts["run"] + "/")
    [claim] = spec["volumeClaimTemplates"]
    store_dir = parse_conf((REPO / "nats.conf").read_text())["jetstream"]["store_dir"]
    assert store_dir.startswith(mounts[claim["metadata"]["name"]] + "/")


def test_every_nats_password_variable_comes_from_the_documented_secret() -> None:
    conf_vars = set(re.findall(r"password:\s*\$(\w+)", (REPO / "nats.conf").read_text()))
    [source] = container(nats_statefulset())["envFrom"]
    secret = source["secretRef"]["name"]
    docs = (REPO / "docs" / "deployment.md").read_text()
    command = docs.split(f"create secret generic {secret}", 1)[1].split("kubectl", 1)[0]
    assert conf_vars and conf_vars == set(re.findall(r"--from-literal=(\w+)=", command))


@pytest.mark.parametrize(
    ("workload_name", "user"), [("orchestrator", "orchestrator"), ("execution", "execution")]
)
def test_workloads_connect_as_their_nats_user_with_that_users_password(
    workload_name: str, user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    workload = obj("Deployment", workload_name)
    settings = settings_of(workload, monkeypatch)
    assert settings.nats_user == user
    assert settings.nats_url == node_urls(CLIENT_PORT)
    assert settings.subject_prefix == Subjects().prefix
    accounts = parse_conf((REPO / "nats.conf").read_text())["accounts"]
    users = [u for name, account in accounts.items() if name != "SYS" for u in account["users"]]
    [entry] = [u for u in users if u["user"] == user]
    secret, key = secret_refs(workload)["ORCH_NATS_PASSWORD"]
    nats_secret = container(nats_statefulset())["envFrom"][0]["secretRef"]["name"]
    assert (secret, f"${key}") == (nats_secret, entry["password"])


@pytest.mark.parametrize("workload_name", ["orchestrator", "execution"])
def test_every_orch_variable_is_a_real_setting(workload_name: str) -> None:
    names = [n for n in config_env(obj("Deployment", workload_name)) if n.startswith("ORCH_")]
    assert names
    unknown = [name for name in names if not real_setting(name)]
    assert unknown == []


def test_orchestrator_settings_parse_as_production(monkeypatch: pytest.MonkeyPatch) -> None:
    deployment = obj("Deployment", "orchestrator")
    settings = settings_of(deployment, monkeypatch)
    assert settings.env.value == "prod"
    assert settings.replicas == nats_statefulset()["spec"]["replicas"] == 3
    assert settings.edge_host == "0.0.0.0"
    assert settings.log_format.value == "json"
    assert settings.otel_endpoint
    assert "*" not in settings.cors_origins
    assert secret_refs(deployment)["ORCH_JWT_SECRET"] == ("orchestrator-jwt", "ORCH_JWT_SECRET")


def test_execution_settings_parse_and_hold_no_jwt_key(monkeypatch: pytest.MonkeyPatch) -> None:
    deployment = obj("Deployment", "execution")
    settings_of(deployment, monkeypatch)
    AgentSettings()
    assert container(deployment)["command"] == ["orchestrator", "agent"]
    assert "ORCH_JWT_SECRET" not in config_env(deployment)


def test_orchestrator_port_probes_and_shutdown_fit_the_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    deployment = obj("Deployment", "orchestrator")
    settings = settings_of(deployment, monkeypatch)
    main = container(deployment)
    assert main["image"] == "nooble4/orchestrator:0.1.0"
    assert main["command"] == ["orchestrator", "run"]
    assert main["ports"] == [{"name": "http", "containerPort": settings.edge_port}]
    assert settings.edge_port == 8080
    probes = {kind: main[kind]["httpGet"] for kind in ("livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"] == {"path": "/health/live", "port": "http"}
    assert probes["readinessProbe"] == {"path": "/health/ready", "port": "http"}
    startup = main["startupProbe"]
    # Start-up waits for NATS before the edge listens; the probe must outlast that wait.
    assert startup["periodSeconds"] * startup["failureThreshold"] > settings.nats_startup_timeout
    [*_, pre_stop] = main["lifecycle"]["preStop"]["exec"]["command"]
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > float(pre_stop) + settings.shutdown_grace
    assert main["resources"]["requests"] and main["resources"]["limits"]
    service = obj("Service", "orchestrator")["spec"]
    assert service["ports"][0]["targetPort"] == "http"


async def test_cluster_config_forms_a_jetstream_cluster_for_r3_resources(
    cluster: list[NatsServer],
) -> None:
    nc = await nats.connect(
        [server.url for server in cluster],
        user="orchestrator",
        password=os.environ["ORCH_NATS_PASSWORD"],
        inbox_prefix=inbox_prefix(Role.ORCHESTRATOR),
        connect_timeout=2,
    )
    try:
        js = nc.jetstream(timeout=5)

        async def cluster_ready() -> bool:
            try:
                info = await js.account_info()
            except (JetStreamError, NatsTimeout):
                return False
            return info is not None

        await wait_until(cluster_ready, timeout=30, interval=0.5, message="JetStream meta leader")
        settings = OrchestratorSettings(replicas=3, nats_url=[cluster[0].url])
        buckets = await ensure_resources(js, settings, Subjects())
        await buckets.sessions.put("s1", b"{}")
        info = await js.stream_info("KV_sessions")
        assert info.config.num_replicas == 3
        assert len(info.cluster.replicas or []) == 2
    finally:
        await nc.close()
