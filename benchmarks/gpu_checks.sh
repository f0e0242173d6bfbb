#!/usr/bin/env bash
# Every GPU check in one call, for the first machine with an NVIDIA GPU. Runs from the
# repository root without installing cvpipe (PYTHONPATH=src). Needs python3 with torch,
# torchvision, OpenCV, numpy, matplotlib, tqdm, tensorboard (training writes TensorBoard events)
# and pytest. Writes every log, summary.txt and the throughput table under $OUT.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_checks.sh
#
# The evaluate stage's calibration error needs torchmetrics (pure Python). A machine without it
# and without internet gets it from wheels made here and carried along (`.gpu-wheels` is
# git-ignored; the device tool's `carry`):
#
#   pip download --no-deps -d .gpu-wheels torchmetrics==1.9.0 lightning-utilities==0.15.3
#
# 1. correctness: `pytest -m gpu` (AMP bf16/fp16, channels_last, compile through train(),
#    2-process NCCL DDP vs 1 process when 2+ GPUs are visible, resume on the GPU, the GPU-id
#    allocator on real devices, evaluation on the GPU, deterministic mode, predict and Grad-CAM
#    on the GPU against the CPU);
# 2. throughput: `cvpipe bench train` at 224 px, (a) pipeline loader vs (b) on-device batch,
#    bf16 vs fp32, eager vs compiled, ResNet-50 and ResNet-18.
# Exits non-zero when any check failed; the throughput table is written either way.
set -uo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1
OUT=${OUT:-results/gpu-checks}
mkdir -p "$OUT"
: > "$OUT/summary.txt"
failed=0

check() {  # check NAME COMMAND...: run, log to $OUT/NAME.txt, record PASS/FAIL
    local name=$1
    shift
    echo "== $name: $*"
    if "$@" 2>&1 | tee "$OUT/$name.txt"; then
        echo "PASS $name" | tee -a "$OUT/summary.txt"
    else
        echo "FAIL $name" | tee -a "$OUT/summary.txt"
        failed=1
    fi
}

if ! python3 -c "import torchmetrics" 2>/dev/null && [ -d .gpu-wheels ]; then
    python3 -m pip install --quiet --no-deps --no-index --target "$OUT/site" .gpu-wheels/*.whl
    export PYTHONPATH="src:$OUT/site"
fi
if ! python3 -c "import torch, torchvision, cv2, tensorboard, pytest, torchmetrics" 2>"$OUT/imports.txt"; then
    cat "$OUT/imports.txt"
    echo "gpu_checks.sh needs torch, torchvision, opencv, tensorboard, pytest and torchmetrics in python3" >&2
    exit 2
fi
check environment bash -c 'nvidia-smi && python3 -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"'
check pytest-gpu python3 -m pytest -m gpu -p no:cacheprovider -v -rs tests/test_gpu.py tests/test_gpu_paths.py
check throughput python3 -m cvpipe bench train --models resnet50,resnet18 --image-size 224 \
    --batch-size 256 --amp bf16 --channels-last --compile --workers 8 --steps 60 --warmup 20 \
    --json "$OUT/train.json"
cp "$OUT/throughput.txt" "$OUT/train.md" 2>/dev/null || true

cat "$OUT/summary.txt"
exit "$failed"
