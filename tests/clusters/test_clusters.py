"""Cluster recipes in ``clusters/``: each file parses, has the fields its tool reads, and every sweep command
it shows runs the real entry point with a known preset and known ``--set`` keys.

Config only: nothing here starts Ray, Kubernetes or MLflow.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib.util
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

# The sweep presets (sweep.presets.SWEEP_PRESETS is the registry; it is also checked when importable).
PRESET_NAMES = ("smoke", "demo", "paper")
# The --set keys a cluster recipe may pass to sweep/run.py.
KNOWN_SWEEP_KEYS = {"tracking_uri", "name", "num_samples", "max_concurrent", "gpus_per_trial", "cpus_per_trial", "out"}
# The options of `sweep/run.py --preset NAME [--config FILE.yaml] [--set key=value ...] [--out DIR]`.
RUN_OPTIONS = {"--preset", "--config", "--set", "--out"}

ROOT = Path(__file__).resolve().parents[2]
CLUSTERS = ROOT / "clusters"
RECIPES = ("aws-gpu.yaml", "kuberay-rayjob.yaml", "mlflow-server.yaml", "onprem.md", "README.md", "tracking.py")
# Recipes that must show at least one sweep command.
RECIPES_WITH_ENTRY_POINTS = ("aws-gpu.yaml", "kuberay-rayjob.yaml", "onprem.md")
LAUNCHER_KEYS = ("cluster_name", "provider", "available_node_types", "head_node_type")
DATABASE_SCHEMES = ("postgresql", "mysql")


def _yaml_files() -> list[Path]:
    return sorted(CLUSTERS.glob("*.yaml"))


def _documents(path: Path) -> list[Any]:
    """The file's documents; none when it does not parse (``test_yaml_parses_and_is_not_empty`` says why)."""
    try:
        return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    except yaml.YAMLError:
        return []


def _all_documents() -> list[tuple[Path, dict]]:
    return [(path, doc) for path in _yaml_files() for doc in _documents(path) if isinstance(doc, dict)]


def _launcher_configs() -> list[tuple[Path, dict]]:
    """Ray cluster-launcher configs: a ``provider`` section and no Kubernetes ``apiVersion``."""
    return [(path, doc) for path, doc in _all_documents() if "provider" in doc and "apiVersion" not in doc]


def _of_kind(kind: str) -> list[dict]:
    return [doc for _, doc in _all_documents() if doc.get("kind") == kind]


def _pod_specs(doc: dict) -> list[dict]:
    """Every pod spec in a Deployment or RayJob."""
    if doc.get("kind") == "RayJob":
        cluster = doc["spec"]["rayClusterSpec"]
        groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
        return [group["template"]["spec"] for group in groups]
    return [doc["spec"]["template"]["spec"]]


def _command_line(container: dict) -> str:
    return " ".join(str(part) for part in [*container.get("command", []), *container.get("args", [])])


def _option(command: str, name: str) -> str | None:
    """The value of ``name`` in a shell command line (``--name value`` or ``--name=value``), or None."""
    tokens = shlex.split(command)
    for i, token in enumerate(tokens):
        if token == name and i + 1 < len(tokens):
            return tokens[i + 1]
        if token.startswith(name + "="):
            return token.split("=", 1)[1]
    return None


# ---------------------------------------------------------------------------------------------- every file


def test_every_recipe_is_there():
    missing = [name for name in RECIPES if not (CLUSTERS / name).is_file()]
    assert not missing, f"missing recipes in {CLUSTERS}: {missing}"


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: p.name)
def test_yaml_parses_and_is_not_empty(path):
    docs = list(yaml.safe_load_all(path.read_text()))
    assert any(doc for doc in docs), f"{path.name} holds no YAML document"
    assert all(doc is None or isinstance(doc, dict) for doc in docs), f"{path.name}: every document must be a mapping"


# ------------------------------------------------------------------------------------- Ray cluster launcher


def test_there_is_a_cluster_launcher_config():
    assert _launcher_configs(), "no Ray cluster-launcher config (a document with `provider:`) in clusters/*.yaml"


