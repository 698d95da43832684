"""The text tower on the needed prefix of the context: the same features, to float rounding."""

import json

import pytest
import torch

from tests.eval.tiny import TINY_OPENCLIP, WORDS
from vecap_cli.eval.embed import Encoder, eval_mode
from vecap_cli.eval.trim import trimmed_text_encoder


def tiny_clip(tmp_path, name="vecap-tiny-trim", **text_cfg):
    import open_clip

    config = json.loads(json.dumps(TINY_OPENCLIP))
    config["text_cfg"].update(text_cfg)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)
    torch.manual_seed(0)
    return open_clip.create_model(name).eval(), open_clip.get_tokenizer(name)


def test_trimmed_features_equal_open_clips_on_padded_captions(tmp_path):
    model, tokenizer = tiny_clip(tmp_path)
    texts = [" ".join(WORDS[: n % len(WORDS) + 1]) for n in range(0, 60, 7)]  # 1 to 19 words
    tokens = tokenizer(texts)
    trimmed = trimmed_text_encoder(model)
    assert trimmed is not None
    with torch.inference_mode():
        # shorter matrices may round differently in the last bit, nothing more
        assert torch.allclose(trimmed(tokens), model.encode_text(tokens), rtol=1e-6, atol=2e-6)
        longest = tokenizer([" ".join(WORDS * 3)])  # truncated: no padding left to trim
        assert torch.allclose(trimmed(longest), model.encode_text(longest), rtol=1e-6, atol=2e-6)


def test_towers_that_see_the_padding_keep_encode_text(tmp_path):
    model, _ = tiny_clip(tmp_path, "vecap-tiny-last", pool_type="last", no_causal_mask=True)
    assert trimmed_text_encoder(model) is None
    assert Encoder(model, None, "cpu").encode_text == model.encode_text


def test_an_encode_text_that_disagrees_on_the_probe_is_kept(tmp_path, monkeypatch):
    model, _ = tiny_clip(tmp_path, "vecap-tiny-changed")
    original = model.encode_text
    monkeypatch.setattr(model, "encode_text", lambda text: original(text) * 1.01)
    assert trimmed_text_encoder(model) is None


def test_evaluation_puts_the_model_in_eval_mode_and_back(tmp_path):
    model, _ = tiny_clip(tmp_path, "vecap-tiny-mode")
    model.train()
    with eval_mode(model):
        assert not model.training
    assert model.training
    with pytest.raises(KeyError), eval_mode(model):
        raise KeyError
    assert model.training
