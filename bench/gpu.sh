#!/usr/bin/env bash
# One short GPU check, run from the repo root on a CUDA machine with PyTorch installed:
#   1. bench/gpu.py: deepwave synthesis on the GPU, and every full-size model's train step and
#      inference throughput in fp32/bf16/fp16;
#   2. bench/loop.py: gwi's training loop against the bare step of every model (default preset, batch
#      16, target >= 0.8x); the timm models need timm on the machine (pip wheel carried in .dw/ or
#      installed), else their rows say why they failed;
#   3. bench/physics.py: both forward models, forward and forward+backward, against the fixture;
#   4. the real `gwi` entrypoint end to end on the GPU: synthesise a small dataset (openfwi), train
#      InversionNet in fp16 (the GradScaler path) and SpecProj-UNet in bf16.
# Where deepwave is not installed, .dw/ may hold its package with the compiled library xz-packed.
set -euo pipefail
OUT=${OUT:-$(mktemp -d)}
export OUT PYTHONUNBUFFERED=1
if ! python3 -c "import deepwave" 2>/dev/null && [ -d .dw/deepwave ]; then
  mkdir -p /tmp/site && cp -r .dw/deepwave .dw/deepwave.libs /tmp/site/
  xz -d -c .dw/libdeepwave_C.so.xz > /tmp/site/deepwave/libdeepwave_C.so
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .dw/*.whl 2>/dev/null || true
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# GWI_GPU_SKIP_MODELS=1 runs only the end-to-end part
[ -n "${GWI_GPU_SKIP_MODELS:-}" ] || python3 bench/gpu.py "$@" 2>&1 | tee "$OUT/gpu.log" || true
# forward models: openfwi's target is >= 20,000 samples/min on one H100
[ -n "${GWI_GPU_SKIP_PHYSICS:-}" ] || python3 bench/physics.py --device cuda --batch 16,64,256 --grad-batch 4,16 \
  2>&1 | tee "$OUT/physics.log" || true
[ -n "${GWI_GPU_SKIP_LOOP:-}" ] || python3 bench/loop.py --device cuda --window-s 10 --json "$OUT/loop.json" \
  2>&1 | tee "$OUT/loop.log" || true

export GWI_HOME=/tmp/gwi-gpu GWI_CACHE=/tmp/gwi-gpu/cache
store=file:///tmp/gwi-gpu/store
t0=$(date +%s)
set +e  # from here each step reports its own failure and the next one still runs
if ! python3 -m gwi data synth --family FlatVel_A,CurveFault_A,Style_A --samples 256 --batch-size 128 --name gpu \
    --out $store --overwrite 2>&1 | tee -a "$OUT/gpu.log"; then
  echo "GPU synth failed; synthesising on the CPU instead" | tee -a "$OUT/gpu.log"
  python3 -m gwi data synth --family FlatVel_A,CurveFault_A,Style_A --samples 256 --batch-size 32 --name gpu \
    --out $store --overwrite --device cpu --backend deepwave 2>&1 | tee -a "$OUT/gpu.log"
fi
echo "synth 768 samples: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/gpu.log"
python3 -m gwi train --model inversionnet --dataset $store/datasets/gpu --run $store/runs/inv-fp16 \
  --precision fp16 --epochs 6 --batch-size 32 --lr 1e-3 --heartbeat-s 5 2>&1 | tee -a "$OUT/gpu.log"
python3 -m gwi train --model specproj_unet --dataset $store/datasets/gpu --run $store/runs/spu-bf16 \
  --precision bf16 --epochs 6 --batch-size 32 --lr 1e-3 --heartbeat-s 5 2>&1 | tee -a "$OUT/gpu.log"
cp /tmp/gwi-gpu/store/runs/inv-fp16/metrics.json "$OUT/metrics-inv-fp16.json"
cp /tmp/gwi-gpu/store/runs/spu-bf16/metrics.json "$OUT/metrics-spu-bf16.json"
true
