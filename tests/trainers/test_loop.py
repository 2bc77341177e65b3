"""train_one_epoch on a CPU: the recipe's arithmetic as before, with nothing read from the device per step."""

import contextlib
import math

import numpy as np
import pytest
import torch
from torch import nn

from trainers.clip import clip_grad_norm
from trainers.config import OptimSection
from trainers.feed import Feed
from trainers.loop import to_model_input, train_one_epoch
from trainers.loss import inception_loss
from trainers.optim import RMSpropTF

pytestmark = pytest.mark.unit

CPU = torch.device("cpu")


class Tiny(nn.Module):
    """Linear on 4 x 4 images; a batch whose first pixel is 255 gives infinite logits (a non-finite loss)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3 * 4 * 4, 3)

    def forward(self, x):
        logits = self.fc(x.flatten(1))
        poisoned = x[:, 0, 0, 0] >= 1.0  # uint8 255 after normalisation to [-1, 1]
        # Added, not selected with torch.where: where's backward would multiply by inf (NaN) on every row.
        return logits + torch.where(poisoned, math.inf, 0.0)[:, None]


def batches(n, *, poison_at=None, rows=6):
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        images = rng.integers(0, 250, (rows, 4, 4, 3), dtype=np.uint8)
        if i == poison_at:
            images[0, 0, 0, 0] = 255
        out.append({"image": images, "label": rng.integers(0, 3, rows)})
    return out


def old_loop(model, data, optimizer, optim):
    """The loop before it stopped reading the device per step: float(loss), a Python branch on the norm."""
    losses = []
    for batch in data:
        x, y = to_model_input(batch, CPU, resolution=4, channels_last=False)
        loss = inception_loss(model(x), y, label_smoothing=optim.label_smoothing, aux_weight=optim.aux_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = float(clip_grad_norm(model.parameters(), optim.clip_norm))
        if math.isfinite(norm):
            optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def run(data, *, optim=OptimSection(), after_step=lambda step, read: None, first_step=0):
    model = Tiny()
    optimizer = RMSpropTF(model.parameters(), lr=0.05)
    stats = train_one_epoch(model, None, data, optimizer, optim=optim, lr_at=lambda step: 0.05, first_step=first_step,
                            feed=Feed(device=CPU, channels_last=False), resolution=4, autocast=contextlib.nullcontext, after_step=after_step)
    return model, stats


def test_weights_and_loss_as_the_per_step_loop_computed_them():
    optim = OptimSection()
    reference = Tiny()
    losses = old_loop(reference, batches(5), RMSpropTF(reference.parameters(), lr=0.05), optim)
    model, stats = run(batches(5), optim=optim)
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert stats.steps == 5 and stats.images == 30 and stats.skipped == 0 and stats.nonfinite == []
    assert stats.loss == pytest.approx(sum(losses) / 5, rel=1e-6)


def test_a_non_finite_step_is_skipped_on_the_device_and_named():
    reference = Tiny()
    old_loop(reference, batches(4, poison_at=2), RMSpropTF(reference.parameters(), lr=0.05), OptimSection())
    model, stats = run(batches(4, poison_at=2), first_step=10)
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # the same step skipped, the others taken
    assert stats.skipped == 1
    assert stats.nonfinite == [(11, 14)]  # one read at the end of the epoch: its window is steps 11-14
    assert not math.isfinite(stats.loss)


def test_read_returns_each_windows_metrics_only_when_asked():
    reference = Tiny()
    losses = old_loop(reference, batches(6, poison_at=4), RMSpropTF(reference.parameters(), lr=0.05), OptimSection())
    reads = []

    def after_step(step, read):
        if step % 2 == 0:
            reads.append(read())

    _, stats = run(batches(6, poison_at=4), after_step=after_step)
    assert [r["steps"] for r in reads] == [(1, 2), (3, 4), (5, 6)]
    assert reads[0]["loss"] == pytest.approx((losses[0] + losses[1]) / 2, rel=1e-6)
    assert reads[1]["loss"] == pytest.approx((losses[2] + losses[3]) / 2, rel=1e-6)
    assert [r["skipped_steps"] for r in reads] == [0, 0, 1]
    assert not math.isfinite(reads[2]["loss"]) and math.isfinite(reads[1]["grad_norm"])
    assert all(r["lr"] == 0.05 and r["images_per_s_worker"] > 0 for r in reads)
    assert stats.nonfinite == [(5, 6)]  # the epoch's final read had an empty window: nothing added


def test_without_clipping_every_step_is_taken():
    _, stats = run(batches(3), optim=OptimSection(clip_norm=0.0))
    assert stats.steps == 3 and stats.skipped == 0 and math.isfinite(stats.loss)


def test_colour_on_the_device_trains_and_repeats_for_the_same_step():
    def colour_run():
        model = Tiny()
        optimizer = RMSpropTF(model.parameters(), lr=0.05)
        feed = Feed(device=CPU, channels_last=True, color=True, seed=3, rank=1)
        stats = train_one_epoch(model, None, batches(3), optimizer, optim=OptimSection(), lr_at=lambda step: 0.05, first_step=7,
                                feed=feed, resolution=4, autocast=contextlib.nullcontext)
        return model, stats

    (a, sa), (b, sb) = colour_run(), colour_run()
    assert sa.steps == 3 and math.isfinite(sa.loss) and sa.loss == sb.loss
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    plain, _ = run(batches(3), first_step=7)
    assert not torch.equal(plain.fc.weight, a.fc.weight)  # the colour draws changed what was learnt
