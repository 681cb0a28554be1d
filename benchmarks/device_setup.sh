# Sourced by the device scripts: the carried wheels (.whl/: pinned transformers/diffusers/tokenizers/
# huggingface_hub when the device image has other versions) into /tmp/site, the Python path, the GPU and
# library versions in the log.
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
[ "${DEVICE:-cuda}" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, diffusers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'diffusers', diffusers.__version__)" || exit 1
