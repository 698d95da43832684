"""Worker processes that answer jobs in the order the jobs came.

`Pool(n, handle)` forks n workers that run `handle(job, data)`: what the parent
built before (a stage, a matcher, counts) comes with them copy-on-write, never
pickled. `pool.map(jobs)` sends job i to worker i % n and yields the answers in
job order, keeping at most DEPTH jobs on each worker; a second `map` with the
same numbering reaches the same workers, which is how a worker finds again
what it kept from a job of the first.

A job and its answer are each a small object and `data`, bytes (or None): the
bytes go through memory the parent shares with the worker (its `_Shelf`), not
through the pipe, which would copy them four times and pickle them; bytes too
big for a slot go through the pipe.

A failure is one line, never a hang: a job that raises re-raises its exception
here (a VecapError as it is, with its message); a worker that dies (killed,
out of memory) is a VecapError saying how. Workers ignore SIGINT, so Ctrl-C
reaches the parent alone, which ends them; they end with the parent, too (their
jobs pipe closes, and Linux sends them SIGKILL).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import mmap
import os
import pickle
import queue
import signal
import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from multiprocessing import get_context
from multiprocessing.connection import Connection, wait
from typing import Any

from vecap_cli.errors import VecapError

DEPTH = 2  # jobs sent ahead to each worker: one to work on, one waiting
PIPE_BYTES = 1 << 20
_PR_SET_PDEATHSIG = 1


Data = bytes | memoryview | None
Handle = Callable[[Any, Data], tuple[Any, Data]]


class Pool:
    """`slot`: the bytes of a job's or an answer's data that go through shared memory."""

    def __init__(self, n: int, handle: Handle, slot: int = 1 << 21):
        context = get_context("fork")
        # a child would write the parent's buffered bytes a second time
        sys.stdout.flush()
        sys.stderr.flush()
        self._workers: list[_Worker] = []
        try:
            for _ in range(n):
                jobs_out, jobs_in = _widened(context.Pipe(duplex=False))
                answers_out, answers_in = _widened(context.Pipe(duplex=False))
                # the ends this worker must not hold: its parent's, and the others'
                foreign = [jobs_in, answers_out, *(end for w in self._workers for end in w.ends)]
                shelf = _Shelf(slot)
                process = context.Process(
                    target=_serve,
                    args=(jobs_out, answers_in, shelf, handle, foreign, os.getpid()),
                    daemon=True,  # ended, not waited for, should the parent exit early
                )
                process.start()
                jobs_out.close()
                answers_in.close()
                self._workers.append(_Worker(process, jobs_in, answers_out, shelf))
        except BaseException:
            self.close(ok=False)
            raise

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, kind, value, tb) -> None:
        self.close(ok=kind is None)

    def map(self, jobs: Iterable[tuple[Any, Data]]) -> Iterator[tuple[Any, Data]]:
        """The answer to each (job, data), in job order; job i goes to worker i % n.
        An answer's data lives until the next answer is asked for.

        Jobs are drawn on a thread of their own (`_Feed`): an input that stalls (a
        pipe waiting for its writer) holds back no answer to the jobs it gave."""
        n = len(self._workers)
        waiting: deque[_Worker] = deque()  # the worker of each job not yet answered
        sent = 0
        with _Feed(jobs, ahead=DEPTH * n) as feed:
            while waiting or not feed.done:
                room = len(waiting) < DEPTH * n
                if waiting and waiting[0].answers:
                    yield waiting.popleft().answer()
                elif room and (job := feed.take()) is not None:
                    worker = self._workers[sent % n]
                    worker.send(*job)
                    waiting.append(worker)
                    sent += 1
                elif not feed.done or waiting:
                    self._wait(feed if room and not feed.done else None)
        if feed.error is not None:  # the input's, once all it gave is answered
            raise feed.error

    def each(self, job: Any) -> None:
        """Send `job` to every worker (settings for the jobs that follow it)."""
        for _ in self.map([(job, None)] * len(self._workers)):
            pass

    def _wait(self, feed: _Feed | None) -> None:
        """Until an answer comes (any worker's: one blocked on writing its answer
        would stop working), or a job from `feed`."""
        ends: list = [w.answers_out for w in self._workers if not w.done]
        for end in wait([*ends, feed.ready] if feed is not None else ends):
            if isinstance(end, Connection):
                next(w for w in self._workers if w.answers_out is end).receive()

    def close(self, ok: bool) -> None:
        """End the workers: after their last job (`ok`), or at once (SIGKILL)."""
        for worker in self._workers:
            worker.jobs_in.close()  # a worker reading its jobs sees their end
            if not ok:
                worker.process.kill()
        for worker in self._workers:
            worker.process.join()
            worker.answers_out.close()
        self._workers = []


class _Worker:
    """The parent's side of one worker: its process, both pipes and its shelf."""

    def __init__(self, process, jobs_in: Connection, answers_out: Connection, shelf: _Shelf):
        self.process, self.jobs_in, self.answers_out = process, jobs_in, answers_out
        self.shelf = shelf
        self.sent = self.answered = 0  # its jobs: their slots on the shelf
        self.answers: deque = deque()  # received, not yet taken
        self.done = False  # its answers pipe has ended

    @property
    def ends(self) -> tuple[Connection, Connection]:
        return self.jobs_in, self.answers_out

    def send(self, job: Any, data: Data) -> None:
        try:
            self.jobs_in.send((job, *self.shelf.put(self.sent, JOB, data)))
        except (BrokenPipeError, ConnectionResetError):
            raise self._died() from None
        self.sent += 1

    def receive(self) -> None:
        try:
            self.answers.append(self.answers_out.recv())
        except EOFError:
            self.done = True
            raise self._died() from None

    def answer(self) -> tuple[Any, Data]:
        """The next answer and its data, or its exception raised (a VecapError as it
        is: one line)."""
        ok, value, size, inline = self.answers.popleft()
        data = self.shelf.get(self.answered, ANSWER, size, inline)
        self.answered += 1
        if ok:
            return value, data
        error, remote = value
        if isinstance(error, VecapError):
            raise error
        raise error from _RemoteTraceback(remote)

    def _died(self) -> VecapError:
        self.process.join(timeout=5)
        code = self.process.exitcode
        if code is not None and code < 0:
            how = f"killed by {signal.Signals(-code).name}"
            if -code == signal.SIGKILL:
                how += ": out of memory?"
        else:
            how = f"exit status {code}"
        return VecapError(f"a worker process died ({how}); the run stops here")


