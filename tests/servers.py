"""Real servers on 127.0.0.1 for the cluster tests, started by the tests, once per test run.

    S3Server       moto in server mode: an S3 API; the bucket is made here
    Postgres       Debian's PostgreSQL 15, as the `postgres` user on a folder of its own
    MlflowStack    `mlflow server` on that PostgreSQL, artifacts proxied into the S3 server
    RayCluster     `ray start --head` and, on demand, a second node beside it

Nothing here is a mock: every client talks to the real server over TCP. Each server runs in its
own process group and is ended by its process id (never `ray stop` or `pg_ctlcluster`, which
would reach other test sessions on this machine). tests/conftest.py turns these into fixtures.

Planted secrets: the nodes, the S3 server's clients and the submitter get credentials with known
values (NODE_SECRETS, SUBMITTER_SECRETS), so tests can search everything a user or another
tenant sees for them.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
PG_BIN = Path("/usr/lib/postgresql/15/bin")
BUCKET = "incept-tests"
REGION = "us-east-1"

# Fresh values each test run, so that no file of this repository (which `incept submit` ships to
# the cluster) holds them, and a search that finds one has found a leak.
_RUN = uuid.uuid4().hex[:10]
# Credentials the cluster's nodes hold in their own environment (their "AWS chain").
NODE_SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAINCEPTNODE0000001",
    "AWS_SECRET_ACCESS_KEY": f"node-aws-secret-{_RUN}",
    "MLFLOW_TRACKING_USERNAME": "incept-node",
    "MLFLOW_TRACKING_PASSWORD": f"node-mlflow-password-{_RUN}",
}
# Credentials only the submitting user's machine holds: none may ever reach the cluster.
SUBMITTER_SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAINCEPTUSER0000002",
    "AWS_SECRET_ACCESS_KEY": f"user-aws-secret-{_RUN}",
    "MLFLOW_TRACKING_USERNAME": "incept-user",
    "MLFLOW_TRACKING_PASSWORD": f"user-mlflow-password-{_RUN}",
}
URI_PASSWORD = f"uri-password-{_RUN}"  # the submitter's tracking URI carries user:URI_PASSWORD

# Never inherited from the test runner: these would point a server or a node somewhere else.
_FOREIGN = ("RAY_", "MLFLOW_", "AWS_", "INCEPT_WORKDIR")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_range(size: int) -> tuple[int, int]:
    """A run of `size` ports that are free now (Ray's workers bind inside it)."""
    for _ in range(200):
        base = random.randrange(20000, 30000 - size)
        socks = []
        try:
            for port in range(base, base + size):
                s = socket.socket()
                socks.append(s)
                s.bind(("", port))
            return base, base + size - 1
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


def clean_env(**extra: str) -> dict[str, str]:
    """This environment minus every Ray, MLflow and AWS setting, with the virtualenv first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN)}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env["AWS_EC2_METADATA_DISABLED"] = "true"  # no instance-role probe on a machine without one
    env["AWS_DEFAULT_REGION"] = REGION
    env.update(extra)
    return env


def wait_until(predicate, *, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    """Poll `predicate` until it returns something truthy; AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.25)
    tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
    exited = f" (the process exited {proc.returncode})" if proc is not None and proc.poll() is not None else ""
    raise AssertionError(f"timed out waiting for {what}{exited}\n{tail}")


def kill_group(proc: subprocess.Popen, *, grace: float = 5.0) -> None:
    """SIGTERM the process group `proc` leads, then SIGKILL whatever is left after `grace` s."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def _http_ok(url: str, headers: dict | None = None) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _spawn(cmd: list[str], *, env: dict, log: Path, cwd: Path | None = None) -> subprocess.Popen:
    with open(log, "ab") as out:  # its own process group: killed by id, with everything it started
        return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


# --- S3 ------------------------------------------------------------------------------------


@dataclass
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    bucket: str
    proc: subprocess.Popen
    log: Path

    @property
    def hostport(self) -> str:
        return self.endpoint.split("://", 1)[1]

    def uri(self, key: str, *, with_endpoint: bool = True) -> str:
        """s3://BUCKET/KEY, with the endpoint in the URI's options (as a user of an on-prem store writes it)."""
        base = f"s3://{self.bucket}/{key.strip('/')}"
        return f"{base}?endpoint_override={self.hostport}&scheme=http" if with_endpoint else base

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=NODE_SECRETS["AWS_ACCESS_KEY_ID"], aws_secret_access_key=NODE_SECRETS["AWS_SECRET_ACCESS_KEY"])

    def keys(self, prefix: str) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def read(self, key: str) -> bytes | None:
        try:
            return self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except Exception as err:  # botocore's NoSuchKey is generated at run time
            if "NoSuchKey" in type(err).__name__ or "NoSuchKey" in str(err):
                return None
            raise

    def stop(self) -> None:
        kill_group(self.proc, grace=1)