@pytest.mark.parametrize("path, config", _launcher_configs(), ids=[path.name for path, _ in _launcher_configs()])
def test_launcher_config_has_the_required_keys(path, config):
    missing = [key for key in LAUNCHER_KEYS if key not in config]
    assert not missing, f"{path.name} lacks {missing}"
    node_types = config["available_node_types"]
    assert config["head_node_type"] in node_types, (
        f"{path.name}: head_node_type {config['head_node_type']!r} is not one of {sorted(node_types)}"
    )
    for name, node_type in node_types.items():
        assert "node_config" in node_type and "resources" in node_type, f"{path.name}: {name} needs node_config"
        min_workers, max_workers = node_type.get("min_workers", 0), node_type.get("max_workers", 0)
        assert 0 <= min_workers <= max_workers or name == config["head_node_type"], (
            f"{path.name}: {name} has min_workers={min_workers} > max_workers={max_workers}"
        )


@pytest.mark.parametrize("path, config", _launcher_configs(), ids=[path.name for path, _ in _launcher_configs()])
def test_launcher_config_declares_gpu_workers(path, config):
    gpus = {
        name: node_type.get("resources", {}).get("GPU", 0)
        for name, node_type in config["available_node_types"].items()
        if name != config["head_node_type"]
    }
    assert any(count >= 1 for count in gpus.values()), (
        f"{path.name}: no worker node type declares resources: {{GPU: n}} (GPUs per worker type: {gpus}); "
        "a trial asking for a GPU on a cluster without one stays PENDING forever"
    )


@pytest.mark.parametrize("path, config", _launcher_configs(), ids=[path.name for path, _ in _launcher_configs()])
def test_launcher_config_matches_rays_schema(path, config):
    """The schema ``ray up`` validates against, shipped with the installed Ray (found without importing Ray)."""
    jsonschema = pytest.importorskip("jsonschema")
    spec = importlib.util.find_spec("ray")
    if spec is None or spec.origin is None:
        pytest.skip("ray is not installed")
    schema_path = Path(spec.origin).parent / "autoscaler" / "ray-schema.json"
    if not schema_path.is_file():
        pytest.skip(f"no cluster-config schema at {schema_path}")
    jsonschema.validate(config, json.loads(schema_path.read_text()))


@pytest.mark.parametrize("path, config", _launcher_configs(), ids=[path.name for path, _ in _launcher_configs()])
def test_launcher_config_installs_like_the_readme(path, config):
    """torch pinned to 2.13.0 before the project (a later or unpinned torch pulls another multi-GB build)."""
    setup = list(config.get("setup_commands", []))
    torch_at = next((i for i, cmd in enumerate(setup) if "torch==2.13.0" in cmd), None)
    project_at = next((i for i, cmd in enumerate(setup) if re.search(r"pip install .*-e \.(\s|$)", cmd)), None)
    assert torch_at is not None, f"{path.name}: setup_commands never install torch==2.13.0: {setup}"
    assert project_at is not None, f"{path.name}: setup_commands never run `pip install -e .`: {setup}"
    assert torch_at < project_at, f"{path.name}: install torch==2.13.0 before the project: {setup}"
    assert any("ray start --head" in cmd for cmd in config.get("head_start_ray_commands", []))
    assert any("ray start --address" in cmd for cmd in config.get("worker_start_ray_commands", []))


# ----------------------------------------------------------------------------------------------- KubeRay


def test_there_is_a_rayjob():
    assert _of_kind("RayJob"), "no `kind: RayJob` document in clusters/*.yaml"


@pytest.mark.parametrize("job", _of_kind("RayJob"), ids=lambda job: job.get("metadata", {}).get("name", "?"))
def test_rayjob_fields(job):
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    assert isinstance(spec.get("entrypoint"), str) and spec["entrypoint"].strip(), "spec.entrypoint is empty"
    assert spec.get("shutdownAfterJobFinishes") is True
    assert isinstance(spec.get("ttlSecondsAfterFinished"), int) and spec["ttlSecondsAfterFinished"] >= 0
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert isinstance(runtime_env, dict) and runtime_env.get("working_dir"), "runtimeEnvYAML sets no working_dir"
    cluster = spec["rayClusterSpec"]
    assert "headGroupSpec" in cluster
    # KubeRay's CRD types rayStartParams as map[string]string: an unquoted number is rejected on apply.
    for group in [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]:
        params = group.get("rayStartParams", {})
        assert all(isinstance(value, str) for value in params.values()), f"quote rayStartParams values: {params}"


