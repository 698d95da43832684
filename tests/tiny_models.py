"""Tiny random-weight models of the real classes, saved to local dirs and loaded back
through the real loading code (nothing is downloaded).

The words they produce are meaningless; what they test is the plumbing: config
and processor files, chat templates, batching, padding, decoding. Each builder
writes into a given directory and returns it; `Built` builds one lazily, once
per test session, so module-level flag lists (tests/cli/test_contract.py CASES)
can name a model that only exists when a test first needs it.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

# A small English vocabulary: random weights then emit real words, which keeps
# outputs readable in failures and lets validation see words, not byte soup.
WORDS = """
a an the of on in with and at by to from is are two three dog cat man woman child red
blue green white black small large old new photo picture view street park beach table
car bike tree house river mountain city sky water grass snow road field boat sitting
standing running playing near next under over front top close up group Paris London
Tokyo Eiffel Tower Golden Gate Bridge Nike Canon 2019 1960s 50 cm
""".split()  # noqa: SIM905 -- a word list reads best as words
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<image>"]

CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{{ '<s>' + m['role'] + ': ' }}"
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}{{ '<image> ' }}{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '</s>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<s>assistant: ' }}{% endif %}"
)


def tiny_tokenizer(chat_template: str | None = CHAT_TEMPLATE):
    """A word-level fast tokenizer over WORDS (lower-cased too), with the usual specials."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for word in [*WORDS, *(w.lower() for w in WORDS), ".", ",", ":", "'", '"', "?", "!"]:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.NFKC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    if chat_template:
        tokenizer.chat_template = chat_template
    return tokenizer


def _vocab_size(tokenizer) -> int:
    return len(tokenizer)


def _llama_config(tokenizer, hidden: int = 32, layers: int = 2, **extra):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=_vocab_size(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def _never_silent(model, tokenizer) -> None:
    """Random weights may pick the end token first; a real captioner says something."""
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.min_new_tokens = 3


def _louder(model, std: float = 0.2) -> None:
    import torch

    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, std)


def _seeded(seed: int):
    import torch

    torch.manual_seed(seed)


def save_tiny_llama(directory: Path, seed: int = 0) -> Path:
    """A LlamaForCausalLM with a chat template: the `rewrite --backend hf` model."""
    from transformers import LlamaForCausalLM

    _seeded(seed)
    tokenizer = tiny_tokenizer()
    model = LlamaForCausalLM(_llama_config(tokenizer))
    _never_silent(model, tokenizer)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return Path(directory)


def _byte_level_bpe(vocab_size: int = 512) -> tuple[list[str], list[str]]:
    """(tokens by id, merges) of a byte-level BPE learnt on WORDS: a GGUF file
    stores its vocabulary this way ("gpt2"), not as a tokenizer.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS[:4],  # <pad> <unk> <s> </s>: ids 0-3
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = [" ".join(WORDS), " ".join(w.lower() for w in WORDS), "user: assistant: system:"]
    tokenizer.train_from_iterator(text * 3, trainer)
    bpe = json.loads(tokenizer.to_str())["model"]
    tokens = sorted(bpe["vocab"], key=bpe["vocab"].get)
    merges = [m if isinstance(m, str) else " ".join(m) for m in bpe["merges"]]
    return tokens, merges


def _llama_cpp_permute(weight, heads: int):
    """llama.cpp's row order for q_proj and k_proj (its convert_hf_to_gguf.py), which
    transformers' GGUF loader undoes: (heads * 2 * half, in) with the halves interleaved."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, -1).swapaxes(1, 2).reshape(weight.shape)


