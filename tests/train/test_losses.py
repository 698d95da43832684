"""The objective: open_clip's losses (or the core's, identical) behind one interface."""

import re

import pytest
import torch

open_clip = pytest.importorskip("open_clip")

from vecap_cli.train.losses import make_loss  # noqa: E402


def features(b=6, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    norm = lambda x: torch.nn.functional.normalize(x, dim=-1)  # noqa: E731
    return norm(torch.randn(b, d, generator=g)), norm(torch.randn(b, d, generator=g))


def test_clip_and_siglip_match_open_clip():
    img, txt = features()
    scale, bias = torch.tensor(10.0), torch.tensor(-5.0)
    out = {"image_features": img, "text_features": txt, "logit_scale": scale}
    want = open_clip.ClipLoss()(img, txt, scale)
    torch.testing.assert_close(make_loss("clip")(out)["contrastive_loss"], want)
    want = open_clip.loss.SigLipLoss()(img, txt, scale, bias)
    got = make_loss("siglip")({**out, "logit_bias": bias})["contrastive_loss"]
    torch.testing.assert_close(got, want)


def test_coca_adds_a_weighted_caption_loss_that_ignores_padding():
    img, txt = features()
    logits = torch.randn(6, 5, 11)
    labels = torch.randint(1, 11, (6, 5))
    labels[:, 3:] = 0  # padding
    out = {
        "image_features": img,
        "text_features": txt,
        "logit_scale": torch.tensor(10.0),
        "logits": logits,
        "labels": labels,
    }
    parts = make_loss("clip", coca=True, caption_weight=2.0, contrastive_weight=0.5)(out)
    want = open_clip.CoCaLoss(caption_loss_weight=2.0, clip_loss_weight=0.5)(
        img, txt, logits, labels, torch.tensor(10.0), output_dict=True
    )
    torch.testing.assert_close(parts["caption_loss"], want["caption_loss"])
    torch.testing.assert_close(parts["contrastive_loss"], want["contrastive_loss"])


def test_unfused_the_losses_are_open_clips_own():
    from open_clip.loss import ClipLoss, SigLipLoss

    clip = make_loss("clip", fused=False)
    assert type(clip.contrastive) is ClipLoss and not clip.fused
    assert type(make_loss("siglip", rank=1, world_size=2, fused=False).contrastive) is SigLipLoss


def test_by_default_the_losses_are_the_cores():
    assert type(make_loss("clip").contrastive).__name__ == "FusedClipLoss"
    assert type(make_loss("siglip").contrastive).__name__ == "FusedSigLipLoss"
    assert make_loss("siglip").fused


def test_a_registered_loss_is_a_config_choice_built_by_its_name(monkeypatch):
    from vecap_cli.train.config import TrainConfig
    from vecap_cli.train.contrastive import LOSSES, Loss

    built = []

    def throwaway(classes, rank, world_size, positives):
        built.append((classes.clip.__name__, rank, world_size))
        return torch.nn.Identity()

    monkeypatch.setitem(LOSSES, "throwaway", Loss("for this test", throwaway))
    assert TrainConfig(("x.tar",), "out", loss="throwaway").loss == "throwaway"
    assert type(make_loss("throwaway", rank=1, world_size=2).contrastive) is torch.nn.Identity
    assert type(make_loss("throwaway", fused=False).contrastive) is torch.nn.Identity
    assert built == [("FusedClipLoss", 1, 2), ("ClipLoss", 0, 1)]


def test_positives_build_the_multi_positive_losses():
    from vecap_cli.core.multipos import multipos_clip_loss, multipos_siglip_loss

    image, text = features(b=4)[0], features(b=8, seed=1)[1]
    scale, bias = torch.tensor(10.0), torch.tensor(-2.0)
    for kind, want in (("clip", multipos_clip_loss), ("siglip", multipos_siglip_loss)):
        loss = make_loss(kind, positives=2)
        assert loss.fused and type(loss.contrastive).__name__.startswith("FusedMultiPos")
        got = loss({"image_features": image, "text_features": text, "logit_scale": scale,
                    "logit_bias": bias})["contrastive_loss"]  # fmt: skip
        assert torch.allclose(got, want(image, text, scale, bias, positives=2))


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"fused": False}, "--positives 2: open_clip's losses take one caption per image"),
        ({"coca": True}, "--positives 2: CoCa's caption loss wants one caption per image"),
    ],
)
def test_positives_refuse_what_has_no_multi_positive_form(kwargs, says):
    from vecap_cli.errors import VecapError

    with pytest.raises(VecapError, match=re.escape(says)):
        make_loss("clip", positives=2, **kwargs)
