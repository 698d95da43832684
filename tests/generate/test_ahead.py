import random
import threading
import time

import pytest

from vecap_cli.generate.ahead import map_ahead


def test_results_come_back_in_input_order_whatever_finishes_first():
    rng = random.Random(0)
    delays = [rng.random() / 200 for _ in range(200)]

    def work(i):
        time.sleep(delays[i])
        return i * i

    assert list(map_ahead(work, range(200), workers=4, ahead=16)) == [
        (i, i * i) for i in range(200)
    ]


def test_a_failing_item_comes_back_as_its_exception_and_the_rest_go_on():
    def work(i):
        if i % 3 == 0:
            raise ValueError(f"bad {i}")
        return i

    out = list(map_ahead(work, range(9), workers=2, ahead=4))
    assert [i for i, _ in out] == list(range(9))
    assert [str(r) for i, r in out if i % 3 == 0] == ["bad 0", "bad 3", "bad 6"]
    assert [r for i, r in out if i % 3] == [1, 2, 4, 5, 7, 8]


@pytest.mark.parametrize("workers", [0, 3])
def test_no_more_than_ahead_items_are_taken_before_the_consumer_asks(workers):
    taken = []

    def source():
        for i in range(100):
            taken.append(i)
            yield i

    stream = map_ahead(lambda i: i, source(), workers=workers, ahead=8)
    for n, _ in enumerate(stream):
        assert len(taken) <= n + 8
        if n == 20:
            break
    stream.close()


def test_work_overlaps_the_consumer():
    started = threading.Event()

    def work(i):
        if i == 5:
            started.set()
        return i

    stream = map_ahead(work, range(10), workers=2, ahead=8)
    next(stream)  # the consumer holds item 0; items up to 7 are already being worked on
    assert started.wait(5)
    stream.close()
