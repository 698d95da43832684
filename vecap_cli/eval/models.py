"""Loading a model to evaluate, as one shape: open_clip's `encode_image`/`encode_text`,
a tokenizer (list[str] -> tokens) and an image preprocess (PIL -> tensor).

- open_clip / vecap: `--model ARCH --pretrained CHECKPOINT`, ARCH any name
  `vecap train` accepts (open_clip's, vecap's built-in `vecap-tiny*`, `ViT-B/16`
  for `ViT-B-16`) or a model-config .json file; or a directory (or
  `local-dir:DIR`) holding open_clip_config.json and its weights, as a
  `vecap train` run directory does;
- Hugging Face: a `CLIPModel` directory (config.json + weights) or hub id, with the
  tokenizer saved there or given by `--tokenizer` (Apple's VeCLIP checkpoints
  ship without one: they use t5-base), and the image processor saved with it
  (preprocessor_config.json, or transformers 5's processor_config.json) when
  there is one, else VeCLIP's preprocessing: shorter side to the model's size
  (bilinear, no antialias), center crop, CLIP mean/std.

Which preprocessing runs is said on stderr, one line. Checkpoints load with
`weights_only=True`; remote code is never trusted.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from vecap_cli import positions
from vecap_cli.errors import VecapError, first_line
from vecap_cli.loading import load_error, quietly
from vecap_cli.positions import check_context_length

_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "tokenizer.model",
)
# what transformers writes beside a model for its image processor (4.x, and 5's processor)
_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
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
    context_length: int | None = None,
) -> LoadedModel:
    """`context_length`: text tokens (None: what the weights were trained with; more
    than that stretches their positions Long-CLIP's way, fewer truncates them)."""
    if context_length is not None:
        check_context_length(context_length)
    torch.manual_seed(seed)  # a model without weights is the same random model on every rank
    directory = model.removeprefix("local-dir:")
    if os.path.isdir(directory) or model.startswith("local-dir:"):
        if pretrained:
            raise VecapError(
                f"--pretrained is for --model ARCH: the directory '{directory}' holds its weights"
            )
        hf = os.path.isfile(os.path.join(directory, "config.json"))
        if not model.startswith("local-dir:") and hf:
            loaded = _load_hf(model, tokenizer, log, context_length)
        elif os.path.isfile(os.path.join(directory, "open_clip_config.json")):
            loaded = _load_open_clip(f"local-dir:{directory}", None, log, context_length)
            loaded.pretrained = directory  # where its weights came from
        elif model.startswith("local-dir:"):
            raise VecapError(f"--model '{model}': no open_clip_config.json in '{directory}'")
        else:
            raise VecapError(
                f"--model '{model}': a directory with neither config.json (Hugging Face) "
                "nor open_clip_config.json (open_clip)"
            )
    elif model.endswith(".json"):
        loaded = _load_open_clip(_register(model), pretrained, log, context_length)
    elif "/" in model and not model.startswith("hf-hub:") and not _open_clip_name(model):
        loaded = _load_hf(model, tokenizer, log, context_length)  # a hub id, where allowed
    else:
        loaded = _load_open_clip(model, pretrained, log, context_length)
    loaded.model.to(device).eval()
    return loaded


def _open_clip_name(name: str) -> bool:
    """Whether open_clip (with vecap's built-in configs) knows the architecture, as
    `vecap train` and open_clip resolve it: `ViT-B/16` is `ViT-B-16`."""
    import open_clip

    from vecap_cli.loading import register_builtin_configs

    register_builtin_configs()
    return open_clip.get_model_config(name.replace("/", "-")) is not None


def _register(path: str) -> str:
    """Add an open_clip model-config file to open_clip's registry; its name is the file stem."""
    import open_clip

    if not os.path.isfile(path):
        raise VecapError(f"--model '{path}': no such file")
    open_clip.add_model_config(path)
    return os.path.splitext(os.path.basename(path))[0]


def _load_open_clip(
    arch: str, pretrained: str | None, log, context_length: int | None = None
) -> LoadedModel:
    import open_clip

    local = arch.startswith(("local-dir:", "hf-hub:"))
    if not local:
        arch = arch.replace("/", "-")  # ViT-B/16 is ViT-B-16, for its tags too
    if not local and not _open_clip_name(arch):
        near = difflib.get_close_matches(arch, open_clip.list_models(), n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        raise VecapError(
            f"--model '{arch}': not an open_clip architecture, a model-config .json, "
            f"or a model directory{hint}"
        )
    tags = () if local else open_clip.list_pretrained_tags_by_model(arch)
    if pretrained and not os.path.isfile(pretrained) and pretrained not in tags:
        raise VecapError(f"--pretrained '{pretrained}': no such file or {arch} tag")
    if not pretrained and not local:
        log(f"warning: no --pretrained: {arch} has random weights")
    saved = saved_context_length(pretrained, arch) if pretrained else None
    try:
        with quietly():
            model, _, preprocess = open_clip.create_model_and_transforms(
                # the positions the weights have: open_clip would interpolate them to
                # the architecture's own number, and the text would be cut there
                arch,
                pretrained=pretrained or None,
                weights_only=True,
                force_context_length=saved,
            )
            if saved is not None:
                positions.set_context_length(model, saved)  # CoCa's decoder too
            if context_length is not None:
                _resize(model, context_length, log)
            tokenizer = open_clip.get_tokenizer(
                arch, context_length=positions.context_length(model)
            )
    except VecapError:
        raise
    except Exception as err:  # a file from anywhere: whatever pickle or torch raises is one line
        what = f"'{pretrained}' into {arch}" if pretrained else f"'{arch}'"
        raise load_error(f"cannot load {what}", err) from None
    log(f"preprocessing: open_clip's for {arch} ({_describe_open_clip(model)})")
    return LoadedModel(model, tokenizer, preprocess, arch.removeprefix("local-dir:"), pretrained)


def saved_context_length(path: str, arch: str) -> int | None:
    """The text tokens the weights in `path` were trained with, when it tells: the
    length a `vecap train` checkpoint records, else the rows of its text positions
    (less CoCa's CLS row). Read memory-mapped: only what is looked at loads."""
    import open_clip

    if not os.path.isfile(path):
        return None  # an open_clip tag: the architecture's own length
    try:
        with quietly():
            payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a zip checkpoint, or damaged: the real load says why
        return None
    if not isinstance(payload, dict):
        return None
    recorded = payload.get("context_length")
    if recorded is not None:
        return check_context_length(recorded, f"'{path}': its context_length")
    state = payload.get("state_dict", payload)
    table = next(
        (
            state[key]
            for key in (
                "positional_embedding",
                "text.positional_embedding",
                "module.positional_embedding",
                "module.text.positional_embedding",
            )
            if isinstance(state, dict) and isinstance(state.get(key), torch.Tensor)
        ),
        None,
    )
    if table is None or table.ndim != 2:
        return None
    text_cfg = (open_clip.get_model_config(arch) or {}).get("text_cfg", {})
    rows = table.shape[0] - (1 if text_cfg.get("embed_cls") else 0)
    if rows == text_cfg.get("context_length", rows):
        return None  # the architecture's own: nothing to force
    return check_context_length(rows, f"'{path}': its text positions")


def _resize(model, length: int, log) -> None:
    had = positions.set_context_length(model, length)
    if had < length:
        log(f"text positions stretched Long-CLIP's way: {had} -> {length} tokens")
    elif had > length:
        log(f"text positions truncated: {had} -> {length} tokens")


def _describe_open_clip(model) -> str:
    cfg = getattr(getattr(model, "visual", None), "preprocess_cfg", None) or {}
    size = cfg.get("size", "?")
    if isinstance(size, list | tuple):
        size = size[0] if len(set(size)) == 1 else "×".join(map(str, size))
    parts = [f"{size} px", cfg.get("interpolation", "bicubic"), cfg.get("resize_mode", "shortest")]
    if "mean" in cfg:
        parts.append(f"mean {_floats(cfg['mean'])}, std {_floats(cfg.get('std', ()))}")
    return ", ".join(map(str, parts))


def _floats(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def _load_hf(
    model_id: str, tokenizer: str | None, log, context_length: int | None = None
) -> LoadedModel:
    """A CLIPModel directory or hub id (a download only where the network and
    HF_HUB_OFFLINE allow); `context_length` may cut texts shorter, not longer."""
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
    except Exception as err:  # a damaged tokenizer file: whatever transformers raises is one line
        raise VecapError(f"no tokenizer in '{source}'{hint} ({first_line(err)})") from None
    return LoadedModel(
        HFClip(model),
        HFTokenizer(tok, _hf_length(config, context_length)),
        _hf_preprocess(model_id, config.vision_config.image_size, log),
        model_id,
        model_id,
    )


def _hf_length(config, context_length: int | None) -> int:
    most = config.text_config.max_position_embeddings
    if context_length is not None and context_length > most:
        raise VecapError(
            f"--context-length {context_length}: this Hugging Face CLIPModel has {most} text "
            "positions (vecap stretches open_clip models only)"
        )
    return context_length or most


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


def _hf_preprocess(source: str, size: int, log) -> Callable:
    """The image processor saved with the model (whatever AutoImageProcessor, else
    AutoProcessor, loads from it), else VeCLIP's preprocessing. A processor file
    that is there but does not load is an error, not a silent fallback."""
    from transformers import AutoImageProcessor, AutoProcessor

    saved = [
        name for name in _PROCESSOR_FILES if os.path.isfile(os.path.join(source, name))
    ] if os.path.isdir(source) else []  # fmt: skip
    processor, errors = None, []
    if saved or not os.path.isdir(source):
        for auto in (AutoImageProcessor, AutoProcessor):
            try:
                found = auto.from_pretrained(source, trust_remote_code=False)
            except Exception as err:  # a file from anywhere: whatever it raises is one line
                errors.append(first_line(err))
                continue
            processor = getattr(found, "image_processor", None) if auto is AutoProcessor else found
            if processor is not None:
                break
    if processor is None:
        if saved and len(errors) == 2:  # there, but not loadable: no silent fallback
            raise VecapError(
                f"cannot load the image processor in '{source}' ({saved[0]}): {errors[0]}"
            )
        what = f"its {saved[0]} has none" if saved else "none saved"
        log(
            f"preprocessing: VeCLIP's, no image processor with '{source}' ({what}): shorter "
            f"side to {size} px, bilinear, center crop, CLIP mean/std"
        )
        return VeclipPreprocess(size)
    name = type(processor).__name__
    log(f"preprocessing: the {name} saved with '{source}' ({_describe_hf(processor)})")
    return lambda image: processor(images=image, return_tensors="pt")["pixel_values"][0]


def _describe_hf(processor) -> str:
    parts = []
    for attr, label in (("size", "resize"), ("crop_size", "crop")):
        text = _size_text(getattr(processor, attr, None))
        if text and (attr != "crop_size" or getattr(processor, "do_center_crop", True)):
            parts.append(f"{label} {text}")
    mean, std = getattr(processor, "image_mean", None), getattr(processor, "image_std", None)
    if mean is not None and std is not None and getattr(processor, "do_normalize", True):
        parts.append(f"mean {_floats(mean)}, std {_floats(std)}")
    return ", ".join(parts) or "its own settings"


def _size_text(size) -> str | None:
    if size is None:
        return None
    if isinstance(size, int):
        return f"{size} px"
    get = size.get if isinstance(size, dict) else lambda key: getattr(size, key, None)
    if get("shortest_edge"):
        return f"shortest edge {get('shortest_edge')} px"
    if get("height") and get("width"):
        return f"{get('height')}×{get('width')} px"
    if get("longest_edge"):
        return f"longest edge {get('longest_edge')} px"
    return None


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
