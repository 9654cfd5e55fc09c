"""hardmix.worker.Worker: one job at a time, its errors handed to wait(), and
a thread that ends when closed."""

import threading
import time

import pytest

from hardmix.worker import Worker


def test_jobs_run_in_order_on_one_other_thread_and_wait_returns_after_each():
    w, seen = Worker(), []
    for k in range(50):
        started = w.submit(lambda k=k: seen.append((k, threading.get_ident())))
        assert started == (k == 0)
        w.wait()
        assert len(seen) == k + 1  # (done when wait() returns)
    assert [k for k, _ in seen] == list(range(50))
    assert len({t for _, t in seen}) == 1 and seen[0][1] != threading.get_ident()
    w.wait()  # (nothing submitted: returns at once)
    w.close()


def test_an_error_of_a_job_comes_from_wait_once_and_the_worker_goes_on():
    w = Worker()
    w.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        w.wait()
    w.wait()  # (raised once)
    out = []
    w.submit(lambda: out.append(1))
    w.wait()
    assert out == [1] and not w.busy
    w.close()


def test_close_ends_the_thread_and_a_later_job_starts_a_new_one():
    w = Worker()
    w.submit(lambda: None)
    w.wait()
    first = w._thread
    w.close()
    first.join(timeout=10)
    assert not first.is_alive()
    assert w.submit(lambda: None)  # a new thread
    w.wait()
    assert w._thread is not first
    w.close()


def test_close_while_a_job_runs_lets_it_finish_and_wait_returns_it():
    w, gate, out = Worker(), threading.Event(), []

    def job():
        gate.wait(timeout=10)
        out.append(1)

    w.submit(job)
    first = w._thread
    w.close()  # (the job is in flight)
    gate.set()
    w.wait()
    assert out == [1] and not w.busy
    first.join(timeout=10)
    assert not first.is_alive()
    assert w.submit(lambda: out.append(2))  # a new thread, which the close did not end
    w.wait()
    assert out == [1, 2]
    w.close(join=True)
    assert w._thread is None


@pytest.mark.parametrize("closed_first", [False, True])
def test_at_exit_every_thread_ends_after_its_job(closed_first):
    """The exit hook ends every worker's thread and joins it once the job in
    flight is done, also a thread that was closed (not joined) before."""
    from hardmix.worker import _join_all

    w, out = Worker(), []

    def job():
        time.sleep(0.2)
        out.append(1)

    w.submit(job)
    thread = w._thread
    if closed_first:
        w.close()
    _join_all()
    assert out == [1] and not thread.is_alive()
    w.wait()  # (the job's outcome is still handed to wait())
    assert not w.busy
