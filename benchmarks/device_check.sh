#!/usr/bin/env bash
# One prepared run on a borrowed CUDA machine: train internvlu-nano as long as TRAIN_SECONDS allows,
# check that the trained model draws and scores on the GPU, then time the `full` synthetic checkpoint
# at 1024x1024. Everything it measures lands in $OUT (the model as split tar parts, logs, JSON lines).
#
#   OUT=/tmp/out bash benchmarks/device_check.sh
#
# Wheels for the pinned transformers/diffusers/tokenizers/huggingface_hub may sit in .whl/ (the device
# image has other versions); they are installed into /tmp/site first.
set -uo pipefail
: "${OUT:?set OUT to a folder for the results}"
TRAIN_SECONDS=${TRAIN_SECONDS:-240}
DEVICE=${DEVICE:-cuda}          # cpu for a dry run of this script
SCALE_FLOOR=${SCALE_FLOOR:-1.0}  # the smallest --scale the real run may get
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
WORK=/tmp/internvlu-device
rm -rf "$WORK" && mkdir -p "$WORK"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, diffusers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'diffusers', diffusers.__version__)" || exit 1

# 1. A probe run measures seconds per step of every stage on this GPU; the real run's --scale is chosen so
#    the stages fit TRAIN_SECONDS (the chosen scale is printed: the same command with it reproduces the run).
python3 -m internvlu.train "$WORK/probe-model" --run-dir "$WORK/probe" --scale ${PROBE_SCALE:-0.05} --device $DEVICE >"$OUT/probe.log" 2>&1 \
  || { tail -30 "$OUT/probe.log"; exit 1; }
SCALE=$(python3 - "$OUT/probe.log" "$TRAIN_SECONDS" "$SCALE_FLOOR" <<'EOF'
import re, sys
from internvlu.train.trainer import STAGES
rates = {m[0]: float(m[1]) for m in re.findall(r"\[(\w+)\] step \d+/\d+ loss \S+ \(([\d.]+) s/step", open(sys.argv[1]).read())}
per_unit_scale = sum(stage.steps * rates[stage.name] for stage in STAGES)
print(round(min(12.0, max(float(sys.argv[3]), 0.85 * float(sys.argv[2]) / per_unit_scale)), 2))
EOF
)
echo "probe rates: $(grep -o '\[[a-z0-9]*\] step [0-9]*/[0-9]* .*' "$OUT/probe.log" | tr '\n' ' ')"
echo "chosen --scale $SCALE for ${TRAIN_SECONDS}s"
start=$(date +%s)
timeout $((TRAIN_SECONDS * 3 / 2)) python3 -m internvlu.train "$WORK/nano" --run-dir "$WORK/run" --scale "$SCALE" --device $DEVICE \
  >"$OUT/train.log" 2>&1 || { tail -30 "$OUT/train.log"; }
echo "training took $(( $(date +%s) - start )) s"; tail -3 "$OUT/train.log"
# 2. The trained model on the GPU: one drawing and the evaluation (float32, like the CPU default).
if [ -f "$WORK/nano/model_index.json" ]; then
  timeout 60 python3 -m internvlu gen "a red circle above a blue square" --model "$WORK/nano" --device $DEVICE \
    -o "$WORK/gpu.png" --seed 0 2>&1 | tail -2
  timeout 100 python3 -m internvlu eval --model "$WORK/nano" --device $DEVICE --dtype float32 --prompts ${EVAL_PROMPTS:-200} \
    --tasks t2i,edit,qa,reasoning --batch 50 --out-dir "$WORK/eval" -q >"$OUT/eval_gpu.json" 2>"$WORK/eval.err" \
    || tail -5 "$WORK/eval.err"
  tail -c 600 "$OUT/eval_gpu.json"
  cp "$WORK/run/losses.jsonl" "$WORK/nano-losses.jsonl"
  tar -C "$WORK" -cf - nano nano-losses.jsonl eval gpu.png | split -b 15m - "$OUT/nano.tar.part-"
fi

[ "$DEVICE" = cuda ] || exit 0
# 3. The `full` synthetic checkpoint (real dimensions, random weights) at 1024x1024 in bfloat16.
timeout 150 bash -c "python3 -m internvlu.synthetic '$WORK/full' --size full --seed 0 --dtype bfloat16 \
  && python3 benchmarks/bench_generate.py --model '$WORK/full' --device $DEVICE --resolution 1024 --steps 4" \
  >"$OUT/bench_full.log" 2>&1
tail -3 "$OUT/bench_full.log"

# 4. (RUN_EXPORT_BENCH=1) every backend x backbone precision on the same `full` checkpoint at 1024x1024: the
#    int8/int4 rows need bitsandbytes carried as a wheel (.whl/), the ONNX rows run on ONNX Runtime's CPU
#    provider unless onnxruntime-gpu is carried; the export of the 1.8 B-parameter head alone takes minutes.
if [ "${RUN_EXPORT_BENCH:-0}" = 1 ]; then
  timeout 420 python3 benchmarks/bench_export.py --model "$WORK/full" --device cuda --resolution 1024 --prompts 0 \
    | tee "$OUT/bench_export_full.jsonl"
fi
