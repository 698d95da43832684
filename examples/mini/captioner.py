"""The captioner's architecture: a tiny CoCa that speaks the mini world's words.

    python captioner.py OUT_DIR --corpus seed.jsonl [--fields text] [--max-merges N]

Writes OUT_DIR/open_clip_config.json, OUT_DIR/bpe.txt.gz and the initial
weights OUT_DIR/open_clip_pytorch_model.bin: a directory that `vecap train
--model local-dir:OUT_DIR` starts a CoCa from, and whose trained copy `vecap
caption --backend openclip --model local-dir:RUN` loads.

Why not `vecap-tiny-coca` as it ships: CoCa predicts every caption token over
its tokenizer's whole vocabulary. With CLIP's 49,408 BPE tokens, that softmax is
nearly all of a tiny CoCa's compute (about 25 ms per sample on one CPU core, and
greedy captioning pays it again per generated token), so in the demo's minutes it
would see too few images to learn what they show. The world needs about sixty
words, so the captioner gets its own byte-level BPE in CLIP's format, learned
from the seed captions: a few hundred tokens (any text still encodes, byte by
byte), through open_clip's `tokenizer_kwargs`. The rest is vecap-tiny-coca's
shape, at the world's own 64×64 pixels and with a context of 16 tokens (the
clean descriptions take at most 12).

The initial weights are there because open_clip 3.3 never initializes the CoCa
decoder's output projection (`MultimodalTransformer.init_parameters` is never
called, and would fail): it keeps whatever `torch.empty` found. CLIP's large vocabulary happens
to get fresh zeroed pages; a small one gets heap garbage and a first loss of
1e13. So the weights are built here, seeded, with that projection initialized.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import re
from collections import Counter
from pathlib import Path

_WORD = re.compile(r"[a-z]+|[0-9]|[^\sa-z0-9]+")  # as open_clip's SimpleTokenizer splits


def learn_bpe(texts: list[str], max_merges: int = 10_000) -> list[tuple[str, str]]:
    """Merges until every word of `texts` is one token (CLIP's '</w>' word ends), or
    `max_merges` (rarer words then take several tokens)."""
    words = Counter(w for text in texts for w in _WORD.findall(text.lower()))
    spelled = {(*w[:-1], w[-1] + "</w>"): n for w, n in words.items()}
    merges = []
    while True:
        pairs: Counter = Counter()
        for symbols, n in spelled.items():
            for pair in itertools.pairwise(symbols):
                pairs[pair] += n
        if not pairs or len(merges) == max_merges:
            return merges
        best = max(pairs, key=lambda p: (pairs[p], p))  # ties: the same pick every run
        merges.append(best)
        spelled = {_merge(symbols, best): n for symbols, n in spelled.items()}


def _merge(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out, i = [], 0
    while i < len(symbols):
        if symbols[i : i + 2] == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def coca_config(
    vocab_size: int, bpe_path: str, context: int = 16, width: int = 64, layers: int = 2
) -> dict:
    text = {"context_length": context, "vocab_size": vocab_size, "width": 64, "heads": 2}
    return {
        "embed_dim": 64,
        "vision_cfg": {
            "image_size": 64,
            "layers": layers,
            "width": width,
            "head_width": 32,
            "patch_size": 8,
            "attentional_pool": True,
            "attn_pooler_heads": 2,
            "output_tokens": True,
        },
        "text_cfg": {
            **text,
            "layers": 2,
            "embed_cls": True,
            "output_tokens": True,
            "tokenizer_kwargs": {"bpe_path": bpe_path},
        },
        "multimodal_cfg": {**text, "layers": 1, "attn_pooler_heads": 2},
        "custom_text": True,
    }


def initial_weights(out: Path, seed: int) -> None:
    import open_clip
    import torch

    torch.manual_seed(seed)
    model = open_clip.create_model(f"local-dir:{out}")
    proj = model.text_decoder.text_projection  # (width, vocab), as open_clip's CLIP inits its own
    torch.nn.init.normal_(proj, std=proj.shape[0] ** -0.5)
    torch.save(model.state_dict(), out / "open_clip_pytorch_model.bin")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--corpus", type=Path, required=True, help="JSONL of clean captions")
    parser.add_argument("--fields", default="text", help="caption fields, comma-separated")
    parser.add_argument("--max-merges", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, default=64, help="vision tower width")
    parser.add_argument("--layers", type=int, default=2, help="vision tower blocks")
    args = parser.parse_args()
    records = [json.loads(line) for line in args.corpus.read_text().splitlines() if line]
    fields = args.fields.split(",")
    texts = [r[f] for r in records for f in fields if isinstance(r.get(f), str)]
    merges = learn_bpe(texts, args.max_merges)
    args.out.mkdir(parents=True, exist_ok=True)
    bpe = (args.out / "bpe.txt.gz").resolve()  # absolute: the config travels to run dirs
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]  # SimpleTokenizer skips line 1
    bpe.write_bytes(gzip.compress("\n".join(lines).encode(), mtime=0))
    vocab = 2 * 256 + len(merges) + 2  # bytes, bytes + '</w>', merges, start and end
    config = {
        "model_cfg": coca_config(vocab, str(bpe), width=args.width, layers=args.layers),
        "preprocess_cfg": {},
    }
    (args.out / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    initial_weights(args.out, args.seed)
    print(f"captioner: {vocab} tokens ({len(merges)} merges) in {args.out}/")


if __name__ == "__main__":
    main()
