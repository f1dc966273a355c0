#!/usr/bin/env bash
# The GPU benchmarks in one run of at most 9.5 minutes on one H100/H200, through the `device` tool:
#
#   run(command="bash bench/gpu.sh", carry=[".device/ray312", ".device/eq"], timeout_s=590)
#
# .device/ray312 is Ray for the device's Python 3.12, built here by
# `../shared/tools/pack-ray-py312.sh .device/ray312` (about 33 MB; .device/ is git-ignored).
# .device/eq (optional) holds a trained package (.device/eq/pkg) and labeled photos (.device/eq/data)
# for the decoders' equivalence check; without it that part is skipped.
# Results go to $OUT/label.txt, train.txt, equivalence.txt, framing.txt (what the tool brings back)
# and to stdout. Each part runs under its own time limit (LABEL_S, TRAIN_S, EQ_S, FRAMING_S seconds)
# so that one slow part still leaves the others' figures; the parts run in that order. After a part
# that fails, `ray stop --force` stops every Ray on the machine (mind that in a dry run).
#
# PART=label, train, eq or framing runs one part. Dry run on a CPU machine, small and without --gpu,
# to check the script itself before spending device time, with the venv first on PATH:
#   PATH=$PWD/.venv/bin:$PATH DRY=1 bash bench/gpu.sh
#
# 1. labeling: 50,000 JPEGs of mixed sizes (mostly 300-1,000 px, 2 % of 12 megapixels) at 299 px:
#    the bare bf16 model eager and compiled, then the pipeline (compiled, 4 replicas per GPU) with
#    --decode cpu and --decode device (LABEL_RUNS overrides); each mode's reading-stage CPU time and
#    bytes per image; time to first row.
# 2. training: bench/train.py at 299 px, batch 64: cgi2real on Ray Train with --decode device and
#    --decode cpu (TRAIN_RUNS overrides) vs the bare loop, and each mode's reading-stage figures.
# 3. equivalence: bench/decode_equivalence.py --gpu on .device/eq: the same labels and
#    probabilities with --decode device as with --decode cpu?
# 4. framing on the device picture by picture against in groups of one stored size (bench/framing.py).
set -uo pipefail
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
  label=(--photos 600 --image-size 96 --actors 1 --compile off on --pipeline-compile off --bare-images 128 --naive-images 8 ${LABEL_RUNS:---decode cpu device})
  framing=(--batch 16)
  train=(--generate --per-class 40 --image-size 96 --batch-size 16 --epochs 2 ${TRAIN_RUNS:---decode device cpu})
  eq=()
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  label=(--gpu --photos 50000 --image-size 299 --compile off on ${LABEL_RUNS:---decode cpu device --actors 4 --pipeline-compile on})
  framing=(--gpu)
  train=(--gpu --generate --per-class 1200 --image-size 299 --batch-size 64 --epochs 3 ${TRAIN_RUNS:---decode device cpu})
  eq=(--gpu)
fi
python3 -c "import torch, torchvision, ray; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'ray', ray.__version__)"

# part NAME SECONDS FILE COMMAND...: runs one part under its time limit, its output (less Ray's chatter) to FILE
part() {
  local name=$1 limit=$2 file=$3 start=$SECONDS
  shift 3
  [[ "${PART:-all}" == all || "${PART}" == "$name" ]] || return 0
  timeout -k 10 "$limit" "$@" 2>&1 | grep --line-buffered -v "WARNING\|INFO\|labeled (\|Reporting training result" | tee "$OUT/$file"
  local rc=${PIPESTATUS[0]}
  if (( rc != 0 )); then
    echo "$name benchmark FAILED (exit $rc$( ((rc == 124)) && echo ": over its ${limit} s" ))" | tee -a "$OUT/$file"
    python3 -m ray.scripts.scripts stop --force >/dev/null 2>&1  # what the killed part left behind (any Ray on this machine)
  fi
  echo "$name benchmark: $((SECONDS - start)) s" | tee -a "$OUT/$file"
}

part label "${LABEL_S:-280}" label.txt python3 bench/label.py "${label[@]}"
part train "${TRAIN_S:-180}" train.txt python3 bench/train.py "${train[@]}"
if [[ -f .device/eq/pkg/config.json ]]; then
  part eq "${EQ_S:-60}" equivalence.txt python3 bench/decode_equivalence.py --model .device/eq/pkg --data .device/eq/data "${eq[@]}"
fi
part framing "${FRAMING_S:-25}" framing.txt python3 bench/framing.py "${framing[@]}"
