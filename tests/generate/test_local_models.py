"""The local-model backends on tiny random-weight models of the real classes.

Greedy generation is deterministic, so a batch must give exactly what each
record gives alone: that is what left padding, attention masks and prompt
stripping have to get right.
"""

import random

import pytest

from tests.conftest import tiny_image
from tests.tiny_models import one_torch_thread, tiny_model
from vecap_cli.errors import VecapError
from vecap_cli.generate.base import Prompted, decode_rgb
from vecap_cli.generate.load import captioner, chat_model

PROMPT = "Describe the image concisely, less than 20 words."


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_torch_thread():
        yield


def images(n, seed=0):
    rng = random.Random(seed)
    return [decode_rgb(tiny_image(rng, rng.choice(["png", "jpg"]))) for _ in range(n)]


@pytest.mark.parametrize("kind", ["llava", "blip"])
def test_a_batch_captions_each_image_as_it_would_alone(kind):
    model = captioner("hf", str(tiny_model(kind)), PROMPT, max_new_tokens=6, device="cpu")
    batch = images(5)
    together = model.generate(batch)
    alone = [model.generate([image])[0] for image in batch]
    assert together == alone
    assert all(text and text == " ".join(text.split()) for text in together)
    if kind == "llava":  # (random BLIP's cross-attention is too faint to flip an argmax)
        assert len(set(together)) > 1  # the image matters, not just the prompt


def test_llava_gets_the_prompt_through_its_chat_template():
    model = captioner("hf", str(tiny_model("llava")), PROMPT, 4, device="cpu").backend
    assert model.text == f"<s>user: <image> {PROMPT}</s><s>assistant: "
    assert model.processor.tokenizer.padding_side == "left"


def test_each_prompted_image_goes_with_its_own_prompt_and_batches_as_alone():
    model = captioner("hf", str(tiny_model("llava")), PROMPT, 4, device="cpu").backend
    alts = ["a", "b c d e f g", "h"]
    batch = [
        Prompted(image, f"Caption it. ALT: {alt}")
        for image, alt in zip(images(3), alts, strict=True)
    ]
    model.processor = Spy(model.processor)
    together = model.generate(batch)
    assert model.processor.texts == [
        f"<s>user: <image> Caption it. ALT: {alt}</s><s>assistant: " for alt in alts
    ]
    assert together == [model.generate([item])[0] for item in batch]


class Spy:
    """A processor that notes the texts it was given."""

    def __init__(self, processor):
        self.processor, self.texts = processor, []

    def __call__(self, **kwargs):
        self.texts.extend(kwargs.get("text", ()))
        return self.processor(**kwargs)

    def __getattr__(self, name):
        return getattr(self.processor, name)


def test_blip_which_follows_no_instruction_refuses_a_prompted_image():
    model = captioner("hf", str(tiny_model("blip")), PROMPT, 4, device="cpu")
    with pytest.raises(VecapError, match=r"\(blip\) follows no instruction.*--condition-on"):
        model.generate([Prompted(images(1)[0], "Caption it.")])


def test_blip_captions_unconditionally():
    model = captioner("hf", str(tiny_model("blip")), PROMPT, 4, device="cpu").backend
    assert model.text is None


def test_coca_batch_equals_alone():
    model = captioner("openclip", f"local-dir:{tiny_model('coca')}", PROMPT, 6, device="cpu")
    batch = images(4, seed=1)
    together = model.generate(batch)
    assert together == [model.generate([image])[0] for image in batch]
    assert all(together)


def test_coca_captions_read_as_text_with_clips_tokenizer():
    """CLIP's tokenizer decodes every word with a trailing space, commas too."""
    from open_clip.tokenizer import SimpleTokenizer

    model = captioner(
        "openclip", f"local-dir:{tiny_model('coca')}", PROMPT, 6, device="cpu"
    ).backend
    if not isinstance(model.tokenizer, SimpleTokenizer):
        pytest.skip("the tiny CoCa does not use CLIP's tokenizer")
    ids = model.tokenizer("a red circle, grey background.")[0].tolist()
    assert model._decode(ids) == "a red circle, grey background."


def test_a_chat_batch_of_different_lengths_equals_each_alone():
    model = chat_model("hf", str(tiny_model("llama")), max_new_tokens=6, device="cpu")
    conversations = [
        [{"role": "user", "content": "a dog"}],
        [
            {"role": "system", "content": "the city of Paris near the river"},
            {"role": "user", "content": "a red car on the street in London 2019"},
        ],
        [{"role": "user", "content": "two cats"}],
    ]
    together = model.generate(conversations)
    assert together == [model.generate([c])[0] for c in conversations]
    assert all(together)


def test_a_missing_or_wrong_model_dir_is_one_line(tmp_path):
    with pytest.raises(VecapError, match="no such directory"):
        captioner("hf", str(tmp_path / "nope"), PROMPT, 4)
    with pytest.raises(VecapError, match=r"no config\.json in it"):
        chat_model("hf", str(tmp_path), 4)
    with pytest.raises(VecapError, match=r"no open_clip_config\.json"):
        captioner("openclip", f"local-dir:{tmp_path}", PROMPT, 4)


def test_a_model_that_cannot_load_is_one_line(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    model = chat_model("hf", str(tmp_path), 4, device="cpu")
    with pytest.raises(VecapError, match=f"cannot load the language model '{tmp_path}'"):
        model.generate([[{"role": "user", "content": "x"}]])


def test_a_template_without_a_system_role_gets_it_folded_into_the_first_turn():
    model = chat_model("hf", str(tiny_model("llama")), 4, device="cpu").backend
    template = model.tokenizer.chat_template
    model.tokenizer.chat_template = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}" + template
    )
    try:
        text = model.render(
            [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a dog"}]
        )
    finally:
        model.tokenizer.chat_template = template
    assert text == "<s>user: be brief\n\na dog</s><s>assistant: "


def test_a_coca_vecap_train_made_captions_by_its_built_in_name(tmp_path):
    """`--model vecap-tiny-coca --pretrained RUN/step_N.pt`, as train and eval take it
    (in a fresh process: open_clip's registry of names is global)."""
    import torch

    from tests.conftest import run_vecap, write_jsonl
    from tests.tiny_models import ONE_THREAD
    from vecap_cli.train.models import build

    torch.save(
        {"state_dict": build("vecap-tiny-coca", seed=0).model.state_dict()}, tmp_path / "c.pt"
    )
    rng = random.Random(0)
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(tiny_image(rng))
    pool = write_jsonl(
        tmp_path / "pool.jsonl", [{"key": str(i), "image": f"{i}.png"} for i in range(3)]
    )
    result = run_vecap(
        "caption", pool, "--backend", "openclip", "--model", "vecap-tiny-coca",
        "--pretrained", tmp_path / "c.pt", "--max-new-tokens", "4", "-q", env=ONE_THREAD,
    )  # fmt: skip
    assert result.code == 0, result.err
    assert [isinstance(r["vec"], str) for r in result.records()] == [True] * 3
