"""The --attn modes: which attention each leaves in a built open_clip model."""

import open_clip
import pytest
import torch

from vecap_cli.core import restore_attention
from vecap_cli.train.attention import ATTENTION


def _tiny_clip():
    torch.manual_seed(0)
    return open_clip.CLIP(
        embed_dim=16,
        vision_cfg={"layers": 1, "width": 32, "head_width": 16, "image_size": 16, "patch_size": 8},
        text_cfg={"context_length": 8, "vocab_size": 50, "width": 32, "heads": 2, "layers": 1},
    )


@pytest.mark.parametrize("mode", ["auto", "fused"])
def test_auto_and_fused_run_the_cores_kernel(mode):
    model = _tiny_clip()
    assert ATTENTION[mode].apply(model) == "fused"
    assert restore_attention(model) > 0  # the towers' attention had been swapped


def test_sdpa_keeps_open_clips_attention():
    model = _tiny_clip()
    assert ATTENTION["sdpa"].apply(model) == "sdpa"
    assert restore_attention(model) == 0
