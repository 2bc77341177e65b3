"""`incept evaluate` end to end: the real CLI on the session's Ray, against the same predictor run here.

The shards hold 12 images in 3 shards, so the actor pool really splits the work; the expected
figures come from `CropPredictor.predict` run in this process over the same tars, image by image.
The models give decisive scores (a large classifier init), so no near-tie can flip between the
batch sizes of the two ways.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.e2e

PROTOCOLS = ["1", "10", "12", "144"]


@pytest.fixture(scope="module")
def val_shards(tmp_path_factory, ray_address) -> Path:
    from pipelines.sample_data import make_sample_set
    from pipelines.shard import ShardOptions, plan_job, run_job

    root = tmp_path_factory.mktemp("evaluate")
    make_sample_set(root / "data", classes=3, train_per_class=1, val_per_class=4, source="synthetic")
    run_job(plan_job(str(root / "data"), "val", str(root / "val"), ShardOptions(shard_size=5)))
    assert len(list((root / "val").glob("*.tar"))) == 3
    return root / "val"


@pytest.fixture(scope="module")
def checkpoint_folder(tmp_path_factory, val_shards) -> Path:
    """A checkpoint in training's layout: an eighth-width Inception-v3 at 75 px with decisive scores."""
    import torch

    from pipelines import manifest
    from trainers import checkpoint
    from trainers.config import ModelSection, Recipe
    from trainers.ema import ModelEma
    from trainers.fit import data_config
    from trainers.inception_v3 import inception_v3

    torch.manual_seed(0)
    recipe = Recipe(model=ModelSection(width=0.125, resolution=75))
    config = data_config(recipe, manifest.read(str(val_shards)))
    model = inception_v3(num_classes=3, resolution=299, width=0.125)
    with torch.no_grad():
        model.fc.weight.normal_(0, 3.0)
    model.eval()
    folder = tmp_path_factory.mktemp("checkpoint")
    checkpoint.save(folder, {
        "model": model.state_dict(), "ema": ModelEma(model, 0.99).state_dict(), "optimizer": None,
        "epoch": 1, "epoch_step": 0, "step": 1, "recipe": asdict(recipe), "data_config": config,
    })
    return folder


def samples(shards: Path) -> dict[str, np.ndarray]:
    """Every sample of the shards, read with tarfile: {"jpg": bytes objects, "cls": labels}."""
    jpgs, labels = [], []
    for shard in sorted(shards.glob("*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name in sorted(members):
            if name.endswith(".jpg"):
                jpgs.append(members[name])
                labels.append(int(members[name[: -len(".jpg")] + ".cls"]))
    return {"jpg": np.array(jpgs, dtype=object), "cls": np.array(labels)}


def expected_metrics(loader, shards: Path) -> dict[str, float]:
    from trainers.evaluate import CropPredictor

    data = samples(shards)
    predictor = CropPredictor(loader, PROTOCOLS)
    hits = [predictor.predict({k: v[i : i + 1] for k, v in data.items()}) for i in range(len(data["cls"]))]
    return {f"top{k}_{p}crop": sum(int(h[f"top{k}_{p}"][0]) for h in hits) / len(hits) for p in PROTOCOLS for k in (1, 5)}


def test_checkpoint_every_protocol_matches_a_plain_loop(val_shards, checkpoint_folder, cli, cli_env):
    from trainers.evaluate import CheckpointModel

    proc = cli("evaluate", str(checkpoint_folder), "--shards", str(val_shards), "--crops", ",".join(PROTOCOLS),
               "--batch-size", "2", "--json", env=cli_env)
    out = json.loads(proc.stdout)
    assert out["version"] is None  # a checkpoint: nothing to write metrics to
    want = expected_metrics(CheckpointModel(str(checkpoint_folder)), val_shards)
    assert out["metrics"] == want
    assert all(want[f"top5_{p}crop"] == 1.0 for p in PROTOCOLS)  # 3 classes: top-5 holds them all
    assert all(round(v * 12) == v * 12 for v in want.values())  # fractions of the 12 images, each counted once
    # Ray Data's progress names the fused operator: unfused, a pool holding every CPU starves the read.
    assert "ReadWebDataset->MapBatches(CropPredictor)" in proc.stderr


def test_registry_reference_writes_metrics_to_the_version(val_shards, tiny_model, embedded_env, new_run, cli, cli_env):
    from infra import registry
    from pipelines import manifest

    module, metadata, example = tiny_model(num_classes=3)
    run_id = new_run()
    info = registry.register(model=module, input_example=example, metadata=metadata, metrics={}, tags={}, run_id=run_id, model_name="incept-evaluate")

    proc = cli("evaluate", "incept-evaluate@challenger", "--shards", str(val_shards), "--crops", "1,10", "--json", env=cli_env)
    out = json.loads(proc.stdout)
    assert out["version"] == info.version
    assert set(out["metrics"]) == {"top1_1crop", "top5_1crop", "top1_10crop", "top5_10crop"}
    shown = registry.show(f"incept-evaluate/{info.version}")
    assert shown.metrics == out["metrics"]
    # The set the metrics came from, as the version records it.
    assert shown.val_fingerprint == out["val_fingerprint"] == manifest.read(str(val_shards))["fingerprint"]
    assert shown.val_shards == str(val_shards)
    assert "ReadWebDataset->MapBatches(CropPredictor)" in proc.stderr  # fused with MLflow's env vars too

    missing = cli("evaluate", "incept-evaluate@champion", "--shards", str(val_shards), env=cli_env, check=False)
    assert missing.returncode == 2 and "champion" in missing.stderr and "Traceback" not in missing.stderr


def test_mistakes_are_one_line(val_shards, checkpoint_folder, cli, cli_env):
    # The session's Ray has no GPU; asking for one must not leave actors pending forever.
    for args, message in [
        (["--gpu"], "the Ray cluster has no GPU"),
        (["--concurrency", "-1"], "concurrency must be at least 0"),
        (["--max-crops-per-forward", "-1"], "max_crops_per_forward must be at least 0"),
        (["--crops", "7"], "7"),
    ]:
        proc = cli("evaluate", str(checkpoint_folder), "--shards", str(val_shards), *args, env=cli_env, check=False, timeout=120)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_a_run_folder_in_s3_resolves_to_its_newest_checkpoint(checkpoint_folder, s3_env, monkeypatch):
    """`incept evaluate s3://.../RUN` takes the run's newest checkpoint, as a URI an actor on any node opens."""
    import uuid

    from infra.evaluation import checkpoint_folder as resolve
    from pipelines import storage
    from trainers.evaluate import CheckpointModel

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env.endpoint)  # named by the driver only
    run = storage.locate(f"s3://{s3_env.bucket}/evaluate-tests/{uuid.uuid4().hex[:8]}/run")
    state = (checkpoint_folder / "state.pt").read_bytes()
    for name in ("checkpoint_2026-01-01_00-00-00.000001", "checkpoint_2026-01-01_00-00-09.000001"):
        storage.write_bytes(run.child(name), "state.pt", state)
    storage.write_bytes(run, "checkpoint_manager_snapshot.json", b"{}")
    newest = resolve(f"s3://{s3_env.bucket}/{run.path.split('/', 1)[1]}")
    assert newest == storage.uri_of(run, "checkpoint_2026-01-01_00-00-09.000001")
    assert f"endpoint_override={s3_env.hostport}" in newest
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    module, config = CheckpointModel(newest).load()
    assert config["classes"] == ["n00000000", "n00000001", "n00000002"]
