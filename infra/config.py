"""The one typed configuration: YAML file + dotted overrides -> frozen dataclasses, validated once.

    incept train --config configs/demo.yaml train.epochs=3 optim.lr=0.01

An unknown key or a value of the wrong type is an error naming it (nanoGPT's configurator does the
same; a key that is silently ignored is how a recipe drifts). The training sections are defined in
`trainers/config.py`; the registry's and the retraining policy's here, beside their users.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipelines import storage
from pipelines.errors import UserError
from trainers.config import DataSection, EvalSection, ModelSection, OptimSection, Recipe, TrainSection


PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


@dataclass(frozen=True)
class RegistrySection:
    experiment: str = "inception-v3"  # MLflow experiment of the training runs
    model_name: str = "inception-v3"  # MLflow registered model
    register: bool = True  # log and register the final model (alias: challenger)


@dataclass(frozen=True)
class RetrainSection:
    metric: str = "top1_1crop"  # model-version metric that decides a promotion (higher is better)
    margin: float = 0.0  # the challenger must beat the champion by more than this (fraction, 0.005 = 0.5 points)
    warm_start: bool = False  # start from the champion's weights instead of from scratch


@dataclass(frozen=True)
class Config:
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    registry: RegistrySection = field(default_factory=RegistrySection)
    retrain: RetrainSection = field(default_factory=RetrainSection)

    @property
    def recipe(self) -> Recipe:
        return Recipe(data=self.data, model=self.model, optim=self.optim, train=self.train)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def _coerce(value, hint, where: str):
    """`value` as type `hint`, or UserError naming `where`."""
    origin = typing.get_origin(hint)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
        if value is None:
            return ""
    elif origin is tuple:
        args = typing.get_args(hint)
        if isinstance(value, (list, tuple)) and len(value) == len(args):
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    elif hint is list or origin is list:
        if isinstance(value, (list, tuple)):
            return list(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return [value]  # eval.crops=144 on the command line
    elif origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            try:
                return _coerce(value, arg, where)
            except UserError:
                pass
    expected = getattr(hint, "__name__", str(hint))
    raise UserError(f"config key {where}: expected {expected}, got {value!r}")


def _build(cls, values: dict, where: str):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            raise UserError(f"unknown config key {path!r}: known keys here are {', '.join(names)}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise UserError(f"config key {path}: expected a section (mapping), got {value!r}")
            kwargs[key] = _build(hint, value, path)
        else:
            kwargs[key] = _coerce(value, hint, path)
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"override {dotted}: {part} is a value, not a section")
    node[parts[-1]] = value


def load(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """The config from a YAML file (or the defaults) with `key.sub=value` overrides applied."""
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file {path} does not exist")
        try:
            tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise UserError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
        if not isinstance(tree, dict):
            raise UserError(f"config file {path} must hold a mapping of sections")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"override {item!r} must look like section.key=value")
        _set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw.strip() else "")
    config = _build(Config, tree, "")
    validate(config)
    return config


def validate(config: Config) -> None:
    """Cross-field checks that types alone cannot express."""
    from trainers.inception_v3 import VARIANTS, min_input_size

    checks = [
        (config.model.variant in VARIANTS, f"model.variant must be one of {sorted(VARIANTS)} (paper table 2)"),
        (config.model.resolution >= min_input_size(config.model.variant) if config.model.variant in VARIANTS else True,
         f"model.resolution must be at least {min_input_size(config.model.variant) if config.model.variant in VARIANTS else '?'} for variant {config.model.variant}"),
        (config.model.width > 0, "model.width must be positive"),
        (config.train.epochs >= 0, "train.epochs must be at least 0"),
        (config.train.batch_size >= 1, "train.batch_size must be at least 1"),
        (config.train.num_workers >= 1, "train.num_workers must be at least 1"),
        (config.optim.lr >= 0, "optim.lr must be at least 0 (0: optim.base_lr per optim.base_batch images, scaled to the global batch)"),
        (config.optim.base_lr > 0, "optim.base_lr must be positive (the rate at optim.base_batch images)"),
        (config.optim.base_batch > 0, "optim.base_batch must be positive (the batch optim.base_lr is stated at)"),
        (0 <= config.optim.lr_floor < 1, "optim.lr_floor must be in [0, 1) (a fraction of the base rate; 0: no floor)"),
        (config.optim.ema_reference_batch >= 0,
         "optim.ema_reference_batch must be at least 0 (the global batch optim.ema_decay is stated at; 0: per step)"),
        (all(str(c) in ("1", "10", "12", "144") for c in config.eval.crops), "eval.crops must be a list of 1, 10, 12, 144"),
        (0 <= config.optim.ema_decay < 1, "optim.ema_decay must be in [0, 1)"),
        (config.train.placement_strategy in PLACEMENT_STRATEGIES,
         f"train.placement_strategy must be one of {', '.join(PLACEMENT_STRATEGIES)} (Ray placement groups)"),
        (config.eval.concurrency >= 0, "eval.concurrency must be at least 0 (0: one evaluation actor per CPU or GPU)"),
        (config.eval.max_crops_per_forward >= 0, "eval.max_crops_per_forward must be at least 0 (0: the device's default)"),
        (config.data.color_on in ("device", "cpu"), f"data.color_on must be device or cpu, got {config.data.color_on!r}"),
        (config.data.decode_on in ("cpu", "gpu"), f"data.decode_on must be cpu or gpu, got {config.data.decode_on!r}"),
        (config.data.decode_on != "gpu" or config.train.use_gpu,
         "data.decode_on: gpu decodes on the training GPUs: set train.use_gpu: true, or data.decode_on: cpu"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    for key, value in (("data.train", config.data.train), ("data.val", config.data.val), ("train.storage_path", config.train.storage_path)):
        storage.check_no_credentials(value, f"config key {key}:")
