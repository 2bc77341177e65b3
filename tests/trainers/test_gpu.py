"""The GPU path of the training loop: bf16 autocast, channels_last, torch.compile, NCCL.

Skipped without a CUDA device (tests/conftest.py); run on a lent GPU machine.
"""

import contextlib
import os

import numpy as np
import pytest
import torch

from trainers.config import OptimSection
from trainers.ema import ModelEma
from trainers.feed import Feed
from trainers.inception_v3 import inception_v3
from trainers.loop import evaluate, train_one_epoch
from trainers.optim import RMSpropTF, param_groups_weight_decay

pytestmark = pytest.mark.gpu


def fixed_batches(n_batches, batch=16, resolution=128, classes=4):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, classes, batch)
    images = rng.integers(0, 256, (batch, resolution, resolution, 3), dtype=np.uint8)
    images[..., 0] = (labels[:, None, None] * 60).astype(np.uint8)  # a learnable signal: red channel = class
    return [{"image": images, "label": labels.astype(np.int64)} for _ in range(n_batches)]


def bf16():
    return torch.autocast("cuda", dtype=torch.bfloat16)


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_bf16_channels_last_training_learns(compile):
    device = torch.device("cuda")
    model = inception_v3(num_classes=4, resolution=299, width=0.25).to(device).to(memory_format=torch.channels_last)
    ema = ModelEma(model, 0.9)
    optimizer = RMSpropTF(param_groups_weight_decay(model, 4e-5), lr=0.05)
    run = torch.compile(model) if compile else model
    losses = []
    for _ in range(3):
        stats = train_one_epoch(run, ema, fixed_batches(10), optimizer, optim=OptimSection(clip_norm=10.0), lr_at=lambda s: 0.05,
                                first_step=0, feed=Feed(device=device, channels_last=True), resolution=128, autocast=bf16)
        losses.append(stats.loss)
    assert all(np.isfinite(losses)) and losses[-1] < losses[0] * 0.8
    totals = evaluate(ema.module, fixed_batches(2), device=device, resolution=128, channels_last=True, autocast=bf16)
    assert totals[2].item() == 32 and totals[0].item() >= 16


def test_nccl_process_group_and_ddp_step():
    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        t = torch.ones(4, device="cuda")
        dist.all_reduce(t)
        assert t.sum().item() == 4
        model = inception_v3(num_classes=4, resolution=299, width=0.25).cuda()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        optimizer = RMSpropTF(ddp.parameters(), lr=0.01)
        stats = train_one_epoch(ddp, None, fixed_batches(2), optimizer, optim=OptimSection(), lr_at=lambda s: 0.01, first_step=0,
                                feed=Feed(device=torch.device("cuda"), channels_last=False), resolution=96, autocast=contextlib.nullcontext)
        assert stats.steps == 2 and np.isfinite(stats.loss)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("colour", [False, True], ids=["plain", "colour-on-device"])
def test_a_step_never_waits_for_the_gpu(colour):
    """Under CUDA's sync debug mode every host-device synchronisation warns: an epoch of 6 steps may
    synchronise at its end (the one read of loss and norm), not once per step."""
    import warnings

    device = torch.device("cuda")
    model = inception_v3(num_classes=4, resolution=299, width=0.25).to(device).to(memory_format=torch.channels_last)
    ema = ModelEma(model, 0.9)
    optimizer = RMSpropTF(param_groups_weight_decay(model, 4e-5), lr=0.05)
    feed = Feed(device=device, channels_last=True, color=colour)

    def epoch():
        return train_one_epoch(model, ema, fixed_batches(6), optimizer, optim=OptimSection(), lr_at=lambda s: 0.05,
                               first_step=0, feed=feed, resolution=128, autocast=bf16)

    epoch()  # first use: cuDNN autotuning and cached constants may synchronise once
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            stats = epoch()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    assert stats.steps == 6 and np.isfinite(stats.loss)
    assert len(syncs) <= 2, [str(w.message) for w in syncs]


def test_the_cuda_feed_gives_the_cpu_feeds_model_input():
    from trainers.feed import device_batches, model_input

    batches = fixed_batches(3)
    for colour in (False, True):
        cpu = Feed(device=torch.device("cpu"), color=colour, seed=2)
        gpu = Feed(device=torch.device("cuda"), color=colour, seed=2)
        on_cpu = [model_input(b, cpu, resolution=128)[0] for b in device_batches(batches, cpu, first_step=5)]
        on_gpu = [model_input(b, gpu, resolution=128)[0].cpu() for b in device_batches(batches, gpu, first_step=5)]
        for a, b in zip(on_cpu, on_gpu):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
