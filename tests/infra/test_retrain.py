"""incept retrain: the decision rule (unit), and whole cycles through the real CLI (e2e).

The e2e cycles run on the session's shared Ray with the embedded SQLite MLflow of a private work
directory, on a small synthetic set (3 classes, 120 training images). Two trainings in all:
cycle 1 trains a model that learns (75 steps take it well above chance) and promotes it (no
champion), cycle 2 finds no new data, cycle 3 (--force, train.epochs=0: an untrained model, at
chance) is worse than the champion and is refused on its merits.
"""

from __future__ import annotations

import json
import os

import pytest

from infra import config as config_module
from infra.retrain import check_policy, decide
from pipelines.errors import UserError

# One worker, 15 steps an epoch: 75 steps at 0.0225 (the demo's rate per image at twice the batch)
# took the quarter-width network to 0.93-1.0 top-1 on this set in three seeds run in one process.
SMALL = ["train.num_workers=1", "train.batch_size=8", "train.epochs=5", "optim.lr=0.0225", "eval.crops=[1]"]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("challenger", "champion", "margin", "promote"),
    [
        (0.5, None, 0.0, True),  # no champion: promote
        (0.6, 0.5, 0.0, True),
        (0.5, 0.5, 0.0, False),  # a tie is not a win
        (0.4, 0.5, 0.0, False),
        (0.6, 0.5, 0.1, False),  # 0.6 - 0.5 - 0.1 is a rounding error above 0: still a tie
        (0.61, 0.5, 0.1, True),
        (0.45, 0.5, -0.1, True),  # a negative margin accepts a slightly worse model
        (1.0, 0.0, 1.0, False),  # margin 1: nothing can win
    ],
)
def test_decide(challenger, champion, margin, promote):
    verdict = decide("top1_1crop", challenger, champion, margin)
    assert verdict.promote is promote
    assert verdict.decision == ("promoted" if promote else "rejected")
    assert "top1_1crop" in verdict.reason


@pytest.mark.unit
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["retrain.metric=accuracy"], "not a model-version metric"),
        (["retrain.metric=top1_10crop", "eval.crops=[1]"], "add 10 to eval.crops"),
        (["retrain.margin=1.5"], "retrain.margin must be"),
        (["registry.register=false"], "registry.register must stay true"),
    ],
)
def test_policy_errors(overrides, message):
    with pytest.raises(UserError, match=message):
        check_policy(config_module.load(None, overrides))


def _json(proc) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.e2e
@pytest.mark.slow
def test_three_cycles(tmp_path, cli, cli_env, embedded_env):
    from mlflow import MlflowClient

    from infra import registry, tracking
    from pipelines.sample_data import make_sample_set

    assert embedded_env == tmp_path / "work"  # the same store the CLI writes (cli_env's INCEPT_WORKDIR)
    src = tmp_path / "src"
    make_sample_set(src, classes=3, train_per_class=40, val_per_class=10, source="synthetic")
    base = ["retrain", "--src", str(src), "--config", "configs/demo.yaml"]

    # 1. No champion yet: train and promote.
    first = _json(cli(*base, *SMALL, "--json", env=cli_env))
    assert first["promoted"] is True and first["decision"] == "promoted"
    assert first["version"] == "1" and first["champion"] is None and first["champion_version"] is None
    assert first["challenger"] >= 0.6 and first["metric"] == "top1_1crop"  # it learned: chance is 0.33
    assert "no champion" in first["reason"]
    champion = registry.show("inception-v3@champion")
    assert champion.version == "1"
    assert champion.tags["data_fingerprint"] == first["data_fingerprint"]
    assert champion.tags["retrain.decision"] == "promoted"
    assert champion.tags["promotion.decision"] == "promoted"
    assert champion.metrics["top1_1crop"] == pytest.approx(first["challenger"])

    # 2. The same data again, resharded in full: the same shards, nothing to do (human output this time).
    second = cli(*base, "--reshard", *SMALL, env=cli_env)
    assert second.stdout.startswith("not promoted: no new data")
    assert len(registry.list_models()[0]["versions"]) == 1  # nothing trained

    # 3. Three new images (2.5%): the cycle appends them in a new shard, every earlier shard untouched.
    #    Forced, with an untrained model: worse than the champion on the same val shards, refused.
    train_shards = tmp_path / "work" / "retrain" / "shards" / "train"
    before = {p.name: p.stat().st_mtime_ns for p in train_shards.glob("*.tar")}
    for k, image in enumerate(sorted((src / "train" / "n00000001").iterdir())[:3]):
        (src / "train" / "n00000002" / f"new_{k}.JPEG").write_bytes(image.read_bytes())
    third = _json(cli(*base, "--force", *SMALL, "train.epochs=0", "retrain.margin=0.01", "--json", env=cli_env))
    after = {p.name: p.stat().st_mtime_ns for p in train_shards.glob("*.tar")}
    assert {n: after[n] for n in before} == before and len(after) == len(before) + 1
    assert third["shards_written"] == {"train": 1, "val": 0} and third["data_fingerprint"] != first["data_fingerprint"]
    assert 0 < third["bytes_written"] < sum((train_shards / n).stat().st_size for n in before) / 10
    assert third["promoted"] is False and third["decision"] == "rejected"
    assert third["challenger"] < third["champion"] - 0.01
    assert third["version"] == "2" and third["champion_version"] == "1"
    assert third["champion"] is not None and third["challenger"] is not None
    assert "does not beat" in third["reason"]
    assert registry.resolve("inception-v3@champion").version == "1"  # untouched
    challenger = registry.show("inception-v3/2")
    assert challenger.aliases == [registry.CHALLENGER]
    assert challenger.tags["retrain.decision"] == "rejected"
    assert challenger.tags["retrain.reason"] == third["reason"]
    assert float(challenger.tags["retrain.challenger"]) == pytest.approx(third["challenger"])
    assert float(challenger.tags["retrain.champion"]) == pytest.approx(third["champion"])
    assert challenger.metrics["top1_1crop"] == pytest.approx(third["challenger"])
    assert registry.show("inception-v3/1").metrics["top1_1crop"] == pytest.approx(third["champion"])

    # Every cycle is a run in the experiment, with its decision.
    tracking.connect()
    client = MlflowClient()
    experiment = client.get_experiment_by_name("inception-v3")
    cycles = client.search_runs([experiment.experiment_id], filter_string="tags.`incept.kind` = 'retrain'", order_by=["start_time ASC"])
    assert [r.data.tags["retrain.decision"] for r in cycles] == ["promoted", "skipped", "rejected"]
    assert all(r.info.status == "FINISHED" for r in cycles)


@pytest.mark.e2e
def test_concurrent_cycle_exits_at_once(tmp_path, cli, cli_env):
    from filelock import FileLock

    workdir = tmp_path / "cycle"
    workdir.mkdir()
    lock = FileLock(str(workdir / "retrain.lock"))
    lock.acquire(timeout=0)  # this test process is the running cycle
    try:
        proc = cli("retrain", "--src", str(tmp_path / "no-data-needed"), "--config", "configs/demo.yaml",
                   "--workdir", str(workdir), env=cli_env, check=False, timeout=120)
    finally:
        lock.release()
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("incept retrain: error: another retrain cycle holds")
    assert f"pid {os.getpid()}" in lines[0]  # names the holder
    assert proc.stdout == ""
    assert not (tmp_path / "work" / "mlflow.db").exists()  # refused before touching MLflow
