"""Input-pipeline throughput per core: our Ray Data stream against the DataLoader a PyTorch user writes.

On the same WebDataset shards (ImageNet-sized JPEGs, generated once under work/bench/loader-*):

    ours      train_dataset(...).iter_batches(batch_size=64): Ray Data, Inception crop (draft-decoded
              where the crop allows), flip; uint8 NHWC. Two rows: colour on the training device (the
              default, data.color_on: device: nothing more on the CPU) and TF colour on the CPU
    baseline  webdataset.WebDataset -> torch DataLoader(num_workers=N): PIL full decode,
              RandomResizedCrop (torchvision's sampling, inline), flip, to float tensor, normalise
    decode    the same DataLoader, PIL full decode and nothing else: the floor for any full decode

Two figures per row. Per core: images/s divided by N (Ray's num_cpus, the DataLoader's workers);
on a machine that others load this is a share of the cores as much as a cost. Per CPU-second:
images per second of CPU used by every process involved (loader workers, the main process, Ray's
driver, raylet, GCS and its actors), read from /proc: the cost, whatever the load. Ray's start-up
and the first epoch after it (worker imports, Ray Data's own actors) are timed apart and left out:
once per cluster, not per epoch.

    python bench/loader.py [--images 2000] [--num-cpus 2] [--repeats 3] [--json]
    python bench/loader.py --profile        # one process: where our transform's time goes
    python bench/loader.py --device cuda [--compile] [--out rows.jsonl]
                                            # training img/s through trainers.loop.train_one_epoch
                                            # (its feed: pinned memory, side stream, colour on the
                                            # device), fed by DataLoader workers running our transform
                                            # (no Ray), against the bare step of bench/model.py and
                                            # the same loop on synthetic batches, in one process

The cuda mode needs only torch, numpy and Pillow (webdataset if present; else a plain tar reader).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import math
import os
import random
import shutil
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESOLUTION = 299
AREA = (0.08, 1.0)  # torchvision's RandomResizedCrop defaults, also DataSection's
RATIO = (3 / 4, 4 / 3)
MEAN = (0.5, 0.5, 0.5)  # the model's data config: [-1, 1]
STD = (0.5, 0.5, 0.5)


def load() -> str:
    """The 1-minute load average: other processes skew every figure here."""
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "n/a"


# --- data: generated once ---------------------------------------------------------------------


def _make_part(args: tuple) -> str:
    out, images, seed, source = args
    from pipelines.sample_data import make_sample_set

    make_sample_set(out, classes=10, train_per_class=max(1, images // 10), val_per_class=0, seed=seed, source=source)
    return out


def _source() -> str:
    try:
        import sklearn  # noqa: F401  (the digits source renders scikit-learn's bundled digits)

        return "digits"
    except ImportError:
        return "synthetic"


def prepare_shards(root: str, *, images: int, shard_size: int, with_ray: bool, num_cpus: int) -> str:
    """Shards of `images` generated JPEGs under `root`, made once; returns their folder.

    With Ray: make_sample_set + `incept shard` (pipelines.shard), which also writes the manifest
    train_dataset reads. Without (the GPU box): make_sample_set in parallel parts + the project's
    deterministic tar writer; there is no manifest, and only the no-Ray loaders read them.
    """
    kind = "ray" if with_ray else "plain"
    src = Path(root, f"loader-src-{images}-{kind}")
    out = Path(root, f"loader-shards-{images}-{shard_size}-{kind}")
    marker = out / ".complete"
    if marker.exists():
        return str(out)
    shutil.rmtree(src, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    if with_ray:
        import ray

        from pipelines.shard import ShardOptions, plan_job, run_job

        _make_part((str(src), images, 0, _source()))
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        try:
            run_job(plan_job(str(src), "train", str(out), ShardOptions(shard_size=shard_size)), concurrency=num_cpus)
        finally:
            ray.shutdown()
    else:
        from multiprocessing import Pool

        from pipelines.tar_writer import ShardWriter

        per_class = max(1, images // 10)
        parts = max(p for p in range(1, max(1, num_cpus) + 1) if per_class % p == 0)  # exactly `images`
        jobs = [(str(src / f"part{k}"), images // parts, k, _source()) for k in range(parts)]
        with Pool(parts) as pool:
            pool.map(_make_part, jobs)
        files = sorted(src.rglob("*.JPEG"))
        out.mkdir(parents=True)
        for first in range(0, len(files), shard_size):
            with open(out / f"plain-{first // shard_size:06d}.tar", "wb") as f:
                writer = ShardWriter(f)
                for path in files[first : first + shard_size]:
                    key = f"{path.parent.parent.parent.name}_{path.stem}"  # partK_nXXXXXXXX_N: no dots
                    writer.add(key, {"jpg": path.read_bytes(), "cls": str(int(path.parent.name[1:])).encode()})
                writer.close()
    shutil.rmtree(src, ignore_errors=True)  # the shards are what is read
    marker.touch()
    print(f"generated and sharded {images} images in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return str(out)


def shard_paths(folder: str) -> list[str]:
    return sorted(str(p) for p in Path(folder).glob("*.tar"))


def read_tar(path: str):
    """Samples of one WebDataset tar as dicts {__key__, ext: bytes}: the fallback when webdataset is missing."""
    sample: dict = {}
    with tarfile.open(path, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            base = member.name.rsplit("/", 1)[-1]
            key, _, ext = base.partition(".")
            if sample and sample["__key__"] != key:
                yield sample
                sample = {}
            sample["__key__"] = key
            sample[ext] = tar.extractfile(member).read()
    if sample:
        yield sample


# --- the baseline: what a PyTorch user writes ---------------------------------------------------


def random_resized_crop_box(width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params, inline: (left, top, right, bottom)."""
    area = width * height
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*AREA)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left = rng.randint(0, width - w)
            top = rng.randint(0, height - h)
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < RATIO[0]:
        w, h = width, int(round(width / RATIO[0]))
    elif in_ratio > RATIO[1]:
        w, h = int(round(height * RATIO[1])), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


