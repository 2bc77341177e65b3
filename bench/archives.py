"""The archive index pass (`pipelines.archives.index_tar`) against reading the archive through.

On generated archives laid out as ImageNet ships them (cached under work/bench/archives-*):

    flat     ILSVRC2012_img_val.tar's form: N members of random bytes, sizes uniform in
             [0.5, 1.5] x --member-kb (ImageNet's train JPEGs average 108 KB: 138 GB / 1.28 M)
    nested   ILSVRC2012_img_train.tar's form: the same members in inner tars of --per-inner

Rows, each on the same file in the same process:

    index          index_tar: one pass over the headers, seeking over the data
    stream (base)  tarfile "r|" reading every member's data (nested: each inner tar streamed from
                   the outer one): what extracting costs before a byte is written
    index + read   index_tar, then read_members of every member by offset: what the shard writer does

Warm: the file in the page cache, wall and CPU seconds each the best of --repeats. Cold: the file's pages dropped first with
posix_fadvise(DONTNEED) (this file only; nothing else on the machine is touched), one run. Bytes
"read" are what the process asked the kernel for (/proc/self/io rchar); "from disk" is what the
kernel fetched from storage for it (read_bytes), readahead included.

    python bench/archives.py [--members 10000] [--member-kb 108] [--per-inner 1000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.archives import index_tar, read_members  # noqa: E402


def load() -> str:
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "n/a"


def proc_io() -> dict[str, int]:
    """This process's I/O counters (Linux); zeros elsewhere."""
    try:
        with open("/proc/self/io") as f:
            return {k: int(v) for k, v in (line.split(": ") for line in f)}
    except OSError:
        return {"rchar": 0, "read_bytes": 0}


# --- data: generated once ---------------------------------------------------------------------


def _add(tar: tarfile.TarFile, name: str, data) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 1_336_000_000
    tar.addfile(info, io.BytesIO(data))


def generate(folder: Path, members: int, member_kb: float, per_inner: int) -> tuple[Path, Path]:
    flat, nested = folder / "ILSVRC2012_img_val.tar", folder / "ILSVRC2012_img_train.tar"
    marker = folder / ".complete"
    if marker.exists():
        return flat, nested
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 256, 8 << 20, dtype=np.uint8).tobytes()
    mean = int(member_kb * 1000)
    sizes = rng.integers(mean // 2, mean * 3 // 2 + 1, members)
    starts = rng.integers(0, len(pool) - sizes.max(), members)
    data = [memoryview(pool)[s : s + n] for s, n in zip(starts, sizes)]
    with tarfile.open(flat, "w", format=tarfile.GNU_FORMAT) as tar:
        for i, d in enumerate(data):
            _add(tar, f"ILSVRC2012_val_{i + 1:08d}.JPEG", d)
    with tarfile.open(nested, "w", format=tarfile.GNU_FORMAT) as outer:
        for k in range(0, members, per_inner):
            wnid = f"n{k // per_inner:08d}"
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as inner:
                for i in range(k, min(members, k + per_inner)):
                    _add(inner, f"{wnid}_{i}.JPEG", data[i])
            _add(outer, f"{wnid}.tar", buf.getbuffer())
    for path in (flat, nested):
        with open(path, "rb") as f:
            os.fsync(f.fileno())  # written back, so DONTNEED can drop the pages
    marker.touch()
    return flat, nested


def drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


# --- what is timed ------------------------------------------------------------------------------


def stream_all(path: Path, nested: bool) -> int:
    n = 0
    with tarfile.open(path, "r|") as tar:
        for info in tar:
            if not info.isreg():
                continue
            f = tar.extractfile(info)
            if not nested:
                f.read()
                n += 1
                continue
            with tarfile.open(fileobj=f, mode="r|") as inner:
                for member in inner:
                    if member.isreg():
                        inner.extractfile(member).read()
                        n += 1
    return n


def index_only(path: Path, nested: bool) -> int:
    return len(index_tar(path, nested=nested))


def index_and_read(path: Path, nested: bool) -> int:
    return sum(1 for _ in read_members(path, index_tar(path, nested=nested)))


ROWS = (("index", index_only), ("stream (baseline)", stream_all), ("index + read", index_and_read))


def measure(fn, path: Path, nested: bool, *, cold: bool, repeats: int) -> dict:
    best = None
    for _ in range(1 if cold else repeats):
        if cold:
            drop_cache(path)
        before, t, cpu = proc_io(), time.perf_counter(), time.process_time()
        n = fn(path, nested)
        seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
        after = proc_io()
        run = {"n": n, "s": seconds, "cpu": cpu, "read": after["rchar"] - before["rchar"], "disk": after["read_bytes"] - before["read_bytes"]}
        # Wall and CPU each at their best: on a shared machine the load moves them apart.
        best = run if best is None else {**run, "s": min(best["s"], seconds), "cpu": min(best["cpu"], cpu)}
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--member-kb", type=float, default=108)
    parser.add_argument("--per-inner", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data", default=None, help="default: work/bench/archives-<members>x<kb>kb")
    parser.add_argument("--no-cold", action="store_true", help="skip the cold-cache runs")
    args = parser.parse_args()

    folder = Path(args.data or f"work/bench/archives-{args.members}x{args.member_kb:g}kb")
    t = time.perf_counter()
    flat, nested = generate(folder, args.members, args.member_kb, args.per_inner)
    if time.perf_counter() - t > 1:
        print(f"generated the archives in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    print(
        f"# {args.members} members, {os.path.getsize(flat) / 1e9:.2f} GB flat / {os.path.getsize(nested) / 1e9:.2f} GB nested "
        f"({args.per_inner} a inner tar), {os.cpu_count()} CPUs, load {load()}"
    )
    print(f"{'':8}{'':19}{'cache':>6}{'s':>8}{'s/10k':>8}{'CPU s':>8}{'members/s':>11}{'MB read':>9}{'MB disk':>9}")
    figures = {}
    for form, path, is_nested in (("flat", flat, False), ("nested", nested, True)):
        for cold in ([False] if args.no_cold else [False, True]):
            for row, fn in ROWS:
                r = measure(fn, path, is_nested, cold=cold, repeats=args.repeats)
                assert r["n"] == args.members, (row, r["n"])
                figures[form, row, cold] = r
                print(
                    f"{form:8}{row:19}{'cold' if cold else 'warm':>6}{r['s']:>8.2f}{r['s'] / r['n'] * 1e4:>8.3f}{r['cpu']:>8.2f}"
                    f"{r['n'] / r['s']:>11.0f}{r['read'] / 1e6:>9.1f}{r['disk'] / 1e6:>9.1f}"
                )
    for form in ("flat", "nested"):
        for cold in ([False] if args.no_cold else [False, True]):
            base, ours = figures[form, "stream (baseline)", cold], figures[form, "index", cold]
            print(
                f"{form} {'cold' if cold else 'warm'}: streaming / index = {base['s'] / ours['s']:.1f}x wall, "
                f"{base['cpu'] / ours['cpu']:.1f}x CPU"
            )
    print(f"# load at end {load()}")


if __name__ == "__main__":
    main()