def write_tiny_llama_gguf(
    path: Path, tensor_type: str = "f32", seed: int = 0, architecture: str = "llama"
) -> dict:
    """A tiny Llama with a chat template as one GGUF file, written the way llama.cpp's
    converter writes one: the config and the tokenizer as metadata, the matrices as
    `tensor_type` (f32, f16 or q8_0; norms stay f32). Returns the weights as the
    file holds them (rounded to `tensor_type`), by transformers' names, to compare a
    loaded model with. `architecture` other than llama: a file nobody can load."""
    import gguf
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    _seeded(seed)
    tokens, merges = _byte_level_bpe()
    ids = {t: i for i, t in enumerate(tokens)}
    heads, kv_heads, hidden = 4, 2, 32
    config = LlamaConfig(
        vocab_size=len(tokens),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=256,
        tie_word_embeddings=False,  # llama.cpp writes output.weight only when untied
    )
    model = LlamaForCausalLM(config)
    _louder(model, 0.5)

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name("vecap-tiny-llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(hidden)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_merges(merges)
    writer.add_token_types([3 if t in SPECIALS else 1 for t in tokens])  # 3: control
    writer.add_bos_token_id(ids["<s>"])
    writer.add_eos_token_id(ids["</s>"])
    writer.add_unk_token_id(ids["<unk>"])
    writer.add_pad_token_id(ids["<pad>"])
    writer.add_chat_template(CHAT_TEMPLATE)

    quant = {
        "f32": gguf.GGMLQuantizationType.F32,
        "f16": gguf.GGMLQuantizationType.F16,
        "q8_0": gguf.GGMLQuantizationType.Q8_0,
    }[tensor_type]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    held = {}
    for name, param in model.state_dict().items():
        weight = param.numpy()
        kind = quant if weight.ndim == 2 else gguf.GGMLQuantizationType.F32
        # q8_0 blocks run along a row, so rounding before or after the permutation is one
        held[name] = torch.from_numpy(
            gguf.quants.dequantize(gguf.quants.quantize(weight, kind), kind)
        )
        if name.endswith("q_proj.weight"):
            weight = _llama_cpp_permute(weight, heads)
        elif name.endswith("k_proj.weight"):
            weight = _llama_cpp_permute(weight, kv_heads)
        data = gguf.quants.quantize(np.ascontiguousarray(weight), kind)
        raw = None if kind == gguf.GGMLQuantizationType.F32 else kind
        writer.add_tensor(names.get_name(name, (".weight",)), data, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return held


def save_tiny_llava(
    directory: Path, seed: int = 0, hidden: int = 32, layers: int = 2, image_size: int = 32
) -> Path:
    """A LLaVA-1.5-shaped model: CLIP vision tower + projector + Llama, with its processor.

    The defaults are for tests; benchmarks ask for a bigger one (still tiny).
    """
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    _seeded(seed)
    tokenizer = tiny_tokenizer()
    patch = 16
    vision = CLIPVisionConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch,
        projection_dim=hidden,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=_llama_config(tokenizer, hidden, layers),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(image_size // patch) ** 2,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    model = LlavaForConditionalGeneration(config)
    _never_silent(model, tokenizer)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
    )
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return Path(directory)


def save_tiny_blip(directory: Path, seed: int = 0) -> Path:
    """A BLIP captioner (BlipForConditionalGeneration) with its processor: no chat template."""
    from transformers import (
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    _seeded(seed)
    tokenizer = tiny_tokenizer(chat_template=None)
    config = BlipConfig(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 16,
        },
        text_config={
            "vocab_size": _vocab_size(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "encoder_hidden_size": 32,
            "max_position_embeddings": 64,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "sep_token_id": tokenizer.eos_token_id,
        },
        projection_dim=32,
    )
    model = BlipForConditionalGeneration(config)
    _never_silent(model, tokenizer)
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
    )
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return Path(directory)


TINY_COCA = {  # coca_ViT-B-32's shape, shrunk
    "embed_dim": 32,
    "vision_cfg": {
        "image_size": 32,
        "layers": 1,
        "width": 32,
        "head_width": 16,
        "patch_size": 16,
        "attentional_pool": True,
        "attn_pooler_heads": 2,
        "output_tokens": True,
    },
    "text_cfg": {
        "context_length": 24,
        "vocab_size": 49408,
        "width": 32,
        "heads": 2,
        "layers": 1,
        "embed_cls": True,
        "output_tokens": True,
    },
    "multimodal_cfg": {
        "context_length": 24,
        "vocab_size": 49408,
        "width": 32,
        "heads": 2,
        "layers": 1,
        "attn_pooler_heads": 2,
    },
    "custom_text": True,
}


def save_tiny_coca(directory: Path, seed: int = 0) -> Path:
    """An open_clip CoCa in a `local-dir:` folder (open_clip_config.json + weights)."""
    import open_clip
    import torch

    _seeded(seed)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": TINY_COCA, "preprocess_cfg": {}}
    (directory / "open_clip_config.json").write_text(json.dumps(config))
    model = open_clip.create_model(f"local-dir:{directory}")
    _louder(model)  # open_clip zero-inits some projections: every token would tie
    torch.save(model.state_dict(), directory / "open_clip_pytorch_model.bin")
    return directory


BUILDERS = {
    "llama": save_tiny_llama,
    "llava": save_tiny_llava,
    "blip": save_tiny_blip,
    "coca": save_tiny_coca,
}

_CACHE: dict[str, Path] = {}
_ROOT: list[str] = []


def tiny_model(kind: str) -> Path:
    """The session's tiny model of `kind`, built on first use in a temp dir removed at exit."""
    if kind not in _CACHE:
        if not _ROOT:
            _ROOT.append(tempfile.mkdtemp(prefix="vecap-tiny-"))
            atexit.register(shutil.rmtree, _ROOT[0], True)
        _CACHE[kind] = BUILDERS[kind](Path(_ROOT[0]) / kind)
    return _CACHE[kind]


class Built(os.PathLike):
    """A path that builds its tiny model the first time it is turned into a string."""

    def __init__(self, kind: str, prefix: str = ""):
        self.kind, self.prefix = kind, prefix

    def __fspath__(self) -> str:
        return f"{self.prefix}{tiny_model(self.kind)}"

    __str__ = __fspath__


# Tiny models run faster on one thread: OpenMP threads waiting on each other cost
# more than the work, badly so on a loaded machine. For the CLI in a subprocess:
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@contextlib.contextmanager
def one_torch_thread():
    """torch on one thread in this process for a while (tests share the process)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
