#!/usr/bin/env bash
# One shell pipe per command, run on what `make -C examples/mini` left behind:
#
#   make -C examples/mini && bash examples/pipes.sh [WORK]
#
# Each line is a pipe a user would type; the scratch they write goes to a temporary
# folder. WORK defaults to examples/mini/work.
set -euo pipefail
cd "${1:-$(dirname "$0")/mini/work}"
tmp=$(mktemp -d) && trap 'rm -rf "$tmp"' EXIT

echo "# curate: the balanced share of a pool read from stdin"
cat pool.jsonl | vecap curate --metadata metadata.json --t 100 -q | wc -l

echo "# caption: VeC for a few curated records, with the demo's CoCa"
head -n 4 kept.jsonl | vecap caption --backend openclip --model local-dir:runs/coca -q | cut -c1-160

echo "# rewrite: AltText + VeC -> VeCap (rules), only the records the rules changed"
vecap rewrite vec.jsonl --overwrite -q | grep -c '"vecap":"[^"]*, [A-Z]' || true

echo "# embed: a teacher's embeddings of 2 seeded views of each image and of both captions"
head -n 8 vecap.jsonl | vecap embed --model runs/mixed -k 2 --text-keys alt,vecap --format tar -q \
    | tar t | sed -n 1,6p

echo "# mix: VeCLIP's 50/50 draw into open_clip-ready tar shards, straight from a pipe"
cat vecap.jsonl | vecap mix --keys alt,vecap --probs 0.5,0.5 --epoch 1 -q -o "$tmp/e1/%06d.tar" --shard-size 1000
ls "$tmp/e1"

echo "# train: a few steps on shards streamed through pipe: (any command that prints a tar)"
vecap train "pipe:cat mixed/000000.tar" --model vecap-tiny --text-keys alt,vecap \
    --train-num-samples 128 --batch-size 64 --workers 1 -q -o "$tmp/run" && ls "$tmp/run"

echo "# eval: retrieval on the held-out split, the result JSON filtered on stdout"
vecap eval --task retrieval test.jsonl --model runs/mixed -q | grep 'recall@1"'

echo "# the whole recipe as one pipe: curate | caption | rewrite | mix"
head -n 200 pool.jsonl | vecap curate --metadata metadata.json --t 10 -q \
    | vecap caption --backend openclip --model local-dir:runs/coca -q \
    | vecap rewrite -q | vecap mix -q --stats "$tmp/mix.json" --format tar | tar t | sed -n 1,3p
