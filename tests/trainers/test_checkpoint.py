"""trainers.checkpoint: what the loop saves loads as tensors and plain values only; anything else is refused."""

from __future__ import annotations

import os
from dataclasses import asdict

import pytest
import torch

from pipelines.errors import UserError
from trainers import checkpoint
from trainers.config import ModelSection, Recipe
from trainers.ema import ModelEma
from trainers.fit import data_config
from trainers.inception_v3 import inception_v3
from trainers.optim import RMSpropTF, param_groups_weight_decay

pytestmark = pytest.mark.unit


def _state_as_the_loop_saves_it():
    """A checkpoint as `train_loop_per_worker` writes it: after real steps, so the optimiser and EMA hold state."""
    torch.manual_seed(0)
    recipe = Recipe(model=ModelSection(resolution=75, width=0.125))
    model = inception_v3(num_classes=3, aux_logits=True, resolution=299, width=0.125)
    ema = ModelEma(model, 0.99)
    optimizer = RMSpropTF(param_groups_weight_decay(model, 4e-5), lr=0.01, alpha=0.9, momentum=0.9, eps=1.0)
    model.train()
    for _ in range(2):
        main, aux = model(torch.rand(2, 3, 75, 75))
        (main.sum() + aux.sum()).backward()
        optimizer.step()
        optimizer.zero_grad()
        ema.update(model)
    config = data_config(recipe, {"classes": ["n0", "n1", "n2"], "words": {"n0": "zero"}})
    return checkpoint.training_state(model=model, ema=ema, optimizer=optimizer, epoch=1, epoch_step=0, step=2,
                                     recipe=asdict(recipe), data_config=config), model


def test_a_training_checkpoint_loads_weights_only_and_rebuilds_the_model(tmp_path):
    state, model = _state_as_the_loop_saves_it()
    checkpoint.save(tmp_path, state)
    loaded = checkpoint.load(str(tmp_path))  # weights_only=True inside
    assert (loaded["epoch"], loaded["step"], loaded["data_config"]["classes"]) == (1, 2, ["n0", "n1", "n2"])
    assert loaded["optimizer"]["state"] and loaded["ema"]["num_updates"] == 2
    assert loaded["recipe"]["data"]["area"] == (0.08, 1.0)  # tuples are plain values too
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded["model"][name], tensor), name
    rebuilt = checkpoint.build_model(loaded, averaged=False)
    x = torch.rand(2, 3, 75, 75)
    model.eval()
    assert torch.equal(rebuilt(x), model(x))


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_checkpoint_that_needs_unpickling_is_refused_in_one_line(tmp_path):
    torch.save({"model": {}, "surprise": _Payload()}, tmp_path / checkpoint.STATE_FILE)
    with pytest.raises(UserError, match="refusing to load .*state.pt: it holds more than tensors and plain values") as err:
        checkpoint.load(str(tmp_path))
    assert "\n" not in str(err.value)


def test_a_folder_without_a_checkpoint_is_named(tmp_path):
    with pytest.raises(UserError, match=f"{tmp_path}/state.pt does not exist"):
        checkpoint.load(str(tmp_path))
