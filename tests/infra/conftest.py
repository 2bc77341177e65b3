"""Fixtures for infra tests: real `mlflow server` processes on 127.0.0.1, a tiny serving model.

One plain server and one basic-auth server per test session (each takes about 10 s to start on
2 cores); every test that registers uses its own registered-model name, so tests do not see
each other's aliases.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MLFLOW = str(Path(sys.executable).with_name("mlflow"))
ADMIN_USER = "admin"
ADMIN_PASSWORD = "Sekr1t-pw-for-tests-9d2f"  # looked for in every CLI output: must never appear


@dataclass(frozen=True)
class MlflowServer:
    uri: str
    port: int
    pid: int
    root: Path
    username: str | None = None
    password: str | None = None

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a client process of this server (credentials included if any)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env.update(MLFLOW_TRACKING_URI=self.uri, PYTHONUNBUFFERED="1")
        if self.username:
            env.update(MLFLOW_TRACKING_USERNAME=self.username, MLFLOW_TRACKING_PASSWORD=self.password)
        env.update(extra)
        return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(root: Path, *, auth: bool) -> tuple[subprocess.Popen, MlflowServer]:
    """Start `mlflow server` in its own process group; `_wait_healthy` waits for it."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    cmd = [
        MLFLOW, "server",
        "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--serve-artifacts",
        "--workers", "1",
    ]
    if auth:
        ini = root / "basic_auth.ini"
        ini.write_text(
            "[mlflow]\n"
            "default_permission = READ\n"
            f"database_uri = sqlite:///{root / 'basic_auth.db'}\n"
            f"admin_username = {ADMIN_USER}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            # PBKDF2 per request costs about a second on 2 busy cores; cache the check.
            "auth_cache_ttl_seconds = 300\n"
        )
        env.update(
            MLFLOW_AUTH_CONFIG_PATH=str(ini),
            MLFLOW_AUTH_ADMIN_PASSWORD=ADMIN_PASSWORD,
            MLFLOW_FLASK_SERVER_SECRET_KEY="incept-tests-csrf-key",  # basic-auth refuses to start without one
        )
        cmd += ["--app-name", "basic-auth"]
    with open(root / "server.log", "wb") as log:
        # Own process group, so the kill below reaches uvicorn's worker too.
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = MlflowServer(
        uri=f"http://127.0.0.1:{port}", port=port, pid=proc.pid, root=root,
        username=ADMIN_USER if auth else None, password=ADMIN_PASSWORD if auth else None,
    )
    return proc, server


def _wait_healthy(proc: subprocess.Popen, server: MlflowServer, timeout: float = 120) -> MlflowServer:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited {proc.returncode}:\n{(server.root / 'server.log').read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{server.uri}/health", timeout=2) as resp:
                if resp.status == 200:
                    return server
        except (urllib.error.URLError, OSError):
            time.sleep(0.3)
    raise RuntimeError(f"mlflow server not healthy in {timeout:.0f} s:\n{(server.root / 'server.log').read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # the group we created for this pid only
        proc.wait(timeout=1.5)  # a throwaway server: no need to wait for a graceful drain
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)
    except ProcessLookupError:
        pass


class _Servers:
    """Both servers start together on first use (start-up is ~10 s of imports each), then each
    fixture waits only for its own."""

    def __init__(self, tmp_path_factory, wanted: set[bool]):
        self._factory = tmp_path_factory
        self._wanted = wanted  # the modes some selected test uses
        self._started: dict[bool, tuple[subprocess.Popen, MlflowServer]] = {}

    def get(self, *, auth: bool) -> MlflowServer:
        for mode in sorted(self._wanted | {auth}):
            if mode not in self._started:
                self._started[mode] = _launch(self._factory.mktemp("mlflow-auth" if mode else "mlflow-plain"), auth=mode)
        proc, server = self._started[auth]
        return _wait_healthy(proc, server)

    def stop(self) -> None:
        procs = [proc for proc, _ in self._started.values() if proc.poll() is None]
        for proc in procs:  # signal both first, then wait: the drains overlap
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in procs:
            _stop(proc)


@pytest.fixture(scope="session")
def _mlflow_servers(request, tmp_path_factory):
    used = {name for item in request.session.items for name in getattr(item, "fixturenames", ())}
    wanted = {mode for mode, name in ((False, "mlflow_server"), (True, "mlflow_auth_server")) if name in used}
    servers = _Servers(tmp_path_factory, wanted)
    yield servers
    servers.stop()


@pytest.fixture(scope="session")
def mlflow_server(_mlflow_servers):
    """A real `mlflow server` (SQLite backend, proxied artifacts) on a free 127.0.0.1 port."""
    return _mlflow_servers.get(auth=False)


@pytest.fixture(scope="session")
def mlflow_auth_server(_mlflow_servers):
    """The same with `--app-name basic-auth` (mlflow[auth], in the test extras); the admin's credentials are in the result."""
    return _mlflow_servers.get(auth=True)


def _clear_mlflow_env(monkeypatch) -> None:
    # mlflow.set_tracking_uri / set_registry_uri export these to os.environ behind our back;
    # deleting them through monkeypatch (raising=False) makes teardown remove them again.
    names = {"MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
    for key in names | {k for k in os.environ if k.startswith("MLFLOW_")}:
        monkeypatch.delenv(key, raising=False)


@pytest.fixture()
def use_server(monkeypatch, tmp_path):
    """Point this process at a server: env as a user would set it, a private work dir."""

    def use(server: MlflowServer) -> MlflowServer:
        _clear_mlflow_env(monkeypatch)
        for key, value in server.env(INCEPT_WORKDIR=str(tmp_path / "work")).items():
            if key.startswith("MLFLOW_") or key == "INCEPT_WORKDIR":
                monkeypatch.setenv(key, value)
        return server

    return use


@pytest.fixture()
def embedded_env(monkeypatch, tmp_path):
    """No MLFLOW_TRACKING_URI: the embedded SQLite default under a private work dir."""
    _clear_mlflow_env(monkeypatch)
    workdir = tmp_path / "work"
    monkeypatch.setenv("INCEPT_WORKDIR", str(workdir))
    return workdir


@pytest.fixture(scope="session")
def tiny_model():
    """A factory for a tiny serving module: uint8 N x 32 x 32 x 3 -> probabilities N x C.

    conv + global pool + linear, wrapped the way the real serving module is: it takes raw
    pixels and normalises inside. Returns (module, metadata, input_example).
    """
    import numpy as np
    import torch
    from torch import nn

    class TinyNet(nn.Module):
        def __init__(self, num_classes: int):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(8, num_classes)

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))

    class Serving(nn.Module):
        def __init__(self, net, mean, std):
            super().__init__()
            self.net = net
            self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

        def forward(self, images):  # uint8 N x H x W x 3
            x = images.permute(0, 3, 1, 2).float().div(255.0)
            return torch.softmax(self.net((x - self.mean) / self.std), dim=1)

    def make(*, num_classes: int = 7, seed: int = 0):
        torch.manual_seed(seed)
        mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        module = Serving(TinyNet(num_classes), mean, std).eval()
        metadata = {
            "classes": [f"n{i:08d}" for i in range(num_classes)],
            "words": [f"class {i}" for i in range(num_classes)],
            "resolution": 32,
            "crop_fraction": 0.875,
            "interpolation": "bilinear",
            "mean": list(mean),
            "std": list(std),
        }
        example = np.random.default_rng(seed).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
        return module, metadata, example

    return make


