"""End to end: `incept train` on a real local Ray (2 workers) with the embedded MLflow store.

One run goes through the failures a cluster sees: a worker process is killed after the first
checkpoint (Ray Train restarts the group from it), then the driver is killed after the second
(rerunning the same command with the same run name resumes). The run must still finish its
planned epochs, learn, and register its model once.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
EPOCHS = 5


@pytest.fixture(scope="module")
def shards(tmp_path_factory, ray_address):
    import ray  # the session's Ray instance (tests/conftest.py)

    from pipelines.sample_data import make_sample_set
    from pipelines.shard import ShardOptions, plan_job, run_job

    root = tmp_path_factory.mktemp("train-data")
    # 240 images: 15 steps an epoch for 2 workers x 8, enough for the network to leave chance.
    make_sample_set(root / "data", classes=3, train_per_class=80, val_per_class=10, source="synthetic")
    for split in ("train", "val"):
        run_job(plan_job(str(root / "data"), split, str(root / split), ShardOptions(shard_size=40)))
    assert ray.is_initialized()
    return root


def latest_epoch(run_dir: Path) -> int:
    """The epoch of the newest checkpoint Ray Train has registered (0 when there is none yet).

    Read from Ray Train's own checkpoint_manager_snapshot.json, written once the controller has
    registered a checkpoint: a checkpoint folder can be on disk before that, and a worker killed
    in between restarts from the checkpoint before it.
    """
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):  # not there yet, or being rewritten right now
        return 0
    latest = snapshot.get("latest_checkpoint_result") or {}
    return int((latest.get("metrics") or {}).get("epoch", 0))


def wait_for(predicate, timeout: float, what: str, log: list[str] = ()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; the driver's stderr ended:\n{''.join(log[-60:])}")


def train_worker_pids() -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines() if "RayTrainWorker" in line and "ps -eo" not in line]


def test_training_survives_a_killed_worker_and_a_killed_driver_and_learns(shards, tmp_path, cli, cli_env):
    run_name = "e2e-failures"
    args = [
        "train", "--config", "configs/demo.yaml",
        f"data.train={shards / 'train'}", f"data.val={shards / 'val'}",
        f"train.epochs={EPOCHS}", "train.batch_size=8", "train.run_name=" + run_name,
        "eval.crops=[1,10]", "train.log_every_steps=1",
    ]
    run_dir = Path(cli_env["INCEPT_WORKDIR"]) / "runs" / run_name
    driver = subprocess.Popen([sys.executable, "-m", "infra.cli", *args], cwd=REPO, env=cli_env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines: list[str] = []

    def collect():
        for line in driver.stderr:
            lines.append(line)

    threading.Thread(target=collect, daemon=True).start()
    try:
        # A worker dies after the first checkpoint: the group restarts from it.
        wait_for(lambda: latest_epoch(run_dir) >= 1, 300, "the first checkpoint", lines)
        victims = train_worker_pids()
        assert victims, "no RayTrainWorker process found"
        os.kill(victims[-1], signal.SIGKILL)
        wait_for(lambda: any("resumed from a checkpoint" in line for line in lines), 300, "the worker group to resume", lines)
        # Then the driver dies after a later checkpoint.
        wait_for(lambda: latest_epoch(run_dir) >= 2, 300, "a checkpoint after the restart", lines)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    assert latest_epoch(run_dir) < EPOCHS
    wait_for(lambda: not train_worker_pids(), 60, "the dead driver's workers to go")

    proc = cli(*args, "--json", env=cli_env, timeout=900)
    assert "resumed from a checkpoint" in proc.stderr
    outcome = json.loads(proc.stdout)
    assert outcome["run_name"] == run_name and outcome["train_metrics"]["epoch"] == EPOCHS
    assert outcome["model_version"] == "1"
    assert outcome["metrics"]["top1_1crop"] >= 0.6  # 3 classes: chance is 0.33
    assert set(outcome["metrics"]) == {"top1_1crop", "top5_1crop", "top1_10crop", "top5_10crop"}

    from mlflow import MlflowClient

    # The CLI's store, named explicitly: an earlier test in this process may have set MLflow's global URI.
    store = f"sqlite:///{cli_env['INCEPT_WORKDIR']}/mlflow.db"
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    losses = [m.value for m in sorted(client.get_metric_history(outcome["run_id"], "loss"), key=lambda m: m.step)]
    assert len(losses) >= 10 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3  # the loss falls
    version = client.get_model_version("inception-v3", "1")
    assert version.tags["run_id"] == outcome["run_id"] and version.tags["data_fingerprint"]
    assert str(client.get_model_version_by_alias("inception-v3", "challenger").version) == "1"
    artifacts = {a.path for a in client.list_artifacts(outcome["run_id"])}
    assert {"training_curves.png", "crop_protocols.png", "config.json"} <= artifacts

    # Registering again (a rerun of a finished run) creates no second version.
    again = json.loads(cli(*args, "--json", env=cli_env, timeout=900).stdout)
    assert again["model_version"] == "1"

    # The registered model answers a lookup with its class names.
    image = sorted((shards / "data" / "val").rglob("*.JPEG"))[0]
    top = json.loads(cli("registry", "predict", "inception-v3@challenger", str(image), "--json", env=cli_env).stdout)["predictions"][0]["top"]
    assert [p["wnid"] for p in top] and {p["words"] for p in top} <= {"pattern 0", "pattern 1", "pattern 2"}


def test_config_errors_are_one_line(tmp_path, cli, cli_env):
    proc = cli("train", "--config", "configs/demo.yaml", "train.epoch=3", env=cli_env, check=False)
    assert proc.returncode == 2 and "unknown config key 'train.epoch'" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("train", "--config", "configs/demo.yaml", f"data.train={tmp_path}", env=cli_env, check=False)
    assert proc.returncode == 2 and "no manifest.json" in proc.stderr and "Traceback" not in proc.stderr
