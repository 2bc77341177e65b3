"""The resolved run (`incept train --dry-run`): numbers worked by hand for ImageNet's 1,281,167 images."""

from pathlib import Path

import pytest

from infra.config import load
from pipelines.errors import UserError
from trainers.plan import plan

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
IMAGENET = 1_281_167


def _imagenet(*overrides: str):
    return load(REPO / "configs" / "imagenet.yaml", list(overrides)).recipe


def test_imagenet_config_resolves_to_the_large_batch_reference():
    p = plan(_imagenet(), num_samples=IMAGENET)
    # (1,281,167 // 8) // 128 = 160,145 // 128 = 1,251 steps; 1,251 x 1,024 = 1,281,024 images, 143 left out.
    assert (p["global_batch"], p["per_worker_batch"], p["num_workers"]) == (1024, 128, 8)
    assert (p["steps_per_epoch"], p["images_dropped_per_epoch"], p["total_steps"]) == (1251, 143, 1251 * 170)
    assert p["base_lr"] == pytest.approx(0.66)  # 0.165 x 1,024 / 256
    assert p["lr_floor"] == pytest.approx(0.66e-4)
    lr = {point["epoch"]: point["lr"] for point in p["lr_at"]}
    assert lr[0] == pytest.approx(0.66)
    assert lr[3] == pytest.approx(0.6204)  # x0.94 at epoch 3
    assert lr[6] == pytest.approx(0.583176)  # x0.94 ** 2 at epoch 6
    assert lr[100] == pytest.approx(0.66 * 0.94**33)  # floor(100 / 3) = 33 decays
    last = p["lr_at"][-1]
    assert last["step"] == 212_669 and last["lr"] == pytest.approx(0.66 * 0.94**56)  # epoch 169.999: 56 decays
    assert p["ema_decay"] == 0.995  # stated at 1,024, run at 1,024
    assert p["ema_horizon_steps"] == pytest.approx(199.4996, rel=1e-6)
    assert p["ema_horizon_epochs"] == pytest.approx(199.4996 / 1251, rel=1e-6)  # 0.16
    assert p["ema_warmup_steps"] == 1790
    assert p["checkpoint_interval_epochs"] == 1.0
    assert p["resolution_schedule"] == [[0, 299]]
    assert p["departures"] == []


def test_ema_per_step_at_1024_for_a_decay_stated_at_256():
    p = plan(_imagenet("optim.ema_decay=0.999", "optim.ema_reference_batch=256"), num_samples=IMAGENET)
    assert p["ema_decay"] == pytest.approx(0.996005996001)  # 0.999 ** 4
    assert p["ema_horizon_steps"] == pytest.approx(-1 / (4 * -0.00100050033), rel=1e-6)  # ln 0.999 = -0.0010005
    assert any(d.startswith("EMA horizon 255,872 images is 1.25x the reference's 204,288") for d in p["departures"])


def test_a_larger_global_batch_is_named_and_keeps_the_horizon_in_images():
    p = plan(_imagenet("train.num_workers=32", "train.batch_size=256"), num_samples=IMAGENET)
    # (1,281,167 // 32) // 256 = 40,036 // 256 = 156 steps; 0.165 x 8,192 / 256 = 5.28.
    assert (p["global_batch"], p["steps_per_epoch"], p["base_lr"]) == (8192, 156, pytest.approx(5.28))
    assert p["ema_decay"] == pytest.approx(0.995**8)  # 0.96069
    assert p["ema_horizon_steps"] * 8192 == pytest.approx(199.4996 * 1024, rel=1e-6)
    assert p["departures"][0] == (
        "global batch 8,192 is 8x the large-batch reference's 1,024; no published Inception-v3 run used it "
        "(and with no warm-up: Goyal et al. used 5 epochs at 8,192, optim.warmup_epochs=5)"
    )
    assert p["departures"][1] == "per-worker batch 256: BatchNorm normalises over 256 images, the reference's over 128 per core"
    warmed = plan(_imagenet("train.num_workers=32", "train.batch_size=256", "optim.warmup_epochs=5"), num_samples=IMAGENET)
    assert warmed["departures"][0].endswith("no published Inception-v3 run used it")
    assert "optim.warmup_epochs is 5; the reference: no warm-up (its optional one is off by default)" in warmed["departures"]
    # Warm-up ends where (step + 1) reaches 5 x 156 = 780 steps: step 779, epoch 4.99, already past the
    # first decay at epoch 3 (the ramp multiplies the staircase): 5.28 x 0.94 = 4.9632.
    assert {"epoch": round(779 / 156, 4), "step": 779, "lr": pytest.approx(4.9632)} in warmed["lr_at"]


