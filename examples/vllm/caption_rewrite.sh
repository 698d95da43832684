#!/usr/bin/env bash
# caption and rewrite against vLLM: a VLM server writes the VeC, an LLM server fuses the VeCap.
#
#   bash examples/vllm/caption_rewrite.sh pool.jsonl vecap.jsonl
#   bash examples/vllm/caption_rewrite.sh 'pool/{000..099}.tar' 'vecap/%06d.tar'   # shards
#
# Starts two servers on this node (GPU 0: the captioner, GPU 1: the rewriter), waits until
# they answer, then runs one pipe: caption | rewrite. Servers that already run elsewhere:
#   CAPTION_API=http://gpu-a:8000/v1 REWRITE_API=http://gpu-b:8001/v1 bash ...caption_rewrite.sh IN OUT
# Many nodes: run this on each with --rank/--world-size (or under srun) and the same servers.
set -euo pipefail
in=${1:?input records}; out=${2:?output}; shift 2
VLM=${VLM:-llava-hf/llava-1.5-7b-hf}        # VeCLIP captioned with LLaVA-1.5
LLM=${LLM:-Qwen/Qwen2.5-7B-Instruct}        # any instruction-tuned chat model
started=()
stop() { for pid in "${started[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap stop EXIT

serve() {  # serve MODEL PORT GPU: a vLLM OpenAI-compatible server in the background
    CUDA_VISIBLE_DEVICES=$3 vllm serve "$1" --port "$2" --served-model-name "$1" \
        --max-model-len 4096 --gpu-memory-utilization 0.9 > "vllm-$2.log" 2>&1 &
    started+=($!)
}
ready() {  # ready URL: wait until the server lists its models (first start downloads weights)
    for _ in $(seq 900); do curl -sf "$1/models" > /dev/null && return 0; sleep 2; done
    echo "no answer from $1 (see vllm-*.log)" >&2; return 1
}
if [ -z "${CAPTION_API:-}" ]; then serve "$VLM" 8000 0; CAPTION_API=http://127.0.0.1:8000/v1; fi
if [ -z "${REWRITE_API:-}" ]; then serve "$LLM" 8001 1; REWRITE_API=http://127.0.0.1:8001/v1; fi
ready "$CAPTION_API" && ready "$REWRITE_API"

# Images travel inline (base64) in the requests, so the servers need no access to the data.
# Failed requests are retried, then counted as rejects; --resume continues sharded output.
vecap caption "$in" --backend openai --api-base "$CAPTION_API" --model "$VLM" \
    --concurrency "${CONCURRENCY:-64}" --stats caption-stats.json --rejects caption-rejects.jsonl \
  | vecap rewrite --backend openai --api-base "$REWRITE_API" --model "$LLM" \
    --concurrency "${CONCURRENCY:-64}" --stats rewrite-stats.json -o "$out" "$@"
