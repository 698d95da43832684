"""A Rewriter from a RewriteConfig: the fuser, the blocklist and the validator."""

from __future__ import annotations

from vecap_cli.generate.answer import max_chars
from vecap_cli.generate.load import load
from vecap_cli.generate.registry import REWRITE, ModelOptions, Request, get
from vecap_cli.steps.rewrite.prompt import STYLES, Prompt
from vecap_cli.steps.rewrite.safety import Blocklist
from vecap_cli.steps.rewrite.stage import LLMFusion, RewriteConfig, Rewriter
from vecap_cli.steps.rewrite.validate import Limits, Validator


def build_rewriter(config: RewriteConfig, options: ModelOptions = ModelOptions()) -> Rewriter:
    """The backend `config.backend` names: one that needs no model fuses as it is (its
    output is a caption by construction); a chat model, behind the fusion prompt and the
    validator, is checked now and loaded when a batch first needs it."""
    blocklist = Blocklist(
        [] if config.blocklist == "none" else Blocklist.load(config.blocklist).terms
    )
    backend = get(REWRITE, config.backend)
    request = Request(
        config.model, config.max_new_tokens, options, temperature=config.draws.temperature
    )
    if not backend.needs_model:
        backend.check(request)
        return Rewriter(backend.build(request), blocklist, None)
    system = STYLES[config.style].system
    prompt = Prompt.from_file(config.prompt_file) if config.prompt_file else Prompt(system=system)
    chat = load(REWRITE, config.backend, request)
    validator = Validator(
        prompt.instruction,
        Limits(config.min_words, config.max_words, max_chars(config.max_new_tokens)),
    )
    return Rewriter(LLMFusion(chat, prompt), blocklist, validator)
