"""End to end beyond one machine: S3 (moto), a two-node Ray cluster, MLflow on PostgreSQL with S3 artifacts.

Everything goes through the real CLI, as a user on their own machine would run it, against real
servers on 127.0.0.1 (tests/servers.py). The cluster's nodes have AWS credentials in their own
environment and no endpoint variable: the S3 endpoint must reach every hop through incept.

    shard to S3 through the cluster (the endpoint only in the driver's AWS_ENDPOINT_URL)
    -> `incept submit -- train`: 2 workers SPREAD over both nodes, checkpoints in S3
    -> the second node's raylet is killed after the first checkpoint: the group restarts on the
       head, resumes from S3 and finishes the planned steps; multi-crop evaluation; registration
       on the PostgreSQL-backed server, artifacts in S3
    -> predict and a plain mlflow.pytorch.load_model from fresh processes with only MLFLOW_TRACKING_URI
    -> one `incept retrain` cycle warm-started from the S3 checkpoint, on the head and a new node
    -> planted secrets are searched for everywhere a user or another tenant could look.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
import servers

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
EPOCHS = 3
RUN = "cluster-e2e"
SHARD_SIZE = 8  # 15 training and 3 validation shards; the retrain cycle finds them all written already


class Cli:
    """`incept ...` as subprocesses; every output is kept, to be searched for secrets at the end."""

    def __init__(self):
        self.outputs: list[str] = []

    def run(self, *args: str, env: dict, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "infra.cli", *map(str, args)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=timeout)
        self.outputs += [proc.stdout, proc.stderr]
        if check and proc.returncode != 0:
            raise AssertionError(f"incept {' '.join(map(str, args))} exited {proc.returncode}\n"
                                 f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-8000:]}")
        return proc

    def json(self, *args: str, env: dict, timeout: float = 600) -> dict:
        return json.loads(self.run(*args, "--json", env=env, timeout=timeout).stdout.strip().splitlines()[-1])


def worker_groups(lines: list[str]) -> list[list[str]]:
    """Each "worker group: rank R on node N, ..." line the training printed, as the node id of every rank."""
    groups = []
    for line in lines:
        if "worker group: " in line:
            ranks = line.split("worker group: ", 1)[1].strip().split(", ")
            groups.append([r.rsplit(" ", 1)[1] for r in ranks])
    return groups


def latest_epoch(s3, run_key: str) -> int:
    """The epoch of the newest checkpoint Ray Train has registered, from its snapshot in S3."""
    raw = s3.read(f"{run_key}/checkpoint_manager_snapshot.json")
    if raw is None:
        return 0
    try:
        latest = json.loads(raw).get("latest_checkpoint_result") or {}
    except ValueError:  # being rewritten right now
        return 0
    return int((latest.get("metrics") or {}).get("epoch", 0))


def actors_on(cluster, class_part: str) -> set[str]:
    """Node ids of every actor (alive or dead) whose class name contains `class_part` (Ray's state API)."""
    import requests

    reply = requests.get(f"{cluster.dashboard}/api/v0/actors", params={"limit": 10000, "detail": 1},
                         headers={"Authorization": f"Bearer {cluster.token}"}, timeout=30)
    reply.raise_for_status()
    return {a["node_id"] for a in reply.json()["data"]["result"]["result"] if class_part in a["class_name"]}


def test_s3_two_node_cluster_postgres_registry_end_to_end(tmp_path, mlflow_stack, ray_cluster, s3_server):
    from pipelines.sample_data import make_sample_set

    cluster, s3, cli = ray_cluster, s3_server, Cli()
    (tmp_path / "home").mkdir()
    node2 = cluster.add_node("incept_node2")
    data = tmp_path / "data"
    # 120 training images: 7 steps an epoch for 2 workers x 8; 24 validation images in 3 shards.
    make_sample_set(data, classes=3, train_per_class=40, val_per_class=8, source="synthetic")
    prefix = f"e2e-{uuid.uuid4().hex[:6]}"

    # A user's machine: their own credentials and a tracking URI with user:password in it.
    user = servers.clean_env(HOME=str(tmp_path / "home"), RAY_AUTH_TOKEN=cluster.token, **servers.SUBMITTER_SECRETS,
                             MLFLOW_TRACKING_URI=mlflow_stack.uri.replace("http://", f"http://incept-user:{servers.URI_PASSWORD}@"))
    # The same user driving the cluster from here (RAY_ADDRESS): shard, retrain.
    driver = cluster.driver_env(**servers.SUBMITTER_SECRETS, MLFLOW_TRACKING_URI=mlflow_stack.uri, INCEPT_WORKDIR=str(tmp_path / "work"))
    # Someone with nothing but the registry's address.
    reader = {"PATH": servers.clean_env()["PATH"], "HOME": str(tmp_path / "home"), "MLFLOW_TRACKING_URI": mlflow_stack.uri}

    # 1. Shards into S3 through the cluster; the endpoint is only in the driver's AWS_ENDPOINT_URL.
    for split in ("train", "val"):
        out = cli.json("shard", "--src", data, "--split", split, "--out", f"s3://{s3.bucket}/{prefix}/shards/{split}",
                       "--shard-size", SHARD_SIZE, env={**driver, "AWS_ENDPOINT_URL": s3.endpoint})
        assert out["out"] == s3.uri(f"{prefix}/shards/{split}")  # the endpoint went into the URI that travels
    assert cli.json("verify-shards", s3.uri(f"{prefix}/shards/train"), env=driver)["ok"]

    # 2. Training as a Ray job, SPREAD over both nodes, checkpoints in S3.
    data_overrides = [f"data.train={s3.uri(f'{prefix}/shards/train')}", f"data.val={s3.uri(f'{prefix}/shards/val')}"]
    overrides = [*data_overrides, f"train.storage_path={s3.uri(f'{prefix}/runs')}", "train.placement_strategy=SPREAD",
                 "train.num_workers=2", "train.batch_size=8", "train.max_failures=3"]
    # A folder only this node sees cannot hold a two-node run's checkpoints: refused before anything starts.
    refused = cli.run("train", "--config", "configs/demo.yaml", *data_overrides, f"train.storage_path={tmp_path / 'runs'}",
                      env=driver, check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert refused.stderr.strip().splitlines()[-1].startswith(
        f"incept train: error: train.storage_path {tmp_path / 'runs'} is a local folder and the Ray cluster has 2 nodes")
    job_id = f"train-{uuid.uuid4().hex[:8]}"
    submit = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "submit", "--address", cluster.dashboard, "--wait", "--id", job_id, "--json", "--",
         "train", "--config", "configs/demo.yaml", *overrides, f"train.epochs={EPOCHS}", f"train.run_name={RUN}",
         "eval.crops=[1,10]", "--json"],
        cwd=REPO, env=user, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader_thread = threading.Thread(target=lambda: lines.extend(submit.stderr), daemon=True)
    reader_thread.start()
    try:
        servers.wait_until(lambda: latest_epoch(s3, f"{prefix}/runs/{RUN}") >= 1 or submit.poll() is not None,
                           timeout=300, what="the first checkpoint in S3")
        assert submit.poll() is None, "".join(lines[-80:])
        before = worker_groups(lines)
        assert len(before) == 1 and len(set(before[0])) == 2, "".join(lines[-80:])  # one worker on each node

        # The second node dies mid-training: the group restarts on the head from the S3 checkpoint.
        cluster.kill_raylet(node2)
        servers.wait_until(lambda: any("resumed from a checkpoint" in line for line in lines) or submit.poll() is not None,
                           timeout=300, what="the worker group to resume")
        # A new node for the rest of the test: evaluation actors and the retrain use it.
        cluster.add_node("incept_node3")
        submit.wait(timeout=600)
    finally:
        if submit.poll() is None:
            submit.kill()
    reader_thread.join(timeout=30)
    stdout = submit.stdout.read()
    cli.outputs += [stdout, "".join(lines)]
    assert submit.returncode == 0, "".join(lines[-150:])
    assert json.loads(stdout)["status"] == "SUCCEEDED"
    # Ray may need more than one try while the lost node is still being declared dead; the group
    # that finished is the last one.
    groups = worker_groups(lines)
    assert len(groups) >= 2, groups
    survivor = set(groups[-1])
    assert len(survivor) == 1 and survivor < set(before[0]), groups  # both ranks on the node that survived
    assert any("resumed from a checkpoint at epoch" in line for line in lines)
    outcome = next(json.loads(line[line.index("{"):]) for line in reversed(lines) if '"train_metrics"' in line)
    steps = (120 // 2) // 8
    assert outcome["train_metrics"]["epoch"] == EPOCHS and outcome["train_metrics"]["step"] == EPOCHS * steps
    assert outcome["model_version"] == "1" and set(outcome["metrics"]) == {"top1_1crop", "top5_1crop", "top1_10crop", "top5_10crop"}
    checkpoint = outcome["checkpoint"]
    assert checkpoint.startswith(f"s3://{s3.bucket}/{prefix}/runs/{RUN}/checkpoint_") and checkpoint.endswith(f"?endpoint_override={s3.hostport}&scheme=http")
    assert s3.read(f"{checkpoint.split('?')[0].split('/', 3)[3]}/state.pt")  # the checkpoint is an object in S3

    # 3. The registry: PostgreSQL-backed, the model's files in S3 through the server's proxy.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_stack.uri, registry_uri=mlflow_stack.uri)
    version = client.get_model_version("inception-v3", "1")
    assert version.tags["checkpoint"] == checkpoint and version.tags["ray_job_id"] == job_id
    assert any(key.endswith("model.pt2") for key in s3.keys("mlartifacts/"))

    # 4. Fresh processes with only MLFLOW_TRACKING_URI: no AWS variables, no Ray.
    # Both at once: each is mostly the import of torch and MLflow, on 2 cores.
    image = sorted((data / "val").rglob("*.JPEG"))[0]
    predict = subprocess.Popen([sys.executable, "-m", "infra.cli", "registry", "predict", "inception-v3@challenger", str(image), "--json"],
                               cwd=REPO, env=reader, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    plain = subprocess.run([sys.executable, "-c", (
        "import mlflow, torch; m = mlflow.pytorch.load_model('models:/inception-v3@challenger'); "
        "print(tuple(m(torch.zeros(2, 128, 128, 3, dtype=torch.uint8)).shape))")], env=reader, capture_output=True, text=True, timeout=300)
    predicted, predict_err = predict.communicate(timeout=300)
    cli.outputs += [predicted, predict_err, plain.stdout, plain.stderr]
    assert plain.returncode == 0 and plain.stdout.strip().splitlines()[-1] == "(2, 3)", plain.stderr[-3000:]
    assert predict.returncode == 0, predict_err[-3000:]
    top = json.loads(predicted)["predictions"][0]["top"]
    assert {p["wnid"] for p in top} == {"n00000000", "n00000001", "n00000002"} and abs(sum(p["probability"] for p in top) - 1) < 1e-4

    # 5. One retraining cycle, warm-started from the champion's S3 checkpoint, on the head and the new node.
    cli.run("registry", "promote", "inception-v3/1", "--reason", "e2e: the first model", env=driver)
    # Its shards are the ones written above (same source, same options): kept, not rewritten.
    cycle = cli.run("retrain", "--src", data, "--shards", s3.uri(f"{prefix}/shards"), "--shard-size", SHARD_SIZE, "--force",
                    "--config", "configs/demo.yaml", *overrides, "train.epochs=1", "retrain.warm_start=true",
                    "eval.crops=[1]", "eval.concurrency=3", "--json", env=driver)
    decision = json.loads(cycle.stdout.strip().splitlines()[-1])
    assert decision["trained"] and decision["version"] == "2" and decision["warm_start"] == checkpoint
    assert decision["champion_version"] == "1" and decision["champion"] is not None
    retrain_lines = cycle.stderr.splitlines()
    assert any(f"warm start from {checkpoint}" in line for line in retrain_lines)
    nodes3 = {n for group in worker_groups(retrain_lines) for n in group}
    killed = set(before[0]) - survivor
    assert len(nodes3) == 2 and not nodes3 & killed, nodes3  # the head and the new node
    # Three evaluation actors and two CPUs on the head: at least one opened the checkpoint on the new node.
    assert len(actors_on(cluster, "CropPredictor") - survivor) >= 1

    # 6. Secrets: nowhere a user or another tenant looks.
    listed = subprocess.run([str(servers.VENV_BIN / "ray"), "job", "list", "--address", cluster.dashboard],
                            env=servers.clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=cluster.token, HOME=str(tmp_path / "home")), capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and job_id in listed.stdout, listed.stderr[-2000:]
    jobs_json = cli.run("jobs", "status", job_id, "--address", cluster.dashboard, "--json", env=user).stdout
    seen = {"ray job list": listed.stdout, "incept jobs status": jobs_json, "CLI output": "\n".join(cli.outputs)}
    for run_id in (outcome["run_id"], decision["training_run_id"], decision["cycle_run_id"]):
        run = client.get_run(run_id)
        seen[f"run {run_id}"] = json.dumps({"params": run.data.params, "tags": run.data.tags})
    for v in ("1", "2"):
        seen[f"version {v}"] = json.dumps(client.get_model_version("inception-v3", v).tags)
    planted = [servers.NODE_SECRETS["AWS_SECRET_ACCESS_KEY"], servers.NODE_SECRETS["MLFLOW_TRACKING_PASSWORD"],
               servers.SUBMITTER_SECRETS["AWS_SECRET_ACCESS_KEY"], servers.SUBMITTER_SECRETS["MLFLOW_TRACKING_PASSWORD"], servers.URI_PASSWORD]
    leaks = [f"{secret!r} in {where}" for where, text in seen.items() for secret in planted if secret in text]
    # The user's own credentials never reach the cluster at all: not a log, not a session file of any node.
    user_only = planted[2:]
    for node in [cluster.head, *cluster.nodes]:
        for path in node.temp_dir.rglob("*"):
            if path.is_file() and not path.is_symlink():
                content = path.read_bytes()
                leaks += [f"{secret!r} in {path}" for secret in user_only if secret.encode() in content]
    assert not leaks, leaks


def test_bad_storage_and_database_input_is_one_line(tmp_path, s3_server):
    """What a user can get wrong about the stack: exit status 2 and one line naming the thing and the fix."""
    cli = Cli()
    env = servers.clean_env(HOME=str(tmp_path), INCEPT_WORKDIR=str(tmp_path / "work"), **servers.SUBMITTER_SECRETS)
    closed = servers.free_port()
    cases = [
        (["verify-shards", f"s3://no-such-bucket/x?endpoint_override={s3_server.hostport}&scheme=http"], env,
         "bucket 'no-such-bucket' does not exist at"),
        (["verify-shards", f"s3://{s3_server.bucket}/x?endpoint_override=127.0.0.1:{closed}&scheme=http"], env,
         f"at 127.0.0.1:{closed}: "),
        (["shard", "--src", str(tmp_path), "--split", "train", "--out", "s3://AKIAXX:planted-s3cret@bucket/x"], env,
         "credentials in a storage URI are refused"),
        (["train", "data.train=s3://AKIAXX:planted-s3cret@bucket/x"], env, "credentials in a storage URI are refused"),
        (["registry", "list"], {**env, "MLFLOW_TRACKING_URI": f"postgresql://postgres:planted-s3cret@127.0.0.1:{closed}/mlflow"},
         "MLflow store postgresql://***@127.0.0.1"),
    ]
    for args, case_env, message in cases:
        proc = cli.run(*args, env=case_env, timeout=120, check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], (args, proc.stderr[-3000:])
        assert "planted-s3cret" not in proc.stderr + proc.stdout
