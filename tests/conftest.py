"""Fixtures shared by the whole suite.

One Ray instance serves the whole test session (Ray costs about 10 s to start here): tests in
this process use it directly, and `incept` subprocesses join it through RAY_ADDRESS.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))  # tests/servers.py: the real servers the stack fixtures start

import servers  # noqa: E402


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ray_address():
    """The GCS address of a Ray instance private to this test session."""
    import ray

    # address="local" always starts a new instance, never joins one already on the machine.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture()
def cli_env(tmp_path, ray_address):
    """Environment for `incept` subprocesses: the session's Ray, a private work directory."""
    env = dict(os.environ)
    env["RAY_ADDRESS"] = ray_address
    env["INCEPT_WORKDIR"] = str(tmp_path / "work")
    env.pop("MLFLOW_TRACKING_URI", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cli(*args: str, env: dict | None = None, timeout: float = 600, check: bool = True):
    """Run `incept ARGS...` as a user would; returns the CompletedProcess (text)."""
    proc = subprocess.run(
        [sys.executable, "-m", "infra.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"incept {' '.join(args)} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-8000:]}"
        )
    return proc


@pytest.fixture()
def cli():
    return run_cli


# --- The cluster stack: real servers on 127.0.0.1, each started once per test run on first use ---


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3 API server with the test bucket (servers.S3Server)."""
    server = servers.start_s3(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()


@pytest.fixture()
def s3_env(monkeypatch, s3_server):
    """This process as a node of the stack sees S3: credentials in the environment, no endpoint variable."""
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    for key, value in {**{k: v for k, v in servers.NODE_SECRETS.items() if k.startswith("AWS_")},
                       "AWS_DEFAULT_REGION": servers.REGION, "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture(scope="session")
def postgres():
    server = servers.start_postgres()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """`ray start --head` in token mode (servers.RayCluster); a test adds the second node it needs."""
    cluster = servers.start_ray_cluster(tmp_path_factory.mktemp("ray-cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def mlflow_stack(tmp_path_factory, postgres, s3_server):
    """`mlflow server` on PostgreSQL with artifacts proxied into the S3 server (its `uri` waits until it answers)."""
    stack = servers.launch_mlflow(tmp_path_factory.mktemp("mlflow-stack"), postgres, s3_server)
    yield stack
    stack.stop()
