# Sourced by the device scripts. The packages the device image lacks (`benchmarks/device_packages.sh` packs them
# into .device/ here; the call carries it) go to /tmp/site ahead of the image's own, the official code to
# /tmp/official; then the GPU and the library versions go to the log.
export PYTHONUNBUFFERED=1
if [ -f .device/site.tar.xz ]; then
  rm -rf /tmp/site && mkdir -p /tmp/site && tar -C /tmp/site -xJf .device/site.tar.xz || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
if [ -f .device/official.tar.xz ]; then
  rm -rf /tmp/official && mkdir -p /tmp/official && tar -C /tmp/official -xJf .device/official.tar.xz || exit 1
fi
[ "${DEVICE:-cuda}" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, diffusers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'diffusers', diffusers.__version__)" || exit 1
