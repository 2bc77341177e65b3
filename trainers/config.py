"""The training recipe's configuration: one frozen dataclass per concern, a comment per field.

Defaults are the paper's recipe (REFERENCE.md) for the TF reference's values where the paper is
silent. `infra/config.py` loads these from YAML with dotted overrides and validates them once.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DataSection:
    train: str = ""  # folder (local, s3://, gs://) of the training shards and their manifest.json
    val: str = ""  # folder of the validation shards; empty: no per-epoch validation
    area: tuple[float, float] = (0.08, 1.0)  # Inception crop: fraction of the image area (TF: 0.05-1)
    ratio: tuple[float, float] = (0.75, 1.3333333333333333)  # Inception crop: aspect ratio w/h
    flip: bool = True  # random horizontal flip
    color: bool = True  # TF Inception colour distortion: brightness, saturation, hue, contrast
    # Where colour runs: device (the training worker, batched tensor ops, trainers/color.py; it
    # freed the GPU loader of its bound) or cpu (the loader's CPU workers, NumPy). On a CPU-only
    # cluster cpu is cheaper: torch's ops cost about 5 ms per 299 px image on one core, NumPy's 1.3.
    color_on: str = "device"
    # Where JPEGs are decoded: cpu (the loader's workers, Pillow) or gpu (nvJPEG on the training
    # GPU; the CPU workers only draw crops). gpu needs train.use_gpu and torchvision (the gpu extra).
    decode_on: str = "cpu"
    # Progressive resizing (FFCV): [[epoch, resolution], ...], linear between points, the model's
    # resolution from the last point on. Empty: model.resolution throughout.
    resolution_schedule: list = field(default_factory=list)
    shuffle_buffer: int = 2000  # rows in each worker's local shuffle buffer (on top of shard-order shuffling)
    crop_fraction: float = 0.875  # evaluation: central crop of this fraction of each side (TF reference)


@dataclass(frozen=True)
class ModelSection:
    variant: int = 299  # the paper's table 2 stem: 299 (stride 2 + pool), 151 (stride 1 + pool), 79 (stride 1)
    resolution: int = 299  # input side (pixels) at the end of training and for evaluation
    width: float = 1.0  # channel multiplier; 1.0 is the paper's network
    aux_logits: bool = True  # the BN-auxiliary head (paper section 10)
    dropout: float = 0.2  # before the classifier; the TF reference keeps 0.8
    bn_momentum: float = 0.1  # PyTorch convention (1 - TF decay); TF's 0.9997 decay suits 100-epoch runs only


@dataclass(frozen=True)
class OptimSection:
    lr: float = 0.0  # base learning rate; 0: base_lr per base_batch images, scaled linearly to the global batch
    base_lr: float = 0.045  # with lr 0: the rate at base_batch images (paper section 8: 0.045 per replica of 32) ...
    base_batch: int = 32  # ... (the large-batch reference states 0.165 per 256: configs/imagenet.yaml)
    decay_rate: float = 0.94  # multiply the rate by this ...
    decay_epochs: float = 2.0  # ... every this many epochs (paper section 8)
    lr_floor: float = 0.0  # fraction of the base rate the staircase stops at (large-batch reference: 1e-4); 0: none
    warmup_epochs: float = 0.0  # linear warm-up (Goyal et al.; needed when the scaled rate is large)
    alpha: float = 0.9  # RMSProp decay of the mean square (paper: 0.9)
    momentum: float = 0.9  # TF reference
    eps: float = 1.0  # RMSProp epsilon inside the square root (paper: 1.0)
    weight_decay: float = 4e-5  # L2 on conv and linear weights (TF reference)
    clip_norm: float = 2.0  # global gradient-norm threshold (paper section 8); 0: off
    label_smoothing: float = 0.1  # paper section 7
    aux_weight: float = 0.4  # auxiliary loss weight (TF reference)
    ema_decay: float = 0.9999  # parameter averaging for evaluation (TF reference); 0: off
    # The global batch at which ema_decay is stated; the decay per optimiser step is then
    # ema_decay ** (global batch / this), the same horizon in images at any batch (trainers/ema.py).
    # 0: ema_decay is per optimiser step whatever the batch, as TF's ExponentialMovingAverage takes it.
    ema_reference_batch: int = 0


@dataclass(frozen=True)
class TrainSection:
    epochs: int = 100  # paper: 100 epochs
    batch_size: int = 32  # per worker (paper: 32 per replica)
    num_workers: int = 1  # data-parallel workers (processes); one per GPU
    use_gpu: bool = False  # GPU workers: NCCL, bf16 autocast, channels_last
    cpus_per_worker: float = 1.0  # Ray CPUs reserved per worker; the rest decode and augment images
    compile: bool = False  # torch.compile the model (GPU)
    bf16: bool = True  # autocast to bfloat16 on GPU (ignored on CPU, which trains in fp32)
    channels_last: bool = True  # NHWC memory format (faster on GPUs and, for training steps, on CPUs)
    seed: int = 0
    run_name: str = ""  # Ray Train run (and checkpoint folder) name; rerun with the same name to resume
    storage_path: str = ""  # checkpoints: shared storage (s3://, NFS) for multi-node; empty: <workdir>/runs
    storage_shared: bool = False  # a local storage_path is a shared file system (NFS) that every node mounts
    placement_strategy: str = "PACK"  # Ray placement of the workers: PACK, SPREAD, STRICT_PACK, STRICT_SPREAD
    checkpoint_every_steps: int = 0  # also checkpoint every N steps (0: at the end of each epoch only)
    num_to_keep: int = 2  # checkpoints kept (CheckpointConfig)
    max_failures: int = 3  # worker-group restarts from the last checkpoint (FailureConfig)
    log_every_steps: int = 10  # per-step metrics to MLflow every N steps


@dataclass(frozen=True)
class EvalSection:
    crops: list = field(default_factory=lambda: [1])  # protocols run on the final model before registration: 1, 10, 12, 144
    batch_size: int = 32  # images per evaluation batch (each expands to its crops)
    max_crops_per_forward: int = 0  # crops per model call, bounding activation memory (14.2 MiB per crop at 299 px); 0: 256 on CPU, 1,024 on GPU (trainers.evaluate)
    concurrency: int = 0  # evaluation actors (one model each); 0: one per CPU, or per GPU with train.use_gpu, at most one per shard


@dataclass(frozen=True)
class Recipe:
    """Everything a training worker needs; the registry's settings stay with infra."""

    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)


def recipe_from_dict(tree: dict) -> Recipe:
    """Rebuild a Recipe from `dataclasses.asdict` output (as it travels to workers and checkpoints)."""
    def section(cls, values):
        return cls(**{k: tuple(v) if isinstance(getattr(cls(), k), tuple) else v for k, v in values.items()})

    return Recipe(
        data=section(DataSection, tree["data"]),
        model=section(ModelSection, tree["model"]),
        optim=section(OptimSection, tree["optim"]),
        train=section(TrainSection, tree["train"]),
    )
