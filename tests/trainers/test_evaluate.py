"""trainers.evaluate: crops reach the model in chunks of at most max_crops_per_forward, with the results of one forward."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from pipelines.errors import UserError
from trainers.evaluate import DEFAULT_CROPS_PER_FORWARD, CropPredictor, chunks, crops_per_forward
from trainers.inception_v3 import inception_v3
from trainers.serving import ServingModel

pytestmark = pytest.mark.unit

RESOLUTION = 75  # the smallest input the 299 network takes: 144 crops of several images stay fast


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as an evaluation actor runs (Ray gives a 1-CPU actor OMP_NUM_THREADS=1); with
    two on a busy 2-core machine each small forward took 10x longer."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Recording(nn.Module):
    """The serving module's contract (uint8 N x R x R x 3 -> N x C probabilities), noting each batch's size."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.batches: list[int] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.batches.append(len(images))
        return self.inner(images)


class TinyNet(nn.Module):
    """A few-thousand-parameter network with the serving contract: 144 crops of several images in milliseconds."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 5, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(16, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float() / 255.0
        return torch.softmax(self.fc(self.features(x)), dim=1)


class Loader:
    """A network with decisive scores (a large classifier init), so no near-tie can flip between chunk
    sizes; the same weights on every load. "inception": the eighth-width Inception-v3 in the serving
    module, as evaluation runs it; "tiny": TinyNet."""

    def __init__(self, net: str = "tiny"):
        self.net = net

    def load(self):
        torch.manual_seed(0)
        model = inception_v3(num_classes=10, resolution=299, width=0.125) if self.net == "inception" else TinyNet()
        with torch.no_grad():
            model.fc.weight.normal_(0, 3.0)
        module = ServingModel(model.eval()) if self.net == "inception" else model.eval()
        return Recording(module), {"resolution": RESOLUTION, "crop_fraction": 0.875}


def batch(n: int = 5) -> dict:
    """`n` JPEGs of different shapes (landscape, portrait, square), labels 0..n-1."""
    rng = np.random.default_rng(0)
    jpgs = []
    for i in range(n):
        size = [(120, 90), (90, 120), (100, 100)][i % 3]
        out = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(out, format="JPEG")
        jpgs.append(out.getvalue())
    return {"jpg": np.array(jpgs, dtype=object), "cls": np.arange(n)}


@pytest.mark.parametrize("lengths", [[], [0], [5], [144, 144, 144], [3, 0, 4, 1], [1] * 9])
@pytest.mark.parametrize("size", [1, 2, 7, 144, 1000])
def test_chunks_keep_every_row_in_order_and_fill_each_chunk(lengths, size):
    arrays, start = [], 0
    for n in lengths:
        arrays.append(np.arange(start, start + n))
        start += n
    out = list(chunks(iter(arrays), size))
    assert np.array_equal(np.concatenate([*out, np.arange(0)]), np.arange(start))
    assert [len(c) for c in out] == [size] * (start // size) + ([start % size] if start % size else [])


def test_chunks_cut_no_further_ahead_than_the_chunk_being_filled():
    cut = []

    def arrays():
        for i in range(4):
            cut.append(i)
            yield np.zeros(10)

    stream = chunks(arrays(), 15)
    next(stream)
    assert cut == [0, 1]  # the first chunk needed the first two arrays only


def test_default_limit_per_device_and_a_negative_one_is_refused():
    assert DEFAULT_CROPS_PER_FORWARD == {"cpu": 256, "cuda": 1024}
    assert crops_per_forward(0, "cpu") == 256 and crops_per_forward(0, "cuda") == 1024
    assert crops_per_forward(7, "cpu") == 7 and crops_per_forward(7, "cuda") == 7
    with pytest.raises(UserError, match="max_crops_per_forward must be at least 0"):
        crops_per_forward(-1, "cpu")
    assert CropPredictor(Loader(), ["1"]).max_crops == DEFAULT_CROPS_PER_FORWARD["cpu"]  # this machine runs on CPU


# Prime limits, so chunks span images; Inception gets larger chunks than TinyNet to keep its 144 crops fast.
@pytest.mark.parametrize("protocol, net, limit", [("144", "tiny", 7), ("12", "inception", 13), ("144", "inception", 97)])
def test_chunked_forwards_give_the_results_of_one(protocol, net, limit):
    images = batch(5)
    decoded = [Image.open(io.BytesIO(j)).convert("RGB") for j in images["jpg"]]
    crops = 5 * int(protocol)
    one = CropPredictor(Loader(net), [protocol], max_crops_per_forward=crops)
    chunked = CropPredictor(Loader(net), [protocol], max_crops_per_forward=limit)

    want, got = one.mean_probabilities(decoded, protocol), chunked.mean_probabilities(decoded, protocol)
    assert one.model.batches == [crops]
    assert max(chunked.model.batches) == limit and sum(chunked.model.batches) == crops
    assert torch.allclose(got, want, rtol=0, atol=1e-5)
    assert torch.equal(got.topk(5, dim=1).indices, want.topk(5, dim=1).indices)  # top-1 and top-5, in order

    chunked.model.batches.clear()
    hits = chunked.predict(images)  # the actor's path: the same chunks
    assert max(chunked.model.batches) == limit
    top5 = want.topk(5, dim=1).indices.numpy()
    assert np.array_equal(hits[f"top1_{protocol}"], top5[:, 0] == images["cls"])
    assert np.array_equal(hits[f"top5_{protocol}"], (top5 == images["cls"][:, None]).any(axis=1))
    assert hits[f"top5_{protocol}"].any() and not hits[f"top5_{protocol}"].all()  # the comparison has both outcomes
