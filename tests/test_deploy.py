"""Docker does not run here: the deployment files are parsed and checked against the CLI and the settings."""

import re
import shlex
from pathlib import Path

import pytest
import yaml

from fishersft.cli import build_parser
from fishersft.models.registry import DEFAULT_MODEL
from fishersft.service.settings import Settings

ROOT = Path(__file__).parents[1]
SETTINGS_ENV = {Settings.env_name(name) for name in Settings.model_fields} | {"FISHERSFT_HOME"}


def manifests() -> list[dict]:
    return [
        doc
        for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def containers(kind_name: str) -> dict:
    deployment = next(d for d in manifests() if d["kind"] == "Deployment" and d["metadata"]["name"] == kind_name)
    return deployment["spec"]["template"]["spec"]


def assert_valid_command(command: list[str]) -> None:
    assert command[0] == "fishersft"
    build_parser().parse_args(command[1:])  # exits (fails the test) on an unknown subcommand or option


def test_dockerfile_pins_torch_like_the_project_and_runs_a_real_command():
    dockerfile = (ROOT / "Dockerfile").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'"torch==([\d.]+)"', pyproject)[1] == re.search(r"torch==([\d.]+)", dockerfile)[1]
    assert "ARG BASE_IMAGE=" in dockerfile and "ARG TORCH_INDEX_URL=" in dockerfile
    cmd = yaml.safe_load(re.search(r"^CMD (.+)$", dockerfile, re.M)[1])
    assert_valid_command(cmd)
    for source in re.findall(r"^COPY (\S+) \S+$", dockerfile, re.M):
        assert (ROOT / source).exists(), source
    makefile = (ROOT / "Makefile").read_text()
    no_deps = re.search(r"pip install -q --no-deps (.+)$", makefile, re.M)[1].split()
    assert re.search(r"^RUN pip install --no-deps (.+)$", dockerfile, re.M)[1].split() == no_deps
    prepare = re.search(r"^RUN (fishersft models --prepare \S+)$", dockerfile, re.M)[1]
    assert_valid_command(shlex.split(prepare)) and prepare.endswith(DEFAULT_MODEL)
    home = re.search(r"FISHERSFT_HOME=(\S+)", dockerfile)[1]
    assert not home.startswith(re.search(r"^VOLUME (\S+)$", dockerfile, re.M)[1])  # the model is in the image


def test_compose_runs_redis_api_and_workers_on_a_shared_volume():
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"redis", "api", "worker"}
    for name in ("api", "worker"):
        service = services[name]
        assert_valid_command(service["command"])
        assert "artifacts:/data" in service["volumes"]
        assert set(service["environment"]) <= SETTINGS_ENV
        assert service["environment"]["FISHERSFT_DATA_DIR"] == "/data"
        assert service["environment"]["REDIS_URL"] == "redis://:${REDIS_PASSWORD}@redis:6379/0"
        assert service["environment"]["FISHERSFT_API_KEYS"].startswith("${FISHERSFT_API_KEYS:?")  # required
    assert "--requirepass" in services["redis"]["command"] and "ports" not in services["redis"]
    assert services["worker"]["deploy"]["replicas"] >= 1
    port = services["api"]["command"][services["api"]["command"].index("--port") + 1]
    assert services["api"]["ports"] == [f"{port}:{port}"]


def test_the_gpu_override_gives_each_worker_its_own_device_and_the_base_workers_settings():
    base = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())["services"]["worker"]
    services = yaml.safe_load((ROOT / "deploy" / "docker-compose.gpu.yml").read_text())["services"]
    gpu = {name: s for name, s in services.items() if name.startswith("worker-gpu")}
    devices = [s["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] for s in gpu.values()]
    assert len(gpu) >= 2 and sorted(devices) == [[str(k)] for k in range(len(gpu))]
    for service in gpu.values():
        assert service["command"] == base["command"] and service["volumes"] == base["volumes"]
        assert service["environment"] == base["environment"]
    assert services["worker"]["deploy"]["replicas"] == 0


def test_k8s_api_gpu_workers_redis_and_the_shared_claim_agree():
    docs = manifests()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {
        ("Deployment", "fishersft-api"),
        ("Deployment", "fishersft-worker"),
        ("Deployment", "fishersft-redis"),
        ("Service", "fishersft-api"),
        ("Service", "fishersft-redis"),
        ("ConfigMap", "fishersft"),
        ("PersistentVolumeClaim", "fishersft-artifacts"),
    } <= kinds
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    assert set(config) <= SETTINGS_ENV
    for name in ("fishersft-api", "fishersft-worker"):
        spec = containers(name)
        container = spec["containers"][0]
        assert_valid_command(container["command"])
        mount = next(m for m in container["volumeMounts"] if m["name"] == "artifacts")
        assert mount["mountPath"] == config["FISHERSFT_DATA_DIR"]
        claim = next(v for v in spec["volumes"] if v["name"] == "artifacts")["persistentVolumeClaim"]["claimName"]
        assert claim == "fishersft-artifacts"
        env = {e["name"]: e for e in container["env"]}
        names = list(env)  # $(VAR) expands only variables defined earlier in the list
        assert names.index("REDIS_PASSWORD") < names.index("REDIS_URL")
        assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "fishersft-redis", "key": "password"}
        assert env["REDIS_URL"]["value"] == "redis://:$(REDIS_PASSWORD)@fishersft-redis:6379/0"
    redis = containers("fishersft-redis")["containers"][0]
    assert redis["args"][-2:] == ["--requirepass", "$(REDIS_PASSWORD)"]
    assert {e["name"] for e in redis["env"]} == {"REDIS_PASSWORD", "REDISCLI_AUTH"}
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"] == {"app": "fishersft-redis"}
    allowed = policy["ingress"][0]["from"][0]["podSelector"]["matchExpressions"][0]["values"]
    assert sorted(allowed) == ["fishersft-api", "fishersft-worker"]
    keys = next(e for e in containers("fishersft-api")["containers"][0]["env"] if e["name"] == "FISHERSFT_API_KEYS")
    assert "optional" not in keys["valueFrom"]["secretKeyRef"]  # the API never starts open by accident
    worker = containers("fishersft-worker")["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    api = containers("fishersft-api")["containers"][0]
    port = int(api["command"][api["command"].index("--port") + 1])
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "fishersft-api")
    assert api["ports"][0]["containerPort"] == service["spec"]["ports"][0]["targetPort"] == port
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_prometheus_scrapes_the_api_pods_metrics():
    api = next(d for d in manifests() if d["kind"] == "Deployment" and d["metadata"]["name"] == "fishersft-api")
    annotations = api["spec"]["template"]["metadata"]["annotations"]
    port = api["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
    assert annotations["prometheus.io/port"] == str(port)
    monitor = yaml.safe_load((ROOT / "deploy" / "prometheus" / "servicemonitor.yaml").read_text())
    service = next(d for d in manifests() if d["kind"] == "Service" and d["metadata"]["name"] == "fishersft-api")
    assert monitor["kind"] == "ServiceMonitor"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["path"] == "/metrics"
    assert next(p for p in service["spec"]["ports"] if p["name"] == endpoint["port"])["targetPort"] == port


@pytest.mark.parametrize("command", ["fishersft api --port 9", "fishersft nonsense"])
def test_the_command_check_can_fail(command):
    if command.endswith("nonsense"):
        with pytest.raises(SystemExit):
            assert_valid_command(shlex.split(command))
    else:
        assert_valid_command(shlex.split(command))
