"""--cache: an answer already paid for is served from DIR/answers.sqlite3, the
backend is not asked again (nor built), and the stats say so. Throwaway backends,
registered as in test_registry, count their builds and calls."""

import multiprocessing
import random
import sqlite3

import orjson
import pytest

from tests.conftest import tiny_image, write_jsonl
from vecap_cli.cli.app import main
from vecap_cli.errors import VecapError
from vecap_cli.generate.base import Failed, Prompted
from vecap_cli.generate.cache import FILE, Cached, Served, Store
from vecap_cli.generate.registry import CAPTION, REWRITE, Backend, Request, register, unregister

ANSWER = "A DOG ON THE GRASS IN A PARK"
N = 7


class Counting:
    """Builds, calls and items asked, per backend; `fail`: every request fails."""

    builds = calls = items = 0
    fail = False
    crash_on: int | None = None  # this call (1-based) raises: the run dies mid-way

    def __init__(self, request: Request):
        type(self).builds += 1
        self.model = request.model

    def generate(self, batch: list) -> list:
        type(self).calls += 1
        if type(self).calls == type(self).crash_on:
            raise VecapError("the server went away")
        type(self).items += len(batch)
        if type(self).fail:
            return [Failed("http-503") for _ in batch]
        return [self.answer(item) for item in batch]


class Captioner(Counting):
    def answer(self, image) -> str:
        return f"a picture {image.width} {self.model} wide"


class Chat(Counting):
    def answer(self, conversation) -> str:
        return ANSWER


@pytest.fixture
def backends():
    registered = [
        register(Backend("counted", CAPTION, Captioner, help="counts", batch_size=3)),
        register(Backend("counted", REWRITE, Chat, help="counts", batch_size=3)),
    ]
    for cls in (Captioner, Chat):
        cls.builds = cls.calls = cls.items = 0
        cls.fail, cls.crash_on = False, None
    yield
    for backend in registered:
        unregister(backend)


@pytest.fixture
def pool(tmp_path):
    rng = random.Random(0)
    records = []
    for i in range(N):
        (tmp_path / f"{i}.png").write_bytes(tiny_image(rng))
        records.append({"key": f"k{i}", "alt": f"Paris photo {i}", "image": f"{i}.png"})
    return write_jsonl(tmp_path / "pool.jsonl", records)


@pytest.fixture
def vecs(tmp_path):
    records = [{"key": f"k{i}", "alt": f"Paris photo {i}", "vec": "a dog"} for i in range(N)]
    return write_jsonl(tmp_path / "vec.jsonl", records)


@pytest.fixture(autouse=True)
def _wide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")


def vecap(*args) -> int:
    with pytest.raises(SystemExit) as done:
        main([str(arg) for arg in args])
    return done.value.code


def run(command: str, source, tmp_path, name: str, *flags) -> tuple[bytes, dict]:
    """One run with --cache tmp_path/cache: its output and its stats."""
    out, stats = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.stats.json"
    args = ["--backend", "counted", "--model", "m", "--cache", tmp_path / "cache"]
    code = vecap(command, source, *args, *flags, "-q", "-o", out, "--stats", stats)
    assert code == 0
    return out.read_bytes(), orjson.loads(stats.read_bytes())


def calls(cls: type[Counting]) -> tuple[int, int]:
    """(builds, items asked) since the last look."""
    seen = cls.builds, cls.items
    cls.builds = cls.items = 0
    return seen


@pytest.mark.parametrize(
    "command, cls, source", [("caption", Captioner, "pool"), ("rewrite", Chat, "vecs")]
)
def test_a_rerun_asks_the_model_nothing_and_writes_the_same(
    backends, command, cls, source, tmp_path, request
):
    source = request.getfixturevalue(source)
    first, stats = run(command, source, tmp_path, "first")
    assert calls(cls) == (1, N)
    assert stats["cache"] == {"miss": N}
    again, stats = run(command, source, tmp_path, "again")
    assert calls(cls) == (0, 0)  # never built: every answer was there
    assert again == first
    assert stats["cache"] == {"hit": N}
    assert (tmp_path / "cache" / FILE).is_file()


