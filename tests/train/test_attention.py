"""The --attn modes: what each does with the core's attention patch, or without one."""

import pytest

from vecap_cli.errors import VecapError
from vecap_cli.train.attention import ATTENTION


def test_auto_is_fused_when_the_build_has_it_else_sdpa():
    patched = []
    assert ATTENTION["auto"].apply("model", patched.append) == "fused"
    assert patched == ["model"]
    assert ATTENTION["auto"].apply("model", None) == "sdpa"


def test_sdpa_keeps_open_clips_attention():
    patched = []
    assert ATTENTION["sdpa"].apply("model", patched.append) == "sdpa"
    assert patched == []


def test_fused_without_the_core_is_one_line():
    with pytest.raises(VecapError, match=r"^--attn fused: fused attention is not available"):
        ATTENTION["fused"].apply("model", None)
