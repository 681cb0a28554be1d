#!/usr/bin/env bash
# Train internvlu-nano's whole curriculum in one call on a lent GPU, then evaluate it and draw the README's
# grid; everything lands in $OUT within the device's limits (at most 8 files of at most 16 MiB):
#   nano.tar.part-*   the exported model (official layout, bfloat16, ~28 MB) as 15 MiB parts:
#                     cat nano.tar.part-* | tar -x  ->  nano/ (+ losses.jsonl, loss_curves.png)
#   eval.json         `internvlu eval` on 200 held-out prompts a task (float32, 20 steps)
#   samples.png       eval's sample grid;  red-circle.png  `gen "a red circle above a blue square" -n 8`
#   train.log         the trainer's log (the plan per stage, the VAE gate, losses)
#
#   OUT=/tmp/out bash benchmarks/train_on_device.sh                       # on the GPU: ~8 min in all
#   OUT=/tmp/out DEVICE=cpu MINUTES=1.5 EVAL_PROMPTS=4 bash benchmarks/train_on_device.sh   # a dry run here
#
# The run starts from the packed VAE trained on a CPU (internvlu/train/nano-vae, `--vae-from`; VAE_FROM= to train
# one from scratch): if it passes the gate, the VAE stage is skipped and its share of MINUTES goes to the head.
# INIT_FROM=internvlu/models/nano SEED=2 goes on training the shipped model instead (`--init-from`, new data).
#
# The packages the device image lacks come from .device/ (`bash benchmarks/device_packages.sh OFFICIAL` here
# first, then carry [".device"]): benchmarks/device_setup.sh unpacks them.
set -uo pipefail
: "${OUT:?set OUT to a folder for the results}"
DEVICE=${DEVICE:-cuda}
MINUTES=${MINUTES:-5}                  # training budget; set-up, evaluation and packing take the rest
EVAL_PROMPTS=${EVAL_PROMPTS:-200}
VAE_FROM=${VAE_FROM-internvlu/train/nano-vae}
INIT_FROM=${INIT_FROM-}
SEED=${SEED:-0}
if [ -n "$INIT_FROM" ]; then START=(--init-from "$INIT_FROM"); else START=(${VAE_FROM:+--vae-from "$VAE_FROM"}); fi
if [ "$DEVICE" = cuda ]; then BATCH_MULTIPLIER=${BATCH_MULTIPLIER:-16}; else BATCH_MULTIPLIER=${BATCH_MULTIPLIER:-1}; fi
. "$(dirname "$0")/device_setup.sh"
WORK=${WORK:-/tmp/internvlu-train}
rm -rf "$WORK" && mkdir -p "$WORK" "$OUT"
command -v tesseract >/dev/null || echo "no tesseract here: the words task and the VAE gate's words part are skipped"

start=$(date +%s)
# A weak VAE is trained on rather than stopping the one call; eval.json and the log say how it did.
python3 -m internvlu.train "$WORK/nano" --run-dir "$WORK/run" --minutes "$MINUTES" --device "$DEVICE" --seed "$SEED" \
  --batch-multiplier "$BATCH_MULTIPLIER" --allow-weak-vae ${START[@]+"${START[@]}"} >"$OUT/train.log" 2>&1
status=$?
echo "training: exit $status after $(( $(date +%s) - start )) s"; grep -E "planned|gate|wrote" "$OUT/train.log"
[ $status -eq 0 ] && [ -f "$WORK/nano/model_index.json" ] || { tail -30 "$OUT/train.log"; exit 1; }

# The README's first command, on the trained model, eight seeds in one grid.
python3 -m internvlu gen "a red circle above a blue square" --model "$WORK/nano" --device "$DEVICE" --dtype float32 \
  -n 8 --seed 0 --out-dir "$WORK/circles" -q && python3 - "$WORK/circles" "$OUT/red-circle.png" <<'EOF'
import sys
from pathlib import Path
from PIL import Image
images = [Image.open(p).convert("RGB") for p in sorted(Path(sys.argv[1]).glob("*.png"))]
grid = Image.new("RGB", (128 * len(images), 128), "white")
for i, image in enumerate(images):
    grid.paste(image.resize((128, 128), Image.Resampling.NEAREST), (128 * i, 0))
grid.save(sys.argv[2])
EOF
python3 -m internvlu eval --model "$WORK/nano" --device "$DEVICE" --dtype float32 --prompts "$EVAL_PROMPTS" \
  --out-dir "$WORK/eval" -q >"$OUT/eval.json" 2>"$WORK/eval.err" || tail -5 "$WORK/eval.err"
cp "$WORK/eval/samples.png" "$OUT/samples.png" 2>/dev/null
cp "$WORK/run/losses.jsonl" "$WORK/nano/losses.jsonl"
tar -C "$WORK" -cf - nano | split -b 15m - "$OUT/nano.tar.part-"
echo "done in $(( $(date +%s) - start )) s"; ls -la "$OUT"; tail -c 800 "$OUT/eval.json"
