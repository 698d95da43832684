"""`--cache DIR`: answers already paid for are not asked for again.

One SQLite file, DIR/answers.sqlite3, maps a key to a model's answer. The key
is a sha256 of what decides the answer: the command, backend, model (and
pretrained), prompt and --max-new-tokens (the `scope`), and the input itself:
the image bytes' digest for caption (taken in the decode workers, by
`Cached.prepare`) and, for caption --condition-on, the record's own prompt (its
AltText), the exact conversation sent for rewrite (its prompt template is in it).
A sampled answer (--n, --temperature) is keyed by its temperature (in the scope)
and its seed too: the seed of draw i of a record derives from (--seed, key, i),
so each of a record's K draws has a key of its own, and a rerun replays all K.
Only answers are stored, never a `Failed` request;
validation runs on every answer, cached or not, so a refused one is refused
again, the same way.

WAL mode and a busy timeout let the ranks and processes of one machine share
a cache; a network file system that does not lock is not supported (SQLite's
own caveat). A cache that cannot be opened, read or written (damaged,
read-only, locked past the timeout) stops the run with one line: it is never
silently bypassed, since a run that should cost nothing would then pay for
every answer.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import orjson

from vecap_cli.errors import VecapError
from vecap_cli.generate.base import Prompted

FILE = "answers.sqlite3"
BUSY_TIMEOUT_S = 60.0  # another process committing a batch holds the lock for milliseconds
_INHERITED: list[sqlite3.Connection] = []  # see Store._connect
_CHUNK = 500  # keys per SELECT: below SQLite's oldest limit of 999 parameters


@dataclass(frozen=True, slots=True)
class Keyed:
    """A prepared input with the digest of the bytes it came from (caption)."""

    digest: bytes
    item: object


@dataclass(frozen=True, slots=True)
class Served:
    """A model's answer (or Failed), and whether the cache served it."""

    answer: object  # str | Failed
    hit: bool


def served(out) -> tuple[object, str | None]:
    """`out` unwrapped, and where it came from: "hit", "miss", or None (no cache)."""
    if isinstance(out, Served):
        return out.answer, "hit" if out.hit else "miss"
    return out, None


class Store:
    """The answers of DIR/answers.sqlite3, one connection per process."""

    def __init__(self, directory: str | os.PathLike, max_chars: int):
        self.path = Path(directory) / FILE
        self.max_chars = max_chars  # a longer stored answer is not read (not one we wrote)
        self._pid: int | None = None
        self._conn: sqlite3.Connection | None = None
        try:
            Path(directory).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise VecapError(f"--cache {directory}: {err.strerror or err}") from None
        self._connect()  # now: a damaged or read-only cache fails before any record is read

    def _fail(self, err: sqlite3.Error) -> VecapError:
        return VecapError(f"--cache {self.path}: {err}")

    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        if self._conn is not None:
            # Forked: the parent's connection is not this process's to use, nor to
            # close (closing runs SQLite's cleanup on the parent's locks and WAL):
            # it is kept, untouched, and this process opens its own.
            _INHERITED.append(self._conn)
        try:
            conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL: a crash loses answers, not the file
            conn.execute(
                "CREATE TABLE IF NOT EXISTS answers (key BLOB PRIMARY KEY, answer TEXT NOT NULL)"
                " WITHOUT ROWID"
            )
            conn.execute("SELECT count(*) FROM (SELECT 1 FROM answers LIMIT 1)").fetchone()
        except sqlite3.Error as err:
            raise self._fail(err) from None
        self._conn, self._pid = conn, os.getpid()
        return conn

    def get(self, keys: list[bytes]) -> dict[bytes, str]:
        conn, found = self._connect(), {}
        try:
            for at in range(0, len(keys), _CHUNK):
                chunk = keys[at : at + _CHUNK]
                rows = conn.execute(
                    f"SELECT key, answer FROM answers WHERE key IN ({','.join('?' * len(chunk))})"
                    " AND typeof(answer) = 'text' AND length(answer) <= ?",
                    (*chunk, self.max_chars),
                )
                found.update(rows)
        except sqlite3.Error as err:
            raise self._fail(err) from None
        return found

    def put(self, answers: dict[bytes, str]) -> None:
        if not answers:
            return
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT OR REPLACE INTO answers VALUES (?, ?)", answers.items())
            conn.execute("COMMIT")
        except sqlite3.Error as err:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise self._fail(err) from None


def _content(item) -> bytes:
    """What decides the answer besides the scope: the image's digest, the prompt
    of a `Prompted` one with it (its AltText), the conversation of a chat."""
    if isinstance(item, Prompted):
        return orjson.dumps(item.prompt) + _content(item.item)
    return item.digest if isinstance(item, Keyed) else orjson.dumps(item)


def _bare(item):
    """The model's input, without the digest the key was made of."""
    if isinstance(item, Prompted):
        return Prompted(_bare(item.item), item.prompt)
    return item.item if isinstance(item, Keyed) else item


class Cached:
    """A backend (generate.load.Lazy) behind a Store: `generate(batch)` asks the
    backend only for the answers the store lacks (none: the model never loads),
    stores the new ones, and returns each as `Served`, in batch order."""

    def __init__(self, model, store: Store, scope: tuple):
        self.model, self.store = model, store
        self.scope = orjson.dumps(scope)
        if hasattr(model, "prepare"):  # a captioner: the image's digest, in the decode worker
            self.prepare = self._prepare

    def _prepare(self, data: bytes) -> Keyed:
        return Keyed(hashlib.sha256(data).digest(), self.model.prepare(data))

    def _key(self, item, seed: int | None = None) -> bytes:
        content = _content(item)
        if seed is not None:
            content += b"\0seed=%d" % seed
        return hashlib.sha256(self.scope + b"\0" + content).digest()

    def generate(self, batch: list, seeds: list[int] | None = None) -> list[Served]:
        keys = [
            self._key(item, None if seeds is None else seeds[i]) for i, item in enumerate(batch)
        ]
        found = self.store.get(keys)
        todo = [i for i, key in enumerate(keys) if key not in found]
        asked = [_bare(batch[i]) for i in todo]
        if not asked:
            fresh = []
        elif seeds is None:
            fresh = self.model.generate(asked)
        else:
            fresh = self.model.generate(asked, seeds=[seeds[i] for i in todo])
        answers = dict(zip(todo, fresh, strict=True))
        self.store.put({keys[i]: a for i, a in answers.items() if isinstance(a, str)})
        return [
            Served(answers[i], False) if i in answers else Served(found[key], True)
            for i, key in enumerate(keys)
        ]