@pytest.mark.parametrize("job", _of_kind("RayJob"), ids=lambda job: job.get("metadata", {}).get("name", "?"))
def test_rayjob_has_a_gpu_worker_group(job):
    def gpus(group: dict) -> float:
        containers = group["template"]["spec"]["containers"]
        return sum(float(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0)) for c in containers)

    groups = job["spec"]["rayClusterSpec"].get("workerGroupSpecs", [])
    counts = {group["groupName"]: gpus(group) for group in groups}
    assert any(count >= 1 for count in counts.values()), f"no worker group limits nvidia.com/gpu: {counts}"


@pytest.mark.parametrize("job", _of_kind("RayJob"), ids=lambda job: job.get("metadata", {}).get("name", "?"))
def test_rayjob_volumes_and_tracking_server_are_defined_here(job):
    """The claims the RayJob mounts and the MLflow service it logs to are recipes in clusters/ too."""
    claims = {pvc["metadata"]["name"] for pvc in _of_kind("PersistentVolumeClaim")}
    for pod in _pod_specs(job):
        for volume in pod.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, f"undefined claim in {volume}"
    tokens = shlex.split(job["spec"]["entrypoint"])
    run_args = tokens[next((i for i, token in enumerate(tokens) if token.endswith(".py")), len(tokens)) + 1 :]
    settings = dict(pair.split("=", 1) for pair in _parse_run_args(tuple(run_args)).get("--set", []))
    tracking_uri = settings.get("tracking_uri")
    assert tracking_uri, "the RayJob's entrypoint sets no tracking_uri"
    url = urlparse(tracking_uri)
    services = {(svc["metadata"]["name"], port["port"]) for svc in _of_kind("Service") for port in svc["spec"]["ports"]}
    assert (url.hostname, url.port) in services, f"{tracking_uri} is none of the services {sorted(services)}"


# ------------------------------------------------------------------------------------------- MLflow server


def _mlflow_server_commands() -> list[str]:
    commands = []
    for deployment in _of_kind("Deployment"):
        for pod in _pod_specs(deployment):
            for container in pod["containers"]:
                line = _command_line(container)
                if "mlflow server" in line:
                    commands.append(line[line.index("mlflow server") :])
    return commands


def test_mlflow_deployment_uses_a_database_backend():
    commands = _mlflow_server_commands()
    assert commands, "no Deployment container runs `mlflow server`"
    for command in commands:
        uri = _option(command, "--backend-store-uri")
        assert uri, f"`mlflow server` without --backend-store-uri: {command}"
        scheme = urlparse(uri).scheme.split("+")[0]
        assert scheme in DATABASE_SCHEMES, f"backend store {uri!r} is not a database URI ({DATABASE_SCHEMES})"
        assert _option(command, "--artifacts-destination") or _option(command, "--default-artifact-root")
        assert _option(command, "--port") == "5000"


def test_mlflow_service_is_named_mlflow_on_port_5000():
    services = {svc["metadata"]["name"]: svc for svc in _of_kind("Service")}
    assert "mlflow" in services, f"no Service named mlflow (services: {sorted(services)})"
    service = services["mlflow"]
    assert 5000 in [port["port"] for port in service["spec"]["ports"]]
    selector = service["spec"]["selector"]
    runs_mlflow = [
        deployment
        for deployment in _of_kind("Deployment")
        if any("mlflow server" in _command_line(c) for pod in _pod_specs(deployment) for c in pod["containers"])
    ]
    labels = [deployment["spec"]["template"]["metadata"]["labels"] for deployment in runs_mlflow]
    assert any(selector.items() <= pod_labels.items() for pod_labels in labels), (
        f"Service mlflow selects {selector}, which matches no pod running `mlflow server` ({labels})"
    )


def test_mlflow_server_accepts_the_service_host_name():
    """MLflow 3.5+ answers 403 to Host headers outside --allowed-hosts (default: localhost, private IPs)."""
    for command in _mlflow_server_commands():
        allowed = _option(command, "--allowed-hosts")
        assert allowed, f"clients send Host: mlflow:5000, which MLflow's default allowed hosts reject: {command}"
        patterns = [pattern.strip() for pattern in allowed.split(",")]
        assert "*" in patterns or any(fnmatch.fnmatch("mlflow:5000", p) for p in patterns), patterns


# ------------------------------------------------------------------------------------------ entry points


@dataclass(frozen=True)
class EntryPoint:
    where: str  # file:line
    script: str
    args: tuple[str, ...]


