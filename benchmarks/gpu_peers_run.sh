#!/usr/bin/env bash
# Issue 13's GPU run in one command: install the peer kernels, run the GPU tests of the FA4 / dense /
# Flex paths, then the kernel benchmark with every peer; results and logs go to $OUT.
#
# What travels is the checkout (about 34 MB) plus what `carry` names, 64 MiB in all, so the peers of
# ../shared/gpu-peers/README.md go in four staging calls first, made one right after the other (the
# machine keeps /tmp only about 30 s after a call). Once, in the checkout:
#   cat .gpu-peers/cdsl_part_aa .gpu-peers/cdsl_part_ab | split -b 19000000 - .gpu-peers/cdsl19_
# Staging calls, each with command  mkdir -p /tmp/stage && cp -r .gpu-peers/* /tmp/stage/  and carry:
#   1. .gpu-peers/cdsl19_aa .gpu-peers/fa4
#   2. .gpu-peers/cdsl19_ab .gpu-peers/diffusers-0.42.1-py3-none-any.whl .gpu-peers/importlib_metadata-10.2.0-py3-none-any.whl
#   3. .gpu-peers/cdsl19_ac
#   4. .gpu-peers/cdsl19_ad
# Then this script, carrying .gpu-peers/fa3_fwd-0.0.3-cp39-abi3-manylinux_2_24_x86_64.whl:
#   bash benchmarks/gpu_peers_run.sh
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
for f in cdsl19_aa cdsl19_ab cdsl19_ac cdsl19_ad fa4 diffusers-0.42.1-py3-none-any.whl; do
  test -e "/tmp/stage/$f" || { echo "/tmp/stage/$f missing: make the four staging calls again"; exit 3; }
done
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
  /tmp/stage/diffusers-*.whl /tmp/stage/importlib_metadata-*.whl .gpu-peers/fa3_fwd-*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/fa4site /tmp/stage/fa4/*.whl || exit 1
cat /tmp/stage/cdsl19_* | xz -d | tar -x -C /tmp/fa4site || exit 1
export PYTHONPATH=/tmp/fa4site/nvidia_cutlass_dsl/dsl_packages:/tmp/fa4site:/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 -c "import fa3_fwd_interface, flash_attn.cute.interface; print('fa3 and fa4 import')" || exit 1
[ -n "${INSTALL_ONLY:-}" ] && return 0  # sourced by another GPU script (gpu_issue13.sh): the peers only
timeout 150 python3 -m pytest -q -p no:randomly tests/kernels/test_fa4.py tests/kernels/test_dense.py \
  tests/kernels/test_flex.py 2>&1 | tee "$OUT/gpu_pytest.log" | tail -30
timeout "${BENCH_S:-380}" python3 benchmarks/bench_kernel.py --densities "${DENSITIES:-1,0.5,0.25,0.1}" \
  --budget-ms "${BUDGET_MS:-300}" --out "$OUT/kernel_h200_fa4.json" 2>&1 | tee "$OUT/kernel_h200_fa4.log" | tail -90
