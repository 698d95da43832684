"""Loading a model to evaluate, as one shape: open_clip's `encode_image`/`encode_text`,
a tokenizer (list[str] -> tokens) and an image preprocess (PIL -> tensor).

- open_clip / vecap: `--model ARCH --pretrained CHECKPOINT` (ARCH a built-in
  name or a model-config .json file), or a directory holding
  open_clip_config.json and its weights;
- Hugging Face: a `CLIPModel` directory (config.json + weights) or hub id, with the
  tokenizer saved there or given by `--tokenizer` (Apple's VeCLIP checkpoints
  ship without one: they use t5-base), and its image processor when saved there,
  else VeCLIP's preprocessing: shorter side to the model's size (bilinear, no
  antialias), center crop, CLIP mean/std.

Checkpoints load with `weights_only=True`; remote code is never trusted.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from vecap_cli.errors import VecapError, first_line
from vecap_cli.loading import load_error, quietly

_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "tokenizer.model",
)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class LoadedModel:
    model: torch.nn.Module  # encode_image(pixels), encode_text(tokens)
    tokenizer: Callable[[list[str]], object]
    preprocess: Callable  # PIL image -> (3, H, W) tensor
    name: str
    pretrained: str | None


def load_model(
    model: str,
    pretrained: str | None = None,
    tokenizer: str | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    log: Callable[[str], None] = lambda line: None,
) -> LoadedModel:
    torch.manual_seed(seed)  # a model without weights is the same random model on every rank
    if os.path.isdir(model):
        if pretrained:
            raise VecapError(
                f"--pretrained is for --model ARCH: the directory '{model}' holds its weights"
            )
        if os.path.isfile(os.path.join(model, "config.json")):
            loaded = _load_hf(model, tokenizer)
        elif os.path.isfile(os.path.join(model, "open_clip_config.json")):
            loaded = _load_open_clip(f"local-dir:{model}", None, log)
        else:
            raise VecapError(
                f"--model '{model}': a directory with neither config.json (Hugging Face) "
                "nor open_clip_config.json (open_clip)"
            )
    elif model.endswith(".json"):
        loaded = _load_open_clip(_register(model), pretrained, log)
    elif "/" in model and not model.startswith("hf-hub:") and not os.path.exists(model):
        loaded = _load_hf(model, tokenizer)  # a Hugging Face hub id, where the network allows
    else:
        loaded = _load_open_clip(model, pretrained, log)
    loaded.model.to(device).eval()
    return loaded


def _register(path: str) -> str:
    """Add an open_clip model-config file to open_clip's registry; its name is the file stem."""
    import open_clip

    if not os.path.isfile(path):
        raise VecapError(f"--model '{path}': no such file")
    open_clip.add_model_config(path)
    return os.path.splitext(os.path.basename(path))[0]


def _load_open_clip(arch: str, pretrained: str | None, log) -> LoadedModel:
    import open_clip

    local = arch.startswith(("local-dir:", "hf-hub:"))
    if not local and arch not in open_clip.list_models():
        raise VecapError(
            f"--model '{arch}': not an open_clip architecture, a model-config .json, "
            "or a model directory"
        )
    tags = () if local else open_clip.list_pretrained_tags_by_model(arch)
    if pretrained and not os.path.isfile(pretrained) and pretrained not in tags:
        raise VecapError(f"--pretrained '{pretrained}': no such file or {arch} tag")
    if not pretrained and not local:
        log(f"warning: no --pretrained: {arch} has random weights")
    try:
        with quietly():
            model, _, preprocess = open_clip.create_model_and_transforms(
                arch, pretrained=pretrained or None, weights_only=True
            )
            tokenizer = open_clip.get_tokenizer(arch)
    except Exception as err:  # a file from anywhere: whatever pickle or torch raises is one line
        what = f"'{pretrained}' into {arch}" if pretrained else f"'{arch}'"
        raise load_error(f"cannot load {what}", err) from None
    return LoadedModel(model, tokenizer, preprocess, arch.removeprefix("local-dir:"), pretrained)


def _load_hf(model_id: str, tokenizer: str | None) -> LoadedModel:
    """A CLIPModel directory or hub id (a download only where the network and
    HF_HUB_OFFLINE allow)."""
    import transformers
    from transformers import AutoConfig, AutoTokenizer, CLIPModel

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # stderr is for our summary
    try:
        config = AutoConfig.from_pretrained(model_id, trust_remote_code=False)
    except Exception as err:  # a damaged config.json: whatever transformers raises is one line
        raise VecapError(f"cannot load '{model_id}': {first_line(err)}") from None
    if config.model_type != "clip":
        raise VecapError(
            f"--model '{model_id}' is a '{config.model_type}' model: only CLIPModel "
            "(model_type 'clip') is supported"
        )
    try:
        model = CLIPModel.from_pretrained(model_id, trust_remote_code=False)
    except Exception as err:  # damaged or hostile weights: whatever the loader raises is one line
        raise VecapError(f"cannot load '{model_id}': {first_line(err)}") from None
    source = tokenizer or model_id
    hint = "" if tokenizer else ": pass --tokenizer (VeCLIP checkpoints use t5-base)"
    if os.path.isdir(source) and not any(
        os.path.isfile(os.path.join(source, name)) for name in _TOKENIZER_FILES
    ):
        # transformers 5 would build an empty tokenizer from config.json alone
        raise VecapError(f"no tokenizer in '{source}'{hint}")
    try:
        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError, TypeError) as err:
        raise VecapError(f"no tokenizer in '{source}'{hint} ({first_line(err)})") from None
    return LoadedModel(
        HFClip(model),
        HFTokenizer(tok, config.text_config.max_position_embeddings),
        _hf_preprocess(model_id, config.vision_config.image_size),
        model_id,
        model_id,
    )


class HFClip(torch.nn.Module):
    """A transformers CLIPModel behind open_clip's two methods."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return _pooled(self.model.get_image_features(pixel_values=pixels))

    def encode_text(self, tokens: dict) -> torch.Tensor:
        return _pooled(self.model.get_text_features(**tokens))


def _pooled(out) -> torch.Tensor:
    # transformers 4 returns the projected features; 5 returns them as pooler_output
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class HFTokenizer:
    """Padding to the longest text of the batch (causal text towers pool at EOS, so
    padding does not change a text's embedding), truncated to the position table."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def _hf_preprocess(source: str, size: int) -> Callable:
    """The image processor saved with the model, else VeCLIP's preprocessing."""
    from transformers import AutoImageProcessor

    if os.path.isdir(source) and not os.path.isfile(
        os.path.join(source, "preprocessor_config.json")
    ):
        return VeclipPreprocess(size)
    try:
        processor = AutoImageProcessor.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError):
        return VeclipPreprocess(size)
    return lambda image: processor(images=image, return_tensors="pt")["pixel_values"][0]


class VeclipPreprocess:
    """ml-veclip's clip_processor: shorter side to `size` (bilinear, no antialias),
    center crop, whiten with CLIP's mean/std."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image) -> torch.Tensor:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        x = TF.pil_to_tensor(image).float()  # (3, H, W), 0..255
        x = TF.resize(x, self.size, InterpolationMode.BILINEAR, antialias=False)
        x = TF.center_crop(x, [self.size, self.size])
        return TF.normalize(x / 255.0, CLIP_MEAN, CLIP_STD)
