"""Inception-v3 training-step throughput (forward + backward, 299x299) against the machine's matmul bound.

The bound is the dense matmul FLOP/s of the same machine in the same run, measured in bursts between the
model's timed steps: the most that convolutions lowered to matrix products can reach. FLOPs per step are
counted with FlopCounterMode (convolutions and matrix products, forward and backward), so
"of matmul bound" = counted FLOPs / step time / matmul FLOP/s of the bursts around that step, median
over the steps.

    python3 bench/model.py                   # CPU: NCHW and channels_last, fp32
    python3 bench/model.py --device cuda     # GPU: bf16 autocast, channels_last, eager and compiled

Needs torch only: the model file is loaded by path, so this runs where the project is not installed.
Prints a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]


def _load_model_module():
    # By path, not `import trainers`: the package's __init__ may pull in Ray and MLflow, which a bare
    # GPU machine with only torch lacks.
    spec = importlib.util.spec_from_file_location("inception_v3", REPO / "trainers" / "inception_v3.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


inception_v3 = _load_model_module().inception_v3


@dataclass(frozen=True)
class Config:
    name: str
    channels_last: bool
    bf16: bool  # autocast to bfloat16 (parameters and optimiser state stay float32)
    compile: bool


CONFIGS = {
    c.name: c
    for c in (
        Config("nchw-fp32", channels_last=False, bf16=False, compile=False),
        Config("cl-fp32", channels_last=True, bf16=False, compile=False),
        Config("cl-bf16", channels_last=True, bf16=True, compile=False),
        Config("cl-bf16-compile", channels_last=True, bf16=True, compile=True),
    )
}
DEFAULTS = {
    # (configs, batch size, timed steps, warm-up steps)
    "cpu": (["nchw-fp32", "cl-fp32"], 8, 3, 1),
    "cuda": (["cl-bf16", "cl-bf16-compile"], 256, 30, 5),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class MatmulProbe:
    """Dense matmul FLOP/s, measured in short bursts: n = 2048 on a CPU, 8192 on a GPU.

    The bursts run between the model's timed steps, so that both see the same machine: on a shared
    CPU other processes come and go, and a bound measured once would compare different conditions.
    """

    def __init__(self, device: torch.device, dtype: torch.dtype, burst_s: float) -> None:
        self.device = device
        self.n = 8192 if device.type == "cuda" else 2048
        self.a = torch.randn(self.n, self.n, device=device, dtype=dtype)
        self.b = torch.randn(self.n, self.n, device=device, dtype=dtype)
        self.c = torch.empty(self.n, self.n, device=device, dtype=dtype)
        self.calls = 1
        per_call = min(self._time_burst() for _ in range(3))
        self.calls = max(1, round(burst_s / per_call))

    def _time_burst(self) -> float:
        _sync(self.device)
        t0 = time.perf_counter()
        for _ in range(self.calls):
            torch.mm(self.a, self.b, out=self.c)
        _sync(self.device)
        return time.perf_counter() - t0

    def measure(self) -> float:
        return 2 * self.n**3 * self.calls / self._time_burst()


def _loss(out, target: torch.Tensor) -> torch.Tensor:
    # The training loss's arithmetic (both heads); its cost is negligible beside the network's.
    return F.cross_entropy(out.logits.float(), target) + 0.4 * F.cross_entropy(out.aux_logits.float(), target)


def flops_per_image() -> float:
    """Counted FLOPs of one training step (forward + backward) per 299x299 image, on the meta device
    (shapes only: nothing runs). The memory layout and dtype do not change the count."""
    batch = 2
    with torch.device("meta"):
        model = inception_v3()
        x = torch.zeros(batch, 3, 299, 299)
        target = torch.zeros(batch, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        _loss(model(x), target).backward()
    return counter.get_total_flops() / batch


def bench(config: Config, *, device: torch.device, batch_size: int, steps: int, warmup: int) -> dict:
    """Training-step times of `config` (s), and the matmul FLOP/s in bursts around each step."""
    torch.manual_seed(0)
    model = inception_v3().to(device)
    x = torch.randn(batch_size, 3, 299, 299, device=device)
    target = torch.randint(0, 1000, (batch_size,), device=device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    model.train()
    step_model = torch.compile(model) if config.compile else model

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
            out = step_model(x)
        _loss(out, target).backward()

    _sync(device)
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    _sync(device)
    warmup_s = time.perf_counter() - t0

    probe = MatmulProbe(device, torch.bfloat16 if config.bf16 else torch.float32, burst_s=0.5 if device.type == "cpu" else 0.2)
    times, bounds = [], [probe.measure()]
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
        bounds.append(probe.measure())
    # Each step is compared with the mean of the bursts just before and after it.
    around = [(before + after) / 2 for before, after in zip(bounds, bounds[1:])]
    return {"warmup_s": warmup_s, "step_s": times, "matmul_flops_per_s": around}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, help="images per step (default: cpu 8, cuda 256)")
    parser.add_argument("--steps", type=int, help="timed steps; the median is reported (default: cpu 3, cuda 30)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default: cpu 1, cuda 5)")
    parser.add_argument("--configs", help=f"comma-separated, from {', '.join(CONFIGS)}")
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads (default: torch's, one per core); fewer measure per-core efficiency on a shared machine",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    names, batch_size, steps, warmup = DEFAULTS[device.type]
    names = args.configs.split(",") if args.configs else names
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown configs {unknown}; choose from {list(CONFIGS)}")
    batch_size = args.batch_size or batch_size
    steps = args.steps or steps
    warmup = args.warmup if args.warmup is not None else warmup
    configs = [CONFIGS[n] for n in names]

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        machine = torch.cuda.get_device_name(device)
    else:
        machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"

    flops = flops_per_image()

    print(f"# {machine}, torch {torch.__version__}, batch {batch_size}, median of {steps} steps after {warmup}")
    if hasattr(os, "getloadavg"):
        # Other processes on the machine skew every figure here; this shows whether there were any.
        print(f"# load average at start: {os.getloadavg()[0]:.2f}")
    print(f"# counted FLOPs per image, forward + backward: {flops / 1e9:.2f} G")
    print()
    print("| config | img/s | ms/step | model TFLOP/s | matmul TFLOP/s | of matmul bound | vs first row | warm-up s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    first = None
    for config in configs:
        result = bench(config, device=device, batch_size=batch_size, steps=steps, warmup=warmup)
        step_s = statistics.median(result["step_s"])
        bound = statistics.median(result["matmul_flops_per_s"])
        fraction = statistics.median(
            flops * batch_size / t / b for t, b in zip(result["step_s"], result["matmul_flops_per_s"])
        )
        images_per_s = batch_size / step_s
        first = first or images_per_s
        print(
            f"| {config.name} | {images_per_s:,.1f} | {step_s * 1e3:,.0f} | {flops * images_per_s / 1e12:.3f} "
            f"| {bound / 1e12:.3f} | {fraction:.0%} | {images_per_s / first:.2f}x | {result['warmup_s']:.1f} |",
            flush=True,
        )
    if hasattr(os, "getloadavg"):
        print(f"\n# load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
