import numpy as np
import pytest

from pipelines.stream import InChunks, equal_batches, slices, steps_per_epoch

pytestmark = pytest.mark.unit


def batches(sizes):
    start = 0
    for n in sizes:
        yield {"image": np.arange(start, start + n), "label": np.arange(start, start + n) * 10}
        start += n


@pytest.mark.parametrize("sizes", [[8] * 5, [3, 5, 1, 7, 8, 16], [1] * 40, [40], [0, 5, 0, 35]])
def test_equal_batches_recut_any_input_into_full_batches(sizes):
    out = list(equal_batches(batches(sizes), batch_size=8, steps=4))
    assert [len(b["image"]) for b in out] == [8, 8, 8, 8]
    assert np.array_equal(np.concatenate([b["image"] for b in out]), np.arange(32))
    assert all(np.array_equal(b["label"], b["image"] * 10) for b in out)


def test_equal_batches_refuse_to_run_short():
    with pytest.raises(RuntimeError, match="after 2 of 3"):
        list(equal_batches(batches([8, 8, 7]), batch_size=8, steps=3))


def test_zero_steps_reads_nothing():
    def boom():
        raise AssertionError("read")
        yield

    assert list(equal_batches(boom(), batch_size=8, steps=0)) == []


@pytest.mark.parametrize("n, world, batch, steps", [(1000, 2, 32, 15), (1001, 2, 32, 15), (63, 1, 32, 1), (10, 4, 8, 0)])
def test_steps_per_epoch(n, world, batch, steps):
    assert steps_per_epoch(n, world_size=world, batch_size=batch) == steps


def test_slices_and_in_chunks_cover_a_block_in_order():
    block = {"a": np.arange(7), "b": np.arange(7) * 10}
    parts = list(slices(block, 3))
    assert [p["a"].tolist() for p in parts] == [[0, 1, 2], [3, 4, 5], [6]]
    assert [p["b"].tolist() for p in parts] == [[0, 10, 20], [30, 40, 50], [60]]
    doubled = list(InChunks(lambda b: {"a": b["a"] * 2}, 4)(block))
    assert [p["a"].tolist() for p in doubled] == [[0, 2, 4, 6], [8, 10, 12]]
