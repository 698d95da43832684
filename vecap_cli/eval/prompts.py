"""Class names and prompt templates for zero-shot classification.

Built in (from open_clip): `imagenet1k` class names, and the `openai` (80) and
`simple` (7) ImageNet templates. Files: one entry per line (`.txt`, the
clip_benchmark webdataset layout's classnames.txt and
zeroshot_classification_templates.txt), or JSON: a list, or for templates a
{class name: [prompts]} object (class-specific prompts, e.g. CuPL).
A template names the class as `{c}`.
"""

from __future__ import annotations

import os

import orjson

from vecap_cli.errors import VecapError

BUILTIN_CLASSNAMES = ("imagenet1k",)
BUILTIN_TEMPLATES = ("openai", "simple")

Templates = list[str] | dict[str, list[str]]


def load_classnames(spec: str) -> list[str]:
    if spec == "imagenet1k":
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        return list(IMAGENET_CLASSNAMES)
    names = _read_list(spec, "--classnames", BUILTIN_CLASSNAMES)
    if isinstance(names, dict) or not all(isinstance(n, str) for n in names):
        raise VecapError(f"--classnames '{spec}': expected a list of names")
    return names


def load_templates(spec: str) -> Templates:
    if spec in BUILTIN_TEMPLATES:
        from open_clip.zero_shot_metadata import (
            OPENAI_IMAGENET_TEMPLATES,
            SIMPLE_IMAGENET_TEMPLATES,
        )

        chosen = OPENAI_IMAGENET_TEMPLATES if spec == "openai" else SIMPLE_IMAGENET_TEMPLATES
        return [template("{c}") for template in chosen]
    templates = _read_list(spec, "--templates", BUILTIN_TEMPLATES)
    if isinstance(templates, dict):
        if not all(
            isinstance(v, list) and all(isinstance(p, str) for p in v) for v in templates.values()
        ):
            raise VecapError(f"--templates '{spec}': expected {{class name: [prompts]}}")
        return templates
    if not all(isinstance(t, str) and "{c}" in t for t in templates):
        raise VecapError(f"--templates '{spec}': every template must contain {{c}}")
    return templates


def prompts(classnames: list[str], templates: Templates) -> tuple[list[str], list[int]]:
    """Every prompt, and the class index of each, class by class."""
    texts, owners = [], []
    for index, name in enumerate(classnames):
        if isinstance(templates, dict):
            if name not in templates:
                raise VecapError(f"--templates has no prompts for class '{name}'")
            mine = templates[name]
        else:
            mine = [t.replace("{c}", name) for t in templates]
        texts += mine
        owners += [index] * len(mine)
    return texts, owners


def _read_list(spec: str, flag: str, builtins: tuple[str, ...]) -> list | dict:
    if not os.path.isfile(spec):
        raise VecapError(f"{flag} '{spec}': no such file (built in: {', '.join(builtins)})")
    with open(spec, "rb") as f:
        data = f.read()
    if spec.endswith(".json"):
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError as err:
            raise VecapError(f"{flag} '{spec}': not JSON ({err})") from None
    else:
        value = [line.strip() for line in data.decode("utf-8").splitlines() if line.strip()]
    if not value:
        raise VecapError(f"{flag} '{spec}' is empty")
    return value