def _entry_points() -> list[EntryPoint]:
    """Every `python sweep/run.py ...` command line in clusters/*.yaml and clusters/*.md."""
    found = []
    for path in sorted([*CLUSTERS.glob("*.yaml"), *CLUSTERS.glob("*.md")]):
        text = re.sub(r"\\\n\s*", " ", path.read_text())  # join shell line continuations
        for number, line in enumerate(text.splitlines(), start=1):
            for match in re.finditer(r"\bpython3?\s+(?P<script>\S*(?:sweep/|run)\S*\.py)(?P<args>[^`\n]*)", line):
                try:
                    args = tuple(shlex.split(match["args"], comments=True))
                except ValueError as err:  # unbalanced quotes: reported by the tests, not at collection
                    args = (f"<cannot split {match['args']!r}: {err}>",)
                found.append(EntryPoint(f"{path.name}:{number}", match["script"], args))
    return found


def _parse_run_args(args: tuple[str, ...]) -> dict[str, list[str]]:
    """`--preset X --set k=v --out D` (also `--opt=value`) -> {"--preset": ["X"], "--set": ["k=v"], ...}."""
    options: dict[str, list[str]] = {}
    tokens = list(args)
    while tokens:
        token = tokens.pop(0)
        assert token.startswith("--"), f"unexpected argument {token!r} in {args}"
        name, _, value = token.partition("=")
        if not value:
            assert tokens, f"{name} has no value in {args}"
            value = tokens.pop(0)
        options.setdefault(name, []).append(value)
    return options


def _registered_presets() -> set[str] | None:
    try:
        from sweep.presets import SWEEP_PRESETS
    except ImportError:
        return None
    return set(SWEEP_PRESETS)


def _sweep_config_fields() -> set[str] | None:
    """The keys ``--set`` can reach in the sweep's config, when ``sweep.config`` is importable."""
    try:
        from sweep.config import SweepConfig
    except ImportError:
        return None
    return {f.name for f in dataclasses.fields(SweepConfig)}


ENTRY_POINTS = _entry_points()


def test_recipes_show_entry_points():
    files = {entry.where.split(":")[0] for entry in ENTRY_POINTS}
    missing = [name for name in RECIPES_WITH_ENTRY_POINTS if name not in files]
    assert not missing, f"no `python sweep/run.py ...` command in {missing}"


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=lambda entry: entry.where)
def test_entry_point_names_an_existing_script(entry):
    assert entry.script == "sweep/run.py", f"{entry.where}: run the entry point as sweep/run.py, not {entry.script}"
    assert (ROOT / entry.script).is_file(), f"{entry.where}: {entry.script} does not exist under {ROOT}"


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=lambda entry: entry.where)
def test_entry_point_uses_a_known_preset(entry):
    options = _parse_run_args(entry.args)
    unknown = set(options) - RUN_OPTIONS
    assert not unknown, f"{entry.where}: sweep/run.py takes {sorted(RUN_OPTIONS)}, not {sorted(unknown)}"
    assert len(options.get("--preset", [])) == 1, f"{entry.where}: exactly one --preset needed: {entry.args}"
    preset = options["--preset"][0]
    assert preset in PRESET_NAMES, f"{entry.where}: preset {preset!r} is not one of {PRESET_NAMES}"
    registered = _registered_presets()
    if registered is not None:
        assert preset in registered, (
            f"{entry.where}: {preset!r} is not in sweep.presets.SWEEP_PRESETS {sorted(registered)}"
        )
    for config in options.get("--config", []):
        assert (ROOT / config).is_file(), f"{entry.where}: --config {config} does not exist"


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=lambda entry: entry.where)
def test_entry_point_sets_only_known_keys(entry):
    for assignment in _parse_run_args(entry.args).get("--set", []):
        key, equals, value = assignment.partition("=")
        assert equals and value, f"{entry.where}: --set {assignment!r} is not key=value"
        assert key in KNOWN_SWEEP_KEYS, f"{entry.where}: unknown --set key {key!r}; known: {sorted(KNOWN_SWEEP_KEYS)}"
        fields = _sweep_config_fields()
        if fields is not None:
            assert key in fields, f"{entry.where}: sweep/run.py has no config field {key!r} (fields: {sorted(fields)})"
        if key == "tracking_uri":
            assert urlparse(value).scheme in {"http", "https"}, (
                f"{entry.where}: a cluster sweep logs to a tracking server (http[s]://), not {value!r}"
            )


# ----------------------------------------------------------------------------------------------- on-prem


