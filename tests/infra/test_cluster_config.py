"""ray_cluster.yaml: valid for Ray's own cluster launcher, and right where it matters."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
PATH = REPO / "ray_cluster.yaml"


@pytest.fixture(scope="module")
def text() -> str:
    return PATH.read_text()


@pytest.fixture(scope="module")
def config(text) -> dict:
    return yaml.safe_load(text)


def test_the_raw_file_matches_rays_schema(config):
    # The bundled schema forbids unknown top-level keys and node-type keys: a typo fails here.
    import jsonschema
    import ray.autoscaler

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    jsonschema.validate(config, json.loads(schema_path.read_text()))


def test_validates_as_ray_up_prepares_it(config):
    # `ray up` fills in the provider's defaults (prepare_config), then validates: do the same.
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    assert prepared["head_node_type"] == "head"


def test_head_runs_no_training(config):
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    assert not head["node_config"]["InstanceType"].startswith(("p", "g"))


def test_gpu_workers_are_8_gpu_nodes_that_scale_from_zero(config):
    nodes = config["available_node_types"]
    gpu = nodes["gpu_worker"]
    assert re.fullmatch(r"p(4d|4de|5|5e|5en)\.48xlarge|p4d\.24xlarge", gpu["node_config"]["InstanceType"])
    assert gpu["min_workers"] == 0 < gpu["max_workers"]
    workers = [n for name, n in nodes.items() if name != config["head_node_type"]]
    assert sum(n["max_workers"] for n in workers) == config["max_workers"]
    assert all(n["min_workers"] <= n["max_workers"] for n in workers)


def test_dashboard_and_job_server_stay_inside_the_cluster(config):
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    rules = config["provider"]["security_group"]["IpPermissions"]
    assert [(r["FromPort"], r["ToPort"]) for r in rules] == [(22, 22)]
    assert all(ip["CidrIp"] != "0.0.0.0/0" for r in rules for ip in r["IpRanges"])


def test_token_authentication_on_every_node(config):
    for command in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[command] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token ray start" in c for c in starts), command
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_setup_installs_cuda_torch_then_the_project(config):
    setup = config["setup_commands"]
    torch = next(i for i, c in enumerate(setup) if "install" in c and " torch" in c)
    project = next(i for i, c in enumerate(setup) if "pip install" in c and "-e ~/incept" in c)
    assert "download.pytorch.org/whl/cu" in setup[torch]
    assert torch < project  # the project's torch range must find the CUDA build installed
    assert any('ray[data,train,default]==' in c for c in setup)


def test_project_is_shipped_without_heavy_or_private_paths(config):
    assert config["file_mounts"]["~/incept"] == "."
    assert {".venv", "work", ".git", "data", "mlruns", "mlflow.db", "*.tar"} <= set(config["rsync_exclude"])


def test_shared_storage_is_mounted_and_used(config):
    setup = " ".join(config["setup_commands"])
    assert "mount -t nfs4" in setup and "/mnt/shared" in setup
    assert "INCEPT_WORKDIR=/mnt/shared/work" in setup


@pytest.mark.parametrize(
    "needle",
    [
        "cluster_name:",
        "region:",
        "availability_zone:",
        "CidrIp:",
        "ImageId:",
        "instance-profile/",
        "whl/cu",
        "max_workers: 4",
    ],
)
def test_values_a_user_must_change_are_marked(text, needle):
    lines = [line for line in text.splitlines() if needle in line and not line.lstrip().startswith("#")]
    assert lines, needle
    assert all("CHANGE" in line for line in lines), lines


def test_efs_and_bucket_placeholders_are_marked(text):
    # A multi-line command can't carry a trailing comment: a "# ^ CHANGE" line follows it.
    assert "fs-0123456789abcdef0" in text
    assert "# ^ CHANGE: fs-0123456789abcdef0" in text
    assert "CHANGE: YOUR-BUCKET" in text
