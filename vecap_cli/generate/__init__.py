"""Text generators shared by `vecap caption` and `vecap rewrite`.

A backend is a small class with `generate(batch) -> list[str | Failed]`, one
output per input, in order:

- captioners (hf_vlm, openclip_coca, openai_client.OpenAICaptioner) take
  prepared images: their registered `prepare` (a decoded RGB image, or a data
  URL for a server) runs in decode workers (`ahead.map_ahead`) so the model
  never waits on JPEG decoding; one registered with `takes_prompt` also takes
  `Prompted` ones, each with a prompt of its own (caption --condition-on);
- chat models (hf_lm, openai_client.OpenAIChat) take conversations, lists of
  `{"role", "content"}` messages, and apply the model's chat template.

Each is known by name in `registry`, for the commands it serves; importing this
package registers the built-in ones (`backends`), and `load` checks one at once
and builds it when a batch first needs it. Adding one is a module for its class
and one registration in `backends`, its build importing that module:

    def _mine(request):
        from vecap_cli.generate.mine import Mine

        return Mine(request.model, request.max_new_tokens, request.options.device)

    register(Backend("mine", CAPTION, _mine, help="what it is, in --backend's help", batch_size=8))

`vecap caption --backend mine` then works, and --backend's choices and help, and
--batch-size's default, list it.

Local models fail as a whole (a `VecapError`); only a remote server fails per
request, which is what `Failed` carries. Heavy libraries load in the backend
modules, so importing this package is cheap.
"""

from vecap_cli.generate import backends as _builtins  # noqa: F401 -- registers hf, openclip, openai
from vecap_cli.generate.base import Failed, resolve_device

__all__ = ["Failed", "resolve_device"]
