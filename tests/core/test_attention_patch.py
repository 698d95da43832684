"""use_fused_attention: open_clip towers give the same outputs on flash_attention."""

import copy
import io

import open_clip
import pytest
import torch
from open_clip.transformer import (
    AttentionalPooler,
    MultimodalTransformer,
    TextTransformer,
    Transformer,
)
from torch import nn

from tests.core.conftest import BACKENDS
from vecap_cli.core import attention_patch
from vecap_cli.core.attention_patch import (
    FusedMultiheadAttention,
    mask_plan,
    restore_attention,
    use_fused_attention,
)
from vecap_cli.core.dispatch import ENV_VAR

TOL = 1e-5


@pytest.fixture
def calls(monkeypatch):
    """Counts flash_attention calls made through the patch."""
    seen = []
    real = attention_patch.flash_attention

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(attention_patch, "flash_attention", spy)
    return seen


def _fused_copy(module):
    fused = copy.deepcopy(module)
    assert use_fused_attention(fused) > 0
    return fused


def _close(a, b):
    return (a - b).abs().max().item() <= TOL * max(1.0, b.abs().max().item())


def _tiny_clip():
    torch.manual_seed(0)
    model = open_clip.CLIP(
        embed_dim=32,
        vision_cfg={"layers": 2, "width": 64, "head_width": 32, "image_size": 32, "patch_size": 8},
        text_cfg={"context_length": 77, "vocab_size": 100, "width": 64, "heads": 2, "layers": 2},
    )
    return model.eval()


@pytest.mark.parametrize("backend", BACKENDS)
def test_clip_model_outputs_unchanged(backend, calls, monkeypatch):
    model = _tiny_clip()
    image = torch.randn(2, 3, 32, 32)
    text = torch.randint(1, 100, (2, 77))
    text[0, 20:] = 0  # padded caption, as the tokenizer makes them
    with torch.no_grad():
        want_image, want_text = model.encode_image(image), model.encode_text(text)
    fused = _fused_copy(model)
    monkeypatch.setenv(ENV_VAR, backend)
    with torch.no_grad():
        got_image, got_text = fused.encode_image(image), fused.encode_text(text)
    assert _close(got_image, want_image) and _close(got_text, want_text)
    assert len(calls) == 4  # 2 vision + 2 text layers
    assert [c["causal"] for c in calls] == [False, False, True, True]  # the text mask became causal


