"""Seeded sampling (--n, --temperature) in the local models: each item drawn from its own
seed, so a batch gives exactly what each item gives alone, and a seed its own draw."""

import pytest
import torch

from tests.generate.test_local_models import PROMPT, images
from tests.tiny_models import one_torch_thread, tiny_model
from vecap_cli.generate.load import load
from vecap_cli.generate.registry import CAPTION, REWRITE, ModelOptions, Request
from vecap_cli.generate.sampling import SeededSampler

SEEDS = [11, 2**32 - 1, 12345, 7, 99]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_torch_thread():
        yield


def test_a_row_draws_from_its_own_seed_whatever_the_rows_beside_it():
    scores = torch.randn(5, 50)  # (B, V)
    together = SeededSampler(SEEDS, 1.0).pick(scores)
    alone = [
        SeededSampler([s], 1.0).pick(row[None])[0] for s, row in zip(SEEDS, scores, strict=True)
    ]
    assert together.tolist() == [int(t) for t in alone]
    many = [SeededSampler([s], 1.0).pick(scores[:1])[0].item() for s in range(40)]
    assert len(set(many)) > 5  # other seeds, other tokens
    cold = SeededSampler(SEEDS, 1e-4).pick(scores)
    assert cold.tolist() == scores.argmax(-1).tolist()  # near 0: the greedy token
    masked = SeededSampler(SEEDS, 1.0)(None, scores)
    assert (masked.isfinite().sum(-1) == 1).all()  # one finite score a row: what greedy takes


def test_draws_follow_the_softmax_at_the_temperature_and_never_take_a_masked_token():
    scores = torch.tensor([[0.0, 1.0, 2.0, float("-inf")]])
    for temperature in (1.0, 0.5):
        picks = [SeededSampler([seed], temperature).pick(scores)[0].item() for seed in range(3000)]
        seen = torch.bincount(torch.tensor(picks), minlength=4) / len(picks)
        want = torch.softmax(scores[0] / temperature, -1)
        assert seen[3] == 0 and torch.allclose(seen, want, atol=0.03), (seen, want)


@pytest.mark.parametrize("kind", ["llava", "coca"])
def test_a_sampled_batch_captions_each_image_as_it_would_alone(kind):
    name = f"local-dir:{tiny_model('coca')}" if kind == "coca" else None
    request = Request(
        name or str(tiny_model(kind)), 6, ModelOptions(device="cpu"), prompt=PROMPT, temperature=1.0
    )
    captioner = load(CAPTION, "openclip" if kind == "coca" else "hf", request)
    batch = images(5)
    together = captioner.generate(batch, seeds=SEEDS)
    alone = [captioner.generate([im], seeds=[s])[0] for im, s in zip(batch, SEEDS, strict=True)]
    assert together == alone
    again = captioner.generate(batch[:1] * 4, seeds=[1, 2, 3, 4])
    assert len(set(again)) > 1  # one image, four seeds: not one caption
    assert captioner.generate(batch[:1], seeds=[1]) == again[:1]


def test_a_sampled_batch_of_conversations_of_several_lengths_is_each_alone():
    chat = load(
        REWRITE,
        "hf",
        Request(str(tiny_model("llama")), 6, ModelOptions(device="cpu"), temperature=0.9),
    )
    conversations = [
        [{"role": "user", "content": "a dog on the grass"}],
        [{"role": "user", "content": "the Eiffel Tower in Paris at night with a red sky"}],
        [{"role": "user", "content": "two"}],
    ]
    seeds = SEEDS[:3]
    together = chat.generate(conversations, seeds=seeds)  # left-padded to the longest
    alone = [chat.generate([c], seeds=[s])[0] for c, s in zip(conversations, seeds, strict=True)]
    assert together == alone
    greedy = load(REWRITE, "hf", Request(str(tiny_model("llama")), 6, ModelOptions(device="cpu")))
    assert greedy.generate(conversations) == greedy.generate(conversations, seeds=seeds)  # T = 0
