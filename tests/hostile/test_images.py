"""Hostile images: every command that opens one refuses, without blocking or
blowing up, what is not a bounded, decodable regular file, and counts why.

One pool holds every class (a FIFO, /dev/zero, a directory, a file over the
byte cap, a pixel bomb, a truncated PNG, a missing file) beside good images;
each command runs it once and each class must come out as its own reason.
"""

import io
import os
import random
import tarfile

import orjson
import pytest

from tests.cli.test_contract import CASES
from tests.conftest import run_vecap, tiny_image, write_jsonl
from tests.eval.tiny import write_openclip
from tests.tiny_models import ONE_THREAD, tiny_model
from vecap_cli.stream.images import ImageLimits, ImageRejected, decode, read_file
from vecap_cli.stream.sample import Sample, Source

CAP = "100000"  # --max-image-bytes in these runs
GOOD = 8

# what each hostile record becomes in a command that only packs bytes (mix to tar)
PACKED = {
    "fifo": "image-not-file",
    "zero": "image-not-file",
    "dir": "image-not-file",
    "big": "image-too-large",
    "missing": "image-missing",
}
# ... and in one that decodes (caption, train, eval)
DECODED = {**PACKED, "bomb": "image-too-many-pixels", "truncated": "bad-image"}


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """A 12000x12000 PNG (144 Mpx) in 17 kB: decoded as RGB it would take 432 MB."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buf, format="PNG")
    return buf.getvalue()


def hostile_pool(tmp_path, bomb: bytes):
    """One record per hostile class (key = class), then GOOD records with real images."""
    rng = random.Random(7)
    img = tmp_path / "img"
    img.mkdir()
    records = []
    for i in range(GOOD):
        (img / f"{i}.png").write_bytes(tiny_image(rng))
        records.append({"key": f"good{i}", "image": f"img/{i}.png"})
    os.mkfifo(img / "fifo.png")
    (img / "big.png").write_bytes(tiny_image(rng) + bytes(int(CAP)))
    (img / "bomb.png").write_bytes(bomb)
    (img / "truncated.png").write_bytes(tiny_image(rng)[:60])
    images = {
        "fifo": "img/fifo.png",
        "zero": "/dev/zero",
        "dir": "img",
        "big": "img/big.png",
        "bomb": "img/bomb.png",
        "truncated": "img/truncated.png",
        "missing": "img/nowhere.png",
    }
    # first: train reads only as far as its steps need
    records = [{"key": key, "image": path} for key, path in images.items()] + records
    for i, record in enumerate(records):
        record.update(alt=f"a photo of a cat {i}", vecap=f"a cat {i}", cls=i % 2)
    return write_jsonl(tmp_path / "pool.jsonl", records)


def rejected_by_key(path) -> dict[str, str]:
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    return {line["record"]["key"]: line["reason"] for line in lines}


def no_traceback(result):
    assert "Traceback" not in result.err and "MemoryError" not in result.err, result.err
    assert "DecompressionBomb" not in result.err, result.err


# -- mix (and every record command) writing tar: reads the file, never decodes it --


@pytest.mark.timeout(60)
def test_tar_output_packs_only_bounded_regular_files(tmp_path, bomb):
    pool = hostile_pool(tmp_path, bomb)
    rejects = tmp_path / "rejects.jsonl"
    result = run_vecap(
        "mix", *CASES["mix"], pool, "-o", tmp_path / "out.tar", "--rejects", rejects,
        "--max-image-bytes", CAP,
    )  # fmt: skip
    assert result.code == 0, result.err
    no_traceback(result)
    assert rejected_by_key(rejects) == PACKED
    with tarfile.open(tmp_path / "out.tar") as tar:
        keys = {name.split(".")[0] for name in tar.getnames()}
    assert keys == {f"good{i}" for i in range(GOOD)} | {"bomb", "truncated"}
    assert f"in {GOOD + 7} = out {GOOD + 2} + dropped 0 + rejected 5" in result.err


# -- the commands that decode: caption (a server and a local model), train, eval --


@pytest.fixture(scope="module")
def eval_model(tmp_path_factory):
    config, checkpoint = write_openclip(tmp_path_factory.mktemp("model"))
    return ["--model", config, "--pretrained", checkpoint]


def caption_args(tmp_path, model):
    return CASES["caption"]


def caption_local_args(tmp_path, model):
    return ["--model", tiny_model("blip"), "--max-new-tokens", "3", "--workers", "2"]


def train_args(tmp_path, model):
    flags = ["--batch-size", "4", "--workers", "0", "--shuffle-buffer", "1", "--seed", "1"]
    return ["-o", tmp_path / "run", *flags]


def eval_args(tmp_path, model):
    (tmp_path / "names.txt").write_text("cat\ndog\n")
    return [
        "--task", "zeroshot", *model, "--classnames", tmp_path / "names.txt",
        "--templates", "simple", "--workers", "2",
    ]  # fmt: skip


DECODERS = {
    "caption": ("caption", caption_args),
    "caption-local": ("caption", caption_local_args),
    "train": ("train", train_args),
    "eval": ("eval", eval_args),
}


def run_decoder(name, tmp_path, model, inputs, *flags):
    command, args = DECODERS[name]
    rejects = tmp_path / "rejects.jsonl"
    output = ["-o", tmp_path / "out.jsonl", "--images-dir", tmp_path / "out"]
    output = output if command == "caption" else []
    result = run_vecap(
        command,
        *args(tmp_path, model),
        *inputs,
        *output,
        "--rejects",
        rejects,
        *flags,
        env=ONE_THREAD,
    )
    assert result.code == 0, result.err
    no_traceback(result)
    return rejected_by_key(rejects), result


@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", DECODERS)
def test_decoding_commands_refuse_each_hostile_image_with_its_reason(
    name, tmp_path, bomb, eval_model
):
    pool = hostile_pool(tmp_path, bomb)
    rejected, result = run_decoder(name, tmp_path, eval_model, [pool], "--max-image-bytes", CAP)
    assert rejected == DECODED
    if DECODERS[name][0] == "caption":
        assert f"in {GOOD + 7} = out {GOOD} + dropped 0 + rejected 7" in result.err


@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", ["caption", "train", "eval"])
def test_tar_members_are_held_to_the_same_caps(name, tmp_path, bomb, eval_model):
    """Images that arrive as tar members: the byte cap and pixel cap apply where decoded."""
    pool = hostile_pool(tmp_path, bomb)
    packed = run_vecap("mix", *CASES["mix"], pool, "-q", "-o", tmp_path / "in.tar")
    assert packed.code == 0, packed.err  # default caps: big is packed this time
    rejected, _ = run_decoder(
        name, tmp_path, eval_model, [tmp_path / "in.tar"], "--max-image-bytes", CAP
    )
    assert rejected == {"big": "image-too-large", "bomb": "image-too-many-pixels",
                        "truncated": "bad-image"}  # fmt: skip


@pytest.mark.parametrize("command", [*CASES, "train", "eval"])
def test_every_command_that_opens_images_takes_the_flags(command):
    result = run_vecap(*command.split(), "--max-pixels", "0", "--max-image-bytes", "1")
    assert result.code == 2 and "--max-pixels" in result.err, result.err
    assert "No such option" not in result.err


# -- the one image path, on its own --


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: os.mkfifo(p), "image-not-file"),
        (lambda p: os.symlink("/dev/zero", p), "image-not-file"),
        (lambda p: os.mkdir(p), "image-not-file"),
        (lambda p: p.write_bytes(bytes(11)), "image-too-large"),
        (lambda p: None, "image-missing"),
    ],
    ids=["fifo", "dev-zero", "directory", "over-cap", "missing"],
)
def test_read_file_refuses_without_blocking(tmp_path, make, reason):
    path = tmp_path / "x.png"
    make(path)
    with pytest.raises(ImageRejected) as refused:
        read_file(str(path), ImageLimits(max_bytes=10))
    assert refused.value.reason == reason


def test_a_file_at_the_cap_is_read(tmp_path):
    (tmp_path / "x").write_bytes(bytes(10))
    assert read_file(str(tmp_path / "x"), ImageLimits(max_bytes=10)) == bytes(10)


def test_a_pixel_bomb_is_refused_before_decoding(bomb):
    with pytest.raises(ImageRejected) as refused:
        decode(bomb, ImageLimits())
    assert refused.value.reason == "image-too-many-pixels"
    assert "12000x12000" in str(refused.value)


def test_a_larger_than_pil_bomb_is_refused_too():
    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, format="PNG")  # over PIL's own error limit
    with pytest.raises(ImageRejected) as refused:
        decode(buf.getvalue(), ImageLimits(max_pixels=10**9))
    assert refused.value.reason == "image-too-many-pixels"


def test_a_large_jpeg_is_decoded_at_a_draft_scale_that_fits():
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (2000, 1000), (200, 10, 10)).save(buf, format="JPEG")
    image = decode(buf.getvalue(), ImageLimits(max_pixels=600_000))  # 1/2: 1000x500
    assert image.size == (1000, 500) and image.mode == "RGB"
    with pytest.raises(ImageRejected) as refused:
        decode(buf.getvalue(), ImageLimits(max_pixels=20_000))  # even 1/8 is 250x125
    assert refused.value.reason == "image-too-many-pixels"


def test_a_record_image_from_a_tar_member_is_held_to_the_byte_cap():
    sample = Sample({"key": "k"}, {"png": bytes(11)}, 0, Source("t.tar", "tar", ""), "k")
    with pytest.raises(ImageRejected) as refused:
        sample.image_bytes(ImageLimits(max_bytes=10))
    assert refused.value.reason == "image-too-large"


def test_the_openai_request_encoder_uses_the_same_caps(bomb):
    from vecap_cli.generate.openai_client import data_url

    with pytest.raises(ImageRejected) as refused:
        data_url(bomb)
    assert refused.value.reason == "image-too-many-pixels"
    assert data_url(tiny_image(random.Random(0))).startswith("data:image/png;base64,")


def test_a_tar_member_too_large_to_hold_is_skipped_unread(tmp_path):
    from vecap_cli.stream.picker import Picker
    from vecap_cli.stream.tally import Tally
    from vecap_cli.stream.tar import read_tar

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in [("a.json", b'{"alt": "x"}'), ("a.png", bytes(5000)),
                           ("b.json", b'{"alt": "y"}'), ("b.png", bytes(50)),
                           # each member small, together over the cap
                           ("c.json", b'{"alt": "z"}'), ("c.p1", bytes(60)), ("c.p2", bytes(60))]:  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    tally = Tally("t")
    got = list(read_tar(buf, Source("t.tar", "tar", ""), tally, Picker(0, 1, 0), max_member=100))
    assert [s.key for s in got] == ["b"] and dict(tally.rejected) == {"member-too-large": 2}
