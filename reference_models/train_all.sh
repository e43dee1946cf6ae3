#!/usr/bin/env bash
# Train the three reference pipelines side by side on one GPU (about 8 minutes on an H200):
#   bash reference_models/train_all.sh [OUT_DIR]     (default: reference_models/)
# Each family is one seeded process of `python -m diffusers_sparse_vdit.reference.train`; the
# tiny models leave most of the GPU idle, so three at once cost about as much as one.
set -euo pipefail
out="${1:-$(dirname "$0")}"
python="${PYTHON:-python3}"
pids=()
for family in wan cogvideox hunyuan_video; do
    "$python" -m diffusers_sparse_vdit.reference.train --family "$family" --out "$out/$family" \
        ${TRAIN_ARGS:-} > "$out/train_$family.log" 2>&1 &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status
