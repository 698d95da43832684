"""`vecap rewrite`: fuse AltText and VeC into one caption, VeCap, in `vecap`.

rules.py     the model-free fusion (the default and the baseline)
prompt.py    the LLM fusion prompt, AltText as quoted data
safety.py    the blocklist check before fusion
validate.py  what an LLM answer must be to become a VeCap
stage.py     the stream stage tying them together
"""

from vecap_cli.steps.rewrite.stage import LLMFusion, RewriteConfig, Rewriter, rewrite

__all__ = ["LLMFusion", "RewriteConfig", "Rewriter", "rewrite"]
