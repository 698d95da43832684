"""`--context-length L`: long captions, Long-CLIP's stretch of pretrained positions,
and eval reading back the length a checkpoint was trained with."""

import orjson
import pytest
import torch

from tests.core.conftest import BACKENDS
from tests.train.conftest import shapes_records, write_jsonl
from vecap_cli.cli.options import RunOptions
from vecap_cli.errors import VecapError
from vecap_cli.positions import stretch
from vecap_cli.train.config import TrainConfig
from vecap_cli.train.loop import train

open_clip = pytest.importorskip("open_clip")

LONG = "a photo of a " + " and ".join(["red square on the left"] * 12)  # ~75 tokens


def long_clip_reference(old: torch.Tensor) -> torch.Tensor:
    """Long-CLIP's own loop (model/longclip.py, load_from_clip): n rows -> 4n - 60."""
    n, keep = old.shape[0], 20
    new = torch.zeros(4 * n - 3 * keep, old.shape[1], dtype=old.dtype)
    new[:keep] = old[:keep]
    for i in range(n - 1 - keep):
        for j in range(4):
            new[4 * i + j + keep] = (4 - j) * old[i + keep] / 4 + j * old[i + 1 + keep] / 4
    for j in range(4):
        new[4 * n - 3 * keep - 4 + j] = old[n - 1] + j * (old[n - 1] - old[n - 2]) / 4
    return new


def interpolated(old: torch.Tensor, length: int) -> torch.Tensor:
    """The stated formula, row by row: p < 20 kept; else the old table read at
    x = 20 + (p - 20)(n - 20)/(L - 20), linear between its neighbours (the last gap
    continued past the last row)."""
    n = old.shape[0]
    rows = list(old[:20])
    for p in range(20, length):
        x = 20 + (p - 20) * (n - 20) / (length - 20)
        i = min(int(x), n - 2)
        rows.append(old[i] + (x - i) * (old[i + 1] - old[i]))
    return torch.stack(rows)


def test_stretch_is_long_clips_for_4n_minus_60_and_the_formula_for_any_length():
    old = torch.randn(32, 6, dtype=torch.float64)
    assert torch.allclose(stretch(old, 68), long_clip_reference(old), atol=1e-12)
    new = stretch(old, 100)
    assert new.shape == (100, 6)
    assert torch.equal(new[:20], old[:20])
    assert torch.allclose(new, interpolated(old, 100), atol=1e-12)
    assert torch.equal(stretch(old, 24), old[:24])  # shorter: the first rows
    assert torch.equal(stretch(old, 32), old)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A vecap-tiny state dict (32 text positions) to stand for a pretrained model."""
    from vecap_cli.train.models import build

    path = tmp_path_factory.mktemp("pretrained") / "tiny.pt"
    torch.save(build("vecap-tiny", seed=5).model.state_dict(), path)
    return path


def test_pretrained_positions_are_stretched_and_texts_tokenize_to_the_new_length(
    tiny_checkpoint,
):
    from vecap_cli.train.models import build

    old = torch.load(tiny_checkpoint, weights_only=True)["positional_embedding"]
    bundle = build("vecap-tiny", str(tiny_checkpoint), context_length=100)
    model = bundle.model
    assert (bundle.context_length, bundle.resized_from) == (100, 32)
    table = model.positional_embedding.detach()
    assert torch.equal(table[:20], old[:20])
    assert torch.allclose(table, interpolated(old, 100), atol=1e-6)
    assert model.attn_mask.shape == (100, 100)
    assert torch.equal(model.attn_mask.isneginf(), torch.ones(100, 100).triu(1).bool())
    tokens = bundle.tokenizer([LONG, "a dog"])
    assert tokens.shape == (2, 100)
    assert (tokens[0] != 0).sum() > 32  # the long caption is no longer cut at 32 tokens
    assert model.encode_text(tokens).shape == (2, 64)


def test_pretrained_weights_keep_the_positions_they_have_unless_told(tmp_path):
    """open_clip alone would interpolate 48 trained positions down to vecap-tiny's 32."""
    from vecap_cli.train.models import build

    path = tmp_path / "long.pt"
    torch.save(build("vecap-tiny", context_length=48, seed=2).model.state_dict(), path)
    saved = torch.load(path, weights_only=True)["positional_embedding"]
    bundle = build("vecap-tiny", str(path))
    assert (bundle.context_length, bundle.resized_from) == (48, None)
    assert torch.equal(bundle.model.positional_embedding.detach(), saved)
    assert bundle.tokenizer(["a"]).shape == (1, 48)


def test_fewer_tokens_than_pretrained_truncates(tiny_checkpoint):
    from vecap_cli.train.models import build

    old = torch.load(tiny_checkpoint, weights_only=True)["positional_embedding"]
    bundle = build("vecap-tiny", str(tiny_checkpoint), context_length=24)
    assert torch.equal(bundle.model.positional_embedding.detach(), old[:24])
    assert bundle.tokenizer(["a"]).shape == (1, 24)


def test_a_coca_keeps_its_cls_row_last_and_its_decoder_reads_the_new_length(tmp_path):
    from vecap_cli.train.models import build

    path = tmp_path / "coca.pt"
    torch.save(build("vecap-tiny-coca", seed=3).model.state_dict(), path)
    old = torch.load(path, weights_only=True)["text.positional_embedding"]  # (32 + CLS, D)
    bundle = build("vecap-tiny-coca", str(path), context_length=50)
    text = bundle.model.text
    assert text.positional_embedding.shape == (51, 64)
    assert torch.allclose(text.positional_embedding[:50].detach(), interpolated(old[:32], 50))
    assert torch.equal(text.positional_embedding[50].detach(), old[32])
    assert bundle.model.text_decoder.attn_mask.shape == (50, 50)
    out = bundle.model(torch.randn(2, 3, 32, 32), bundle.tokenizer([LONG, "a dog"]))
    assert out["logits"].shape[1] == 49  # the decoder predicts every token but the first


