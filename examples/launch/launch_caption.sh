#!/usr/bin/env bash
# vecap caption across a Slurm cluster: a job array of one GPU task per rank, each
# captioning its share of the shards into OUT/%06d.tar (task I writes I, I+TASKS, ...).
#
#   bash examples/launch/launch_caption.sh 'pool/{000000..000999}.tar' vec ./llava-1.5-7b-hf
#   TASKS=128 PARTITION=a100 bash examples/launch/launch_caption.sh ... [more caption flags]
#
# Rerunning the same line submits only the tasks not done (preempted, failed, out of
# time), each continuing its own shards. Job scripts and task logs are in OUT/.vecap-launch;
# `vecap launch --watch OUT/.vecap-launch` shows the whole launch as one bar. Once every
# task is done, a last job adds their counts up into OUT/stats.json and joins the images
# they could not caption into OUT/rejects.jsonl.
# DRY_RUN=1 writes the scripts and prints the sbatch commands instead of submitting.
set -euo pipefail
pool=${1:?input shards}; out=${2:?output folder}; model=${3:?model directory}; shift 3
exec vecap launch --engine slurm --tasks "${TASKS:-64}" --resume ${DRY_RUN:+--dry-run} \
    ${PARTITION:+--partition="$PARTITION"} --gpus-per-task 1 --cpus-per-task 8 --time "${TIME:-8:00:00}" \
    -- caption "$pool" --model "$model" -o "$out/%06d.tar" --stats "$out/stats.json" \
    --rejects "$out/rejects.jsonl" "$@"
