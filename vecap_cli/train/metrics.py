"""What a run shows and keeps: a live line on a terminal, log lines otherwise,
and metrics as JSONL (`--log FILE`), one object per step and per validation."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

import orjson

from vecap_cli.errors import VecapError
from vecap_cli.stream.sinks import NamedStream


class MetricsLog:
    """JSONL metrics. A resumed run keeps the lines up to its checkpoint's step."""

    def __init__(self, path: str | None, resume_step: int | None = None):
        self._f = None
        if path is None:
            return
        kept = b""
        if resume_step is not None:
            try:
                with open(path, "rb") as f:
                    kept = b"".join(
                        line for line in f if orjson.loads(line).get("step", 0) <= resume_step
                    )
            except FileNotFoundError:
                pass
            except (orjson.JSONDecodeError, AttributeError):
                raise VecapError(f"--log: cannot resume: '{path}' is damaged") from None
        try:
            raw = open(path, "wb")
        except OSError as err:
            raise VecapError(f"--log: cannot write '{path}': {err.strerror}") from None
        self._f = NamedStream(raw, path)  # a full disk: one line naming the file
        self._f.write(kept)

    def write(self, record: dict) -> None:
        if self._f is not None:
            self._f.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()


def describe(step: int, total: int, m: dict) -> str:
    """'step 120/400 · epoch 1 · loss 2.314 · lr 4.1e-04 · 812 samples/s · ETA 0:03:10'"""
    eta = ""
    if m.get("steps_per_s"):
        eta = f" · ETA {timedelta(seconds=round((total - step) / m['steps_per_s']))}"
    return (
        f"step {step:,}/{total:,} · epoch {m['epoch']} · loss {m['loss']:.4f}"
        f" · lr {m['lr']:.2e} · {m['samples_per_s']:,.0f} samples/s{eta}"
    )


@contextmanager
def progress(
    total: int, start: int, log: Callable[[str], None], every: int, enabled: bool
) -> Iterator[Callable[[int, dict], None]]:
    """Yields `update(step, metrics)`: a rich bar on a terminal, else a log line every `every` steps."""
    if not enabled:
        yield lambda step, m: None
        return
    if not sys.stderr.isatty():

        def line(step: int, m: dict) -> None:
            if step % every == 0 or step == total:
                log(describe(step, total, m))

        yield line
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,}"),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = bar.add_task("train", total=total, completed=start, info="")
    with bar:

        def update(step: int, m: dict) -> None:
            info = (
                f"epoch {m['epoch']} · loss {m['loss']:.4f} · lr {m['lr']:.2e}"
                f" · {m['samples_per_s']:,.0f} samples/s"
            )
            bar.update(task, completed=step, info=info)

        yield update


class Rate:
    """Steps per second over the last few steps (data waits included)."""

    def __init__(self, window: int = 20):
        self._times: list[float] = [time.perf_counter()]
        self._window = window

    def tick(self) -> float:
        self._times.append(time.perf_counter())
        self._times = self._times[-(self._window + 1) :]
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0
