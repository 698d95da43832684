"""The worker pool: answers in job order whatever each job takes, and what a
worker keeps from one `map` is there for the next."""

import os
import time

import pytest

from vecap_cli.stream.pool import Pool


def slow_square(job: int) -> tuple[int, int]:
    time.sleep(0.02 if job % 3 == 0 else 0)  # uneven: later jobs finish first
    return job * job, os.getpid()


def test_answers_come_in_job_order_from_every_worker():
    with Pool(3, slow_square) as pool:
        answers = list(pool.map(range(20)))
    assert [square for square, _ in answers] == [n * n for n in range(20)]
    assert len({pid for _, pid in answers}) == 3 and os.getpid() not in {p for _, p in answers}


class Keeper:
    """Keeps each job's value in the worker that got it; a second map asks for it."""

    def __init__(self):
        self.kept = {}

    def __call__(self, job):
        kind, seq = job
        if kind == "keep":
            self.kept[seq] = seq * 10
            return None
        return self.kept.pop(seq)


def test_a_second_map_reaches_the_worker_that_kept_the_job():
    with Pool(2, Keeper()) as pool:
        list(pool.map(("keep", seq) for seq in range(7)))
        assert list(pool.map(("give", seq) for seq in range(7))) == [n * 10 for n in range(7)]


@pytest.mark.timeout(30)
def test_an_error_stops_the_map_where_it_happened():
    def fail_at_5(job):
        if job == 5:
            raise ValueError("five")
        return job

    got = []
    with pytest.raises(ValueError, match="five"), Pool(2, fail_at_5) as pool:
        for answer in pool.map(range(100)):
            got.append(answer)
    assert got == [0, 1, 2, 3, 4]
