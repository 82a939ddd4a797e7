"""The files in cluster/ parse, and every job they (and cluster/README.md) name is a real entry point whose
arguments the job's own command line accepts; versions and extras agree with pyproject.toml."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml with tomllib")

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
PINS = dict(line.split("==", 1) for line in (REPO / "constraints.txt").read_text().splitlines()
            if "==" in line and not line.startswith("#"))
ENTRY = re.compile(r"python -m (pipelines\.\w+)")


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _kuberay(kind: str) -> list[dict[str, Any]]:
    return [d for p in sorted((CLUSTER / "kuberay").glob("*.yaml")) for d in _docs(p) if d["kind"] == kind]


class _Captured(Exception):
    """Raised by the stand-in for a pipeline's ``run``: carries the config the entry point resolved."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.config = config


def _resolve_entrypoint(command: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Any]:
    """Run the real ``pipelines.X.main`` on the command's arguments up to the point where the job would
    start; returns the module and the config it resolved."""
    argv = shlex.split(command)
    assert argv[:2] == ["python", "-m"], command
    module = importlib.import_module(argv[2])
    assert callable(getattr(module, "main", None)), f"{argv[2]} has no main()"

    def capture(config: Any, **_: Any) -> None:
        raise _Captured(config)

    monkeypatch.setattr(module, "run", capture)
    with pytest.raises(_Captured) as caught:
        module.main(argv[3:])
    return argv[2], caught.value.config


def test_every_yaml_in_cluster_parses():
    files = sorted(CLUSTER.rglob("*.yaml"))
    assert len(files) >= 6
    for path in files:
        assert _docs(path), f"{path} is empty"


def test_raycluster_has_a_cpu_head_and_a_gpu_worker_group_on_the_project_image():
    (cluster,) = _kuberay("RayCluster")
    spec = cluster["spec"]
    assert spec["rayVersion"] == PINS["ray"]
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"].get("limits", {})
    (gpu,) = [g for g in spec["workerGroupSpecs"]
              if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
    images = {head["image"], gpu["template"]["spec"]["containers"][0]["image"]}
    assert images == {f"ghcr.io/your-org/fsar:{VERSION}"}
    # Shared storage: every pod mounts the same claim, and that claim is defined alongside.
    (claim,) = _kuberay("PersistentVolumeClaim")
    for pod in (spec["headGroupSpec"]["template"]["spec"], gpu["template"]["spec"]):
        assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        assert "ReadWriteMany" in claim["spec"]["accessModes"]


@pytest.mark.parametrize("job", ["embed", "train", "tune"])
def test_rayjob_targets_the_cluster_and_names_a_real_entry_point(job, monkeypatch):
    (cluster,) = _kuberay("RayCluster")
    (spec,) = [d["spec"] for d in _docs(CLUSTER / "kuberay" / f"rayjob-{job}.yaml") if d["kind"] == "RayJob"]
    assert spec["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    yaml.safe_load(spec.get("runtimeEnvYAML", "{}"))
    module, config = _resolve_entrypoint(spec["entrypoint"], monkeypatch)
    assert module == f"pipelines.{job}"
    for field in ("store", "out", "manifest"):  # outputs and inputs on the shared volume
        value = getattr(config, field, None)
        assert value is None or str(value).startswith("/data/") or str(value).startswith("/home/ray/fsar/")
    if job == "train":
        from fsar.methods import list_methods

        assert config.method in list_methods() and config.workers >= 2 and config.use_gpu
    if job == "tune":
        assert (REPO / Path(config.space).relative_to("/home/ray/fsar")).is_file()  # shipped in the image


def test_launcher_yaml_runs_the_project_image_with_shared_storage():
    (config,) = _docs(CLUSTER / "launcher" / "aws.yaml")
    assert config["provider"]["type"] == "aws"
    assert config["head_node_type"] in config["available_node_types"]
    assert config["docker"]["image"].endswith(f"/fsar:{VERSION}")
    assert any("/data" in c for c in config["initialization_commands"])
    workers = [t for n, t in config["available_node_types"].items() if n != config["head_node_type"]]
    assert workers and all(t["max_workers"] <= config["max_workers"] for t in workers)


def test_image_and_runtime_env_install_what_pyproject_and_constraints_say():
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert f"rayproject/ray:{PINS['ray']}-" in dockerfile
    extras = {e for group in re.findall(r"\.\[([\w,]+)\]", dockerfile) for e in group.split(",")}
    assert extras and extras <= set(PYPROJECT["project"]["optional-dependencies"])
    assert any(d.startswith("ray[default]") for d in PYPROJECT["project"]["optional-dependencies"]["cluster"])
    assert any(d.startswith("ray[default]") for d in PYPROJECT["project"]["optional-dependencies"]["dev"])
    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    for requirement in env["pip"]["packages"]:
        if "==" in requirement:
            name, version = requirement.split("==")
            assert PINS[name] == version, requirement


def test_readme_names_real_entry_points_files_and_commands(monkeypatch):
    readme = (CLUSTER / "README.md").read_text()
    modules = set(ENTRY.findall(readme))
    assert {"pipelines.embed", "pipelines.train", "pipelines.tune"} <= modules
    for name in modules:
        assert callable(getattr(importlib.import_module(name), "main", None)), name
    for path in re.findall(r"cluster/[\w./-]+\.(?:yaml|md|txt)|cluster/Dockerfile", readme):
        assert (REPO / path).is_file(), path
    from pipelines.cli import COMMANDS
    from pipelines.command import build_parser

    commands = build_parser(COMMANDS, prog="fsar")._subparsers._group_actions[0].choices
    for name in ("embed", "train", "tune", "demo"):  # every command that starts Ray can be pointed at a cluster
        assert "--address" in commands[name].format_help(), name


def _env(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_every_recipe_turns_token_authentication_on_and_keeps_the_token_out_of_the_files():
    (cluster,) = _kuberay("RayCluster")
    spec = cluster["spec"]
    pods = [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]
    for job in ("embed", "train", "tune"):
        (rayjob,) = [d["spec"] for d in _docs(CLUSTER / "kuberay" / f"rayjob-{job}.yaml") if d["kind"] == "RayJob"]
        pods.append(rayjob["submitterPodTemplate"]["spec"])
    for pod in pods:
        env = _env(pod["containers"][0])
        assert env["RAY_AUTH_MODE"] == "token"
        assert env["RAY_AUTH_TOKEN"] == {"secretKeyRef": {"name": "fsar-ray-token", "key": "auth_token"}}
    (launcher,) = _docs(CLUSTER / "launcher" / "aws.yaml")
    options = " ".join(launcher["docker"]["run_options"])
    assert "-e RAY_AUTH_MODE=token" in options and "RAY_AUTH_TOKEN_PATH=" in options
    assert "~/.ray/auth_token" in launcher["file_mounts"].values()
    assert all("--dashboard-host=127.0.0.1" in c for c in launcher["head_start_ray_commands"] if "--head" in c)
    readme = (CLUSTER / "README.md").read_text()
    assert "export RAY_AUTH_MODE=disabled" not in readme and "export RAY_AUTH_MODE=token" in readme
