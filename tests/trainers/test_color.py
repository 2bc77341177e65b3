"""trainers.color: the device colour distortion matches pipelines.augment's NumPy one, draw for draw."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines import augment
from trainers.color import (
    PARAM_COLUMNS,
    ColorDraws,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    distort,
    draw,
)

pytestmark = pytest.mark.unit

TORCH_OPS = {
    "brightness": adjust_brightness,
    "saturation": adjust_saturation,
    "hue": adjust_hue,
    "contrast": adjust_contrast,
}
NUMPY_OPS = {name: getattr(augment, f"adjust_{name}") for name in TORCH_OPS}
IDENTITY = {"brightness": 0.0, "saturation": 1.0, "hue": 0.0, "contrast": 1.0}
MEMORY_FORMATS = pytest.mark.parametrize(
    "memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "channels_last"]
)


def photos(n=8, size=48, seed=0) -> np.ndarray:
    """n uint8 HWC images: smooth colourful gradients, each shifted in hue and level, plus noise.

    The noise pushes some pixels to 0 and 255, so clipping and saturated channels are exercised.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    out = []
    for i in range(n):
        base = np.stack([xx, yy, 1 - (xx + yy) / 2], axis=-1)
        base = np.roll(base, i % 3, axis=-1) * (0.6 + 0.4 * i / n) + 0.2 * (i / n)
        noisy = base + rng.normal(0, 0.06, base.shape)
        out.append(np.rint(np.clip(noisy, 0, 1) * 255).astype(np.uint8))
    return np.stack(out)


def planar_batch(images: np.ndarray) -> np.ndarray:
    return np.stack([augment.to_planar(img) for img in images])


def batch_tensor(planar: np.ndarray, memory_format=torch.contiguous_format) -> torch.Tensor:
    return torch.from_numpy(planar).contiguous(memory_format=memory_format)


def expected_draws(n, *, seed, rank, step):
    """What the CPU path would draw for images 0..n-1 of the batch: successive color_params calls."""
    rng = np.random.default_rng([seed, rank, step])
    return [augment.color_params(rng) for _ in range(n)]


def const(rgb, size=(1, 1)) -> torch.Tensor:
    """A (1, 3, H, W) float32 image of one colour."""
    return torch.tensor(rgb, dtype=torch.float32).reshape(1, 3, 1, 1).expand(1, 3, *size).contiguous()


def every_ordering_groups(n):
    """Groups giving each of the four orderings a quarter of n images."""
    q = n // 4
    return tuple((k, k * q, (k + 1) * q) for k in range(4))


# --- parity with pipelines.augment -------------------------------------------------------------


OP_PARAMS = {
    "brightness": np.linspace(-0.3, 0.3, 8),
    "saturation": np.array([0.0, 0.3, 0.5, 0.9, 1.1, 1.5, 2.0, 4.0]),
    "hue": np.array([-0.5, -0.2, -0.05, 0.01, 0.1, 0.2, 1 / 3, 0.7]),
    "contrast": np.array([0.0, 0.3, 0.5, 0.9, 1.1, 1.5, 2.0, 4.0]),
}


@MEMORY_FORMATS
@pytest.mark.parametrize("name", list(TORCH_OPS))
def test_each_op_matches_numpy(name, memory_format):
    planar = planar_batch(photos())
    values = OP_PARAMS[name]
    expected = np.stack([NUMPY_OPS[name](planar[i], values[i]) for i in range(len(planar))])
    got = TORCH_OPS[name](batch_tensor(planar, memory_format), torch.tensor(values, dtype=torch.float32))
    assert got.dtype == torch.float32 and got.shape == planar.shape
    got = got.numpy()
    if name == "hue":
        chroma = planar.max(axis=1, keepdims=True) - planar.min(axis=1, keepdims=True)
        keep = np.broadcast_to(chroma > 1e-3, planar.shape)
        got, expected = got[keep], expected[keep]
    np.testing.assert_allclose(got, np.clip(expected, 0, 1), atol=2e-6, rtol=0)


@MEMORY_FORMATS
@pytest.mark.parametrize("seed,step", [(0, 0), (1, 5), (7, 123)])
def test_distort_matches_the_cpu_pipeline_on_the_same_draws(seed, step, memory_format):
    images = photos(seed=seed)
    n = len(images)
    draws = draw(n, seed=seed, rank=0, step=step)
    cpu = expected_draws(n, seed=seed, rank=0, step=step)
    x = batch_tensor(planar_batch(images[draws.order]), memory_format)
    out = distort(x, torch.from_numpy(draws.params), draws.groups)
    assert out.is_contiguous(memory_format=memory_format)
    got = out.permute(0, 2, 3, 1).numpy() * 255
    expected = np.stack(
        [augment.to_hwc_uint8(augment.apply_color(augment.to_planar(images[row]), *cpu[row])) for row in draws.order]
    )
    close = np.abs(got - expected) <= 1
    assert close.mean() >= 0.999, f"{(~close).sum()} of {close.size} values off by more than 1/255"
    # Stricter, and true here: float rounding moves only values at a .5 boundary to the next uint8.
    assert (np.rint(got) == expected).mean() >= 0.999


