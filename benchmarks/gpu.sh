#!/usr/bin/env bash
# The GPU benchmark, for one H100/H200 (or, with small sizes, the CPU):
#   bash benchmarks/gpu.sh                       # full Broden size: 63,305 images
#   IMAGES=512 POOL=256 BATCH=16 bash benchmarks/gpu.sh   # a quick run anywhere
# Installs nothing and reads nothing from the network: the broden-scale workload is
# generated in memory. Prints one table per workload; append them to BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
IMAGES=${IMAGES:-63305}
POOL=${POOL:-2048}
BATCH=${BATCH:-128}
PY=${PYTHON:-python3}

echo "## $(date -u +%Y-%m-%d) on $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || echo CPU)"
$PY -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"

echo; echo "### broden-scale, ${IMAGES} images (ResNet-18 layer4 shapes, 1,200 concepts), and in the same"
echo "### run the NumPy baseline on this host's CPU (64 images)"
$PY -m dissectjax bench --workload broden-scale --images "$IMAGES" --pool "$POOL" --batch-size "$BATCH" \
    --baseline-images 64

echo; echo "### small: the demo's SceneNet on 1,000 synthetic scenes"
DISSECTJAX_CACHE=${DISSECTJAX_CACHE:-/tmp/dissectjax-cache} $PY -m dissectjax bench --workload small \
    --images 1000 --batch-size 100

echo; echo "### compositional search (beam 5, length 3) at ResNet-18 layer4 / ADE20K shapes: 512 units,"
echo "### 1,200 concepts, 112 x 112 masks; timed on ${COMPOSITIONAL_IMAGES:=256} images, extrapolated to 22,210"
$PY benchmarks/compositional_scale.py --images "$COMPOSITIONAL_IMAGES"
