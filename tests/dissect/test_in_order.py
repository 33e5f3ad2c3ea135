"""in_order: batches tallied on worker threads come back in order, a bounded number at once."""

import threading
import time

import pytest

from dissectjax.dissect.driver import in_order, tallies_in_flight


@pytest.mark.parametrize("in_flight", [1, 2, 3])
def test_results_come_back_in_order_with_a_bounded_number_running(in_flight):
    running, most = 0, 0
    lock = threading.Lock()

    def work(x):
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.002 * (x % 3))  # later items often finish first
        with lock:
            running -= 1
        return x * x

    drawn = []

    def items():
        for x in range(20):
            drawn.append(threading.get_ident())
            yield x

    got = list(in_order(work, items(), in_flight))
    assert got == [(x, x * x) for x in range(20)]
    assert most <= in_flight and (in_flight == 1 or most > 1)
    assert set(drawn) == {threading.get_ident()}  # items are drawn on the calling thread


def test_an_error_in_a_worker_reaches_the_caller():
    def work(x):
        if x == 3:
            raise ValueError("bad batch")
        return x

    with pytest.raises(ValueError, match="bad batch"):
        list(in_order(work, iter(range(10)), 2))


def test_only_the_sparse_tally_on_one_cpu_device_runs_batches_at_once():
    assert tallies_in_flight("dense", 1) == tallies_in_flight("segment", 1) == 1
    assert tallies_in_flight("sparse", 1) >= 2  # the tests run on the CPU backend
    assert tallies_in_flight("sparse", 2) == 1  # collectives dispatched from two threads can deadlock