@pytest.mark.parametrize("backend", BACKENDS)
def test_clip_model_gradients_unchanged(backend, monkeypatch):
    model = _tiny_clip().train()
    image, text = torch.randn(2, 3, 32, 32), torch.randint(1, 100, (2, 77))
    fused = _fused_copy(model)
    for m in (model, fused):
        if m is fused:
            monkeypatch.setenv(ENV_VAR, backend)
        image_features, text_features, _ = m(image, text)
        (image_features @ text_features.T).logsumexp(dim=1).sum().backward()
    for (name, p), q in zip(model.named_parameters(), fused.parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None), name
        assert p.grad is None or _close(q.grad, p.grad), name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "kwargs",
    [
        {"embed_cls": True, "correct_cls_mask": True, "pool_type": "last"},  # CoCa's text tower
        {"no_causal_mask": True, "use_pad_mask": True, "pool_type": "first"},  # bidirectional
    ],
)
def test_text_tower_pad_masks(backend, kwargs, calls, monkeypatch):
    """(B·H, L, L) pad masks are split into causal + key padding."""
    torch.manual_seed(0)
    tower = TextTransformer(
        context_length=20, vocab_size=50, width=64, heads=2, layers=1, output_dim=16, **kwargs
    )
    tower.eval()
    text = torch.randint(1, 50, (3, 20))
    text[0, 9:] = 0
    text[2, 15:] = 0
    with torch.no_grad():
        want = tower(text)
        monkeypatch.setenv(ENV_VAR, backend)
        got = _fused_copy(tower)(text)
    assert _close(got, want)
    assert len(calls) == 1 and calls[0]["key_padding_mask"] is not None
    assert calls[0]["causal"] == ("no_causal_mask" not in kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_coca_decoder_cross_attention(backend, calls, monkeypatch):
    """Causal self-attention on a sliced mask, then text (Nq) attending to image tokens (Nk)."""
    torch.manual_seed(0)
    decoder = MultimodalTransformer(
        width=64, layers=1, heads=2, context_length=20, output_dim=16
    ).eval()
    # open_clip 3.3 leaves the output projection as torch.empty found it (heap garbage,
    # at times inf or NaN): give it values, as a trained decoder has
    torch.nn.init.normal_(decoder.text_projection, std=64**-0.5)
    image_embs, text_embs = torch.randn(2, 17, 64), torch.randn(2, 11, 64)
    with torch.no_grad():
        want = decoder(image_embs, text_embs)
        monkeypatch.setenv(ENV_VAR, backend)
        got = _fused_copy(decoder)(image_embs, text_embs)
    assert _close(got, want)
    assert [c["causal"] for c in calls] == [True, False]


@pytest.mark.parametrize("backend", BACKENDS)
def test_attentional_pooler(backend, calls, monkeypatch):
    """nn.MultiheadAttention with kdim != embed_dim: separate q/k/v projections."""
    torch.manual_seed(0)
    pooler = AttentionalPooler(d_model=64, context_dim=48, n_head=2, n_queries=5).eval()
    x = torch.randn(2, 17, 48)
    with torch.no_grad():
        want = pooler(x)
        monkeypatch.setenv(ENV_VAR, backend)
        got = _fused_copy(pooler)(x)
    assert _close(got, want) and len(calls) == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_custom_blocks(backend, calls, monkeypatch):
    """open_clip's own Attention (block_type='custom': qk-norm, head scaling)."""
    torch.manual_seed(0)
    stack = Transformer(
        width=64, layers=1, heads=2, block_type="custom", qk_norm=True, scale_heads=True
    )
    stack.eval()
    x = torch.randn(2, 13, 64)
    causal = torch.full((13, 13), float("-inf")).triu(1)
    with torch.no_grad():
        want = stack(x, attn_mask=causal)
        monkeypatch.setenv(ENV_VAR, backend)
        got = _fused_copy(stack)(x, attn_mask=causal)
    assert _close(got, want)
    assert len(calls) == 1 and calls[0]["causal"]


def test_sequence_first_layout(calls):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(64, 2, batch_first=False).eval()
    x = torch.randn(13, 2, 64)  # (L, B, E)
    with torch.no_grad():
        want = mha(x, x, x, need_weights=False)[0]
        got = _fused_copy(mha)(x, x, x, need_weights=False)[0]
    assert _close(got, want) and len(calls) == 1


def test_unsupported_calls_fall_back(calls):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(64, 2, batch_first=True).eval()
    fused = _fused_copy(mha)
    x = torch.randn(2, 9, 64)
    bias = torch.randn(9, 9)  # a real additive bias: not expressible as masks
    with torch.no_grad():
        assert _close(
            fused(x, x, x, attn_mask=bias, need_weights=False)[0],
            mha(x, x, x, attn_mask=bias, need_weights=False)[0],
        )
        got, weights = fused(x, x, x)  # need_weights=True by default
        assert weights is not None and _close(got, mha(x, x, x)[0])
    assert calls == []


def test_mask_plans():
    causal = torch.full((5, 5), float("-inf")).triu(1)
    assert mask_plan(causal, None, False, batch=2, heads=2).causal
    assert mask_plan(causal.bool(), None, False, batch=2, heads=2).causal  # bool: True = blocked
    assert not mask_plan(torch.zeros(5, 5), None, False, batch=2, heads=2).causal
    assert mask_plan(None, None, True, batch=2, heads=2).causal
    kpm = torch.tensor([[False] * 4 + [True]] * 2)
    plan = mask_plan(None, kpm, False, batch=2, heads=2)
    assert torch.equal(plan.key_padding_mask, kpm)
    assert mask_plan(torch.randn(5, 5), None, False, batch=2, heads=2) is None
    per_head = torch.zeros(4, 5, 5)
    per_head[1, :, 0] = float("-inf")  # heads disagree
    assert mask_plan(per_head, None, False, batch=2, heads=2) is None


def test_restore_and_state_dict():
    model = _tiny_clip()
    keys = list(model.state_dict())
    n = use_fused_attention(model)
    assert any(isinstance(m, FusedMultiheadAttention) for m in model.modules())
    assert list(model.state_dict()) == keys
    buffer = io.BytesIO()
    torch.save(model, buffer)  # patched models pickle: the classes are importable
    assert restore_attention(model) == n
    assert not any(isinstance(m, FusedMultiheadAttention) for m in model.modules())
