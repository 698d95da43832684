"""Chat completions from a transformers causal LM in a local dir, a GGUF file
(gguf_file) or a hub id: batched, left-padded, greedy (or sampled with a seed per
conversation: generate/sampling.py), through the tokenizer's chat template."""

from __future__ import annotations

import contextlib

from vecap_cli.errors import VecapError
from vecap_cli.generate import gguf_file
from vecap_cli.generate.base import default_dtype, resolve_device
from vecap_cli.generate.hf_vlm import clean, quiet_transformers
from vecap_cli.generate.sampling import processors
from vecap_cli.loading import load_error


def plain_chat(messages: list[dict]) -> str:
    """For tokenizers without a chat template: role-labelled turns, then the answer cue."""
    turns = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join([*turns, "Assistant:"])


def merge_system(messages: list[dict]) -> list[dict]:
    """The system turn folded into the first user turn, for templates that have no system role."""
    if not messages or messages[0]["role"] != "system" or len(messages) < 2:
        return messages
    system, first, *rest = messages
    return [{**first, "content": f"{system['content']}\n\n{first['content']}"}, *rest]


class HFChat:
    def __init__(
        self,
        model: str,
        max_new_tokens: int,
        device: str = "auto",
        trust_remote_code: bool = False,
        temperature: float = 0.0,
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        quiet_transformers()
        self.device = resolve_device(device)
        source, tokenizer_kwargs, model_kwargs = model, {}, {}
        quiet = contextlib.nullcontext()
        if gguf_file.is_file(model):
            source, tokenizer_kwargs, model_kwargs = gguf_file.loading(model)
            quiet = gguf_file.quiet_unpacking()
        try:
            with quiet:
                self.tokenizer = AutoTokenizer.from_pretrained(
                    source, trust_remote_code=trust_remote_code, **tokenizer_kwargs
                )
                self.model = AutoModelForCausalLM.from_pretrained(
                    source,
                    dtype=default_dtype(self.device),
                    trust_remote_code=trust_remote_code,
                    **model_kwargs,
                )
        except Exception as err:  # damaged or hostile files: whatever the loader raises is one line
            raise load_error(f"cannot load the language model '{model}'", err) from None
        self.model.to(self.device).eval()
        self.tokenizer.padding_side = "left"  # generation continues every row at the right edge
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.templated = bool(getattr(self.tokenizer, "chat_template", None))
        self.merge_system = False  # set when the template refuses a system turn
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature  # > 0: sampled, one seed per conversation
        self._torch = torch

    def render(self, messages: list[dict]) -> str:
        if not self.templated:
            return plain_chat(messages)
        if self.merge_system:
            messages = merge_system(messages)
        try:
            return self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
        except Exception as err:  # jinja's TemplateError: "System role not supported" (Gemma)
            if self.merge_system or messages[0]["role"] != "system":
                raise VecapError(f"the model's chat template failed: {err}") from None
            self.merge_system = True
            return self.render(messages)

    def generate(
        self, conversations: list[list[dict]], seeds: list[int] | None = None
    ) -> list[str]:
        texts = [self.render(c) for c in conversations]
        # A chat template writes its own BOS; adding another would shift the model off-distribution.
        enc = self.tokenizer(
            texts, return_tensors="pt", padding=True, add_special_tokens=not self.templated
        ).to(self.device)
        with self._torch.inference_mode():
            out = self.model.generate(
                **enc,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=self.tokenizer.pad_token_id,
                **processors(seeds, self.temperature),
            )  # (B, T_in + T_new)
        new = out[:, enc["input_ids"].shape[1] :]
        return [clean(t) for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]
