#!/usr/bin/env bash
# The GPU benchmarks in one run of at most 8 minutes on one H100, through the `device` tool:
#
#   run(command="bash bench/gpu.sh", carry=[".device/ray312"], timeout_s=540)
#
# .device/ray312 is Ray for the device's Python 3.12, built here by
# `../shared/tools/pack-ray-py312.sh .device/ray312` (about 25 MB; .device/ is git-ignored).
# Results go to $OUT/label.txt and $OUT/train.txt (what the tool brings back) and to stdout.
#
# PART=label or PART=train runs one of the two. Dry run on a CPU machine, small and without --gpu, to check the script itself before spending
# device time, with the venv first on PATH:  PATH=$PWD/.venv/bin:$PATH DRY=1 bash bench/gpu.sh
#
# 1. labeling: 50,000 JPEGs of mixed sizes (mostly 300-1,000 px, 2 % of 12 megapixels) at 299 px:
#    the bare bf16 model eager and compiled, then the pipeline with --decode device and --decode cpu
#    (4 replicas per GPU), each eager and compiled (LABEL_RUNS overrides); each mode's reading-stage
#    CPU time and bytes per image; time to first row. Then framing on the device picture by picture
#    against in groups of one stored size (bench/framing.py, seconds).
# 2. training: bench/train.py at 299 px, batch 64: cgi2real on Ray Train with --decode device and
#    --decode cpu (TRAIN_RUNS overrides) vs the bare loop, and each mode's reading-stage figures.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
export PYTHONUNBUFFERED=1 RAY_DEDUP_LOGS=0

if ! python3 -c "import ray" 2>/dev/null; then
  site=/tmp/ray312-site
  mkdir -p "$site"
  tar xJf .device/ray312/ray312.tar.xz -C "$site"
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" .device/ray312/wheels/*.whl
  export PYTHONPATH="$site"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [[ -n "${DRY:-}" ]]; then
  label=(--photos 600 --image-size 96 --decode device cpu --actors 1 --compile off --bare-images 128 --naive-images 8)
  framing=(--batch 16)
  train=(--generate --per-class 40 --image-size 96 --batch-size 16 --epochs 2 --decode device cpu)
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  label=(--gpu --photos 50000 --image-size 299 ${LABEL_RUNS:---decode device cpu --actors 4 --compile off on})
  framing=(--gpu)
  train=(--gpu --generate --per-class 2500 --image-size 299 --batch-size 64 --epochs 3 ${TRAIN_RUNS:---decode device cpu})
fi
python3 -c "import torch, torchvision, ray; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'ray', ray.__version__)"

start=$SECONDS
[[ "${PART:-all}" == train ]] || python3 bench/label.py "${label[@]}" 2>&1 | grep -v "WARNING\|INFO\|labeled (" | tee "$OUT/label.txt" || echo "labeling benchmark FAILED"
echo "labeling benchmark: $((SECONDS - start)) s"
[[ "${PART:-all}" == train ]] || python3 bench/framing.py "${framing[@]}" 2>&1 | tee "$OUT/framing.txt" || echo "framing benchmark FAILED"
start=$SECONDS
[[ "${PART:-all}" == label ]] || python3 bench/train.py "${train[@]}" 2>&1 | grep -v "WARNING\|INFO\|Reporting training result" | tee "$OUT/train.txt" || echo "training benchmark FAILED"
echo "training benchmark: $((SECONDS - start)) s"
