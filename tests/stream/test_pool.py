"""The worker pool: answers in job order whatever each job takes, and what a
worker keeps from one `map` is there for the next."""

import os
import time

import pytest

from vecap_cli.stream.pool import Pool


def slow_square(job: int, data) -> tuple[tuple[int, int], bytes]:
    time.sleep(0.02 if job % 3 == 0 else 0)  # uneven: later jobs finish first
    return (job * job, os.getpid()), bytes(data) * 2


def test_answers_come_in_job_order_from_every_worker():
    """With their bytes: through shared memory, or the pipe when too big for it."""
    jobs = [(n, b"%d," % n * (1 if n % 4 else 300)) for n in range(20)]
    with Pool(3, slow_square, slot=1000) as pool:
        answers = [(answer, bytes(data)) for answer, data in pool.map(jobs)]
    assert [(square, data) for (square, _), data in answers] == [
        (n * n, data * 2) for n, data in jobs
    ]
    pids = {pid for (_, pid), _ in answers}
    assert len(pids) == 3 and os.getpid() not in pids


class Keeper:
    """Keeps each job's value in the worker that got it; a second map asks for it."""

    def __init__(self):
        self.kept = {}

    def __call__(self, job, data):
        kind, seq = job
        if kind == "keep":
            self.kept[seq] = seq * 10
            return None, None
        return self.kept.pop(seq), None


def test_a_second_map_reaches_the_worker_that_kept_the_job():
    with Pool(2, Keeper()) as pool:
        list(pool.map((("keep", seq), None) for seq in range(7)))
        given = [answer for answer, _ in pool.map((("give", seq), None) for seq in range(7))]
    assert given == [n * 10 for n in range(7)]


@pytest.mark.timeout(30)
def test_an_error_stops_the_map_where_it_happened():
    def fail_at_5(job, data):
        if job == 5:
            raise ValueError("five")
        return job, None

    got = []
    with pytest.raises(ValueError, match="five"), Pool(2, fail_at_5) as pool:
        for answer, _ in pool.map((n, None) for n in range(100)):
            got.append(answer)
    assert got == [0, 1, 2, 3, 4]
