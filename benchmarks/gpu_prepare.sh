#!/usr/bin/env bash
# Prepare, on the machine WITHOUT the GPU, what benchmarks/gpu_check.sh needs on the GPU machine,
# which has no network: wheels of the packages its image lacks, and a copy of the CIFAR-10 shards.
# Both go into git-ignored folders of this repository that the device call carries:
#
#   bash benchmarks/gpu_prepare.sh [DATA_DIR]      # DATA_DIR default: ../shared/data/cifar10
#   device run: command="bash benchmarks/gpu_check.sh", carry=[".whl", ".gpu_data"], timeout_s=600
#
# ~12 MB in all (diffusers ~4 MB, denoising-diffusion-pytorch, simplejpeg; shards 7.3 MB), far
# under the 64 MiB a call may carry. The FID Inception weights (87 MB) do not fit: gpu_check.sh
# times the GPU Inception pass only when .gpu_data/default_1.pt is present (see its header).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DATA=${1:-$ROOT/../shared/data/cifar10}
cd "$ROOT"
EXCLUDE=$(git rev-parse --git-path info/exclude)
for d in .whl .gpu_data; do
  grep -qx "/$d/" "$EXCLUDE" 2>/dev/null || echo "/$d/" >> "$EXCLUDE"
done
mkdir -p .whl .gpu_data/cifar10
cp "$DATA"/train-000[0-3].tar.gz "$DATA"/test-0000.tar.gz "$DATA"/classes.txt .gpu_data/cifar10/
PY=${PYTHON:-python3}
# The device image (KINDS.md) has torch, numpy, safetensors, pillow, tqdm, scikit-learn, scipy,
# einops, pyyaml, huggingface-hub, regex, requests, filelock; it lacks these (Python 3.12, x86-64):
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl diffusers==0.42.1 denoising-diffusion-pytorch==2.3.4 simplejpeg==1.9.0 webdataset==1.0.2 braceexpand \
  importlib-metadata
ls -la .whl .gpu_data/cifar10
du -sh .whl .gpu_data
