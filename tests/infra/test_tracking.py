"""infra.tracking: which URI, the work dir, fast and clear failures, no credentials in messages."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from infra import tracking
from pipelines.errors import UserError


@pytest.mark.unit
def test_embedded_default_lives_in_the_work_dir(embedded_env):
    assert not embedded_env.exists()
    assert tracking.tracking_uri() == f"sqlite:///{embedded_env / 'mlflow.db'}"
    assert embedded_env.is_dir()  # created on demand
    assert tracking.artifact_root() == (embedded_env / "mlartifacts").as_uri()
    assert tracking.is_embedded(tracking.tracking_uri())


@pytest.mark.unit
def test_workdir_defaults_to_dot_work(monkeypatch, tmp_path):
    monkeypatch.delenv("INCEPT_WORKDIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking.workdir() == tmp_path / "work"


@pytest.mark.unit
def test_env_uri_wins_and_has_no_local_artifact_root(embedded_env, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tracking.tracking_uri() == "http://mlflow.example:5000"
    assert tracking.artifact_root() is None
    assert tracking.is_http(tracking.tracking_uri()) and not tracking.is_embedded(tracking.tracking_uri())


@pytest.mark.unit
@pytest.mark.parametrize(
    "uri, shown",
    [
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("https://alice:s3cret@mlflow.example/prefix", "https://***@mlflow.example/prefix"),
        ("http://alice:s3cret@10.0.0.1:8080", "http://***@10.0.0.1:8080"),
        ("sqlite:////tmp/x/mlflow.db", "sqlite:////tmp/x/mlflow.db"),
    ],
)
def test_redact(uri, shown):
    assert tracking.redact(uri) == shown


@pytest.mark.unit
def test_configure_shortens_http_retries_but_keeps_the_users_choice(embedded_env, monkeypatch):
    for key in tracking._HTTP_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")
    uri = tracking.configure()
    assert uri == tracking.embedded_uri()
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "3"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"


@pytest.mark.unit
def test_unreachable_server_is_one_line_naming_uri_and_fix(closed_port, monkeypatch):
    monkeypatch.setenv("INCEPT_WORKDIR", "/tmp/incept-test-work")
    uri = f"http://alice:pw-never-shown@127.0.0.1:{closed_port}"
    start = time.monotonic()
    with pytest.raises(UserError) as err:
        tracking.check_reachable(uri, timeout=5)
    assert time.monotonic() - start < 5
    message = str(err.value)
    assert "\n" not in message and "pw-never-shown" not in message and "alice" not in message
    assert f"http://***@127.0.0.1:{closed_port}" in message and "unreachable" in message
    assert "MLFLOW_TRACKING_URI" in message


@pytest.mark.unit
def test_a_server_that_never_answers_times_out():
    with socket.socket() as listener:  # accepts connections (backlog) but never replies
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        start = time.monotonic()
        with pytest.raises(UserError, match=rf"http://127.0.0.1:{port} is unreachable \(timed out\)"):
            tracking.check_reachable(f"http://127.0.0.1:{port}", timeout=1)
        assert time.monotonic() - start < 5


@pytest.mark.unit
def test_embedded_store_needs_no_probe():
    tracking.check_reachable("sqlite:////nonexistent/dir/mlflow.db", timeout=0.1)


@pytest.mark.unit
def test_auth_header_from_env_or_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "bob")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw")
    assert tracking._auth_headers("http://h:1") == {"Authorization": "Basic Ym9iOnB3"}
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    assert tracking._auth_headers("http://bob:pw@h:1") == {"Authorization": "Basic Ym9iOnB3"}
    assert tracking._auth_headers("http://h:1") == {}


@pytest.mark.e2e
def test_experiment_get_or_create_is_stable(embedded_env):
    import mlflow

    tracking.configure()
    first = tracking.get_or_create_experiment("incept-tracking-test")
    assert tracking.get_or_create_experiment("incept-tracking-test") == first
    location = mlflow.MlflowClient().get_experiment(first).artifact_location
    assert Path(location.removeprefix("file://")).is_relative_to(embedded_env / "mlartifacts")


@pytest.mark.e2e
def test_reachable_real_server_passes(mlflow_server):
    tracking.check_reachable(mlflow_server.uri)


@pytest.mark.unit
def test_worker_env_carries_the_address_and_no_credential(monkeypatch):
    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://incept:uri-pw@mlflow.example.com:5000/prefix")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "incept")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "env-pw")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    assert tracking.worker_env() == {"MLFLOW_TRACKING_URI": "https://mlflow.example.com:5000/prefix", "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}