class TorchvisionStyle:
    """RandomResizedCrop(299) -> RandomHorizontalFlip -> ToTensor -> Normalize, on a decoded PIL image."""

    def __init__(self) -> None:

        self.rng = random.Random()
        self.mean = torch.tensor(MEAN).view(3, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1)

    def __call__(self, img):
        from PIL import Image

        img = img.crop(random_resized_crop_box(*img.size, self.rng)).resize((RESOLUTION, RESOLUTION), Image.Resampling.BILINEAR)
        if self.rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.array(img, copy=True)).permute(2, 0, 1).contiguous()  # ToTensor
        x = x.float().div_(255)
        return x.sub_(self.mean).div_(self.std)  # Normalize


def _decoded_only(img) -> int:
    return 0  # the image was decoded by .decode("pil"); nothing else is done with it


def wds_loader(paths: list[str], *, num_workers: int, batch_size: int, transform):
    import webdataset as wds

    dataset = (
        wds.WebDataset(paths, shardshuffle=False, empty_check=False)
        .decode("pil")  # Image.open + full decode + convert("RGB")
        .to_tuple("jpg", "cls")
        .map_tuple(transform, int)
    )
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)


def tree_cpu_seconds(root: int | None = None) -> float | None:
    """CPU seconds (user + system) of process `root` and every descendant, reaped ones included; Linux only.

    Wall-clock images/s on a machine others load is a share of the cores, not a cost; CPU seconds per
    image are the cost, whatever the load. The tree holds the DataLoader's workers (reaped into the
    main process's cutime when it joins them) and Ray's raylet, GCS and workers (children of the driver).
    """
    root = os.getpid() if root is None else root
    if not os.path.isdir("/proc"):
        return None
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        pid = int(entry)
        children.setdefault(int(fields[1]), []).append(pid)  # fields[1]: ppid
        ticks[pid] = sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += ticks.get(pid, 0)
        todo.extend(children.get(pid, ()))
    return total / os.sysconf("SC_CLK_TCK")


