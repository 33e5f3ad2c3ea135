#!/usr/bin/env bash
# The GPU benchmark, for one H100/H200 (or, with small sizes, the CPU), in under 8 minutes:
#   bash benchmarks/gpu.sh                                   # full Broden size: 63,305 rows
#   IMAGES=256 DISTINCT=64 BATCH=16 WORKERS=0 PEER_BATCH=8 bash benchmarks/gpu.sh   # a quick run anywhere
# Installs nothing and reads nothing from the network. It
#  1. generates the on-disk Broden-size set on this machine (224 px JPEGs, 112 px label PNGs,
#     1,200 concepts; DISTINCT rows of files cycled through IMAGES index rows), cached;
#  2. makes one random ResNet-18 in PyTorch and converts it (dissectjax convert), so both tools
#     dissect the same weights;
#  3. runs dissectjax end to end from the files (decode, forward once, both passes) beside the
#     same pipeline forward-only (bench --workload broden-disk), ResNet-18 layer4;
#  4. runs the PyTorch peer (benchmarks/peer_torch.py) on the same files and GPU, and prints how
#     many units get the same labels, and the speed ratio;
#  5. the in-memory broden-scale tally and its NumPy baseline, as before;
#  6. with COMPOSITIONAL_IMAGES=256, the compositional search benchmark (not in the 8 minutes).
# Prints one table per step; append them to BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export DISSECTJAX_CACHE=${DISSECTJAX_CACHE:-/tmp/dissectjax-cache}
IMAGES=${IMAGES:-63305}
DISTINCT=${DISTINCT:-2048}
BATCH=${BATCH:-128}
PEER_BATCH=${PEER_BATCH:-32}
WORKERS=${WORKERS:-$(python3 -c "import os; print(min(12, max(0, (os.cpu_count() or 1) - 2)))")}
POOL=${POOL:-2048}
PY=${PYTHON:-python3}
WORK=${WORK:-/tmp/dissectjax-gpu}
mkdir -p "$WORK"

echo "## $(date -u +%Y-%m-%d) on $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || echo CPU), $(nproc) cores"
$PY -c "import jax, flax, torch; print('jax', jax.__version__, 'flax', flax.__version__, 'torch', torch.__version__, jax.devices())"

echo; echo "### 1. the on-disk set: ${IMAGES} rows (${DISTINCT} distinct files)"
start=$(date +%s)
DATASET=$($PY -c "from dissectjax.data.broden_disk import ensure_broden_disk as e; print(e($IMAGES, $DISTINCT))")
echo "ready in $(( $(date +%s) - start )) s: $DATASET"

echo; echo "### 2. one random ResNet-18 (PyTorch), converted"
$PY - "$WORK/resnet18.pth" <<'EOF'
import sys, torch
sys.path.insert(0, "benchmarks")
from torch_models import build
torch.manual_seed(0)
torch.save(build("resnet18", 1000).state_dict(), sys.argv[1])
EOF
rm -rf "$WORK/resnet18"
$PY -m dissectjax convert --arch resnet18 --weights "$WORK/resnet18.pth" --out "$WORK/resnet18" --input-size 224 | tail -1

echo; echo "### 3. dissectjax end to end from the files, ResNet-18 layer4 at 224 px, ${WORKERS} decoding processes"
$PY -m dissectjax bench --workload broden-disk --images "$IMAGES" --distinct "$DISTINCT" --model resnet18 \
    --layer layer4 --checkpoint "$WORK/resnet18" --batch-size "$BATCH" --decode-workers "$WORKERS" \
    --counts-out "$WORK/dissectjax-counts.npz"

echo; echo "### 4. the PyTorch peer on the same files (sampled sketch, matrix-product tally, forward in both passes)"
$PY benchmarks/peer_torch.py --dataset "$DATASET" --weights "$WORK/resnet18.pth" --layer layer4 \
    --batch-size "$PEER_BATCH" --workers "$WORKERS" --counts "$WORK/peer-counts.npz" \
    --compare "$WORK/dissectjax-counts.npz"

echo; echo "### 5. broden-scale in memory, ${IMAGES} images, and the NumPy baseline on this host's CPU (64 images)"
$PY -m dissectjax bench --workload broden-scale --images "$IMAGES" --pool "$POOL" --batch-size "$BATCH" \
    --baseline-images 64

if [ "${COMPOSITIONAL_IMAGES:-0}" != 0 ]; then  # opt-in: it does not fit the 8 minutes beside the rest
  echo; echo "### 6. compositional search (beam 5, length 3) at ResNet-18 layer4 / ADE20K shapes: 512 units,"
  echo "### 1,200 concepts, 112 x 112 masks; timed on ${COMPOSITIONAL_IMAGES} images, extrapolated to 22,210"
  $PY benchmarks/compositional_scale.py --images "$COMPOSITIONAL_IMAGES"
fi