def test_thirty_two_gpus_at_32_keep_the_recipe_but_not_the_batchnorm_batch():
    p = plan(_imagenet("train.num_workers=32", "train.batch_size=32"), num_samples=IMAGENET)
    # (1,281,167 // 32) // 32 = 40,036 // 32 = 1,251: the same steps, rate and average as 8 x 128.
    assert (p["steps_per_epoch"], p["base_lr"], p["ema_decay"]) == (1251, pytest.approx(0.66), 0.995)
    assert p["departures"] == ["per-worker batch 32: BatchNorm normalises over 32 images, the reference's over 128 per core"]


def test_the_papers_linear_rate_is_named_as_twice_the_reference():
    p = plan(_imagenet("optim.base_lr=0.045", "optim.base_batch=32"), num_samples=IMAGENET)
    assert p["base_lr"] == pytest.approx(1.44)
    assert "base learning rate 1.44 (0.045 per 32 images, scaled linearly) is 2.18x the reference rule's 0.66 (0.165 x 1,024 / 256)" in p["departures"]


def test_demo_recipe_departs_everywhere_it_says():
    p = plan(load(REPO / "configs" / "demo.yaml").recipe, num_samples=1500, num_shards=3)
    # (1,500 // 2) // 16 = 46 steps of 32; warm-up 0.5 epoch = 23 steps, full rate from step 22.
    assert (p["steps_per_epoch"], p["base_lr"], p["ema_decay"]) == (46, 0.045, 0.99)
    assert p["lr_at"][0] == {"epoch": 0.0, "step": 0, "lr": pytest.approx(0.045 / 23)}
    assert p["lr_at"][1] == {"epoch": round(22 / 46, 4), "step": 22, "lr": pytest.approx(0.045)}
    assert "optim.clip_norm is 0; the reference: no gradient clipping" not in p["departures"]
    assert "model.bn_momentum is 0.1; the reference: BatchNorm decay 0.996, momentum 0.004 here" in p["departures"]


@pytest.mark.parametrize(
    "shards, workers, per_worker, note",
    [
        (1282, 8, 160.25, "uneven"),
        (16, 8, 2.0, "even"),
        (4, 8, 0.5, "fewer than one per worker: at most 4 read tasks feed 8 workers"),
        (None, 8, None, "unknown"),
    ],
)
def test_shards_per_worker(shards, workers, per_worker, note):
    p = plan(_imagenet(f"train.num_workers={workers}"), num_samples=IMAGENET, num_shards=shards)
    assert p["shards"] == shards and p["shards_per_worker"] == per_worker
    assert p["shards_note"].startswith(note)


@pytest.mark.parametrize("every, interval", [(0, 1.0), (500, 500 / 1251), (1251, 1.0), (2000, 1.0)])
def test_checkpoint_interval_in_epochs(every, interval):
    # Every epoch ends with a checkpoint; checkpoint_every_steps adds more only below 1,251 steps.
    p = plan(_imagenet(f"train.checkpoint_every_steps={every}"), num_samples=IMAGENET)
    assert p["checkpoint_interval_epochs"] == pytest.approx(interval)


def test_resolution_schedule_per_epoch_as_the_loop_resolves_it():
    # 160 -> 299 over epochs 0-10: 160 + 13.9 e, down to a multiple of 32 (pipelines/resolution.py):
    # e 1-2: 173.9, 187.8 -> 160; 3-4: 201.7, 215.6 -> 192; 5-6: 229.5, 243.4 -> 224; 7-9: 257.3-285.1 -> 256.
    p = plan(_imagenet("data.resolution_schedule=[[0, 160], [10, 299]]", "train.epochs=12"), num_samples=IMAGENET)
    assert p["resolution_schedule"] == [[0, 160], [3, 192], [5, 224], [7, 256], [10, 299]]
    assert "data.resolution_schedule: progressive resizing; the reference trains at 299 throughout" in p["departures"]


def test_too_few_images_for_one_batch_is_a_user_error():
    with pytest.raises(UserError, match="1,000 training images give no full batch of 128 on each of 8 workers"):
        plan(_imagenet(), num_samples=1000)
    # As in the loop, zero epochs (the untrained model's checkpoint) need no batch.
    p = plan(_imagenet("train.epochs=0"), num_samples=1000)
    assert (p["steps_per_epoch"], p["total_steps"], p["lr_at"]) == (0, 0, [])
