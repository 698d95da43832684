#!/usr/bin/env bash
# vecap eval on one node with torchrun: every rank embeds its share, rank 0 scores and writes.
#
#   bash examples/launch/torchrun_eval.sh runs/b16 flickr8k/captions.csv b16-flickr8k.json
#   NPROC=2 bash examples/launch/torchrun_eval.sh examples/mini/work/runs/mixed \
#       examples/mini/work/test.jsonl /tmp/mixed.json --device cpu
#
# The task follows the data: zero-shot when TASK=zeroshot (give --classnames for
# shards), retrieval otherwise.
set -euo pipefail
model=${1:?model directory}; data=${2:?dataset}; out=${3:?result JSON}; shift 3
nproc=${NPROC:-$(nvidia-smi -L 2>/dev/null | wc -l)}
[ "$nproc" -gt 0 ] || nproc=1
exec torchrun --standalone --nproc-per-node "$nproc" -m vecap_cli -- eval \
    --task "${TASK:-retrieval}" "$data" --model "$model" -o "$out" "$@"
