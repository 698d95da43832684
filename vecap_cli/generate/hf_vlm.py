"""Captions from a transformers vision-language model in a local dir (or a hub id).

One class covers the families transformers serves through
`AutoModelForImageTextToText`: LLaVA-1.5 and LLaVA-NeXT, BLIP and BLIP-2,
Qwen2-VL and the like. The prompt goes through the processor's chat template
where it has one; models without one get the form they were trained on.
"""

from __future__ import annotations

from vecap_cli.errors import VecapError
from vecap_cli.generate.base import Prompted, decode_rgb, default_dtype, resolve_device
from vecap_cli.generate.sampling import processors
from vecap_cli.loading import load_error


def quiet_transformers() -> None:
    """No per-load progress bars and advisory warnings on stderr: it carries the summary."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def prompt_text(processor, model_type: str, prompt: str) -> str | None:
    """The text that goes beside each image, or None for unconditional captioning."""
    if getattr(processor, "chat_template", None):
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}
        ]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if model_type == "blip":
        return None  # BLIP continues a text prefix, it does not follow instructions
    if model_type == "blip-2":
        return f"Question: {prompt} Answer:"
    return prompt


def clean(text: str) -> str:
    return " ".join(text.split())


class HFCaptioner:
    def __init__(
        self,
        model: str,
        prompt: str,
        max_new_tokens: int,
        device: str = "auto",
        trust_remote_code: bool = False,
        temperature: float = 0.0,
    ):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        quiet_transformers()
        self.device = resolve_device(device)
        self.dtype = default_dtype(self.device)
        try:
            self.processor = AutoProcessor.from_pretrained(
                model, trust_remote_code=trust_remote_code
            )
            self.model = AutoModelForImageTextToText.from_pretrained(
                model, dtype=self.dtype, trust_remote_code=trust_remote_code
            )
        except Exception as err:  # damaged or hostile files: whatever the loader raises is one line
            raise load_error(f"cannot load the vision-language model '{model}'", err) from None
        self.model.to(self.device).eval()
        tokenizer = getattr(self.processor, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.padding_side = "left"  # decoder-only LMs continue from the right edge
        self.name, self.model_type = model, self.model.config.model_type
        self.text = prompt_text(self.processor, self.model_type, prompt)
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature  # > 0: sampled, one seed per image (generate/sampling.py)
        self._torch = torch

    def prepare(self, data: bytes):
        return decode_rgb(data)

    def _text(self, item) -> str | None:
        """The text beside `item`: its own prompt (`Prompted`), else the captioner's."""
        if not isinstance(item, Prompted):
            return self.text
        text = prompt_text(self.processor, self.model_type, item.prompt)
        if text is None:
            raise VecapError(
                f"'{self.name}' ({self.model_type}) follows no instruction: "
                "it cannot caption --condition-on"
            )
        return text

    def generate(self, batch: list, seeds: list[int] | None = None) -> list[str]:
        """`batch`: decoded images, or `Prompted` ones with their own prompt."""
        torch = self._torch
        images = [item.item if isinstance(item, Prompted) else item for item in batch]
        texts = [self._text(item) for item in batch]
        kwargs: dict = {"images": images, "return_tensors": "pt"}
        if self.text is not None:  # None: BLIP, and then no item has a prompt
            kwargs.update(text=texts, padding=True)
        inputs = self.processor(**kwargs).to(self.device, dtype=self.dtype)
        with torch.inference_mode():
            out = self.model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                num_beams=1,
                **processors(seeds, self.temperature),
            )  # (B, T_in + T_new) for decoder-only models, (B, T_new) for BLIP
        prompt_ids = inputs.get("input_ids")
        n_in = 0 if prompt_ids is None else prompt_ids.shape[1]
        if n_in and out.shape[1] >= n_in and torch.equal(out[:, :n_in], prompt_ids):
            out = out[:, n_in:]
        return [clean(t) for t in self.processor.batch_decode(out, skip_special_tokens=True)]
