import io

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from trainers.inception_v3 import (
    InceptionOutputs,
    data_config,
    inception_v3,
    min_input_size,
    normalize,
)


def _num_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread. On the shared 2-core machine two threads wait for each other at every op
    while other processes hold a core: one width-0.25 forward took 11.4 s with two, 0.18 s with one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def full():
    torch.manual_seed(0)
    return inception_v3()


def _grids(model, x):
    """Spatial side after the last 35x35, 17x17 and 8x8 blocks (eval mode)."""
    sides = []
    hooks = [
        getattr(model, name).register_forward_hook(lambda m, i, o: sides.append(o.shape[-1]))
        for name in ("Mixed_5d", "Mixed_6e", "Mixed_7c")
    ]
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return sides


def _on_meta(**kwargs):
    """Shapes without storage: counting parameters and FLOPs costs no memory and no arithmetic."""
    with torch.device("meta"):
        return inception_v3(**kwargs)


@pytest.mark.unit
def test_parameter_count_is_the_reference_count():
    assert _num_params(_on_meta(aux_logits=False)) == 23_834_568
    # torchvision's count with its auxiliary head; ours is the same head, batch-normalised.
    assert _num_params(_on_meta()) == 27_161_264


@pytest.mark.unit
def test_forward_multiply_adds_at_299():
    model = _on_meta(aux_logits=False).eval()
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 299, 299, device="meta"))
    # FlopCounterMode counts 2 FLOPs per multiply-add; torchvision's figure is 5.713 G.
    assert 5.70e9 < counter.get_total_flops() / 2 < 5.72e9


@pytest.mark.unit
@pytest.mark.parametrize(
    "resolution, minimum, grids",
    [(299, 75, [35, 17, 8]), (151, 39, [35, 17, 8]), (79, 21, [36, 17, 8])],
)
def test_table_2_variants_end_on_8x8_and_accept_their_minimum(resolution, minimum, grids):
    model = inception_v3(num_classes=10, resolution=resolution, width=0.25)
    assert min_input_size(resolution) == minimum == model.min_input_size
    assert _grids(model, torch.zeros(1, 3, resolution, resolution)) == grids
    assert _grids(model, torch.zeros(1, 3, minimum, minimum))[-1] == 1
    with pytest.raises(RuntimeError):
        model(torch.zeros(1, 3, minimum - 1, minimum - 1))

    # Training mode, with the auxiliary head, at the nominal size and at the minimum.
    model.train()
    for side in (resolution, minimum):
        out = model(torch.zeros(2, 3, side, side))
        assert isinstance(out, InceptionOutputs)
        assert out.logits.shape == out.aux_logits.shape == (2, 10)


@pytest.mark.unit
def test_inputs_above_the_nominal_size_are_averaged_to_the_same_outputs():
    model = inception_v3(num_classes=10, width=0.25)
    assert _grids(model, torch.zeros(1, 3, 331, 331)) == [39, 19, 9]
    out = model.train()(torch.zeros(2, 3, 331, 331))
    assert out.logits.shape == out.aux_logits.shape == (2, 10)


@pytest.mark.unit
def test_train_returns_named_tuple_eval_returns_logits():
    model = inception_v3(num_classes=7, width=0.25)
    x = torch.zeros(2, 3, 299, 299)
    out = model.train()(x)
    assert isinstance(out, InceptionOutputs) and out.logits.shape == out.aux_logits.shape == (2, 7)
    logits, aux = out
    assert logits is out.logits
    with torch.no_grad():
        out = model.eval()(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 7)

    no_aux = inception_v3(num_classes=7, aux_logits=False, width=0.25)
    out = no_aux.train()(x)
    assert isinstance(out, InceptionOutputs) and out.aux_logits is None and out.logits.shape == (2, 7)


