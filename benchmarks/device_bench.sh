#!/usr/bin/env bash
# One prepared run on a borrowed CUDA machine: time the `full` synthetic checkpoint at 1024x1024 with our
# runtime (and, with RUN_EXPORT_BENCH=1, every backend and backbone precision). Results land in $OUT.
# Training nano on the device is benchmarks/train_on_device.sh. (#16 extends this script: the official
# pipeline side by side and the GPU levers.)
#
#   OUT=/tmp/out bash benchmarks/device_bench.sh
#
# Wheels for the pinned transformers/diffusers/tokenizers/huggingface_hub may sit in .whl/ (the device
# image has other versions); they are installed into /tmp/site first.
set -uo pipefail
: "${OUT:?set OUT to a folder for the results}"
DEVICE=${DEVICE:-cuda}
. "$(dirname "$0")/device_setup.sh"
WORK=/tmp/internvlu-device
rm -rf "$WORK" && mkdir -p "$WORK"

# 1. The `full` synthetic checkpoint (real dimensions, random weights) at 1024x1024 in bfloat16.
timeout 150 bash -c "python3 -m internvlu.synthetic '$WORK/full' --size full --seed 0 --dtype bfloat16 \
  && python3 benchmarks/bench_generate.py --model '$WORK/full' --device $DEVICE --resolution 1024 --steps 4" \
  >"$OUT/bench_full.log" 2>&1
tail -3 "$OUT/bench_full.log"

# 2. (RUN_EXPORT_BENCH=1) every backend x backbone precision on the same `full` checkpoint at 1024x1024: the
#    int8/int4 rows need bitsandbytes carried as a wheel (.whl/), the ONNX rows run on ONNX Runtime's CPU
#    provider unless onnxruntime-gpu is carried; the export of the 1.8 B-parameter head alone takes minutes.
if [ "${RUN_EXPORT_BENCH:-0}" = 1 ]; then
  timeout 420 python3 benchmarks/bench_export.py --model "$WORK/full" --device cuda --resolution 1024 --prompts 0 \
    | tee "$OUT/bench_export_full.jsonl"
fi
