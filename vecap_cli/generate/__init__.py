"""Text generators shared by `vecap caption` and `vecap rewrite`.

A backend is a small class with `generate(batch) -> list[str | Failed]`, one
output per input, in order:

- captioners (hf_vlm, openclip_coca, openai_client.OpenAICaptioner) take
  prepared images; their `prepare(image_bytes)` runs in decode workers
  (`ahead.map_ahead`) so the model never waits on JPEG decoding;
- chat models (hf_lm, openai_client.OpenAIChat) take conversations, lists of
  `{"role", "content"}` messages, and apply the model's chat template.

Local models fail as a whole (a `VecapError`); only a remote server fails per
request, which is what `Failed` carries. Heavy libraries load in the backend
modules, so importing this package is cheap.
"""

from vecap_cli.generate.base import Failed, resolve_device

__all__ = ["Failed", "resolve_device"]