def test_a_resumed_run_asks_only_for_the_answers_it_never_got(backends, pool, tmp_path):
    whole, _ = run("caption", pool, tmp_path, "whole")
    (tmp_path / "cache" / FILE).unlink()
    calls(Captioner)
    Captioner.crash_on, Captioner.calls = 3, 0  # answers 1-6 paid for, then the run dies
    out = tmp_path / "shards"
    flags = ("--backend", "counted", "--model", "m", "--cache", tmp_path / "cache", "-q")
    sharded = (*flags, "-o", out / "%06d.jsonl", "--shard-size", "2", "--resume")
    assert vecap("caption", pool, *sharded) == 1
    assert calls(Captioner) == (1, 6)
    Captioner.crash_on = None
    stats = tmp_path / "resumed.stats.json"
    assert vecap("caption", pool, *sharded, "--stats", stats) == 0
    assert calls(Captioner) == (1, 1)  # the seventh: the only one never answered
    assert b"".join(p.read_bytes() for p in sorted(out.glob("*.jsonl"))) == whole
    cache = orjson.loads(stats.read_bytes())["cache"]
    assert cache.get("miss", 0) + cache.get("hit", 0) == N and cache.get("hit", 0) >= 1


def test_a_changed_prompt_or_model_is_asked_again(backends, pool, tmp_path):
    run("caption", pool, tmp_path, "first")
    calls(Captioner)
    _, stats = run("caption", pool, tmp_path, "prompt", "--prompt", "Say what you see.")
    assert calls(Captioner) == (1, N) and stats["cache"] == {"miss": N}
    _, stats = run("caption", pool, tmp_path, "tokens", "--max-new-tokens", "41")
    assert calls(Captioner) == (1, N) and stats["cache"] == {"miss": N}
    out = tmp_path / "other.jsonl"
    flags = ("--backend", "counted", "--model", "px", "--cache", tmp_path / "cache")
    assert vecap("caption", pool, *flags, "-q", "-o", out) == 0
    assert calls(Captioner) == (1, N)
    assert b" px wide" in out.read_bytes()  # the other model's answers, not m's


def test_a_changed_rewrite_prompt_is_asked_again(backends, vecs, tmp_path):
    run("rewrite", vecs, tmp_path, "first")
    calls(Chat)
    template = tmp_path / "prompt.txt"
    template.write_text("Fuse {alt} and {vec} into one caption.")
    _, stats = run("rewrite", vecs, tmp_path, "mine", "--prompt-file", template)
    assert calls(Chat) == (1, N) and stats["cache"] == {"miss": N}


@pytest.mark.parametrize(
    "command, cls, source", [("caption", Captioner, "pool"), ("rewrite", Chat, "vecs")]
)
def test_a_failed_request_is_not_kept(backends, command, cls, source, tmp_path, request):
    source = request.getfixturevalue(source)
    cls.fail = True
    _, stats = run(command, source, tmp_path, "down")
    assert stats["cache"] == {"miss": N}
    assert stats["rejected"] == {"caption-http-503": N} or stats["rewrite"] == {
        "fallback-http-503": N
    }
    cls.fail = False
    calls(cls)
    _, stats = run(command, source, tmp_path, "up")
    assert calls(cls) == (1, N) and stats["cache"] == {"miss": N}


def test_a_refused_answer_is_refused_again_when_served(backends, pool, tmp_path):
    store = Store(tmp_path / "cache", max_chars=1 << 20)
    run("caption", pool, tmp_path, "first")
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE answers SET answer = 'visit https://example.com now'")
    _, stats = run("caption", pool, tmp_path, "again")
    assert stats["cache"] == {"hit": N} and stats["rejected"] == {"caption-url": N}


@pytest.mark.parametrize(
    "damage, says",
    [
        (lambda d: d.write_text("not a directory"), "--cache"),
        (lambda d: (d.mkdir(), (d / FILE).write_bytes(b"garbage" * 1000)), "not a database"),
        (lambda d: (d.mkdir(), (d / FILE).mkdir()), "--cache"),
    ],
    ids=["dir-is-a-file", "damaged-file", "file-is-a-dir"],
)
def test_a_cache_that_cannot_be_used_is_one_line_before_any_record(
    backends, pool, tmp_path, capsys, damage, says
):
    damage(tmp_path / "cache")
    out = tmp_path / "out.jsonl"
    flags = ("--backend", "counted", "--model", "m", "--cache", tmp_path / "cache")
    assert vecap("caption", pool, *flags, "-o", out) == 1
    err = capsys.readouterr().err
    assert err.startswith("vecap caption: error: --cache") and says in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert calls(Captioner) == (0, 0)