def test_onprem_recipe():
    text = (CLUSTERS / "onprem.md").read_text()
    for needle in ("ray start --head", "ray start --address=", "RAY_AUTH_MODE", "mlflow server", "ray job submit"):
        assert needle in text, f"onprem.md never mentions {needle!r}"
    assert re.search(r"^```bash\n.*?^```", text, re.MULTILINE | re.DOTALL), "onprem.md has no ```bash block"
    server = next(line for line in text.splitlines() if "mlflow server --" in line)
    uri = _option(server[server.index("mlflow server") :], "--backend-store-uri")
    assert uri and urlparse(uri).scheme.split("+")[0] in DATABASE_SCHEMES, f"not a database backend: {server}"


def test_readme_indexes_every_recipe():
    text = (CLUSTERS / "README.md").read_text()
    missing = [name for name in RECIPES if name != "README.md" and name not in text]
    assert not missing, f"clusters/README.md does not mention {missing}"
    for needle in ("RAY_AUTH_MODE", ".gitignore", "512 MiB"):
        assert needle in text, f"clusters/README.md never mentions {needle!r}"


# ------------------------------------------------------------------------------------ keeping people out


def _all_mlflow_servers() -> list[tuple[str, str]]:
    """Every `mlflow server ...` command line of every recipe, as (where, command from `mlflow server` on)."""
    found = [("mlflow-server.yaml", command) for command in _mlflow_server_commands()]
    for path, config in _launcher_configs():
        for command in [*config.get("head_setup_commands", []), *config.get("setup_commands", [])]:
            if "mlflow server" in command:
                found.append((path.name, command[command.index("mlflow server") :]))
    for line in (CLUSTERS / "onprem.md").read_text().splitlines():
        if "mlflow server --" in line:
            found.append(("onprem.md", line[line.index("mlflow server") :]))
    return found


def _shell_words(command: str) -> str:
    """A recipe's shell command with `$(...)` substitutions blanked, so shlex can split it."""
    return re.sub(r"\$\([^)]*\)", "SUBST", command)


def test_every_mlflow_server_runs_with_authentication():
    servers = _all_mlflow_servers()
    assert {where for where, _ in servers} >= {"mlflow-server.yaml", "aws-gpu.yaml", "onprem.md"}, servers
    for where, command in servers:
        assert _option(_shell_words(command), "--app-name") == "basic-auth", f"{where}: no authentication: {command}"


def test_no_secret_on_a_command_line():
    """Passwords on a command line are readable by every user of the machine (`ps`) and kept in shell histories."""
    for where, command in _all_mlflow_servers():
        uri = _option(_shell_words(command), "--backend-store-uri") or ""
        assert urlparse(uri).password is None, f"{where}: the backend store URI carries a password: {uri}"
        assert not re.search(r"\$\{?\w*(PASSWORD|SECRET)", command), f"{where}: a secret expanded into argv: {command}"
    for path in [*_yaml_files(), *CLUSTERS.glob("*.md")]:
        text = path.read_text()
        assert not re.search(r"--from-literal=\S*(password|secret)", text, re.IGNORECASE), path.name
        assert not re.search(r"-v\s+\w+=\"?\$\(cat", text), f"{path.name}: a secret passed with psql -v"
        assert not re.search(r"curl\s+[^\n]*-u\s", text), f"{path.name}: curl -u puts a password in argv"


def test_kubernetes_secrets_come_from_secrets():
    for _, doc in _all_documents():
        if doc.get("kind") not in ("Deployment", "RayJob", "Job"):
            continue
        for pod in _pod_specs(doc) if doc["kind"] != "Job" else [doc["spec"]["template"]["spec"]]:
            for container in pod["containers"]:
                for env in container.get("env", []):
                    if re.search("PASSWORD|SECRET|TOKEN", env["name"]):
                        assert "secretKeyRef" in env.get("valueFrom", {}), f"{env['name']} is not from a Secret: {env}"


def test_rayjob_pods_log_as_the_sweep_user_of_the_mlflow_recipe():
    """The driver (head) and the trials (workers) read the credentials the MLflow recipe's Job creates."""
    created = {
        env["valueFrom"]["secretKeyRef"]["name"]
        for job in _of_kind("Job")
        for container in job["spec"]["template"]["spec"]["containers"]
        for env in container.get("env", [])
        if env["name"].startswith("SWEEP_")
    }
    assert created, "no Job of the MLflow recipe creates the sweep user"
    for job in _of_kind("RayJob"):
        for pod in _pod_specs(job):
            for container in pod["containers"]:
                env = {e["name"]: e for e in container.get("env", [])}
                for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
                    assert name in env, f"{container['name']} lacks {name}: its trials could not log to MLflow"
                    assert env[name]["valueFrom"]["secretKeyRef"]["name"] in created


