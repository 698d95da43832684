#!/usr/bin/env bash
# vecap caption across a Ray cluster: TASKS tasks on a pool of GPU actors, each actor
# loading the model once and captioning task after task into OUT/%06d.tar (task I
# writes I, I+TASKS, ...). Run it where the cluster's head runs (`ray start --head`),
# or give its ADDRESS; with neither, a Ray is started on this machine for the launch.
#
#   bash examples/launch/launch_caption_ray.sh 'pool/{000000..000999}.tar' vec ./llava-1.5-7b-hf
#   ADDRESS=auto TASKS=256 bash examples/launch/launch_caption_ray.sh ... [more caption flags]
#
# Needs `pip install 'vecap[ray]'` and vecap on every node; POOL, OUT and the model on
# a file system every node sees. The launch waits for its tasks; once every task is
# done, their counts are added up into OUT/stats.json. Rerunning the same line runs
# only the tasks not done, each continuing its own shards. Task logs are in
# OUT/.vecap-launch/logs. DRY_RUN=1 prints each task's command instead of running it.
set -euo pipefail
pool=${1:?input shards}; out=${2:?output folder}; model=${3:?model directory}; shift 3
exec vecap launch --engine ray ${ADDRESS:+--address "$ADDRESS"} --tasks "${TASKS:-64}" \
    --resume ${DRY_RUN:+--dry-run} --gpus-per-task "${GPUS:-1}" --cpus-per-task "${CPUS:-8}" \
    -- caption "$pool" --model "$model" -o "$out/%06d.tar" --stats "$out/stats.json" "$@"
