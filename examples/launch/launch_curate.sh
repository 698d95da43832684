#!/usr/bin/env bash
# MetaCLIP curation of a large pool across a Slurm cluster, in two launches: count the
# entries per task, then add the counts up and balance per task. Draws derive from
# (seed, key, entry), so the tasks keep exactly the records one `vecap curate` keeps.
#
#   bash examples/launch/launch_curate.sh count   'pool/{000000..000999}.tar' work metadata.json
#   bash examples/launch/launch_curate.sh balance 'pool/{000000..000999}.tar' work metadata.json
#
# Flags after METADATA go to both passes (matching: --field, --html, --text-filter, --dedup);
# the balancing threshold is T (default 20000, MetaCLIP's for 400M records).
# Run `balance` once the count tasks are done: it refuses while one is not. Rerunning
# either line submits only its tasks not done. Job scripts and task logs are in
# WORK/counts/.vecap-launch and WORK/kept/.vecap-launch; the kept records in WORK/kept.
# DRY_RUN=1 writes the scripts and prints the sbatch commands instead of submitting.
set -euo pipefail
phase=${1:?count or balance}; pool=${2:?input shards}; work=${3:?work folder}
metadata=${4:?metadata.json}; shift 4
tasks=${TASKS:-32}
launch=(vecap launch --engine slurm --tasks "$tasks" --resume ${DRY_RUN:+--dry-run}
    ${PARTITION:+--partition="$PARTITION"} --cpus-per-task 1 --time "${TIME:-4:00:00}")
case $phase in
count)
    exec "${launch[@]}" -- curate count "$pool" --metadata "$metadata" \
        -o "$work/counts/counts.json" --stats "$work/counts/stats.json" "$@" ;;
balance)
    vecap launch --merge "$work/counts/.vecap-launch"  # refuses while a count task is not done
    counts=()
    for ((task = 0; task < tasks; task++)); do counts+=("$work/counts/counts.rank$task.json"); done
    vecap curate count --merge "${counts[@]}" -o "$work/counts.json"
    exec "${launch[@]}" -- curate balance "$pool" --metadata "$metadata" \
        --counts "$work/counts.json" --t "${T:-20000}" -o "$work/kept/%06d.tar" \
        --stats "$work/kept/stats.json" "$@" ;;
*)
    echo "usage: $0 count|balance POOL WORK METADATA [curate flags]" >&2; exit 2 ;;
esac
