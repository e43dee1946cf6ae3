#!/usr/bin/env bash
# Issue 13's speed questions in ONE GPU call of at most 9.5 minutes, every step time-boxed:
#   (a) end to end (bench_e2e.py) against the fastest dense backend (FA3/FA4), at the paper's FLOP
#       reductions and at the lowest density where the default search reached 20 dB on the committed
#       quality frontier (--frontier-psnr 20);
#   (b) what backend="auto" runs per shape against backend="gluon" and "fa4", whole calls
#       (bench_kernel.py --auto; Wan2.1-14B 720p locates the FA4 cut at head_dim 128);
#   (d) our FP8 kernel against FA3's FP8 forward and the 16-bit peers (bench_fp8.py, two shapes);
#   (c) ncu counters of our Gluon kernel and FA4's block-sparse kernel, one launch each, on the
#       Wan 480p DIAGONAL plan at tile density 0.25, side by side (ncu_table.py).
# Results, logs and CSVs go to OUT; the tables are printed again at the end.
#
# First make the four staging calls of benchmarks/gpu_peers_run.sh (FA4 and diffusers under
# /tmp/stage), then, right after them, carrying .gpu-peers/fa3_fwd-0.0.3-cp39-abi3-manylinux_2_24_x86_64.whl:
#   bash benchmarks/gpu_issue13.sh "$OUT"
set -u
OUT=${1:?usage: gpu_issue13.sh OUT}
mkdir -p "$OUT"
DEADLINE=$(( $(date +%s) + ${TOTAL_S:-560} ))

# seconds a step may take: its own cap, or what is left before the deadline (less 10 s for the tables)
box() { local left=$(( DEADLINE - $(date +%s) - 10 )); (( left < $1 )) && echo $(( left > 1 ? left : 1 )) || echo "$1"; }
step() {  # step NAME CAP_S LOG COMMAND...: run time-boxed, log, one status line
  local name=$1 cap; cap=$(box "$2"); local log=$3; shift 3
  echo "== $name (up to ${cap} s)"
  timeout -k 5 "$cap" "$@" > "$log" 2>&1
  local rc=$?
  (( rc == 124 )) && echo "   $name: timed out after ${cap} s (partial results in $log)" || echo "   $name: exit $rc"
  tail -3 "$log" | sed 's/^/   | /'
}

INSTALL_ONLY=1 source benchmarks/gpu_peers_run.sh || { echo "peer install failed"; exit 1; }
which ncu || echo "ncu not found: step (c) will fail"

step "(b) auto vs gluon vs fa4" 110 "$OUT/auto.log" python3 benchmarks/bench_kernel.py --auto --budget-ms 200 \
  --shapes wan2.1-1.3b-480p,cogvideox1.5-768p,hunyuanvideo-720p,wan2.1-14b-720p --out "$OUT/kernel_auto.json"

NCU=(ncu --clock-control none --launch-skip 2 --launch-count 1 --csv --page raw
     --metrics "$(python3 benchmarks/ncu_table.py --metrics)")
ONE=(python3 benchmarks/one_launch.py --shape wan2.1-1.3b-480p --plan DIAGONAL@0.25 --launches 4)
step "(c) ncu gluon" 60 "$OUT/ncu_gluon.csv" "${NCU[@]}" --kernel-name regex:_sparse_attention "${ONE[@]}" --kernel gluon
step "(c) ncu fa4" 75 "$OUT/ncu_fa4.csv" "${NCU[@]}" --kernel-name 'regex:[Ff]lash|[Ff]wd' "${ONE[@]}" --kernel fa4

step "(d) fp8 vs FA3 fp8" 60 "$OUT/fp8.log" python3 benchmarks/bench_fp8.py --shapes wan2.1-1.3b-480p,cogvideox1.5-768p \
  --densities 1,0.25 --budget-ms 100 --out "$OUT/fp8_fa3.json"

step "(a) end to end" 250 "$OUT/e2e.log" python3 benchmarks/bench_e2e.py --frontier-psnr 20 --out "$OUT/e2e_fastest_dense.json"

echo; echo "== (a) end to end, against the fastest dense backend of the run"
sed -n '/^model /,$p' "$OUT/e2e.log"
echo; echo "== (b) what auto runs (whole calls)"
sed -n '/^shape .*auto runs/,$p' "$OUT/auto.log"
echo; echo "== (c) ncu, Wan 480p DIAGONAL@0.25, one launch each"
python3 benchmarks/ncu_table.py "$OUT/ncu_gluon.csv" "$OUT/ncu_fa4.csv"
echo; echo "== (d) FP8"
sed -n '/^shape .*x bf16/,$p' "$OUT/fp8.log"