@pytest.fixture()
def new_run():
    """A factory for a fresh MLflow run (in the project's experiment) on the current URI."""

    def make() -> str:
        import mlflow

        from infra import tracking

        tracking.connect()
        experiment_id = tracking.get_or_create_experiment()
        run = mlflow.MlflowClient().create_run(experiment_id)
        return run.info.run_id

    return make


def run_incept(*args: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m infra.cli ARGS...` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture()
def incept():
    return run_incept


@pytest.fixture()
def spawn_python():
    """Start `python -c CODE` in the repo with `env`; returns the Popen (text pipes)."""

    def spawn(code: str, env: dict) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-c", code], cwd=REPO, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    return spawn


@pytest.fixture()
def closed_port() -> int:
    return free_port()  # bound and released: nothing listens there


@pytest.fixture()
def center_crop():
    """PROTOCOLS["1"] from pipelines.crops, or (until that lands) a local stand-in for tests only."""
    try:
        from pipelines.crops import PROTOCOLS

        return PROTOCOLS["1"]
    except ImportError:
        pytest.skip("pipelines.crops not available yet")


@dataclass(frozen=True)
class SharedModel:
    name: str  # registered model holding the one real registration (version 1, alias challenger)
    source: str  # models:/m-...: its LoggedModel
    model_id: str
    run_id: str
    metadata: dict


@pytest.fixture(scope="session")
def shared_model(mlflow_server, tiny_model, tmp_path_factory) -> SharedModel:
    """One real `registry.register` on the plain server for the whole session.

    Alias tests need versions, not uploads: `clone_model` makes registered models whose
    versions point at this LoggedModel, at the cost of one request each instead of an export
    and an upload.
    """
    import uuid

    import mlflow

    from infra import registry, tracking

    with pytest.MonkeyPatch.context() as mp:
        _clear_mlflow_env(mp)
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
        mp.setenv("INCEPT_WORKDIR", str(tmp_path_factory.mktemp("shared-work")))
        tracking.connect()
        run_id = mlflow.MlflowClient().create_run(tracking.get_or_create_experiment()).info.run_id
        module, metadata, example = tiny_model()
        info = registry.register(
            model=module, input_example=example, metadata=metadata,
            metrics={"top1_1crop": 0.61, "top5_1crop": 0.83}, tags={"git_commit": "abc1234"},
            run_id=run_id, model_name=f"incept-shared-{uuid.uuid4().hex[:8]}",
        )
    return SharedModel(info.name, info.source, info.model_id, run_id, metadata)


@pytest.fixture()
def clone_model(shared_model):
    """`clone(versions=N, challenger="1") -> name`: a new registered model on the current URI
    whose N versions all point at the shared LoggedModel."""
    import uuid

    import mlflow

    def clone(*, versions: int = 1, challenger: str | None = "1") -> str:
        client = mlflow.MlflowClient()
        name = f"incept-test-{uuid.uuid4().hex[:8]}"
        client.create_registered_model(name)
        for _ in range(versions):
            client.create_model_version(
                name, source=shared_model.source, run_id=shared_model.run_id,
                tags={"run_id": shared_model.run_id}, model_id=shared_model.model_id,
            )
        if challenger:
            client.set_registered_model_alias(name, "challenger", challenger)
        return name

    return clone