def time_loader(batches) -> tuple[int, float, float | None]:
    """(images, wall seconds, CPU seconds of this process tree) for one pass over `batches`."""
    n = 0
    cpu = tree_cpu_seconds()
    t = time.perf_counter()
    for batch in batches:
        n += len(batch["label"]) if isinstance(batch, dict) else len(batch[1])
    wall = time.perf_counter() - t
    after = tree_cpu_seconds()
    return n, wall, None if cpu is None else after - cpu


# --- ours -------------------------------------------------------------------------------------


def ours_batches(uri: str, *, color: bool, batch_rows: int, batch_size: int, unfused: bool = False):
    from pipelines.stream import train_dataset

    if unfused:
        # The wiring before the fix in pipelines/stream.py: Ray splits each shard's read into ~10
        # blocks and map_batches(batch_size=...) does not fuse with the read (kept as the evidence).
        import ray.data

        from pipelines import manifest
        from pipelines.transforms import train_transform

        fn = train_transform(resolution=RESOLUTION, area=AREA, ratio=RATIO, flip=True, color=color)
        ds = ray.data.read_webdataset(manifest.shard_uris(uri, manifest.read(uri)), decoder=None, file_extensions=["tar"], shuffle="files")
        ds = ds.map_batches(fn, batch_format="numpy", batch_size=batch_rows)
    else:
        ds = train_dataset(uri, resolution=RESOLUTION, area=AREA, ratio=RATIO, flip=True, color=color, batch_rows=batch_rows)
    return ds.iter_batches(batch_size=batch_size, batch_format="numpy")


DECODE = "decode only (PIL full decode)"
BASELINE = "baseline (wds + DataLoader)"
OURS = "ours, colour on the device (as GPU training runs it)"
OURS_COLOUR = "ours, TF colour on the CPU (data.color_on: cpu)"
OURS_UNFUSED = "ours, no colour, unfused read"


