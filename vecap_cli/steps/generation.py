"""What `vecap caption` and `vecap rewrite` offer before any model loads.

Importing this module registers every built-in backend: the generation ones
(vecap_cli.generate registers hf, openclip and openai) and rewrite's
model-free `rules`, registered here, a floor above them, because its fusion is
rewrite's own record logic (rewrite/rules.py). Light on purpose: the CLI reads
--backend's choices and --prompt's default from here at start-up; the rules
fusion loads when built.
"""

from __future__ import annotations

from vecap_cli.generate.registry import REWRITE, Backend, Request, register

# VeCLIP's prompt for LLaVA (arXiv 2310.07699, section 3).
DEFAULT_PROMPT = "Describe the image concisely, less than 20 words."


def _rules(request: Request):
    from vecap_cli.steps.rewrite.rules import RulesFusion

    return RulesFusion()


register(
    Backend(
        "rules",
        REWRITE,
        _rules,
        help="model-free fusion (the default without --model)",
        batch_size=512,  # ignored: rules fuses record by record
        needs_model=False,
    )
)
