"""Model loading: open_clip checkpoints and Hugging Face CLIPModel directories, one shape."""

import pytest
import torch

from tests.eval.tiny import write_hf_clip, write_hf_processor, write_openclip, write_word_tokenizer
from vecap_cli.errors import VecapError
from vecap_cli.eval.models import VeclipPreprocess, load_model
from vecap_cli.loading import BUILTIN


@pytest.fixture(scope="module")
def openclip_files(tmp_path_factory):
    return write_openclip(tmp_path_factory.mktemp("oc"), seed=3)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return write_hf_clip(tmp_path_factory.mktemp("hf"))


def test_an_open_clip_checkpoint_loads_its_weights_not_random_ones(openclip_files):
    config, checkpoint = openclip_files
    saved = torch.load(checkpoint, weights_only=True)["state_dict"]
    loaded = load_model(str(config), str(checkpoint), seed=99)
    for name, value in loaded.model.state_dict().items():
        assert torch.equal(value, saved[f"module.{name}"]), name
    assert loaded.name == "vecap-tiny-vit" and loaded.pretrained == str(checkpoint)


def test_without_pretrained_the_random_model_depends_only_on_the_seed(openclip_files):
    config, _ = openclip_files
    lines = []
    a, b = (load_model(str(config), seed=5, log=lines.append) for _ in range(2))
    assert all(
        torch.equal(x, y)
        for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True)
    )
    assert (
        lines
        == [
            "warning: no --pretrained: vecap-tiny-vit has random weights",
            "preprocessing: open_clip's for vecap-tiny-vit (32 px, bicubic, shortest, "
            "mean (0.4815, 0.4578, 0.4082), std (0.2686, 0.2613, 0.2758))",
        ]
        * 2
    )


@pytest.mark.parametrize(
    ("model", "pretrained", "message"),
    [
        ("no-such-arch", None, "not an open_clip architecture"),
        ("vecap-tiny-clip", None, r"not an open_clip .* \(did you mean .*vecap-tiny-coca"),
        ("RN50", "/nope.pt", "--pretrained '/nope.pt': no such file or RN50 tag"),
        ("/nope/tiny.json", None, "no such file"),
    ],
)
def test_bad_model_flags_are_one_line(model, pretrained, message):
    with pytest.raises(VecapError, match=message):
        load_model(model, pretrained)


def test_a_checkpoint_of_another_architecture_is_one_line(openclip_files, tmp_path):
    config, _ = openclip_files
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {"visual.proj": torch.zeros(2, 2)}}, other)
    with pytest.raises(VecapError, match=r"cannot load '.*other\.pt' into vecap-tiny-vit"):
        load_model(str(config), str(other))


def test_hf_clip_directory_embeds_as_transformers_does_padding_or_not(hf_dir):
    from transformers import AutoTokenizer, CLIPModel

    loaded = load_model(str(hf_dir))
    texts = ["a dog", "a red car on the tree with a man"]
    batched = loaded.model.encode_text(loaded.tokenizer(texts))  # padded to the longest
    model, tok = CLIPModel.from_pretrained(hf_dir), AutoTokenizer.from_pretrained(hf_dir)
    for text, row in zip(texts, batched, strict=True):
        alone = model.get_text_features(**tok([text], return_tensors="pt"))
        alone = alone if isinstance(alone, torch.Tensor) else alone.pooler_output
        assert torch.allclose(row, alone[0], atol=1e-5)
    assert loaded.tokenizer(texts)["input_ids"][0, 2].item() == 1  # </s> ends "a dog"


def test_hf_long_captions_are_truncated_to_the_position_table(hf_dir):
    loaded = load_model(str(hf_dir))
    tokens = loaded.tokenizer([" ".join(["dog"] * 100)])
    assert tokens["input_ids"].shape == (1, 16)
    assert loaded.model.encode_text(tokens).shape == (1, 16)


def test_hf_directory_without_a_tokenizer_names_the_flag(tmp_path):
    bare = write_hf_clip(tmp_path / "bare", with_tokenizer=False)
    with pytest.raises(VecapError, match=r"no tokenizer in .*: pass --tokenizer"):
        load_model(str(bare))
    tokenizer = write_word_tokenizer(tmp_path / "tok")
    assert load_model(str(bare), tokenizer=str(tokenizer)).tokenizer(["a cat"])[
        "input_ids"
    ].shape == (1, 3)


def test_veclip_preprocess_resizes_the_shorter_side_and_crops():
    from PIL import Image

    pixels = VeclipPreprocess(32)(Image.new("RGB", (80, 40), (255, 0, 0)))
    assert pixels.shape == (3, 32, 32)
    assert pixels[0].allclose(torch.tensor((1 - 0.48145466) / 0.26862954))  # whitened red


def test_pretrained_with_a_model_directory_is_refused(hf_dir):
    with pytest.raises(VecapError, match="--pretrained is for --model ARCH"):
        load_model(str(hf_dir), "weights.pt")


