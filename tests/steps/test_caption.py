import os
import random

import pytest

from tests.conftest import tiny_image
from vecap_cli.generate.base import Failed, decode_rgb
from vecap_cli.steps.caption import DEFAULT_PROMPT, CaptionConfig, caption
from vecap_cli.stream.sample import Sample
from vecap_cli.stream.tally import Tally


class FakeCaptioner:
    """Captions an image by its size; records every batch it was given."""

    def __init__(self, fail=()):
        self.batches = []
        self.fail = set(fail)

    def prepare(self, data):
        return decode_rgb(data)

    def generate(self, images):
        self.batches.append(len(images))
        return [
            Failed("http-503", "gone") if im.size[0] in self.fail else f"a {im.size[0]}px square"
            for im in images
        ]


def samples(n, seed=0, with_vec=(), broken=(), missing=()):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        record = {"key": f"k{i}", "alt": f"alt {i}", "x": {"i": i}}
        members = {}
        if i in with_vec:
            record["vec"] = "given"
        if i in broken:
            members["jpg"] = b"\xff\xd8 not a jpeg"
        elif i not in missing:
            members["png"] = tiny_image(rng)
        out.append(Sample(record, members, idx=i))
    return out


def run(items, captioner=None, **config):
    tally = Tally("caption")
    captioner = captioner or FakeCaptioner()
    config = CaptionConfig(**{"decode_threads": 2, "batch_size": 4, **config})
    out = list(caption(items, tally, config, captioner))
    return out, tally, captioner


def test_every_record_gets_its_own_images_caption_in_order():
    items = samples(23)
    sizes = [decode_rgb(s.members["png"]).size[0] for s in items]
    out, tally, fake = run(items)
    assert [s.key for s in out] == [f"k{i}" for i in range(23)]
    assert [s.record["vec"] for s in out] == [f"a {n}px square" for n in sizes]
    assert out[3].record["x"] == {"i": 3} and out[3].members == items[3].members
    assert fake.batches == [4, 4, 4, 4, 4, 3]
    assert tally.extra["caption"] == {"captioned": 23}


def test_existing_vec_passes_untouched_and_is_never_decoded():
    items = samples(10, with_vec={0, 1, 5, 9})
    items[5].members["png"] = b"broken, but never looked at"
    out, tally, fake = run(items)
    assert [s.key for s in out] == [f"k{i}" for i in range(10)]
    assert [s.record["vec"] for s in out if s.idx in (0, 1, 5, 9)] == ["given"] * 4
    assert sum(fake.batches) == 6
    assert tally.extra["caption"] == {"captioned": 6, "skipped-existing": 4}


def test_overwrite_captions_them_too():
    out, tally, _ = run(samples(6, with_vec={2}), overwrite=True)
    assert "given" not in [s.record["vec"] for s in out]
    assert tally.extra["caption"] == {"captioned": 6}


def test_bad_and_missing_images_are_rejected_with_their_reason():
    out, tally, _ = run(samples(12, broken={3, 7}, missing={4}))
    assert [s.idx for s in out] == [0, 1, 2, 5, 6, 8, 9, 10, 11]
    assert dict(tally.rejected) == {"bad-image": 2, "image-missing": 1}


def test_a_request_that_failed_for_good_rejects_that_record_only():
    items = samples(8)
    bad = decode_rgb(items[2].members["png"]).size[0]
    out, tally, _ = run(items, FakeCaptioner(fail={bad}))
    assert all(decode_rgb(s.members["png"]).size[0] != bad for s in out)
    assert tally.rejected["caption-http-503"] == 8 - len(out) >= 1


def test_a_long_run_of_records_to_pass_does_not_wait_for_a_batch():
    items = samples(1, with_vec={0}) + samples(1000, with_vec=set(range(1000)))
    stream = caption(
        iter(items), Tally("caption"), CaptionConfig(decode_threads=0), FakeCaptioner()
    )
    assert next(stream).key == "k0"


@pytest.mark.parametrize("threads", [0, 1, 3])
def test_results_do_not_depend_on_decode_threads_or_batch_size(threads):
    base, _, _ = run(samples(30, seed=4), decode_threads=0, batch_size=1)
    out, _, _ = run(samples(30, seed=4), decode_threads=threads, batch_size=7)
    assert [s.record for s in out] == [s.record for s in base]


def test_the_default_prompt_is_veclips():
    assert DEFAULT_PROMPT == "Describe the image concisely, less than 20 words."


def test_batch_and_decode_threads_default_by_backend():
    assert CaptionConfig.of("hf", None, None, 16).batch_size == 8
    assert CaptionConfig.of("openclip", None, None, 16).batch_size == 16
    server = CaptionConfig.of("openai", None, 0, 3)  # enough requests to keep 3 in flight
    assert (server.batch_size, server.decode_threads) == (6, 0)
    given = CaptionConfig.of("hf", 2, None, 16, model="m")
    assert (given.batch_size, given.model) == (2, "m") and 1 <= given.decode_threads <= 4
    cores = len(os.sched_getaffinity(0))
    shared = CaptionConfig.of("hf", 2, None, 16, processes=2 * cores)  # --workers: fewer each
    assert shared.decode_threads == 1
