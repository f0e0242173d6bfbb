#!/usr/bin/env bash
# Every GPU check in one call, for a machine with one NVIDIA GPU (issue 3's measurement).
# Runs from the repository root without installing cvpipe (PYTHONPATH=src); needs torch,
# torchvision, OpenCV, numpy, matplotlib and tqdm. Writes everything under $OUT.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_checks.sh
set -euo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1
OUT=${OUT:-results/gpu-checks}
mkdir -p "$OUT"
nvidia-smi | tee "$OUT/nvidia-smi.txt"
python3 -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())" | tee "$OUT/versions.txt"

# 1. CUDA correctness: a short training per AMP mode on the built-in data, checked for finite,
#    falling losses (fp16 exercises the GradScaler, bf16 the default).
python3 - <<'PY' 2>&1 | tee "$OUT/amp.txt"
import csv, math, tempfile
from pathlib import Path
from cvpipe.index import write_index
from cvpipe.preprocess import preprocess
from cvpipe.synth import make_dataset
from cvpipe.train import TrainConfig, train

work = Path(tempfile.mkdtemp())
make_dataset(work / "data", 64, 64, seed=0, threads=8)
write_index(work / "data", work / "m.csv", work / "b.csv", {"train": 0.7, "val": 0.15, "test": 0.15}, 0, threads=8)
preprocess(work / "m.csv", work / "data", work / "cache", 64, threads=8)
for amp in ("bf16", "fp16", "off"):
    out = work / amp
    cfg = TrainConfig(model="resnet18", image_size=64, epochs=3, batch_size=64, amp=amp, channels_last=True)
    train(cfg, work / "cache", out / "model.pt", out / "history.csv")
    rows = list(csv.DictReader(open(out / "history.csv")))
    losses = [float(r["train_loss"]) for r in rows]
    ok = all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    print(f"amp={amp}: train loss {losses} -> {'OK' if ok else 'FAILED'}")
PY

# 2. Throughput on the built-in data at 224 px: (a) pipeline loader vs (b) on-device tensors,
#    bf16 vs fp32, eager vs compile, ResNet-50 and ResNet-18.
python3 -m cvpipe bench train --models resnet50,resnet18 --image-size 224 --batch-size 256 \
  --amp bf16 --channels-last --compile --workers 8 --steps 60 --warmup 20 \
  --json "$OUT/train.json" | tee "$OUT/train.md"