def test_the_parity_draws_cover_every_ordering():
    draws = [draw(8, seed=seed, rank=0, step=step) for seed, step in [(0, 0), (1, 5), (7, 123)]]
    seen = {ordering for d in draws for ordering, _, _ in d.groups}
    assert seen == {0, 1, 2, 3}


# --- draws -------------------------------------------------------------------------------------


def test_draws_are_pure_in_seed_rank_and_step():
    a = draw(16, seed=3, rank=1, step=42)
    b = draw(16, seed=3, rank=1, step=42)
    assert isinstance(a, ColorDraws)
    assert np.array_equal(a.order, b.order) and np.array_equal(a.params, b.params) and a.groups == b.groups
    others = [draw(16, seed=3, rank=1, step=43), draw(16, seed=3, rank=2, step=42), draw(16, seed=4, rank=1, step=42)]
    for other in others:
        assert not np.array_equal(a.params, other.params)


def test_draws_are_the_cpu_paths_draws_permuted_by_ordering():
    n, seed, rank, step = 32, 5, 3, 1000
    draws = draw(n, seed=seed, rank=rank, step=step)
    cpu = expected_draws(n, seed=seed, rank=rank, step=step)
    assert draws.order.dtype == np.int64 and draws.order.shape == (n,)
    assert draws.params.dtype == np.float32 and draws.params.shape == (n, len(PARAM_COLUMNS))
    assert sorted(draws.order.tolist()) == list(range(n))
    for i, row in enumerate(draws.order):
        _, params = cpu[row]
        assert draws.params[i].tolist() == [np.float32(params[name]) for name in PARAM_COLUMNS]
    orderings = np.array([ordering for ordering, _ in cpu])
    assert np.array_equal(draws.order, np.argsort(orderings, kind="stable"))


def test_groups_cover_the_batch_contiguously_by_ordering():
    n = 40
    draws = draw(n, seed=11, rank=0, step=7)
    cpu = expected_draws(n, seed=11, rank=0, step=7)
    position = 0
    for ordering, start, stop in draws.groups:
        assert start == position and stop > start
        assert all(cpu[row][0] == ordering for row in draws.order[start:stop])
        position = stop
    assert position == n
    assert [g[0] for g in draws.groups] == sorted({ordering for ordering, _ in cpu})


def test_empty_batch():
    draws = draw(0, seed=0, rank=0, step=0)
    assert draws.order.shape == (0,) and draws.params.shape == (0, 4) and draws.groups == ()
    out = distort(torch.zeros(0, 3, 4, 4), torch.zeros(0, 4), draws.groups)
    assert out.shape == (0, 3, 4, 4)


# --- properties --------------------------------------------------------------------------------


@MEMORY_FORMATS
def test_identity_parameters_leave_images_unchanged(memory_format):
    x = batch_tensor(planar_batch(photos()), memory_format)
    n = x.shape[0]
    identity = torch.tensor([IDENTITY[name] for name in PARAM_COLUMNS]).expand(n, 4)
    torch.testing.assert_close(distort(x, identity, every_ordering_groups(n)), x, atol=1e-5, rtol=0)
    for name, op in TORCH_OPS.items():
        torch.testing.assert_close(op(x, torch.full((n,), IDENTITY[name])), x, atol=1e-5, rtol=0)


def extreme_params(n, seed=0):
    """Parameters well past TF's ranges, so every op clips."""
    rng = np.random.default_rng(seed)
    return torch.tensor(
        np.stack(
            [rng.uniform(-0.5, 0.5, n), rng.uniform(0, 4, n), rng.uniform(-1, 1, n), rng.uniform(0, 4, n)], axis=1
        ),
        dtype=torch.float32,
    )


def test_distort_is_per_image_and_stays_in_the_unit_range():
    x = batch_tensor(planar_batch(photos()))
    n = x.shape[0]
    params = extreme_params(n)
    groups = every_ordering_groups(n)
    out = distort(x, params, groups)
    assert out.min() >= 0 and out.max() <= 1
    for ordering, start, stop in groups:
        for i in range(start, stop):
            alone = distort(x[i : i + 1], params[i : i + 1], ((ordering, 0, 1),))
            torch.testing.assert_close(out[i : i + 1], alone, atol=1e-6, rtol=0)


