"""Worker processes that answer jobs in the order the jobs came.

`Pool(n, handle)` forks n workers that run `handle(job)`: what the parent built
before (a stage, a matcher, counts) comes with them copy-on-write, never
pickled. `pool.map(jobs)` sends job i to worker i % n and yields the answers in
job order, keeping at most DEPTH jobs on each worker; a second `map` with the
same numbering reaches the same workers, which is how a worker finds again
what it kept from a job of the first.

A failure is one line, never a hang: a job that raises re-raises its exception
here (a VecapError as it is, with its message); a worker that dies (killed,
out of memory) is a VecapError saying how. Workers ignore SIGINT, so Ctrl-C
reaches the parent alone, which ends them; they end with the parent, too (their
jobs pipe closes, and Linux sends them SIGKILL).
"""

from __future__ import annotations

import contextlib
import ctypes
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
_PR_SET_PDEATHSIG = 1


class Pool:
    def __init__(self, n: int, handle: Callable[[Any], Any]):
        context = get_context("fork")
        # a child would write the parent's buffered bytes a second time
        sys.stdout.flush()
        sys.stderr.flush()
        self._workers: list[_Worker] = []
        try:
            for _ in range(n):
                jobs_out, jobs_in = context.Pipe(duplex=False)
                answers_out, answers_in = context.Pipe(duplex=False)
                # the ends this worker must not hold: its parent's, and the others'
                foreign = [jobs_in, answers_out, *(end for w in self._workers for end in w.ends)]
                process = context.Process(
                    target=_serve,
                    args=(jobs_out, answers_in, handle, foreign, os.getpid()),
                    daemon=True,  # ended, not waited for, should the parent exit early
                )
                process.start()
                jobs_out.close()
                answers_in.close()
                self._workers.append(_Worker(process, jobs_in, answers_out))
        except BaseException:
            self.close(ok=False)
            raise

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, kind, value, tb) -> None:
        self.close(ok=kind is None)

    def map(self, jobs: Iterable[Any]) -> Iterator[Any]:
        """The answer to each job, in job order; job i goes to worker i % n.

        Jobs are drawn on a thread of their own (`_Feed`): an input that stalls (a
        pipe waiting for its writer) holds back no answer to the jobs it gave."""
        n = len(self._workers)
        waiting: deque[_Worker] = deque()  # the worker of each job not yet answered
        sent = 0
        with _Feed(jobs, ahead=DEPTH * n) as feed:
            while waiting or not feed.ended:
                room = len(waiting) < DEPTH * n
                if waiting and waiting[0].answers:
                    yield _unpack(waiting.popleft().answers.popleft())
                elif room and feed.has_job():
                    worker = self._workers[sent % n]
                    worker.send(feed.take())
                    waiting.append(worker)
                    sent += 1
                else:
                    self._wait(feed if room else None)

    def each(self, job: Any) -> None:
        """Send `job` to every worker (settings for the jobs that follow it)."""
        for _ in self.map([job] * len(self._workers)):
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
    """The parent's side of one worker: its process and both pipes."""

    def __init__(self, process, jobs_in: Connection, answers_out: Connection):
        self.process, self.jobs_in, self.answers_out = process, jobs_in, answers_out
        self.answers: deque = deque()
        self.done = False  # its answers pipe has ended

    @property
    def ends(self) -> tuple[Connection, Connection]:
        return self.jobs_in, self.answers_out

    def send(self, job: Any) -> None:
        try:
            self.jobs_in.send(job)
        except (BrokenPipeError, ConnectionResetError):
            raise self._died() from None

    def receive(self) -> None:
        try:
            self.answers.append(self.answers_out.recv())
        except EOFError:
            self.done = True
            raise self._died() from None

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
    taken; `ready` (a pipe's end) reads while a job (or the end) waits."""

    _END = object()

    def __init__(self, jobs: Iterable[Any], ahead: int):
        self._queue: queue.Queue = queue.Queue(ahead)
        self.ready, self._signal = os.pipe()  # the thread alone writes (and closes) _signal
        self._stop = threading.Event()
        self._next: tuple[bool, Any] | None = None
        self.ended = False
        threading.Thread(target=self._draw, args=(jobs,), daemon=True).start()

    def __enter__(self) -> _Feed:
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()  # a thread waiting for room stops; one reading the input, when it returns
        os.close(self.ready)

    def has_job(self) -> bool:
        """Whether a job is there to take; raises what drawing it raised."""
        if self._next is None:
            try:
                self._next = self._queue.get_nowait()
            except queue.Empty:
                return False
            os.read(self.ready, 1)
        ok, job = self._next
        if not ok:
            raise job
        if job is self._END:
            self.ended = True
            return False
        return True

    def take(self) -> Any:
        assert self._next is not None
        job, self._next = self._next[1], None
        return job

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


def _unpack(answer: tuple[bool, Any]) -> Any:
    """A worker's answer, or its exception raised (a VecapError as it is: one line)."""
    ok, value = answer
    if ok:
        return value
    error, remote = value
    if isinstance(error, VecapError):
        raise error
    raise error from _RemoteTraceback(remote)


class _RemoteTraceback(Exception):
    """A worker's traceback, shown under the exception it raised."""

    def __init__(self, text: str):
        super().__init__(text)

    def __str__(self) -> str:
        return f"\n\nin the worker process:\n{self.args[0]}"


def _serve(
    jobs_out: Connection,
    answers_in: Connection,
    handle: Callable[[Any], Any],
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
    while (job := inbox.get()) is not None:
        try:
            answer = (True, handle(job))
        except BaseException as err:  # any failure goes to the parent
            answer = (False, _portable(err))
        try:
            answers_in.send(answer)
        except OSError:
            return  # the parent has gone
        except Exception as err:  # an answer that cannot be pickled
            answers_in.send((False, _portable(err)))


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
