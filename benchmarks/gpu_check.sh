#!/usr/bin/env bash
# The GPU checks in one run, for a lent GPU machine (about 8 minutes): the scale benchmark at SD-1.5 and SDXL size
# (k = 8, latentbasis with its default block beside blocks of 2/4/8/16, float32 and bfloat16 guidance edits with
# their profiles), then the test suite with the GPU as the default device (LATENTBASIS_DEVICE=cuda), each test's
# result on its own line so that a cut log still says what passed. Logs go to $OUT (or ./gpu-logs).
#   bash benchmarks/gpu_check.sh [bench seconds] [suite seconds]
set -u
OUT=${OUT:-gpu-logs}; mkdir -p "$OUT"
BENCH_S=${1:-230}; SUITE_S=${2:-300}
if ! python3 -c "import diffusers" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then   # wheels carried along
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}
# the documented examples run in a clean environment (no PYTHONPATH): latentbasis itself installed, without deps
python3 -c "import latentbasis" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . \
  >/dev/null 2>&1 || echo "latentbasis not installed: the documented-example tests will fail here"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"
echo "== bench ($BENCH_S s)"
timeout "$BENCH_S" python3 benchmarks/bench_scale.py --device cuda --models sd15,sdxl --contenders latentbasis \
  --blocks 2,4,8,16 --profile-edit --no-costs > "$OUT/bench.log" 2>&1
echo "bench exit $?"
grep -v "iteration [0-9]" "$OUT/bench.log" | grep -v "^    .*-----" | cut -c1-220
echo "== suite ($SUITE_S s)"
N=""; python3 -c "import xdist" 2>/dev/null && N="-n 12"
LATENTBASIS_DEVICE=cuda timeout "$SUITE_S" python3 -m pytest $N -v -p no:cacheprovider -p no:benchmark --tb=short -rfE \
  > "$OUT/suite.log" 2>&1
echo "suite exit $?"
grep -cE " PASSED" "$OUT/suite.log" | sed 's/^/passed lines: /'
grep -E "FAILED|ERROR|Error|error:|passed|failed" "$OUT/suite.log" | grep -v " PASSED" | cut -c1-300 | tail -60
