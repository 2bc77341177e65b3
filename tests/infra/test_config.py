from pathlib import Path

import pytest

from infra.config import Config, load
from pipelines.errors import UserError

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def test_defaults_are_the_papers_recipe():
    c = load()
    assert (c.optim.alpha, c.optim.eps, c.optim.clip_norm, c.optim.label_smoothing) == (0.9, 1.0, 2.0, 0.1)
    assert (c.optim.decay_rate, c.optim.decay_epochs, c.train.batch_size, c.model.resolution) == (0.94, 2.0, 32, 299)


def test_new_recipe_keys_default_to_the_old_behaviour():
    # lr 0 still means 0.045 per 32 scaled linearly, no floor, and ema_decay per optimiser step.
    o = load().optim
    assert (o.base_lr, o.base_batch, o.lr_floor, o.ema_reference_batch) == (0.045, 32, 0.0, 0)


def test_demo_config_keeps_its_rate_and_average():
    from trainers.ema import step_decay
    from trainers.schedule import scaled_lr

    c = load(REPO / "configs" / "demo.yaml")
    o, t = c.optim, c.train
    global_batch = t.batch_size * t.num_workers
    assert global_batch == 32
    assert scaled_lr(global_batch, base_lr=o.base_lr, base_batch=o.base_batch) == 0.045
    assert step_decay(o.ema_decay, global_batch=global_batch, reference_batch=o.ema_reference_batch) == 0.99
    assert o.lr_floor == 0.0


def test_imagenet_config_is_the_large_batch_reference():
    c = load(REPO / "configs" / "imagenet.yaml")
    o, t, m = c.optim, c.train, c.model
    assert t.batch_size * t.num_workers == 1024
    assert (o.lr, o.base_lr, o.base_batch, o.decay_rate, o.decay_epochs, o.lr_floor) == (0.0, 0.165, 256, 0.94, 3.0, 1e-4)
    assert (o.ema_decay, o.ema_reference_batch, m.bn_momentum, o.clip_norm, o.label_smoothing, o.aux_weight) == (0.995, 1024, 0.004, 0.0, 0.1, 0.4)


def test_file_then_dotted_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 7\n  use_gpu: true\noptim:\n  lr: 0.1\n")
    c = load(path, ["train.epochs=3", "optim.lr=1", "eval.crops=[1,144]", "data.area=[0.5, 1]", "eval.crops=10"])
    assert c.train.epochs == 3 and c.train.use_gpu is True
    assert c.optim.lr == 1.0 and isinstance(c.optim.lr, float)
    assert c.eval.crops == [10] and c.data.area == (0.5, 1.0)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epoch=3", "unknown config key 'train.epoch': known keys here are epochs"),
        ("trian.epochs=3", "unknown config key 'trian'"),
        ("train.epochs=three", "config key train.epochs: expected int, got 'three'"),
        ("train.use_gpu=1", "config key train.use_gpu: expected bool"),
        ("data.area=[0.5]", "config key data.area: expected tuple"),
        ("model.variant=200", "model.variant must be one of [79, 151, 299]"),
        ("model.resolution=60", "model.resolution must be at least 75"),
        ("eval.crops=[3]", "eval.crops must be a list of 1, 10, 12, 144"),
        ("eval.concurrency=-1", "eval.concurrency must be at least 0"),
        ("optim.base_lr=0", "optim.base_lr must be positive"),
        ("optim.base_batch=0", "optim.base_batch must be positive"),
        ("optim.lr_floor=1", "optim.lr_floor must be in [0, 1)"),
        ("optim.lr_floor=-0.1", "optim.lr_floor must be in [0, 1)"),
        ("optim.ema_reference_batch=-1", "optim.ema_reference_batch must be at least 0"),
        ("optim.ema_reference_batch=256.5", "config key optim.ema_reference_batch: expected int"),
        ("train.placement_strategy=spread", "train.placement_strategy must be one of PACK, SPREAD, STRICT_PACK, STRICT_SPREAD"),
        ("train.storage_path=s3://AKIA:s3cret@bucket/runs", "config key train.storage_path: s3://***@bucket/runs: credentials in a storage URI are refused"),
        ("data.val=s3://AKIA:s3cret@bucket/val", "config key data.val: s3://***@bucket/val: credentials"),
        ("data.color_on=gpu", "data.color_on must be device or cpu, got 'gpu'"),
        ("data.decode_on=device", "data.decode_on must be cpu or gpu, got 'device'"),
        ("data.decode_on=gpu", "data.decode_on: gpu decodes on the training GPUs: set train.use_gpu: true"),
        ("epochs", "must look like section.key=value"),
        ("train=3", "expected a section"),
    ],
)
def test_mistakes_name_the_key(override, message):
    with pytest.raises(UserError) as err:
        load(None, [override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load(bad)


def test_sha256_follows_the_resolved_values():
    assert load().sha256() == Config().sha256()
    assert load(None, ["train.epochs=3"]).sha256() != Config().sha256()


def test_shipped_configs_load():
    for name in ("configs/demo.yaml", "configs/imagenet.yaml"):
        load(name)
