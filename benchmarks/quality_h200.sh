#!/bin/bash
# The quality frontier of benchmarks/results/quality_*_h200*.json on one GPU: each family's methods
# split over parallel processes (the reference models are tiny; one process leaves the GPU idle).
# usage: bash benchmarks/quality_h200.sh OUT_DIR [all|default|fp8]   (diffusers importable; about 4 minutes on an H200)
#   all: the baselines and the search variants of docs/search.md; default: the search's defaults only
#   (8 step ranges, sensitivity on 4 calibration captions, the default candidates) beside plain maps;
#   fp8: the default recipe's maps native, FP8 with the solver's threshold, and all heads FP8, on the
#   torch backend (the reference models' 64-token tiles are not the FP8 kernel's: its simulation runs)
out=${1:?usage: quality_h200.sh OUT_DIR [all|default]}
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
common="--device cuda --dtype bfloat16 --calibration-prompts 6 --max-prompts 4"
run() {  # name, then bench_quality arguments
  local name=$1; shift
  mkdir -p "$out/$name"
  timeout "${LIMIT:-500}" python benchmarks/bench_quality.py $common --out "$out/$name" --name "$name" "$@" \
    > "$out/$name/log.txt" 2>&1 &
}
if [ "${2:-all}" = fp8 ]; then
  for f in wan cogvideox hunyuan_video; do
    run ${f}_fp8 --pipeline reference_models/$f --methods ours_ranges_sens --ranges 8 --sensitivity-prompts 4 \
      --backend torch --precision native fp8 fp8-all
  done
  wait
  exit
fi
if [ "${2:-all}" = default ]; then
  for f in wan cogvideox hunyuan_video; do
    run ${f}_default --pipeline reference_models/$f --methods ours ours_ranges ours_ranges_sens --ranges 8 \
      --sensitivity-prompts 4 --floors
  done
  wait
  exit
fi
for f in wan cogvideox hunyuan_video; do
  run ${f}_bands --pipeline reference_models/$f --methods diagonal multi_diagonal svg
  run ${f}_masks --pipeline reference_models/$f --methods radial sliding_tile paper --floors
  run ${f}_r12 --pipeline reference_models/$f --methods ours_ranges ours_ranges_sens --ranges 12 --floors
done
run wan_r12_fine --pipeline reference_models/wan --methods ours_ranges_sens --ranges 12 --floors \
  --band-densities 0.1 0.175 0.25 0.35 0.5 0.7
run wan_r12_sp2 --pipeline reference_models/wan --methods ours_ranges_sens --ranges 12 --floors --sensitivity-prompts 2
run wan_r6 --pipeline reference_models/wan --methods ours_ranges_sens --ranges 6 --floors
wait