class _Feed:
    """Draws jobs from an iterable on a thread of its own, at most `ahead` of those
    taken; `ready` (a pipe's end) reads while one (or the end) waits to be taken."""

    _END = object()

    def __init__(self, jobs: Iterable[Any], ahead: int):
        self._queue: queue.Queue = queue.Queue(ahead)
        self.ready, self._signal = os.pipe()  # the thread alone writes (and closes) _signal
        self._stop = threading.Event()
        self.done = False  # the last job is taken, or drawing failed
        self.error: BaseException | None = None  # how it failed
        threading.Thread(target=self._draw, args=(jobs,), daemon=True).start()

    def __enter__(self) -> _Feed:
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()  # a thread waiting for room stops; one reading the input, when it returns
        os.close(self.ready)

    def take(self) -> Any:
        """The next job, or None: none yet, or none to come (`done`)."""
        if self.done:
            return None
        try:
            ok, job = self._queue.get_nowait()
        except queue.Empty:
            return None
        os.read(self.ready, 1)
        if ok and job is not self._END:
            return job
        self.done = True
        self.error = None if ok else job
        return None

    def _draw(self, jobs: Iterable[Any]) -> None:
        try:
            for job in jobs:
                if not self._put((True, job)):
                    return
            self._put((True, self._END))
        except BaseException as err:  # the input's error, raised where jobs are taken
            self._put((False, err))
        finally:
            os.close(self._signal)

    def _put(self, item: tuple[bool, Any]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
            except queue.Full:
                continue
            with contextlib.suppress(OSError):  # no one reads any more
                os.write(self._signal, b".")
            return True
        return False


def _widened(ends: tuple[Connection, Connection]) -> tuple[Connection, Connection]:
    """A pipe of 1 MiB (Linux's most for a user), not 64 KiB, for what does not go
    on the shelf (a batch of tar samples, pickled): a worker's thread reading a job
    waits for its turn on the GIL between chunks, and each chunk kept the parent
    waiting."""
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(ends[0].fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    return ends


JOB, ANSWER = 0, 1


class _Shelf:
    """Memory one worker shares with the parent: for the k-th job, a slot for its
    data and one for its answer's. DEPTH slots of each suffice, as a worker's job k
    is sent once the answer to its job k - DEPTH has been taken."""

    def __init__(self, slot: int):
        self.slot = slot
        self.memory = mmap.mmap(-1, 2 * DEPTH * slot)  # anonymous, shared with the fork

    def put(self, k: int, kind: int, data: Data) -> tuple[int | None, Data]:
        """(size, None) when `data` is on the shelf, (None, data) when it must go
        through the pipe (None, or too big)."""
        if data is None or len(data) > self.slot:
            return None, data
        at = self._at(k, kind)
        self.memory[at : at + len(data)] = data
        return len(data), None

    def get(self, k: int, kind: int, size: int | None, inline: Data) -> Data:
        if size is None:
            return inline
        at = self._at(k, kind)
        return memoryview(self.memory)[at : at + size]

    def _at(self, k: int, kind: int) -> int:
        return ((k % DEPTH) * 2 + kind) * self.slot


class _RemoteTraceback(Exception):
    """A worker's traceback, shown under the exception it raised."""

    def __init__(self, text: str):
        super().__init__(text)

    def __str__(self) -> str:
        return f"\n\nin the worker process:\n{self.args[0]}"


def _serve(
    jobs_out: Connection,
    answers_in: Connection,
    shelf: _Shelf,
    handle: Handle,
    foreign: list[Connection],
    parent: int,
) -> None:
    """A worker's life: answer each job until the parent closes the jobs pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for end in foreign:
        end.close()
    _die_with(parent)
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    # Jobs are read on a thread of their own: while this one waits to write a big
    # answer, the parent may be writing the next job, and neither would read.
    threading.Thread(target=_receive, args=(jobs_out, inbox), daemon=True).start()
    k = 0
    while (message := inbox.get()) is not None:
        job, size, inline = message
        try:
            value, data = handle(job, shelf.get(k, JOB, size, inline))
            answer = (True, value, *shelf.put(k, ANSWER, data))
        except BaseException as err:  # any failure goes to the parent
            answer = (False, _portable(err), None, None)
        k += 1
        try:
            answers_in.send(answer)
        except OSError:
            return  # the parent has gone
        except Exception as err:  # an answer that cannot be pickled
            answers_in.send((False, _portable(err), None, None))


def _receive(jobs_out: Connection, inbox: queue.SimpleQueue) -> None:
    with contextlib.suppress(EOFError, OSError):
        while True:
            inbox.put(jobs_out.recv())
    inbox.put(None)


def _die_with(parent: int) -> None:
    """Ask Linux for SIGKILL when the parent dies mid-job (its jobs pipe closing
    is only seen between jobs); elsewhere, that pipe alone ends the worker."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the request
        os._exit(1)


def _portable(err: BaseException) -> tuple[BaseException, str]:
    """The exception, as it can cross to the parent, and its traceback's text."""
    text = "".join(traceback.format_exception(err))
    try:
        pickle.loads(pickle.dumps(err))
    except Exception:  # its type or arguments do not pickle
        err = RuntimeError(f"{type(err).__name__}: {err}")
    return err, text
