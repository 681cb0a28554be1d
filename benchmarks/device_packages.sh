#!/usr/bin/env bash
# Run here, where PyPI is reachable, before a device call: packs what the device image lacks into .device/
# (ignored by git; name it in the call's `carry`), small enough to travel beside the repository (64 MiB a call):
#   .device/site.tar.xz      transformers, diffusers, tokenizers and huggingface_hub at the versions installed
#                            here (the ones the tests ran with; the image has transformers 5 and no diffusers),
#                            and bitsandbytes with only the library of the image's CUDA (CUDA_TAG, default 130:
#                            its torch is 2.11.0+cu130)
#   .device/official.tar.xz  the official InternVL-U code (its Python files), for the side-by-side benchmark;
#                            without OFFICIAL only the libraries are packed, which is all train_on_device.sh needs
#
#   bash benchmarks/device_packages.sh /work/official      # then: carry [".device"]
#   bash benchmarks/device_packages.sh                     # for train_on_device.sh alone
#
# xz, not the wheels: the wheels alone (18 MB without bitsandbytes' 43 MB) do not fit beside the repository.
set -euo pipefail
OFFICIAL=${1:-}
CUDA_TAG=${CUDA_TAG:-130}
cd "$(dirname "$0")/.."
PACKAGES="transformers diffusers tokenizers huggingface_hub bitsandbytes"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for package in $PACKAGES; do
  version=$(python3 -c "import importlib.metadata as m; print(m.version('$package'))")
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$scratch/wheels" "$package==$version"
done
mkdir -p "$scratch/site" .device
for wheel in "$scratch"/wheels/*.whl; do python3 -m zipfile -e "$wheel" "$scratch/site"; done
# transformers' models/ is most of its size and almost none of it is used: keep the backbones the runtime and the
# official code load (Qwen2/3, Qwen3-MoE, Llama), the processors the official imports (InternVL, GOT-OCR2), what
# diffusers' pipelines import at module level (CLIP, T5) and their near kin. 1.8 MB less after xz: the repository
# with the packed nano VAE no longer fit beside the whole package.
KEEP_MODELS="auto internvl got_ocr2 qwen2 qwen3 qwen3_moe llama clip t5 qwen2_vl qwen2_5_vl siglip mistral gemma bert gpt2 llava encoder_decoder"
for folder in "$scratch"/site/transformers/models/*/; do
  case " $KEEP_MODELS " in *" $(basename "$folder") "*) ;; *) rm -rf "$folder" ;; esac
done
# bitsandbytes loads the library of torch's CUDA version; the other CUDA, ROCm and XPU builds are 190 MB.
find "$scratch/site/bitsandbytes" -name 'libbitsandbytes_*.so' ! -name '*_cpu.so' ! -name "*_cuda$CUDA_TAG.so" -delete
tar -C "$scratch/site" -cf - . | xz -9 -T0 > .device/site.tar.xz
rm -f .device/official.tar.xz
if [ -n "$OFFICIAL" ]; then
  tar -C "$OFFICIAL" --exclude='.git' --exclude='assets' -cf - . | xz -9 > .device/official.tar.xz
else
  echo "no official checkout given: packed the libraries only (device_bench.sh needs the official code too)"
fi
ls -la .device
# What a call carrying .device sends: the tracked and untracked-not-ignored files, and .device (limit 64 MiB).
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
travel=$((tree + $(du -sb .device | cut -f1)))
echo "a call carrying .device sends $((travel / 1048576)) MiB of at most 64"
[ "$travel" -le $((64 * 1048576)) ] || { echo "too large for a device call: shrink the repository or .device"; exit 1; }
