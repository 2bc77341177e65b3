#!/usr/bin/env bash
# Issue 11's GPU measurements in one run of at most 7 minutes on a lent GPU machine: one GPU, its CPUs,
# PyTorch (torchvision optional: the nvJPEG row), no Ray, no network, nothing installed. It generates
# its own data (2,000 ImageNet-sized JPEGs) and appends every row to $OUT/gpu-rows.jsonl as soon as
# it is measured, so a run cut short keeps what it had.
#
#   bash bench/gpu.sh                 # from the repository root; OUT defaults to work/bench
#
# 1. bench/model.py --device cuda, eager (cl-bf16), batch 256: the bare step without compilation.
# 2. bench/loader.py --device cuda --compile: bench/model.py's compiled bare step (cl-bf16-compile),
#    then trainers.loop.train_one_epoch on the same compiled model, on synthetic batches and fed by
#    DataLoader workers running our transform, all in one process: the ratios the issue asks for.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-work/bench}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
  "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
  "$PY" -c 'import torchvision; print("torchvision", torchvision.__version__)' 2>&1 | tail -1
  nproc; uptime
} > "$OUT/gpu-machine.txt" 2>&1
cat "$OUT/gpu-machine.txt"
timeout 100 "$PY" bench/model.py --device cuda --configs cl-bf16 --batch-size 256 --steps 20 --warmup 5 | tee "$OUT/gpu-model.md"
timeout 310 "$PY" bench/loader.py --device cuda --compile --batch-size 256 --steps 30 --warmup 5 \
  --images 2000 --data "${DATA:-/tmp/incept-bench}" --out "$OUT/gpu-rows.jsonl"
echo "rows: $OUT/gpu-rows.jsonl"
