"""Training checkpoints: everything needed to resume, and to rebuild the model without the config file.

One file, `state.pt`, in a folder that Ray Train persists to `RunConfig.storage_path`:
    model, ema, optimizer       state dicts of the bare model (never the DDP or compile wrapper)
    epoch                       completed epochs
    epoch_step                  steps done in the epoch under way (a mid-epoch checkpoint), else 0
    step                        optimiser steps so far (the schedule's position)
    recipe                      the resolved training config (dict)
    data_config                 classes, words, resolution, crop fraction, normalisation

Tensors and plain values only, and loaded that way (`torch.load(weights_only=True)`): a checkpoint
path can come from a registry tag (warm start), and whoever can edit the tag must not be able to
make every worker unpickle a file of their choice. A file that needs more is refused.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
from pathlib import Path

import torch

from pipelines import storage
from pipelines.errors import UserError
from trainers.inception_v3 import InceptionV3, inception_v3

STATE_FILE = "state.pt"


def training_state(*, model, ema, optimizer, epoch: int, epoch_step: int, step: int, recipe: dict, data_config: dict) -> dict:
    """What the loop saves: the layout in the module docstring (`model` bare, `ema` a ModelEma or None)."""
    return {
        "model": model.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "epoch_step": epoch_step,
        "step": step,
        "recipe": recipe,
        "data_config": data_config,
    }


def save(folder: str | os.PathLike, state: dict) -> None:
    """Write `state` atomically: a crash mid-write never leaves a half checkpoint under the name."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=folder, prefix="state-", suffix=".partial")
    os.close(fd)
    torch.save(state, temp)
    os.replace(temp, folder / STATE_FILE)


def load(folder: str, map_location="cpu") -> dict:
    """The state in checkpoint `folder`: a local path or a storage URI (s3://..., options included)."""
    location = storage.locate(folder)
    try:
        data = storage.read_bytes(location, STATE_FILE)
    except FileNotFoundError:
        raise UserError(f"{storage.uri_of(location, STATE_FILE)} does not exist: not a training checkpoint folder") from None
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).splitlines()[0] if str(err) else "objects other than tensors and plain values"
        raise UserError(
            f"refusing to load {storage.uri_of(location, STATE_FILE)}: it holds more than tensors and plain values "
            f"({reason[:200]}); incept checkpoints never do, so it was not written by incept"
        ) from None


def build_model(state: dict, *, averaged: bool = True) -> InceptionV3:
    """The network of a checkpoint in eval mode: the EMA weights when there are any and `averaged`."""
    model_cfg = state["recipe"]["model"]
    model = inception_v3(
        num_classes=len(state["data_config"]["classes"]),
        aux_logits=model_cfg["aux_logits"],
        resolution=model_cfg["variant"],
        width=model_cfg["width"],
        dropout=model_cfg["dropout"],
    )
    weights = state["ema"]["module"] if averaged and state.get("ema") else state["model"]
    model.load_state_dict(weights)
    return model.eval()