def test_a_hub_id_offline_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(VecapError, match=r"^cannot load 'vecap-tests/no-such-clip': "):
        load_model("vecap-tests/no-such-clip")


def test_a_directory_that_is_no_model_is_one_line(tmp_path):
    with pytest.raises(VecapError, match=r"neither config\.json .* nor open_clip_config\.json"):
        load_model(str(tmp_path))


def test_the_image_processor_saved_with_the_model_is_the_one_that_runs(tmp_path):
    """transformers 5 saves a CLIPProcessor as processor_config.json, with no
    preprocessor_config.json: its image processor still runs, not VeCLIP's."""
    from PIL import Image

    model = write_hf_clip(tmp_path / "hf")
    processor = write_hf_processor(model)
    lines = []
    loaded = load_model(str(model), log=lines.append)
    image = Image.effect_noise((90, 60), 60).convert("RGB")
    own = processor(images=image, return_tensors="pt")["pixel_values"][0]
    assert torch.equal(loaded.preprocess(image), own)
    assert not torch.allclose(VeclipPreprocess(32)(image), own, atol=0.1)
    assert lines == [
        f"preprocessing: the CLIPImageProcessor saved with '{model}' (resize shortest edge "
        "40 px, crop 32×32 px, mean (0.5, 0.4, 0.3), std (0.2, 0.25, 0.3))"
    ]


def test_without_an_image_processor_veclip_preprocessing_runs_and_says_so(hf_dir):
    lines = []
    assert isinstance(load_model(str(hf_dir), log=lines.append).preprocess, VeclipPreprocess)
    assert lines == [
        f"preprocessing: VeCLIP's, no image processor with '{hf_dir}' (none saved): shorter "
        "side to 32 px, bilinear, center crop, CLIP mean/std"
    ]


def test_an_image_processor_that_does_not_load_is_one_line_not_a_fallback(tmp_path):
    model = write_hf_clip(tmp_path / "hf")
    (model / "processor_config.json").write_text("{not json")
    with pytest.raises(VecapError, match=r"^cannot load the image processor in .*processor_config"):
        load_model(str(model))


@pytest.mark.parametrize("name", BUILTIN)
def test_every_built_in_architecture_of_train_loads_here_too(name):
    lines = []
    loaded = load_model(name, log=lines.append)
    assert loaded.name == name and lines[0].endswith(f"{name} has random weights")
    from PIL import Image

    image = loaded.preprocess(Image.new("RGB", (40, 50)))
    assert loaded.model.encode_image(image[None]).shape[0] == 1


def test_open_clip_names_with_a_slash_are_open_clip_not_hub_ids():
    """`ViT-B/32` is open_clip's (and vecap train's) ViT-B-32, not a Hugging Face repo."""
    with pytest.raises(
        VecapError, match=r"^--pretrained '/nope\.pt': no such file or ViT-B-32 tag"
    ):
        load_model("ViT-B/32", "/nope.pt")


def test_a_slashed_name_takes_its_pretrained_tags(monkeypatch):
    """`--model ViT-B/32 --pretrained openai`: the tag is ViT-B-32's (no download here)."""
    import open_clip

    asked = []

    def stub(arch, pretrained=None, **kw):
        asked.append((arch, pretrained))
        raise RuntimeError("stub: not loading weights in a test")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", stub)
    with pytest.raises(VecapError, match="stub"):
        load_model("ViT-B/32", "openai")
    assert asked == [("ViT-B-32", "openai")]


def test_a_damaged_tokenizer_is_one_line(tmp_path):
    from tests.eval.tiny import write_hf_clip

    model = write_hf_clip(tmp_path)
    (model / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": 5}}')
    with pytest.raises(VecapError, match="no tokenizer in"):
        load_model(str(model))


def test_local_dir_names_a_run_directory_as_open_clip_does(tmp_path):
    import open_clip

    from vecap_cli.train.checkpoint import export
    from vecap_cli.train.models import build

    bundle = build("vecap-tiny", seed=4)
    export(str(tmp_path), bundle.model.state_dict(), open_clip.get_model_config("vecap-tiny"), {})
    for model in (str(tmp_path), f"local-dir:{tmp_path}"):
        loaded = load_model(model, seed=9)
        assert loaded.pretrained == str(tmp_path)  # where the weights came from
        for name, value in loaded.model.state_dict().items():
            assert torch.equal(value, bundle.model.state_dict()[name]), name
    with pytest.raises(VecapError, match="--pretrained is for --model ARCH"):
        load_model(f"local-dir:{tmp_path}", "w.pt")
    (tmp_path / "open_clip_config.json").unlink()
    with pytest.raises(VecapError, match=r"^--model 'local-dir:.*': no open_clip_config\.json in"):
        load_model(f"local-dir:{tmp_path}")
