#!/usr/bin/env bash
# vecap train on one node with torchrun: one rank per GPU (NCCL), or per CPU process (gloo).
#
#   bash examples/launch/torchrun_train.sh 'shards/{000000..000099}.tar' runs/b16 [vecap train flags]
#   NPROC=2 MODEL=vecap-tiny bash examples/launch/torchrun_train.sh 'examples/mini/work/mixed/*.tar' /tmp/ddp --device cpu
#
# Each rank reads its own shards, negatives are gathered across ranks, rank 0 writes the
# checkpoints; rerunning the same line resumes (--resume latest). Multi-node: replace
# --standalone by --nnodes N --node-rank R --rdzv-endpoint HOST:PORT on every node.
set -euo pipefail
data=${1:?training shards}; out=${2:?output directory}; shift 2
nproc=${NPROC:-$(nvidia-smi -L 2>/dev/null | wc -l)}
[ "$nproc" -gt 0 ] || nproc=1
# `--` ends torchrun's own flags: what follows goes to vecap untouched
exec torchrun --standalone --nproc-per-node "$nproc" -m vecap_cli -- train "$data" \
    --model "${MODEL:-ViT-B-16}" --text-keys alt,vecap --text-probs 0.5,0.5 \
    --batch-size "${BATCH:-256}" --epochs "${EPOCHS:-32}" --workers "${WORKERS:-4}" \
    -o "$out" --log "$out/log.jsonl" --save-every 1000 --keep 3 --resume latest "$@"