def test_a_cache_locked_past_the_timeout_is_one_line(backends, vecs, tmp_path, capsys, monkeypatch):
    run("rewrite", vecs, tmp_path, "first")
    monkeypatch.setattr("vecap_cli.generate.cache.BUSY_TIMEOUT_S", 0.2)
    holder = sqlite3.connect(tmp_path / "cache" / FILE, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process's write that never ends
    try:
        flags = ("--backend", "counted", "--model", "m", "--cache", tmp_path / "cache")
        code = vecap("rewrite", vecs, *flags, "--max-new-tokens", "50", "-o", tmp_path / "o")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    err = capsys.readouterr().err
    assert (
        code == 1
        and err
        == f"vecap rewrite: error: --cache {tmp_path / 'cache' / FILE}: database is locked\n"
    )


def test_a_stored_answer_that_is_not_short_text_is_not_served(tmp_path):
    store = Store(tmp_path, max_chars=10)
    store.put({b"short": "a dog", b"long": "a dog " * 10})
    with sqlite3.connect(store.path) as db:
        db.execute("INSERT INTO answers VALUES (?, ?)", (b"blob", b"\x00\x01"))
    assert store.get([b"short", b"long", b"blob", b"none"]) == {b"short": "a dog"}


class Echo:
    def __init__(self):
        self.asked: list = []

    def generate(self, batch):
        self.asked.extend(batch)
        return [f"answer {item}" for item in batch]


def test_cached_asks_only_for_the_misses_in_batch_order(tmp_path):
    store = Store(tmp_path, max_chars=100)
    model = Echo()
    cached = Cached(model, store, ("rewrite", "x", "m", None, "", 8))
    assert cached.generate([1, 2]) == [Served("answer 1", False), Served("answer 2", False)]
    assert cached.generate([3, 2, 1]) == [
        Served("answer 3", False),
        Served("answer 2", True),
        Served("answer 1", True),
    ]
    assert model.asked == [1, 2, 3]
    other = Cached(model, store, ("rewrite", "x", "m", None, "", 9))  # another scope
    assert other.generate([1]) == [Served("answer 1", False)] and model.asked[-1] == 1


class Prompts:
    """A captioner that answers with the prompt each image came with."""

    def __init__(self):
        self.asked = []

    def prepare(self, data: bytes) -> str:
        return f"image {data.decode()}"

    def generate(self, batch: list) -> list[str]:
        self.asked.extend(batch)
        return [
            f"{item.item} seen with {item.prompt}" if isinstance(item, Prompted) else item
            for item in batch
        ]


def test_a_conditioned_answer_is_keyed_by_its_prompt_as_well_as_its_image(tmp_path):
    model = Prompts()
    cached = Cached(model, Store(tmp_path, max_chars=100), ("caption", "x", "m", None, "", 8))

    def ask(image: bytes, alt: str) -> Prompted:
        return Prompted(cached.prepare(image), f"ALT {alt}")  # as the caption stage wraps

    assert cached.generate([ask(b"A", "Paris"), ask(b"A", "Rome"), ask(b"B", "Paris")]) == [
        Served("image A seen with ALT Paris", False),
        Served("image A seen with ALT Rome", False),  # same image, other AltText: asked
        Served("image B seen with ALT Paris", False),
    ]
    assert cached.generate([ask(b"A", "Rome")]) == [Served("image A seen with ALT Rome", True)]
    assert model.asked == [Prompted("image A", "ALT Paris"), Prompted("image A", "ALT Rome"),
                           Prompted("image B", "ALT Paris")]  # fmt: skip
    assert cached.generate([cached.prepare(b"A")])[0].hit is False  # unconditioned: its own


def _hammer(directory: str, worker: int, rounds: int) -> None:
    store = Store(directory, max_chars=100)
    for r in range(rounds):
        # overlapping keys: both processes write the same ones at times
        batch = {f"{(r * 7 + worker * 3 + i) % 400}".encode(): f"a{worker}" for i in range(20)}
        store.put(batch)
        assert len(store.get(list(batch))) == len(batch)


def test_two_processes_share_one_cache_without_damage(tmp_path):
    Store(tmp_path, max_chars=100)  # created before, as a first run would
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_hammer, args=(str(tmp_path), w, 150)) for w in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0, 0]
    with sqlite3.connect(tmp_path / FILE) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT count(*) FROM answers").fetchone() == (400,)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def _forked(store: Store) -> None:
    store.put({b"child": "from the child"})
    assert store.get([b"parent"]) == {b"parent": "from the parent"}


def test_a_forked_worker_opens_its_own_connection_and_leaves_the_parents(tmp_path):
    store = Store(tmp_path, max_chars=100)
    store.put({b"parent": "from the parent"})  # the parent's connection is open
    child = multiprocessing.get_context("fork").Process(target=_forked, args=(store,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    store.put({b"after": "the parent again"})  # its connection still works
    assert store.get([b"child", b"after"]) == {
        b"child": "from the child",
        b"after": "the parent again",
    }
    with sqlite3.connect(tmp_path / FILE) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