def test_distort_returns_a_new_float32_tensor_and_leaves_the_input():
    x = batch_tensor(planar_batch(photos(n=4)))
    before = x.clone()
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        out = distort(x.to(dtype), extreme_params(4), every_ordering_groups(4))
        assert out.dtype == torch.float32
    assert torch.equal(x, before)


def test_distort_never_reads_tensor_values_on_the_host():
    # Meta tensors have no data: .item(), bool(tensor), nonzero or mask indexing would raise.
    draws = draw(16, seed=0, rank=0, step=0)
    x = torch.empty(16, 3, 8, 8, device="meta").contiguous(memory_format=torch.channels_last)
    out = distort(x, torch.empty(16, 4, device="meta"), draws.groups)
    assert out.shape == x.shape and out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    "groups",
    [((0, 0, 3),), ((0, 0, 2), (1, 3, 4)), ((0, 1, 4),), ((4, 0, 4),), ((0, 0, 5),)],
    ids=["short", "gap", "late-start", "bad-ordering", "past-the-end"],
)
def test_distort_refuses_groups_that_do_not_tile_the_batch(groups):
    with pytest.raises(ValueError, match="groups"):
        distort(torch.zeros(4, 3, 2, 2), torch.zeros(4, 4), groups)


# --- hand-computed pixels ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "rgb,delta,expected",
    [
        ((1, 0, 0), 1 / 3, (0, 1, 0)),  # red + 120 degrees: green
        ((1, 0, 0), -1 / 6, (1, 0, 1)),  # red - 60 degrees wraps to magenta
        ((0, 0, 1), 1 / 2, (1, 1, 0)),  # blue + 180 degrees: yellow
        ((0.6, 0.3, 0.2), 1.0, (0.6, 0.3, 0.2)),  # a whole turn
        ((0.4, 0.4, 0.4), 0.25, (0.4, 0.4, 0.4)),  # grey has no hue
    ],
)
def test_hue_on_known_pixels(rgb, delta, expected):
    got = adjust_hue(const(rgb), torch.tensor([delta]))
    torch.testing.assert_close(got, const(expected), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "rgb,factor,expected",
    [
        # S = 1 -> 0 at V = 1: every channel becomes V.
        ((1, 0.5, 0), 0.0, (1, 1, 1)),
        ((0.6, 0.3, 0.2), 0.0, (0.6, 0.6, 0.6)),
        # S = 2/3 -> 1/3: halfway to V; hue (g - b) / chroma = 0.25 kept.
        ((0.6, 0.3, 0.2), 0.5, (0.6, 0.45, 0.4)),
        # S = 2/3 * 2 clamps at 1: the blend factor is capped at V / chroma = 1.5; min reaches 0.
        ((0.6, 0.3, 0.2), 2.0, (0.6, 0.15, 0.0)),
    ],
)
def test_saturation_on_known_pixels(rgb, factor, expected):
    got = adjust_saturation(const(rgb), torch.tensor([factor]))
    torch.testing.assert_close(got, const(expected), atol=1e-6, rtol=0)


def test_contrast_zero_gives_the_per_channel_mean_and_two_doubles_the_spread():
    x = torch.tensor([[0.2, 0.4], [0.0, 1.0], [0.5, 0.5]]).reshape(1, 3, 1, 2)
    flat = adjust_contrast(x, torch.tensor([0.0]))
    torch.testing.assert_close(flat, torch.tensor([[0.3, 0.3], [0.5, 0.5], [0.5, 0.5]]).reshape(1, 3, 1, 2))
    spread = adjust_contrast(x, torch.tensor([2.0]))  # mean 0.3: 0.1, 0.5; mean 0.5: -0.5, 1.5 clipped
    torch.testing.assert_close(spread, torch.tensor([[0.1, 0.5], [0.0, 1.0], [0.5, 0.5]]).reshape(1, 3, 1, 2))


def test_brightness_adds_and_clips_per_image():
    x = torch.cat([const((0.9, 0.5, 0.1)), const((0.9, 0.5, 0.1))])
    got = adjust_brightness(x, torch.tensor([0.3, -0.3]))
    torch.testing.assert_close(got, torch.cat([const((1.0, 0.8, 0.4)), const((0.6, 0.2, 0.0))]))


# --- on a GPU ----------------------------------------------------------------------------------


@pytest.mark.gpu
def test_cuda_matches_cpu_without_synchronising():
    images = photos(n=32, size=64)
    draws = draw(len(images), seed=0, rank=0, step=0)
    x = batch_tensor(planar_batch(images[draws.order]), torch.channels_last)
    params = torch.from_numpy(draws.params)
    expected = distort(x, params, draws.groups)
    x_cuda, params_cuda = x.cuda(), params.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = distort(x_cuda, params_cuda, draws.groups)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert got.is_cuda and got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got.cpu(), expected, atol=1e-5, rtol=0)
