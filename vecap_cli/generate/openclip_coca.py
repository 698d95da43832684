"""Captions from an open_clip CoCa model through its own `generate`.

`--model` is what open_clip resolves: an architecture name, vecap's built-in
`vecap-tiny-coca` too (with `--pretrained` a tag or checkpoint file), `hf-hub:org/repo`, or `local-dir:/path` holding
open_clip_config.json and the weights.
"""

from __future__ import annotations

import re

from vecap_cli.errors import VecapError
from vecap_cli.generate.base import decode_rgb, resolve_device
from vecap_cli.loading import load_error, quietly

_SPACE_BEFORE_PUNCT = re.compile(r" ([,.;:!?])")


def _open_clip_generates() -> bool:
    from open_clip import coca_model

    return bool(getattr(coca_model, "_has_transformers", False))


class CocaCaptioner:
    def __init__(
        self,
        model: str,
        pretrained: str | None,
        max_new_tokens: int,
        device: str = "auto",
        temperature: float = 0.0,
    ):
        import open_clip
        import torch

        from vecap_cli.loading import register_builtin_configs

        register_builtin_configs()  # the vecap-tiny* names train and eval take
        self.device = resolve_device(device)
        try:
            with quietly():
                self.model, _, self.preprocess = open_clip.create_model_and_transforms(
                    model, pretrained=pretrained or None, device=self.device, weights_only=True
                )
                self.tokenizer = open_clip.get_tokenizer(model)
        except (
            Exception
        ) as err:  # a file from anywhere: whatever pickle or torch raises is one line
            what = f"--pretrained '{pretrained}' into {model}" if pretrained else model
            raise load_error(f"cannot load the open_clip model {what}", err) from None
        if not hasattr(self.model, "generate"):
            raise VecapError(f"'{model}' is not a CoCa model: open_clip captions only with CoCa")
        self.model.eval()
        context = getattr(self.model.text, "context_length", 77)
        self.seq_len = max(min(max_new_tokens + 1, context), 2)  # + the start token
        self.min_len = min(5, self.seq_len - 1)  # open_clip's default floor, where it fits
        self.context = context
        self.temperature = temperature  # > 0: sampled by `greedy`'s loop, a seed per image
        self.sot = getattr(self.tokenizer, "sot_token_id", 49406)
        self.eot = getattr(self.tokenizer, "eot_token_id", 49407)
        self._torch = torch

    def prepare(self, data: bytes):
        return decode_rgb(data)

    def generate(self, images: list, seeds: list[int] | None = None) -> list[str]:
        torch = self._torch
        batch = torch.stack([self.preprocess(im) for im in images]).to(self.device)  # (B, 3, H, W)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device != "cpu")
        with torch.inference_mode(), autocast:
            if seeds is not None and self.temperature > 0:
                from vecap_cli.generate.sampling import SeededSampler

                out = self.greedy(batch, SeededSampler(seeds, self.temperature))
            elif _open_clip_generates():
                out = self.model.generate(
                    batch,
                    seq_len=self.seq_len,
                    max_seq_len=self.context,
                    generation_type="top_k",
                    top_k=1,  # greedy
                    min_seq_len=self.min_len,
                )  # (B, <= seq_len), starting with the start token
            else:
                out = self.greedy(batch)
        return [self._decode(row) for row in out.tolist()]

    def greedy(self, batch, sampler=None):
        """open_clip's greedy path (top_k=1), for when its `generate` is unavailable;
        with a `sampler` (generate/sampling.py), each row's token is drawn from its seed.

        open_clip 3.x imports transformers' BeamSearchScorer to enable `generate`,
        and transformers 5 no longer has it, so `generate` asserts. The loop is
        the same computation: encode the image once, extend every row by its
        argmax token, forbid the end token before `min_len`, pad finished rows.
        """
        torch = self._torch
        model = self.model
        # _encode_image is what CoCa.generate itself calls; forward takes its outputs.
        latent, embs = model._encode_image(batch)
        pad = getattr(model, "pad_id", 0)
        out = torch.full((batch.shape[0], 1), self.sot, device=batch.device)  # (B, 1)
        done = torch.zeros(batch.shape[0], dtype=torch.bool, device=batch.device)
        while out.shape[1] < self.seq_len and not done.all():
            logits = model(
                batch,
                out[:, -self.context :],
                image_latent=latent,
                image_embs=embs,
                output_labels=False,
            )["logits"][:, -1]  # (B, V)
            if out.shape[1] < self.min_len:
                logits[:, self.eot] = float("-inf")
            step = logits.argmax(-1) if sampler is None else sampler.pick(logits)
            if out.shape[1] + 1 == self.seq_len:
                step = torch.full_like(step, self.eot)
            step = torch.where(done, torch.full_like(step, pad), step)
            out = torch.cat([out, step[:, None]], dim=1)
            done |= step == self.eot
        return out

    def _decode(self, ids: list[int]) -> str:
        if self.eot in ids:
            ids = ids[: ids.index(self.eot)]
        ids = [t for t in ids if t not in (self.sot, 0)]
        inner = getattr(self.tokenizer, "tokenizer", None)  # open_clip's HFTokenizer wraps one
        if inner is not None:
            return " ".join(inner.decode(ids, skip_special_tokens=True).split())
        # CLIP's SimpleTokenizer ends every word with a space, punctuation included
        return _SPACE_BEFORE_PUNCT.sub(r"\1", " ".join(self.tokenizer.decode(ids).split()))