@pytest.mark.unit
def test_width_scales_every_channel_count():
    def conv_weights(model):
        return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Conv2d))

    quarter = _on_meta(width=0.25)
    assert quarter.num_features == 512 and quarter.fc.in_features == 512
    assert quarter.Conv2d_1a_3x3.conv.out_channels == 8
    assert quarter.Conv2d_3b_1x1.conv.out_channels == 20
    assert quarter.AuxLogits.classifier.in_features == 192
    # Every conv has a quarter of the inputs and a quarter of the outputs, but the first keeps its 3 inputs.
    first = 3 * 32 * 3 * 3
    assert conv_weights(quarter) == (conv_weights(_on_meta()) - first) // 16 + first // 4


@pytest.mark.unit
def test_conv_unit_and_initialisation(full):
    convs = [m for m in full.modules() if isinstance(m, torch.nn.Conv2d)]
    bns = [m for m in full.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(convs) == len(bns) == 96
    assert all(c.bias is None for c in convs) and all(b.eps == 1e-3 for b in bns)
    # Truncated at 2 standard deviations: std 0.1 -> |w| <= 0.2, std of the truncated law 0.088.
    w = full.Mixed_7c.branch3x3dbl_2.conv.weight
    assert w.abs().max() <= 0.2 and 0.085 < w.std() < 0.091
    assert full.AuxLogits.fc.conv.weight.abs().max() <= 0.02
    for fc in (full.fc, full.AuxLogits.classifier):
        assert fc.weight.abs().max() <= 0.002 and torch.all(fc.bias == 0)
    assert full.dropout.p == 0.2


@pytest.mark.unit
def test_channels_last_gives_the_same_logits():
    torch.manual_seed(0)
    model = inception_v3(num_classes=10, width=0.25).eval()
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        nchw = model(x)
        model = model.to(memory_format=torch.channels_last)
        nhwc = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(nhwc, nchw, rtol=1e-4, atol=1e-4)


@pytest.mark.unit
def test_state_dict_round_trips():
    torch.manual_seed(0)
    model = inception_v3(num_classes=10, width=0.25)
    model.train()(torch.randn(2, 3, 100, 100))  # moves the BN statistics away from their start
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    twin = inception_v3(num_classes=10, width=0.25)
    twin.load_state_dict(torch.load(buffer))
    x = torch.randn(2, 3, 100, 100)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), twin.eval()(x))


@pytest.mark.unit
def test_data_config_travels_with_the_model():
    assert data_config() == {
        "input_size": 299,
        "crop_fraction": 0.875,
        "interpolation": "bilinear",
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
    }
    assert inception_v3(resolution=151, width=0.25).data_config["input_size"] == 151
    with pytest.raises(ValueError):
        data_config(224)
    with pytest.raises(ValueError):
        inception_v3(resolution=224)


@pytest.mark.unit
def test_normalize_maps_uint8_nhwc_to_minus_one_one_nchw():
    images = torch.tensor([0, 255, 51, 102], dtype=torch.uint8).reshape(1, 2, 2, 1).expand(1, 2, 2, 3).contiguous()
    x = normalize(images)
    assert x.dtype == torch.float32 and x.shape == (1, 3, 2, 2)
    assert x.is_contiguous(memory_format=torch.channels_last)
    want = torch.tensor([[-1.0, 1.0], [51 / 127.5 - 1, 102 / 127.5 - 1]])
    torch.testing.assert_close(x[0, 1], want)
    dense = normalize(images, channels_last=False)
    assert dense.is_contiguous() and torch.equal(dense, x)
    # Another normalisation: (x / 255 - mean) / std.
    y = normalize(images, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 0.5))
    torch.testing.assert_close(y[0, 2, 0], torch.tensor([0.0, 2.0]))
    with pytest.raises(ValueError):
        normalize(images.float())


@pytest.mark.unit
def test_full_width_forward_backward_at_299(full):
    torch.manual_seed(0)
    full.train()
    full.zero_grad()
    out = full(torch.randn(2, 3, 299, 299))
    assert out.logits.shape == out.aux_logits.shape == (2, 1000)
    loss = torch.nn.functional.cross_entropy(out.logits, torch.tensor([1, 2]))
    loss = loss + 0.4 * torch.nn.functional.cross_entropy(out.aux_logits, torch.tensor([1, 2]))
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in full.parameters())
