"""`incept train --dry-run`: the resolved run from the real CLI, without Ray or MLflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra.cli import main
from pipelines import manifest, storage

REPO = Path(__file__).resolve().parents[2]
INCEPT = str(Path(sys.executable).with_name("incept"))


def _env(tmp_path: Path) -> dict[str, str]:
    """No Ray or MLflow to join, and a private temp folder in which a started Ray would leave its session."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    (tmp_path / "tmp").mkdir()
    env.update(TMPDIR=str(tmp_path / "tmp"), RAY_TMPDIR=str(tmp_path / "tmp"), INCEPT_WORKDIR=str(tmp_path / "work"))
    return env


@pytest.mark.e2e
def test_imagenet_dry_run_from_the_command_line(tmp_path):
    start = time.perf_counter()
    proc = subprocess.run([INCEPT, "train", "--config", "configs/imagenet.yaml", "--dry-run", "--json", "--assume-samples", "1281167"],
                          cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    p = json.loads(proc.stdout)
    assert (p["global_batch"], p["per_worker_batch"], p["num_workers"], p["steps_per_epoch"], p["total_steps"]) == (1024, 128, 8, 1251, 212_670)
    assert p["base_lr"] == pytest.approx(0.66) and p["ema_decay"] == 0.995 and p["ema_horizon_epochs"] == pytest.approx(0.1595, abs=1e-4)
    assert [point["epoch"] for point in p["lr_at"]] == [0, 3, 6, 10, 30, 100, 169.9992]
    assert p["samples_from"] == "--assume-samples" and p["shards"] is None and p["shards_note"].startswith("unknown")
    assert p["departures"] == []
    # Measured about 4 s here, nearly all of it importing torch; Ray alone starts in about 10 s (REFERENCE.md).
    assert seconds < 30
    assert not list((tmp_path / "tmp").rglob("session_*")) and not (tmp_path / "work").exists()


@pytest.mark.e2e
def test_dry_run_imports_neither_ray_nor_mlflow(tmp_path):
    code = ("import sys; from infra.cli import main; "
            "rc = main(['train', '--config', 'configs/imagenet.yaml', '--dry-run', '--assume-samples', '1281167']); "
            "print(rc, sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'mlflow'}), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.stderr.strip().splitlines()[-1] == "0 []", proc.stderr
    assert proc.stdout.splitlines()[-1].split() == ["departures", "none", "from", "the", "large-batch", "reference"]


def _shards(folder: Path, counts: list[int]) -> None:
    """A manifest.json over fake shard records (no tar is read by a dry run)."""
    shards = [{"name": f"train-{i:06d}.tar", "num_samples": n, "bytes": 1000 * n, "sha256": f"{i:064x}"} for i, n in enumerate(counts)]
    built = manifest.build(split="train", classes=["n01", "n02"], words={}, shards=shards, skipped=[])
    manifest.write(storage.locate(str(folder)), built)


@pytest.mark.unit
def test_dry_run_reads_the_manifest(tmp_path, capsys):
    # 13 shards of 1,000 and an empty one (skipped by the loader): 13,000 images, 13 shards for 8 workers.
    _shards(tmp_path, [1000] * 13 + [0])
    assert main(["train", "--config", "configs/imagenet.yaml", "--dry-run", "--json", f"data.train={tmp_path}", "train.epochs=10"]) == 0
    p = json.loads(capsys.readouterr().out)
    assert p["samples_from"] == f"{tmp_path}/manifest.json"
    # (13,000 // 8) // 128 = 1,625 // 128 = 12 steps of 1,024.
    assert (p["num_samples"], p["steps_per_epoch"], p["total_steps"], p["shards"]) == (13_000, 12, 120, 13)
    assert p["shards_per_worker"] == 13 / 8 and p["shards_note"].startswith("uneven")
    assert p["departures"] == ["train.epochs is 10; the reference: about 78.1% top-1 after about 170 epochs"]


@pytest.mark.unit
def test_human_table_is_aligned(tmp_path, capsys):
    _shards(tmp_path, [1000] * 4)
    assert main(["train", "--config", "configs/imagenet.yaml", "--dry-run", f"data.train={tmp_path}", "train.num_workers=32", "train.batch_size=32"]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = [line for line in lines if not line.startswith("  ")]
    column = len("training images  ")  # the longest name and two spaces
    assert all(line[column - 2 : column] == "  " and line[column] != " " for line in table)
    rows = {line[:column].strip(): line[column:] for line in table}
    assert rows["batch"] == "32 workers x 32 = 1,024 global"
    assert rows["shards"].startswith("4 shards, 0.125 per worker (fewer than one per worker")
    assert rows["departures"] == "1 from the large-batch reference:"
    assert lines[-1] == "  - per-worker batch 32: BatchNorm normalises over 32 images, the reference's over 128 per core"


@pytest.mark.unit
@pytest.mark.parametrize(
    "args, message",
    [
        (["--assume-samples", "1000"], "--assume-samples only applies with --dry-run"),
        (["--dry-run", "--assume-samples", "0"], "--assume-samples must be a positive number of training images, got 0"),
        (["--dry-run", "data.train="], "data.train is empty: set it to the training shards, or plan without them: --dry-run --assume-samples N"),
        (["--dry-run", "--assume-samples", "100"], "100 training images give no full batch of 128 on each of 8 workers"),
        (["--dry-run", "optim.lr_floor=2"], "optim.lr_floor must be in [0, 1)"),
    ],
)
def test_mistakes_are_one_line(args, message, capsys):
    assert main(["train", "--config", "configs/imagenet.yaml", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.unit
def test_a_folder_without_a_manifest_says_so(tmp_path, capsys):
    assert main(["train", "--config", "configs/imagenet.yaml", "--dry-run", f"data.train={tmp_path}"]) == 2
    assert "no manifest.json" in capsys.readouterr().err
