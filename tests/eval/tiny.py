"""Tiny models and datasets the eval tests build: random weights, real loading code."""

import io
import json
import os
import random
from pathlib import Path

# An open_clip ViT small enough to evaluate in a fraction of a second on a CPU.
TINY_OPENCLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
WORDS = [
    "a",
    "an",
    "the",
    "of",
    "in",
    "on",
    "with",
    "photo",
    "picture",
    "dog",
    "cat",
    "car",
    "tree",
    "boat",
    "house",
    "red",
    "blue",
    "green",
    "man",
    "woman",
]


def write_openclip(directory: Path, seed: int = 0) -> tuple[Path, Path]:
    """(model-config .json, checkpoint) of a random tiny open_clip model, as vecap train saves it."""
    import open_clip
    import torch

    config = directory / "vecap-tiny-vit.json"
    config.write_text(json.dumps(TINY_OPENCLIP))
    open_clip.add_model_config(config)
    torch.manual_seed(seed)
    model = open_clip.create_model("vecap-tiny-vit")
    checkpoint = directory / "tiny.pt"
    torch.save(
        {"epoch": 1, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}},
        checkpoint,
    )
    return config, checkpoint


def write_hf_clip(directory: Path, with_tokenizer: bool = True, seed: int = 0) -> Path:
    """A tiny transformers CLIPModel directory with a T5-style word tokenizer (pad 0, </s> 1)
    saved beside it, as AutoTokenizer loads it, with no download."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(WORDS)}
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
            "pad_token_id": 0,
            "eos_token_id": 1,
            "bos_token_id": 1,
        },
        vision_config={
            "image_size": 32,
            "patch_size": 16,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
        },
        projection_dim=16,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(directory)
    if with_tokenizer:
        write_word_tokenizer(directory, vocab)
    return directory


def write_hf_processor(directory: Path):
    """Save a CLIPProcessor (the directory's tokenizer and an image processor unlike
    VeCLIP's: shortest edge 40, 32 px crop, own mean/std) beside a write_hf_clip model,
    as the installed transformers saves it (5: processor_config.json only); returns it."""
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPProcessor

    images = CLIPImageProcessor(
        size={"shortest_edge": 40},
        crop_size={"height": 32, "width": 32},
        image_mean=[0.5, 0.4, 0.3],
        image_std=[0.2, 0.25, 0.3],
    )
    processor = CLIPProcessor(
        image_processor=images, tokenizer=AutoTokenizer.from_pretrained(directory)
    )
    processor.save_pretrained(directory)
    return processor


def write_word_tokenizer(directory: Path, vocab: dict | None = None) -> Path:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = vocab or {"<pad>": 0, "</s>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    os.makedirs(directory, exist_ok=True)
    fast.save_pretrained(directory)
    return directory


def image_bytes(rng: random.Random, size: int = 40, fmt: str = "PNG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.frombytes("RGB", (size, size), rng.randbytes(size * size * 3)).save(buf, format=fmt)
    return buf.getvalue()


def caption(rng: random.Random) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(3, 8)))


def write_caption_csv(directory: Path, n_images: int, per_image: int = 3, seed: int = 0) -> Path:
    """`image,caption` CSV (with quoted commas) beside `images/` of random PNGs."""
    import csv

    rng = random.Random(seed)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    path = directory / "captions.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        for i in range(n_images):
            name = f"{i:04d}.png"
            (directory / "images" / name).write_bytes(image_bytes(rng))
            for j in range(per_image):
                writer.writerow([name, caption(rng) + (", too" if j == 1 else "")])
    return path


def write_class_folders(directory: Path, classes: list[str], per_class: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    for name in classes:
        (directory / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (directory / name / f"{i}.jpg").write_bytes(image_bytes(rng, fmt="JPEG"))
    return directory
