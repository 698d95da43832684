"""A Rewriter from a RewriteConfig: the fuser, the blocklist and the validator."""

from __future__ import annotations

from vecap_cli.generate.answer import max_chars
from vecap_cli.steps.rewrite.prompt import Prompt
from vecap_cli.steps.rewrite.rules import RulesFusion
from vecap_cli.steps.rewrite.safety import Blocklist
from vecap_cli.steps.rewrite.stage import LLMFusion, RewriteConfig, Rewriter
from vecap_cli.steps.rewrite.validate import Limits, Validator


def build_rewriter(
    config: RewriteConfig, device: str = "auto", server=None, trust_remote_code: bool = False
) -> Rewriter:
    blocklist = Blocklist(
        [] if config.blocklist == "none" else Blocklist.load(config.blocklist).terms
    )
    if config.backend == "rules":
        return Rewriter(RulesFusion(), blocklist, None)
    from vecap_cli.generate.load import chat_model

    prompt = Prompt.from_file(config.prompt_file) if config.prompt_file else Prompt()
    chat = chat_model(
        config.backend,
        config.model,
        config.max_new_tokens,
        device=device,
        server=server,
        trust_remote_code=trust_remote_code,
    )
    validator = Validator(
        prompt.instruction,
        Limits(config.min_words, config.max_words, max_chars(config.max_new_tokens)),
    )
    return Rewriter(LLMFusion(chat, prompt), blocklist, validator)
