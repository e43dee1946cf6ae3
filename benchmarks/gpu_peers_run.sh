#!/usr/bin/env bash
# Issue 13's GPU run: install the peer kernels carried in .gpu-peers/ (../shared/gpu-peers/README.md),
# run the GPU tests of the FA4 / dense / Flex paths and the kernel benchmark, write to $OUT.
# Needs /tmp/stage/cdsl_part_aa and /tmp/stage/cdsl_part_ab staged by the two calls before it.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
for part in aa ab; do test -f /tmp/stage/cdsl_part_$part || { echo "/tmp/stage/cdsl_part_$part missing: stage it again"; exit 3; }; done
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
  /tmp/stage/diffusers-*.whl /tmp/stage/importlib_metadata-*.whl .gpu-peers/fa3_fwd-*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/fa4site .gpu-peers/fa4/*.whl || exit 1
cat /tmp/stage/cdsl_part_aa /tmp/stage/cdsl_part_ab | xz -d | tar -x -C /tmp/fa4site || exit 1
export PYTHONPATH=/tmp/fa4site/nvidia_cutlass_dsl/dsl_packages:/tmp/fa4site:/tmp/site:$PWD
python3 -m pytest -q -p no:randomly tests/kernels/test_fa4.py tests/kernels/test_dense.py tests/kernels/test_flex.py \
  tests/kernels/test_gluon_gpu.py 2>&1 | tail -40 | tee "$OUT/gpu_pytest.log"
timeout 420 python3 benchmarks/bench_kernel.py --densities "${DENSITIES:-1,0.5,0.25,0.1}" --budget-ms "${BUDGET_MS:-300}" \
  --out "$OUT/kernel_h200_fa4.json" 2>&1 | tee "$OUT/kernel_h200_fa4.log" | tail -120