def test_servers_bind_to_the_cluster_network_or_loopback():
    for where, command in _all_mlflow_servers():
        host = _option(_shell_words(command), "--host")
        if where == "mlflow-server.yaml":
            continue  # a pod's 0.0.0.0 is its own address; NetworkPolicies decide who connects (next test)
        assert host not in (None, "0.0.0.0", "::"), f"{where}: MLflow listens on every interface: {command}"
    for path, config in _launcher_configs():
        for command in config.get("head_start_ray_commands", []):
            assert "--dashboard-host=0.0.0.0" not in command, f"{path.name}: the jobs API on every interface"
    onprem = (CLUSTERS / "onprem.md").read_text()
    assert "--dashboard-host=0.0.0.0" not in onprem and "--host 0.0.0.0" not in onprem


def test_kubernetes_servers_are_fenced_by_network_policies():
    policies = _of_kind("NetworkPolicy")
    for deployment in _of_kind("Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        fenced = [p for p in policies if p["spec"]["podSelector"].get("matchLabels", {}).items() <= labels.items()]
        assert fenced and all(p["spec"].get("ingress") for p in fenced), (
            f"Deployment {deployment['metadata']['name']} accepts connections from every pod of the cluster"
        )


def test_ray_token_authentication_is_on():
    for path, config in _launcher_configs():
        for key in ("head_start_ray_commands", "worker_start_ray_commands"):
            starts = [c for c in config.get(key, []) if "ray start" in c]
            assert starts and all("RAY_AUTH_MODE=token" in c for c in starts), f"{path.name} {key}: {starts}"
    for job in _of_kind("RayJob"):
        assert job["spec"]["rayClusterSpec"].get("authOptions", {}).get("mode") == "token"
    onprem = (CLUSTERS / "onprem.md").read_text()
    before_start = onprem[: onprem.index("ray start --head")]
    assert "export RAY_AUTH_MODE=token" in before_start


# An exact release (PostgreSQL's are major.minor) or a digest; never `latest` or a bare major version.
_PINNED_TAG = re.compile(r"(@sha256:[0-9a-f]{64}$)|(:v?\d+\.\d+(\.\d+)?[\w.-]*$)")


def _images() -> list[tuple[str, str]]:
    images = [(path.name, config["docker"]["image"]) for path, config in _launcher_configs() if "docker" in config]
    for path, doc in _all_documents():
        if doc.get("kind") in ("Deployment", "RayJob", "Job"):
            pods = _pod_specs(doc) if doc["kind"] != "Job" else [doc["spec"]["template"]["spec"]]
            images += [(path.name, c["image"]) for pod in pods for c in pod["containers"]]
    return images


def test_images_and_archives_are_pinned():
    images = _images()
    assert images
    for where, image in images:
        assert _PINNED_TAG.search(image), f"{where}: image {image!r} is not pinned to an exact version or digest"
    for path in [*_yaml_files(), *CLUSTERS.glob("*.md")]:
        text = path.read_text()
        assert "refs/heads/" not in text, f"{path.name}: an archive of a branch moves; pin a commit"
        for match in re.finditer(r"pip install[^\n]*", text):
            for package in ("psycopg2-binary", "Flask-WTF", "ray[default]", "torch", "boto3"):
                for found in re.finditer(re.escape(package) + r"(\S*)", match.group(0)):
                    if package == "boto3" or found.group(1).startswith("_"):
                        continue  # boto3 rides along with the AWS CLI's; "torch_..." is another word
                    assert found.group(1).startswith("=="), f"{path.name}: unpinned {package}: {match.group(0)}"


def test_the_local_tracking_server_is_loopback_and_authenticated():
    """``clusters/tracking.py`` (``make tracking``): checked without starting it."""
    from clusters import tracking

    assert tracking.HOST == "127.0.0.1"
    source = (CLUSTERS / "tracking.py").read_text()
    for needle in (
        '"--app-name",\n        "basic-auth"',
        '"--serve-artifacts"',
        "unix_socket_directories",
        "PGPASSFILE",
    ):
        assert needle in source, f"tracking.py lost {needle!r}"
    assert "runuser" in source  # PostgreSQL refuses root: as root its programs run as the postgres user
