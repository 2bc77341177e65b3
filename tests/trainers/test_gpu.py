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
                                first_step=0, device=device, resolution=128, channels_last=True, autocast=bf16)
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
                                device=torch.device("cuda"), resolution=96, channels_last=False, autocast=contextlib.nullcontext)
        assert stats.steps == 2 and np.isfinite(stats.loss)
    finally:
        dist.destroy_process_group()
