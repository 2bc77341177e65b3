"""The input feed: batches assembled ahead by a thread, colour-grouped rows, model input on the device."""

import threading

import numpy as np
import pytest
import torch

from trainers import color
from trainers.feed import Feed, ahead, assemble, device_batches, model_input
from trainers.inception_v3 import normalize

pytestmark = pytest.mark.unit

CPU = torch.device("cpu")


def test_ahead_yields_every_item_in_order():
    assert list(ahead(iter(range(50)), 2)) == list(range(50))
    assert list(ahead([], 1)) == []
    with pytest.raises(ValueError, match="depth"):
        next(ahead([1], 0))


def test_ahead_raises_the_producers_error_after_the_items_before_it():
    def items():
        yield 1
        yield 2
        raise RuntimeError("the data ran out after 2 of 3 batches")

    out = ahead(items(), 4)
    assert next(out) == 1 and next(out) == 2
    with pytest.raises(RuntimeError, match="ran out"):
        next(out)


def test_closing_ahead_stops_the_producer_and_closes_its_source():
    pulled = []
    closed = threading.Event()

    def items():
        try:
            for i in range(1000):
                pulled.append(i)
                yield i
        finally:
            closed.set()

    out = ahead(items(), 2)
    assert next(out) == 0
    out.close()
    assert closed.wait(timeout=30), "the producer never closed its source"
    assert len(pulled) <= 5  # one taken, two queued, at most one more put and one more pulled


def test_ahead_runs_the_producer_in_another_thread():
    where = []

    def items():
        where.append(threading.get_ident())
        yield 1

    assert list(ahead(items(), 1)) == [1]
    assert where and where[0] != threading.get_ident()


def _batch(n=8, side=6):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n)  # row i is recognisable by its first pixel
    images.setflags(write=False)  # as Ray hands them out
    return {"image": images, "label": np.arange(n, dtype=np.int64) * 10}


def test_without_colour_a_host_batch_is_the_loader_batch():
    batch = assemble(_batch(), step=0, feed=Feed(device=CPU))
    assert batch.images.dtype == torch.uint8 and batch.labels.tolist() == [i * 10 for i in range(8)]
    assert torch.equal(batch.images, torch.from_numpy(_batch()["image"].copy()))
    assert batch.color_params is None and batch.color_groups == ()


def test_with_colour_rows_are_grouped_by_ordering_and_labels_follow_their_images():
    feed = Feed(device=CPU, color=True, seed=5, rank=2)
    batch = assemble(_batch(), step=9, feed=feed)
    draws = color.draw(8, seed=5, rank=2, step=9)
    assert batch.labels.tolist() == [int(i) * 10 for i in draws.order]
    assert batch.images[:, 0, 0, 0].tolist() == draws.order.tolist()
    assert torch.equal(batch.color_params, torch.from_numpy(draws.params))
    assert batch.color_groups == draws.groups
    again = assemble(_batch(), step=9, feed=feed)  # a resumed run at the same step
    assert torch.equal(again.color_params, batch.color_params) and torch.equal(again.labels, batch.labels)
    assert not torch.equal(assemble(_batch(), step=10, feed=feed).color_params, batch.color_params)


def test_crop_batches_keep_their_jpegs_boxes_and_flips_in_the_same_order():
    n = 6
    batch = {"jpg": np.array([bytes([i]) for i in range(n)], dtype=object), "box": np.arange(n * 4, dtype=np.int32).reshape(n, 4),
             "flip": np.arange(n) % 2 == 0, "label": np.arange(n)}
    out = assemble(batch, step=0, feed=Feed(device=CPU, color=True))
    order = color.draw(n, seed=0, rank=0, step=0).order
    assert [j[0] for j in out.jpegs] == order.tolist()
    assert out.boxes[:, 0].tolist() == (order * 4).tolist() and out.flips.tolist() == (order % 2 == 0).tolist()
    assert out.labels.tolist() == order.tolist() and out.images is None


def test_model_input_without_colour_is_the_normalised_batch():
    batch = assemble(_batch(), step=0, feed=Feed(device=CPU))
    x, y = model_input(batch, Feed(device=CPU), resolution=6)
    assert torch.equal(x, normalize(torch.from_numpy(_batch()["image"].copy())))
    assert x.is_contiguous(memory_format=torch.channels_last) and torch.equal(y, batch.labels)
    small, _ = model_input(batch, Feed(device=CPU), resolution=4)  # progressive resizing
    assert small.shape == (8, 3, 4, 4)


@pytest.mark.parametrize("channels_last", [True, False])
def test_model_input_with_colour_is_the_distorted_batch_in_minus_one_to_one(channels_last):
    feed = Feed(device=CPU, channels_last=channels_last, color=True, seed=1)
    batch = assemble(_batch(), step=3, feed=feed)
    x, _ = model_input(batch, feed, resolution=6)
    unit = batch.images.permute(0, 3, 1, 2).float() / 255
    expected = color.distort(unit, batch.color_params, batch.color_groups) * 2 - 1
    torch.testing.assert_close(x, expected, rtol=0, atol=3e-6)  # addcmul vs * 2 - 1: an ulp apart
    assert x.min() >= -1 and x.max() <= 1
    assert x.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_device_batches_number_colour_draws_by_global_step():
    feed = Feed(device=CPU, color=True, seed=4, depth=1)  # through the thread, as on a GPU
    out = list(device_batches([_batch(), _batch()], feed, first_step=20))
    assert [torch.equal(b.color_params, torch.from_numpy(color.draw(8, seed=4, rank=0, step=s).params)) for b, s in zip(out, (20, 21))] == [True, True]
