#!/usr/bin/env bash
# The GPU path against the official pipeline on the same GPU (#16), in one or two prepared device calls.
# Training nano on the device is benchmarks/train_on_device.sh.
#
# Here first:  bash benchmarks/device_packages.sh /work/official      # -> .device/ (carry it)
# On the device (carry [".device"]):
#   OUT=$OUT PART=exact  bash benchmarks/device_bench.sh    # ~7 min: checkpoint, official vs ours exact and compiled
#   OUT=$OUT PART=levers bash benchmarks/device_bench.sh    # ~5 min: accel, FP8, NF4, lowvram (t2i)
#   OUT=$OUT PART=all    bash benchmarks/device_bench.sh    # both, when one call has the time
#   OUT=/tmp/out DEVICE=cpu CHECKPOINT=small DTYPE=float32 SIZE=64 STEPS=10 COT_TOKENS=8 TEXT_TOKENS=8 THREADS=2 \
#     LIMIT_SCALE=6 OFFICIAL_PYTHON=~/official-venv/bin/python bash benchmarks/device_bench.sh   # dry run here
# A second call on a machine still warm reuses the checkpoint in /tmp. Each part has its own time limit, and
# every finished configuration's JSON line is in $OUT before the next one starts:
#   vs_official_exact.jsonl   t2i 1024x1024 20 steps, edit 1024x1024 (1024x1024 input) 20 steps, CoT t2i with
#                             200 thought tokens, a 64-token answer: the official, ours bf16, ours compiled
#   vs_official_levers.jsonl  t2i and the answer: accel safe/fast, FP8, FP8+compiled(+safe), NF4 and int8
#                             backbones (bitsandbytes), offload+tiling (lowvram)
#   *_raw.jsonl               each process's results as they came (what ran, should a part hit its limit)
#   device.log                versions, the GPU, each step's output
# The official runs as it does without flash-attn (PyPI has its source only): naive ViT attention, eager
# LM, SDPA MMDiT; on transformers 4.52.4 / diffusers 0.35.2 (its pins are 4.52.3 / 0.35.1).
set -uo pipefail
: "${OUT:?set OUT to a folder for the results}"
PART=${PART:-all}
DEVICE=${DEVICE:-cuda}
CHECKPOINT=${CHECKPOINT:-full}
OFFICIAL_PYTHON=${OFFICIAL_PYTHON:-python3}
DTYPE=${DTYPE:-bfloat16}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/device.log") 2>&1
. "$(dirname "$0")/device_setup.sh"
[ -d /tmp/official/internvlu ] || { echo "no official code: run benchmarks/device_packages.sh here and carry .device"; exit 1; }
WORK=/tmp/internvlu-device
FULL=$WORK/$CHECKPOINT
mkdir -p "$WORK"
STEPS=${STEPS:-20}
limit() { echo $(( $1 * ${LIMIT_SCALE:-1} )); }  # seconds, scaled for a dry run on a CPU
BENCH=(python3 benchmarks/bench_vs_official.py --official /tmp/official --official-python "$OFFICIAL_PYTHON"
       --model "$FULL" --device "$DEVICE" --dtype "$DTYPE" --size "${SIZE:-1024}" --steps "$STEPS" --edit-steps "$STEPS"
       --cot-tokens "${COT_TOKENS:-200}" --text-tokens "${TEXT_TOKENS:-64}" --threads "${THREADS:-16}" --one-process
       --warmup 1 --calls 1 --reps 1)

# The `full` synthetic checkpoint (real dimensions, random weights) in bfloat16, loaded once by ours so that
# its finite-value check is cached before anything is timed.
if [ ! -f "$FULL/model_index.json" ]; then
  rm -rf "$FULL"
  timeout "$(limit 240)" python3 -m internvlu.synthetic "$FULL" --size "$CHECKPOINT" --seed 0 --dtype "$DTYPE" || exit 1
  timeout "$(limit 120)" python3 -c "from internvlu import InternVLUPipeline; InternVLUPipeline.from_pretrained('$FULL')" || exit 1
fi
echo "checkpoint ready after ${SECONDS} s"

if [ "$PART" = exact ] || [ "$PART" = all ]; then
  timeout "$(limit 400)" "${BENCH[@]}" --tasks t2i,edit,cot,text --ours off,compile --raw "$OUT/exact_raw.jsonl" \
    | tee "$OUT/vs_official_exact.jsonl"
  echo "exact part done after ${SECONDS} s"
fi

if [ "$PART" = levers ] || [ "$PART" = all ]; then
  configs=safe,fast,fp8,fp8+safe,fp8+compile,fp8+compile+safe,offload+tiling
  quantized=()
  for pair in nf4:int4 int8:int8; do  # bitsandbytes backbones: exported once, then loaded like any model
    lever=${pair%:*} folder=$WORK/$CHECKPOINT-${pair#*:}
    [ -f "$folder/model_index.json" ] || timeout "$(limit 150)" python3 -m internvlu export "$FULL" --backbone "${pair#*:}" --out "$folder" -q >/dev/null
    if [ -f "$folder/model_index.json" ]; then configs=$configs,$lever; quantized+=(--$lever-model "$folder");
    else echo "no ${pair#*:} export: the $lever row is left out"; fi
  done
  timeout "$(limit 390)" "${BENCH[@]}" --tasks t2i,text --ours "$configs" "${quantized[@]}" --raw "$OUT/levers_raw.jsonl" \
    | tee "$OUT/vs_official_levers.jsonl"
  echo "levers part done after ${SECONDS} s"
fi
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=memory.used,temperature.gpu --format=csv,noheader
echo "done after ${SECONDS} s"
