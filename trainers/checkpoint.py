"""Training checkpoints: everything needed to resume, and to rebuild the model without the config file.

One file, `state.pt`, in a folder that Ray Train persists to `RunConfig.storage_path`:
    model, ema, optimizer       state dicts of the bare model (never the DDP or compile wrapper)
    epoch                       completed epochs
    epoch_step                  steps done in the epoch under way (a mid-epoch checkpoint), else 0
    step                        optimiser steps so far (the schedule's position)
    recipe                      the resolved training config (dict)
    data_config                 classes, words, resolution, crop fraction, normalisation
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from trainers.inception_v3 import InceptionV3, inception_v3

STATE_FILE = "state.pt"


def save(folder: str | os.PathLike, state: dict) -> None:
    """Write `state` atomically: a crash mid-write never leaves a half checkpoint under the name."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=folder, prefix="state-", suffix=".partial")
    os.close(fd)
    torch.save(state, temp)
    os.replace(temp, folder / STATE_FILE)


def load(folder: str | os.PathLike, map_location="cpu") -> dict:
    return torch.load(Path(folder) / STATE_FILE, map_location=map_location, weights_only=False)


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
