"""The hf rewrite backend on a GGUF file: a tiny Llama the test writes itself, loaded
through transformers' GGUF support, and the files that must not load, each one line."""

import pytest

pytest.importorskip("gguf")
pytest.importorskip("accelerate")

import torch

from tests.tiny_models import CHAT_TEMPLATE, one_torch_thread, write_tiny_llama_gguf
from vecap_cli.errors import VecapError
from vecap_cli.generate import gguf_file
from vecap_cli.generate.load import captioner, chat_model

CHATS = [
    [{"role": "user", "content": "a dog"}],
    [
        {"role": "system", "content": "the city of Paris near the river"},
        {"role": "user", "content": "a red car on the street in London 2019"},
    ],
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_torch_thread():
        yield


@pytest.mark.parametrize("tensor_type", ["f32", "f16", "q8_0"])
def test_the_model_holds_the_weights_the_file_holds(tmp_path, tensor_type):
    path = tmp_path / "tiny.gguf"
    held = write_tiny_llama_gguf(path, tensor_type)
    model = chat_model("hf", str(path), max_new_tokens=4, device="cpu").backend
    loaded = model.model.state_dict()
    assert sorted(loaded) == sorted(held)
    for name in (
        "model.layers.1.self_attn.q_proj.weight",
        "model.layers.0.self_attn.k_proj.weight",
    ):
        assert torch.equal(loaded[name], held[name]), name  # llama.cpp's row order undone
    assert all(torch.equal(loaded[name], held[name]) for name in held)
    if tensor_type == "q8_0":  # rounded, so the comparison above can tell
        written = write_tiny_llama_gguf(tmp_path / "f32.gguf")
        assert not torch.equal(held["lm_head.weight"], written["lm_head.weight"])


def test_the_tokenizer_and_chat_template_come_from_the_file(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_tiny_llama_gguf(path)
    model = chat_model("hf", str(path), max_new_tokens=6, device="cpu").backend
    assert model.tokenizer.chat_template == CHAT_TEMPLATE
    assert (model.tokenizer.bos_token, model.tokenizer.eos_token) == ("<s>", "</s>")
    text = "a dog in Paris"
    assert model.tokenizer.decode(model.tokenizer(text, add_special_tokens=False).input_ids) == text
    assert model.render(CHATS[0]) == "<s>user: a dog</s><s>assistant: "
    together = model.generate(CHATS)
    assert together == [model.generate([chat])[0] for chat in CHATS]
    assert len(set(together)) == 2  # the prompt reaches the model


def test_files_that_are_not_a_loadable_gguf_are_one_line(tmp_path):
    with pytest.raises(VecapError, match=r"'.*nope\.gguf': no such file$"):
        chat_model("hf", str(tmp_path / "nope.gguf"), 4)
    (tmp_path / "model.bin").write_bytes(b"PK\x03\x04 a zip, not a GGUF")
    with pytest.raises(VecapError, match=r"'.*model\.bin': not a GGUF file"):
        chat_model("hf", str(tmp_path / "model.bin"), 4)

    whole = (tmp_path / "tiny.gguf", tmp_path / "cut.gguf")
    write_tiny_llama_gguf(whole[0])
    data = whole[0].read_bytes()
    for size in (8, 4096, len(data) // 2, len(data) - 1):
        whole[1].write_bytes(data[:size])
        with pytest.raises(VecapError, match=r"'.*cut\.gguf': a truncated or damaged GGUF file"):
            chat_model("hf", str(whole[1]), 4)


def test_an_architecture_transformers_cannot_load_is_one_line(tmp_path):
    path = tmp_path / "odd.gguf"
    write_tiny_llama_gguf(path, architecture="vecap-odd")
    model = chat_model("hf", str(path), 4, device="cpu")  # the header is fine
    with pytest.raises(VecapError) as caught:
        model.generate(CHATS)
    assert str(caught.value).startswith(f"cannot load the language model '{path}': ")
    assert "vecap-odd" in str(caught.value) and "\n" not in str(caught.value)


def test_missing_packages_are_named(tmp_path, monkeypatch):
    path = tmp_path / "tiny.gguf"
    path.write_bytes(b"GGUF" + bytes(20))
    absent = {"gguf"}
    real = gguf_file.find_spec
    monkeypatch.setattr(gguf_file, "find_spec", lambda n: None if n in absent else real(n))
    with pytest.raises(VecapError, match=r"needs the gguf package \(pip install gguf\)$"):
        chat_model("hf", str(path), 4)
    absent.add("accelerate")
    with pytest.raises(VecapError, match=r"the gguf and accelerate packages \(pip install gguf"):
        chat_model("hf", str(path), 4)


def test_a_captioner_is_never_a_gguf(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_tiny_llama_gguf(path)
    for model in (path, tmp_path / "absent.gguf"):
        with pytest.raises(VecapError, match="text-only language models from GGUF files"):
            captioner("hf", str(model), "Describe.", 4)