@pytest.mark.parametrize("arch", ["vecap-tiny", "vecap-tiny-coca"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_attention_gives_the_same_text_embeddings_at_100_tokens(arch, backend, monkeypatch):
    from vecap_cli.core import attention_patch
    from vecap_cli.core.dispatch import ENV_VAR
    from vecap_cli.train.models import build, set_attention

    bundle = build(arch, context_length=100, seed=1)
    model = bundle.model.eval()
    tokens = bundle.tokenizer([LONG, "a dog on the beach"])
    with torch.no_grad():
        want = model.encode_text(tokens)
    calls = []
    real = attention_patch.flash_attention
    monkeypatch.setattr(
        attention_patch, "flash_attention", lambda *a, **kw: calls.append(kw) or real(*a, **kw)
    )
    assert set_attention(model, "fused") == "fused"
    monkeypatch.setenv(ENV_VAR, backend)  # triton: its interpreter, on the CPU
    with torch.no_grad():
        got = model.encode_text(tokens)
    assert any(kw["causal"] for kw in calls)  # the text tower ran fused, as causal
    assert torch.allclose(got, want, atol=1e-5)


def run(pool, out, log=None, **flags):
    cfg = TrainConfig(
        inputs=(str(pool),), output=str(out), batch_size=8, train_num_samples=16, workers=0,
        warmup=1, **flags,
    )  # fmt: skip
    return train(cfg, RunOptions(quiet=True, log=log or (lambda line: None)))


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    work = tmp_path_factory.mktemp("pool")
    return write_jsonl(work / "pool.jsonl", shapes_records(work, 16, seed=7))


def test_a_fresh_model_trains_at_the_length_and_eval_and_filter_score_read_it_back(pool, tmp_path):
    from vecap_cli.eval.models import load_model

    out = tmp_path / "run"
    run(pool, out, context_length=48)
    step = out / "step_00000002.pt"
    payload = torch.load(step, weights_only=True)
    assert payload["context_length"] == payload["config"]["context_length"] == 48
    assert payload["state_dict"]["positional_embedding"].shape == (48, 64)
    config = orjson.loads((out / "open_clip_config.json").read_bytes())
    assert config["model_cfg"]["text_cfg"]["context_length"] == 48

    texts = [LONG, "a blue circle"]
    by_step = load_model("vecap-tiny", str(step))
    by_dir = load_model(str(out))
    plain = load_model("vecap-tiny", str(out / "open_clip_pytorch_model.bin"))
    for loaded in (by_step, by_dir, plain):
        assert loaded.tokenizer(texts).shape == (2, 48)
    with torch.no_grad():
        embeddings = [m.model.encode_text(m.tokenizer(texts)) for m in (by_step, by_dir, plain)]
    assert torch.equal(embeddings[0], embeddings[1]) and torch.equal(embeddings[0], embeddings[2])

    from vecap_cli.placement import Placement
    from vecap_cli.steps.filter.score import ClipScorer, ScoreConfig

    for model, pretrained in ((str(out), None), ("vecap-tiny", str(step))):  # filter score
        config = ScoreConfig(model=model, pretrained=pretrained, device="cpu", threads=0)
        assert ClipScorer(config, Placement()).encoder.tokenizer(texts).shape == (2, 48)

    logs = []
    longer = load_model("vecap-tiny", str(step), log=logs.append, context_length=80)
    assert longer.tokenizer(texts).shape == (2, 80)
    assert "text positions stretched Long-CLIP's way: 48 -> 80 tokens" in logs


def test_pretrained_stretched_in_training_is_what_eval_loads(pool, tmp_path, tiny_checkpoint):
    from vecap_cli.eval.models import load_model

    out, logs = tmp_path / "run", []
    run(pool, out, logs.append, pretrained=str(tiny_checkpoint), context_length=100, lr=1e-12)
    assert "text positions stretched Long-CLIP's way: 32 -> 100 tokens" in logs
    loaded = load_model("vecap-tiny", str(out / "step_00000002.pt"))
    assert loaded.tokenizer(["a"]).shape == (1, 100)
    old = torch.load(tiny_checkpoint, weights_only=True)["positional_embedding"]
    table = loaded.model.positional_embedding.detach()
    assert torch.allclose(table, interpolated(old, 100), atol=1e-4)  # lr 1e-12: barely moved


def test_resume_holds_the_context_length(pool, tmp_path):
    out = tmp_path / "run"
    run(pool, out, context_length=40)
    with pytest.raises(VecapError, match="was trained with --context-length 40, not 64"):
        run(pool, out, context_length=64, resume="latest")


@pytest.mark.parametrize("bad", [0, 1, -3, 10**9])
def test_an_absurd_length_is_refused(bad):
    with pytest.raises(ValueError, match="--context-length: choose from 2 to 4096"):
        TrainConfig(inputs=("x",), output="o", context_length=bad)
    with pytest.raises(VecapError, match="--context-length"):
        from vecap_cli.eval.models import load_model

        load_model("vecap-tiny", context_length=bad)


def test_a_checkpoint_claiming_an_absurd_length_is_one_line(tmp_path):
    from vecap_cli.eval.models import load_model

    path = tmp_path / "hostile.pt"
    torch.save({"state_dict": {}, "step": 1, "context_length": 10**9}, path)
    with pytest.raises(VecapError, match=r"its context_length: 1000000000 tokens; choose from"):
        load_model("vecap-tiny", str(path))