def cpu_bench(args) -> None:
    import json
    import statistics

    import ray
    import ray.data

    n_cpu = args.num_cpus
    uri = prepare_shards(args.data, images=args.images, shard_size=args.shard_size, with_ray=True, num_cpus=n_cpu)
    paths = shard_paths(uri)
    out = sys.stderr if args.json else sys.stdout  # --json: the table goes to stderr, the object alone to stdout
    print(f"# data: {args.images} JPEGs in {len(paths)} shards, {sum(os.path.getsize(p) for p in paths) / args.images / 1e3:.0f} KB per sample", file=out)
    print(f"# machine: {os.cpu_count()} CPUs, N = {n_cpu}; torch {torch.__version__}, ray {ray.__version__}; resolution {RESOLUTION}, batch {args.batch_size}", file=out)

    rows = {}  # name -> list of (images/s, images per CPU-second, load)

    def record(name: str, result: tuple) -> None:
        n, wall, cpu = result
        assert n == args.images, (name, n, args.images)
        rows.setdefault(name, []).append((n / wall, n / cpu if cpu else float("nan"), load()))
        print(f"  {name}: {n / wall:.0f} images/s, {cpu or float('nan'):.1f} CPU s in {wall:.1f} s (load {load()})", file=sys.stderr)

    startup, first = [], []
    for _ in range(args.repeats):
        record(DECODE, time_loader(wds_loader(paths, num_workers=n_cpu, batch_size=args.batch_size, transform=_decoded_only)))
        record(BASELINE, time_loader(wds_loader(paths, num_workers=n_cpu, batch_size=args.batch_size, transform=TorchvisionStyle())))
        t = time.perf_counter()
        ray.init(address="local", num_cpus=n_cpu, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        startup.append(time.perf_counter() - t)
        try:
            ray.data.DataContext.get_current().enable_progress_bars = False
            # The first execution in a fresh Ray also starts Ray Data's stats and autoscaling actors and
            # imports the pipeline in every worker: a once-per-cluster cost, timed apart like start-up.
            _, wall, cpu = time_loader(ours_batches(uri, color=False, batch_rows=args.batch_rows, batch_size=args.batch_size))
            first.append((wall, cpu))
            record(OURS, time_loader(ours_batches(uri, color=False, batch_rows=args.batch_rows, batch_size=args.batch_size)))
            record(OURS_COLOUR, time_loader(ours_batches(uri, color=True, batch_rows=args.batch_rows, batch_size=args.batch_size)))
            if args.unfused:
                record(OURS_UNFUSED, time_loader(ours_batches(uri, color=False, batch_rows=args.batch_rows, batch_size=args.batch_size, unfused=True)))
        finally:
            ray.shutdown()

    # The median of the repeats, each column on its own: one disturbed run does not decide it.
    med = {name: (statistics.median(v[0] for v in values), statistics.median(v[1] for v in values), values) for name, values in rows.items()}
    print(f"\n{'':52}{'images/s':>10}{'per core':>10}{'per CPU-s':>11}  load at each run", file=out)
    for name, (rate, per_cpu, values) in med.items():
        print(f"{name:52}{rate:>10.0f}{rate / n_cpu:>10.1f}{per_cpu:>11.1f}  {', '.join(v[2] for v in values)}", file=out)
    print(f"excluded: Ray start-up {min(startup):.1f} s; our first epoch after it (warm-up) {min(first)[0]:.1f} s, {min(first)[1] or float('nan'):.1f} CPU s", file=out)
    print("per core = images/s / N; per CPU-s = images per CPU-second of every process involved (loader, workers, Ray's daemons)", file=out)
    report = {"images": args.images, "num_cpus": n_cpu, "cpus": os.cpu_count(), "repeats": args.repeats, "statistic": "median",
              "torch": torch.__version__, "ray": ray.__version__, "load_average_end": load(), "rows": {}}
    for name, (rate, per_cpu, values) in med.items():
        report["rows"][name] = {
            "images_per_s": round(rate, 1),
            "ratio_per_core": round(rate / med[BASELINE][0], 3),  # N is the same for both: per core is images/s over N
            "ratio_per_cpu_s": round(per_cpu / med[BASELINE][1], 3),
            "images_per_cpu_s": round(per_cpu, 1),
            "load_at_each_run": [v[2] for v in values],
        }
    for name in (OURS, OURS_COLOUR, OURS_UNFUSED):
        if name in med:
            row = report["rows"][name]
            print(f"ratio {name} / baseline: {row['ratio_per_core']:.2f}x per core, {row['ratio_per_cpu_s']:.2f}x per CPU-s", file=out)
    print(f"median of {args.repeats}; load average now {load()} on {os.cpu_count()} CPUs", file=out)
    if args.json:
        print(json.dumps(report))


# --- profile: one process, no Ray ---------------------------------------------------------------


def profile(args) -> None:
    """Per-image cost of each stage on one core, and cProfile's view of our transform."""
    import cProfile
    import pstats

    from PIL import Image

    from pipelines import augment
    from pipelines.transforms import train_transform

    uri = prepare_shards(args.data, images=args.images, shard_size=args.shard_size, with_ray=True, num_cpus=args.num_cpus)
    samples = [s for p in shard_paths(uri) for s in read_tar(p)][: args.profile_images]
    jpegs = [s["jpg"] for s in samples]
    rng = np.random.default_rng(0)
    decoded = [np.asarray(Image.open(io.BytesIO(j)).convert("RGB")) for j in jpegs]
    crops = [
        augment.decode_cropped(j, lambda w, h: augment.inception_crop_box(rng, w, h, area=AREA, ratio=RATIO), RESOLUTION)
        for j in jpegs
    ]

    def per_image(fn, items) -> float:
        """CPU ms per item (process time: what the other processes on the machine do not change)."""
        t = time.process_time()
        for item in items:
            fn(item)
        return (time.process_time() - t) / len(items) * 1e3

    torch.set_num_threads(1)  # as in a DataLoader worker
    tv = TorchvisionStyle()
    planar = [augment.to_planar(c) for c in crops]
    stages = [
        ("PIL open + full decode + RGB", lambda j: Image.open(io.BytesIO(j)).convert("RGB"), jpegs),
        ("baseline: crop + resize + flip + tensor + normalise (on decoded)", lambda a: tv(Image.fromarray(a)), decoded),
        ("ours: decode_cropped (draft decode + crop-resize)", lambda j: augment.decode_cropped(j, lambda w, h: augment.inception_crop_box(rng, w, h, area=AREA, ratio=RATIO), RESOLUTION), jpegs),
        ("ours: color_distort (uint8 in, uint8 out)", lambda c: augment.color_distort(c, rng), crops),
        ("  to_planar", augment.to_planar, crops),
        ("  adjust_brightness", lambda p: augment.adjust_brightness(p, 0.1), planar),
        ("  adjust_saturation", lambda p: augment.adjust_saturation(p, 1.3), planar),
        ("  adjust_hue", lambda p: augment.adjust_hue(p, 0.1), planar),
        ("  adjust_contrast", lambda p: augment.adjust_contrast(p, 1.3), planar),
        ("  to_hwc_uint8", augment.to_hwc_uint8, planar),
    ]
    print(f"# {len(jpegs)} images, one process, load {load()}")
    print(f"{'stage':66}{'CPU ms/image':>13}")
    for name, fn, items in stages:
        print(f"{name:66}{per_image(fn, items):>13.2f}")

    batches = [{"jpg": np.array(jpegs[i : i + args.batch_rows], dtype=object), "cls": np.array([s["cls"] for s in samples[i : i + args.batch_rows]], dtype=object)} for i in range(0, len(jpegs), args.batch_rows)]
    for color in (False, True):
        fn = train_transform(resolution=RESOLUTION, area=AREA, ratio=RATIO, flip=True, color=color)
        t = time.process_time()
        for b in batches:
            fn(b)
        rate = len(jpegs) / (time.process_time() - t)
        print(f"train_transform(color={color}) in-process: {rate:.0f} images per CPU-second (load {load()})")
    fn = train_transform(resolution=RESOLUTION, area=AREA, ratio=RATIO, flip=True, color=True)
    prof = cProfile.Profile()
    prof.enable()
    for b in batches:
        fn(b)
    prof.disable()
    print("\ncProfile, train_transform(color=True), top 15 by own time:")
    pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(15)


# --- cuda: end-to-end training through train_one_epoch, no Ray --------------------------------


class TransformedShards(torch.utils.data.IterableDataset):
    """Our train transform in DataLoader workers, without Ray: each worker loops over its own shards.

    Yields chunks of `rows` samples: {"image": uint8 NHWC, "label": int64} as tensors (DataLoader
    passes tensors through shared memory instead of pickling them), or with decode False the crop
    transform's {"jpg", "box", "flip", "label"} for a device that decodes; the main process re-cuts
    them into training batches with `equal_batches`, as the Ray Train loop does.
    """

    def __init__(self, paths: list[str], *, rows: int, color: bool, decode: bool = True):
        self.paths = paths
        self.rows = rows
        self.color = color
        self.decode = decode

    def _samples(self, paths):
        try:
            import webdataset as wds

            # Raw bytes (no .decode): our transform decodes. Shards were split among workers already.
            yield from wds.WebDataset(paths, shardshuffle=False, empty_check=False, nodesplitter=None, workersplitter=None, repeat=True)
        except ImportError:
            yield from (s for p in itertools.cycle(paths) for s in read_tar(p))

    def __iter__(self):
        from pipelines.transforms import train_crop_transform, train_transform

        info = torch.utils.data.get_worker_info()
        mine = (self.paths[info.id :: info.num_workers] if info is not None else self.paths) or self.paths
        if self.decode:
            transform = train_transform(resolution=RESOLUTION, area=AREA, ratio=RATIO, flip=True, color=self.color)
        else:
            transform = train_crop_transform(resolution=RESOLUTION, area=AREA, ratio=RATIO, flip=True)
        samples = self._samples(mine)
        while True:
            chunk = list(itertools.islice(samples, self.rows))
            batch = transform({"jpg": np.array([s["jpg"] for s in chunk], dtype=object), "cls": np.array([s["cls"] for s in chunk], dtype=object)})
            yield {k: torch.from_numpy(v) if v.dtype != object else v for k, v in batch.items()}


def _bench_model_module():
    """bench/model.py, loaded by path (it loads the model by path too): its bare step is the reference."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_model", Path(__file__).with_name("model.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def loop_bench(args) -> None:
    """Every row in one process on one device: the bare step, the loop on synthetic batches, the loop fed by the loader.

    Meant for a GPU (--device cuda); `--loop --device cpu` with a few small steps runs the same code as a smoke test.
    """
    import json
    import statistics

    from pipelines.stream import equal_batches
    from trainers.config import OptimSection
    from trainers.ema import ModelEma
    from trainers.feed import Feed
    from trainers.inception_v3 import inception_v3
    from trainers.loop import train_one_epoch
    from trainers.optim import RMSpropTF, param_groups_weight_decay

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no GPU here")
    torch.backends.cudnn.benchmark = True
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else contextlib.nullcontext
    workers = args.workers or os.cpu_count()
    try:
        import webdataset  # noqa: F401

        reader = "webdataset"
    except ImportError:
        reader = "plain tar reader"
    try:
        import torchvision  # noqa: F401  (data.decode_on: gpu needs it)

        nvjpeg = True
    except ImportError:
        nvjpeg = False
    bs, steps, warmup = args.batch_size, args.steps, max(1, args.warmup)
    machine = f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, torch {torch.__version__}, {os.cpu_count()} CPUs, {workers} loader workers ({reader})"
    print(f"# {machine}")
    print(f"# batch {bs}, {steps} timed steps after {warmup}; channels_last{', bf16 autocast' if device.type == 'cuda' else ', fp32'}{', torch.compile' if args.compile else ''}; loader chunks of {args.batch_rows}", flush=True)

    def emit(name: str, images_per_s: float, **extra) -> None:
        """One row, printed and appended to --out as it finishes: a run cut short keeps what it measured."""
        print(f"  {name}: {images_per_s:,.0f} images/s {extra if extra else ''}", flush=True)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            with open(args.out, "a") as f:
                f.write(json.dumps({"row": name, "images_per_s": round(images_per_s, 1), "batch": bs, "compile": args.compile, "machine": machine, "load": load(), **extra}) + "\n")

    # The reference: bench/model.py's bare forward + backward, same batch, this process.
    bench_model = _bench_model_module()
    config = bench_model.CONFIGS[("cl-bf16" if device.type == "cuda" else "cl-fp32") + ("-compile" if args.compile else "")]
    timed = bench_model.bench(config, device=device, batch_size=bs, steps=steps, warmup=warmup)
    bare = bs / statistics.median(timed["step_s"])
    emit(f"bench/model.py {config.name} (bare step)", bare, warmup_s=round(timed["warmup_s"], 1))

    uri = prepare_shards(args.data, images=args.images, shard_size=args.shard_size, with_ray=False, num_cpus=os.cpu_count())
    paths = shard_paths(uri)

    optim = OptimSection()
    torch.manual_seed(0)
    model = inception_v3().to(device).to(memory_format=torch.channels_last)
    ema = ModelEma(model, optim.ema_decay)
    optimizer = RMSpropTF(param_groups_weight_decay(model, optim.weight_decay), lr=1e-3, alpha=optim.alpha, momentum=optim.momentum, eps=optim.eps)
    step_model = torch.compile(model) if args.compile else model

    def run(batches, feed: Feed) -> float:
        """images/s of train_one_epoch over `steps` batches, after `warmup` untimed ones from the same stream."""
        stream = iter(batches)

        def epoch(n: int):
            return train_one_epoch(step_model, ema, itertools.islice(stream, n), optimizer, optim=optim, lr_at=lambda step: 1e-3,
                                   first_step=0, feed=feed, resolution=RESOLUTION, autocast=autocast)

        epoch(warmup)  # ends with a read: the GPU is idle when the timed epoch starts
        stats = epoch(steps)  # its clock stops after its final read, so it times the GPU's work
        return stats.images / stats.seconds

    def loader(color: bool, decode: bool = True):
        dataset = TransformedShards(paths, rows=args.batch_rows, color=color, decode=decode)
        chunks = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers, prefetch_factor=4)
        return equal_batches(({k: v.numpy() if torch.is_tensor(v) else v for k, v in b.items()} for b in chunks), batch_size=bs, steps=warmup + steps)

    rng = np.random.default_rng(0)
    fixed = {"image": rng.integers(0, 256, (bs, RESOLUTION, RESOLUTION, 3), dtype=np.uint8), "label": rng.integers(0, 1000, bs)}
    synthetic = run(itertools.repeat(fixed), Feed(device=device))
    emit("train_one_epoch, synthetic uint8 batches", synthetic, of_bare=round(synthetic / bare, 3))
    synthetic_colour = run(itertools.repeat(fixed), Feed(device=device, color=True))
    emit("train_one_epoch, synthetic, colour on the device", synthetic_colour, of_bare=round(synthetic_colour / bare, 3))

    rows = [("our transform, colour on the device (as trained)", dict(color=False), Feed(device=device, color=True)),
            ("our transform, TF colour on the CPU", dict(color=True), Feed(device=device))]
    if nvjpeg:
        rows.append(("crops on the CPU, decode + colour on the device (nvJPEG)", dict(color=False, decode=False), Feed(device=device, color=True)))
    for name, kind, feed in rows:
        rate = run(loader(**kind), feed)
        stream = loader(**kind)  # the loader with nothing consuming it: does it or the GPU bound the row above?
        for _ in itertools.islice(stream, warmup):
            pass
        t = time.perf_counter()
        alone = sum(len(b["label"]) for b in stream) / (time.perf_counter() - t)
        emit(f"train_one_epoch, {name}", rate, of_bare=round(rate / bare, 3), of_synthetic=round(rate / synthetic, 3), loader_alone=round(alone, 1))
    if not nvjpeg:
        print("  (no torchvision here: the nvJPEG row was not run)")
    print(f"load average at end: {load()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--shard-size", type=int, default=125, help="samples per shard: enough shards for every worker")
    parser.add_argument("--data", default="work/bench", help="shards are generated once under DATA/loader-*, reused by later runs")
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count(), help="N: Ray's num_cpus and the DataLoader's workers")
    parser.add_argument("--batch-size", type=int, default=None, help="images per batch (default: cpu 64, cuda 256)")
    parser.add_argument("--batch-rows", type=int, default=32, help="rows per transform call (our stream's batch_rows; cuda: per loader chunk)")
    parser.add_argument("--repeats", type=int, default=3, help="the median of this many runs of each is reported")
    parser.add_argument("--json", action="store_true", help="cpu: print the figures and ratios as one JSON object on stdout (the table on stderr)")
    parser.add_argument("--unfused", action="store_true", help="cpu: also time the unfused read (the wiring before pipelines/stream.py's fix)")
    parser.add_argument("--profile", action="store_true", help="one process: per-stage cost and cProfile of our transform")
    parser.add_argument("--profile-images", type=int, default=256)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--workers", type=int, default=None, help="cuda: DataLoader workers (default: all CPUs)")
    parser.add_argument("--steps", type=int, default=30, help="cuda: timed training steps")
    parser.add_argument("--warmup", type=int, default=5, help="cuda: untimed steps first (at least 1)")
    parser.add_argument("--loop", action="store_true", help="training through train_one_epoch on --device (implied by --device cuda)")
    parser.add_argument("--compile", action="store_true", help="cuda: torch.compile the model (default mode), in the bare step and the loop")
    parser.add_argument("--out", default="", help="cuda: append each row to this file as a JSON line as soon as it is measured")
    args = parser.parse_args()
    args.batch_size = args.batch_size or (256 if args.device == "cuda" else 64)
    if args.profile:
        profile(args)
    elif args.loop or args.device == "cuda":
        loop_bench(args)
    else:
        cpu_bench(args)


if __name__ == "__main__":
    main()