def start_s3(root: Path) -> S3Server:
    port = free_port()
    log = root / "moto.log"
    proc = _spawn([str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], env=clean_env(), log=log)
    server = S3Server(f"http://127.0.0.1:{port}", BUCKET, proc, log)
    wait_until(lambda: _http_ok(f"{server.endpoint}/moto-api/"), timeout=60, what="the S3 server", proc=proc, log=log)
    server.client().create_bucket(Bucket=BUCKET)
    return server


# --- PostgreSQL ----------------------------------------------------------------------------


@dataclass
class Postgres:
    folder: Path  # data folder and socket folder, owned by the server's user
    port: int
    as_user: list[str]  # the prefix that runs a command as the server's user

    def uri(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        subprocess.run([*self.as_user, str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name],
                       check=True, capture_output=True, timeout=60)
        return self.uri(name)

    def stop(self) -> None:
        subprocess.run([*self.as_user, str(PG_BIN / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(self.folder, ignore_errors=True)


def start_postgres() -> Postgres:
    """initdb refuses root: as root, the folder goes to `postgres` and every command runs as that user."""
    # Outside pytest's temporary folder, which the postgres user cannot enter.
    folder = Path(tempfile.mkdtemp(prefix="incept-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(folder, user="postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    env = clean_env(LC_ALL="C.UTF-8")
    subprocess.run([*as_user, str(PG_BIN / "initdb"), "-D", str(folder / "data"), "-A", "trust", "-U", "postgres", "-E", "UTF8"],
                   check=True, capture_output=True, env=env, timeout=120)
    port = free_port()
    subprocess.run([*as_user, str(PG_BIN / "pg_ctl"), "-D", str(folder / "data"), "-l", str(folder / "server.log"), "-w", "-t", "60",
                    "-o", f"-k {folder} -h 127.0.0.1 -p {port}", "start"], check=True, capture_output=True, env=env, timeout=90)
    return Postgres(folder, port, as_user)


# --- MLflow on PostgreSQL with S3 artifacts ------------------------------------------------------


@dataclass
class MlflowStack:
    """Launched, not waited for: its start-up (migrations on PostgreSQL, ~15 s here) overlaps with
    whatever starts next; `uri` waits until the server answers."""

    address: str  # http://127.0.0.1:PORT: all a client needs (artifacts are proxied)
    backend: str  # the server's postgresql:// store
    proc: subprocess.Popen
    log: Path
    _ready: bool = False

    @property
    def uri(self) -> str:
        if not self._ready:
            wait_until(lambda: _http_ok(f"{self.address}/health"), timeout=180, what="mlflow server on PostgreSQL", proc=self.proc, log=self.log)
            self._ready = True
        return self.address

    def stop(self) -> None:
        kill_group(self.proc, grace=1.5)


def launch_mlflow(root: Path, postgres: Postgres, s3: S3Server) -> MlflowStack:
    backend = postgres.create_database("mlflow")
    port = free_port()
    log = root / "mlflow-server.log"
    env = clean_env(MLFLOW_S3_ENDPOINT_URL=s3.endpoint, AWS_ACCESS_KEY_ID=NODE_SECRETS["AWS_ACCESS_KEY_ID"],
                    AWS_SECRET_ACCESS_KEY=NODE_SECRETS["AWS_SECRET_ACCESS_KEY"])
    cmd = [str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", backend, "--artifacts-destination", f"s3://{s3.bucket}/mlartifacts", "--serve-artifacts"]
    return MlflowStack(f"http://127.0.0.1:{port}", backend, _spawn(cmd, env=env, log=log, cwd=root), log)


# --- Ray: a head, and a second node on demand ----------------------------------------------------


@dataclass
class RayNode:
    name: str  # its custom resource, e.g. incept_head
    proc: subprocess.Popen  # `ray start --block`: ends the node's processes when it ends
    log: Path
    temp_dir: Path  # --temp-dir: sessions, logs, runtime-env folders

    def raylet_pid(self) -> int | None:
        out = subprocess.run(["pgrep", "-g", str(self.proc.pid), "-f", "raylet/raylet"], capture_output=True, text=True).stdout.split()
        return int(out[0]) if out else None


@dataclass
class RayCluster:
    gcs: str  # 127.0.0.1:PORT, what RAY_ADDRESS names for a driver
    dashboard: str  # http://127.0.0.1:PORT, the job server
    token: str
    home: Path  # the head's HOME, holding ~/.ray/auth_token
    root: Path
    head: RayNode
    nodes: list[RayNode] = field(default_factory=list)

    @property
    def log(self) -> Path:
        return self.head.log

    def node_env(self, **extra: str) -> dict[str, str]:
        """A node's own environment: its AWS credentials, no endpoint variable, no MLflow address."""
        return clean_env(HOME=str(self.home), **NODE_SECRETS, **extra)

    def driver_env(self, **extra: str) -> dict[str, str]:
        """A process on this machine that joins the cluster as a Ray driver."""
        return clean_env(HOME=str(self.home), RAY_ADDRESS=self.gcs, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token, **extra)

    def alive_nodes(self) -> int:
        import requests

        reply = requests.get(f"{self.dashboard}/nodes?view=summary", headers={"Authorization": f"Bearer {self.token}"}, timeout=5)
        return sum(1 for n in reply.json()["data"]["summary"] if n.get("raylet", {}).get("state") == "ALIVE")

    def add_node(self, name: str, *, num_cpus: int = 2) -> RayNode:
        """`ray start --address HEAD` as a second machine would: token mode, the head's token, its own credentials."""
        log = self.root / f"{name}.log"
        # Its own temp dir, as on its own machine: a node deletes runtime-env folders it stops using,
        # and in a shared one it would delete the head's copy of a job's working_dir under the job.
        temp_dir = Path(tempfile.mkdtemp(prefix="incept-ray-", dir="/tmp"))
        wmin, wmax = free_range(60)
        before = self.alive_nodes()
        cmd = [str(VENV_BIN / "ray"), "start", "--address", self.gcs, "--block", "--disable-usage-stats",
               "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}", f"--resources={json.dumps({name: 1})}",
               "--object-store-memory=200000000", f"--temp-dir={temp_dir}",
               f"--min-worker-port={wmin}", f"--max-worker-port={wmax}", f"--node-manager-port={free_port()}",
               f"--object-manager-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
               f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
               f"--metrics-export-port={free_port()}"]
        proc = _spawn(cmd, env=self.node_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token), log=log)
        node = RayNode(name, proc, log, temp_dir)
        self.nodes.append(node)
        wait_until(lambda: self.alive_nodes() > before, timeout=120, what=f"node {name} to join", proc=proc, log=log)
        return node

    def kill_raylet(self, node: RayNode) -> None:
        """SIGKILL the node's raylet: the node is lost as if its machine died (`ray start --block` then ends the rest)."""
        pid = node.raylet_pid()
        assert pid, f"no raylet found for {node.name}"
        os.kill(pid, signal.SIGKILL)
        node.proc.wait(timeout=60)

    def stop(self) -> None:
        for node in [*self.nodes, self.head]:
            kill_group(node.proc)
        for node in [*self.nodes, self.head]:
            shutil.rmtree(node.temp_dir, ignore_errors=True)


def start_ray_cluster(root: Path, *, head_cpus: int = 2) -> RayCluster:
    """A head in token mode the plain way: RAY_AUTH_MODE unset and a token in its HOME (see test_submit)."""
    # Ray puts unix sockets under --temp-dir: keep it short (the socket path limit is 107).
    temp_dir = Path(tempfile.mkdtemp(prefix="incept-ray-", dir="/tmp"))
    token = uuid.uuid4().hex
    home = root / "head-home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(token)
    gcs_port, dash = free_port(), free_port()
    wmin, wmax = free_range(100)
    log = root / "head.log"
    cmd = [str(VENV_BIN / "ray"), "start", "--head", "--block", "--disable-usage-stats",
           "--node-ip-address=127.0.0.1", f"--num-cpus={head_cpus}", f"--resources={json.dumps({'incept_head': 1})}",
           "--object-store-memory=300000000", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
           f"--port={gcs_port}", f"--dashboard-port={dash}", f"--ray-client-server-port={free_port()}",
           f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
           f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
           f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
           f"--min-worker-port={wmin}", f"--max-worker-port={wmax}", f"--temp-dir={temp_dir}"]
    # A lost node is declared dead after 5 missed 1 s health checks (Ray's default is about 30 s).
    env = clean_env(HOME=str(home), **NODE_SECRETS, RAY_health_check_period_ms="1000", RAY_health_check_failure_threshold="5")
    proc = _spawn(cmd, env=env, log=log)
    cluster = RayCluster(f"127.0.0.1:{gcs_port}", f"http://127.0.0.1:{dash}", token, home, root, RayNode("incept_head", proc, log, temp_dir))
    try:
        wait_until(lambda: _http_ok(f"{cluster.dashboard}/api/jobs/", {"Authorization": f"Bearer {token}"}),
                   timeout=90, what="the Ray head's job server", proc=proc, log=log)
    except BaseException:
        cluster.stop()
        raise
    return cluster
