"""One background thread that runs a sampler's engine work between its calls.

:class:`Worker` runs one job at a time, handed over by :meth:`Worker.submit`;
:meth:`Worker.wait` returns once the job is done and raises what it raised.
The sampler submits the engine's work (apply the updates the next batch
needs, then draw that batch) as one of its calls returns, and waits at the
start of every call, so the two threads never touch the sampler's state at
once: the worker runs only between the sampler's calls, while the training
thread runs the user's code. The ops release the GIL, so the engine's step
runs beside Python on the training thread. The engine's work runs in the
order the calling thread would run it, so results are the same bit for bit.

The thread starts at the first job and ends when the worker is closed (the
owner arranges that with ``weakref.finalize``, so the thread ends when the
owner is collected). At interpreter exit every worker's thread is joined
after its job: a (daemon) thread still in an op as the interpreter ends
would abort the process. A copy (pickle, deepcopy) is a new, idle worker.
"""

from __future__ import annotations

import atexit
import queue
import threading
import time
import weakref
from typing import Callable

_THREADS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # each thread started -> its job queue


@atexit.register
def _join_all() -> None:
    """Ends every worker's thread (also one closed whose job still runs) and
    waits for each to finish its job (at exit only: a join from a garbage
    collection could wait on a lock the collecting thread holds; the thread
    is idle then anyway, since a job holds its owner)."""
    for t, jobs in list(_THREADS.items()):
        jobs.put(None)  # (a thread ends at its first None: one put by close() before is as good)
        if t is not threading.current_thread():
            t.join()


class Worker:
    """A single background thread running one job at a time (see the module docstring)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue | None = None  # the running thread's jobs (None: no thread)
        self._done: queue.SimpleQueue = queue.SimpleQueue()  # each finished job's exception, or None
        self._busy = False
        self._thread: threading.Thread | None = None
        self.job_seconds = 0.0  # the CPU time of the last job (this thread's: not its waits for the GIL)
        self.waited_seconds = 0.0  # how long the last wait() blocked for it

    @property
    def busy(self) -> bool:
        """Whether a job was submitted and :meth:`wait` has not returned since."""
        return self._busy

    def submit(self, job: Callable[[], None]) -> bool:
        """Runs ``job()`` on the thread; True if that started the thread (the
        owner then arranges for :meth:`close`). The previous job must have
        been waited for."""
        if self._busy:  # pragma: no cover - an invariant of the owner, not user input
            raise RuntimeError("Worker.submit: the previous job was not waited for")
        started = self._thread is None or not self._thread.is_alive()
        if started:
            self._jobs = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._run, args=(self._jobs,), name="hardmix-worker",
                                            daemon=True)
            self._thread.start()
            _THREADS[self._thread] = self._jobs
        self._busy = True
        self._jobs.put(job)  # (C-level queues: handing a job over costs one wake-up, little Python)
        return started

    def wait(self) -> None:
        """Returns when the submitted job is done (at once if there is none),
        raising its exception if it raised."""
        if not self._busy:
            return
        start = time.perf_counter()
        error = self._done.get()
        self._busy = False
        self.waited_seconds = time.perf_counter() - start
        if error is not None:
            raise error

    def close(self, join: bool = False) -> None:
        """Ends the thread once its job is done (a later submit starts a new
        one); with ``join``, returns when it has ended. Safe from a finalizer."""
        thread, jobs = self._thread, self._jobs
        self._thread = self._jobs = None
        if jobs is not None:
            jobs.put(None)  # (behind a job in flight: that one still runs, and wait() gets it)
        if join and thread is not None and thread is not threading.current_thread():
            thread.join()

    def __getstate__(self) -> dict:
        return {}  # (a copy starts with no thread and no job: the owner waits before it is copied)

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def _run(self, jobs: queue.SimpleQueue) -> None:
        while True:
            job = jobs.get()
            if job is None:
                return
            start = time.thread_time()
            try:
                job()
            except BaseException as e:  # noqa: BLE001 - handed to the caller of wait()
                error = e
            else:
                error = None
            job = None  # (holds the owner: let it be collected while idle)
            self.job_seconds = time.thread_time() - start
            self._done.put(error)
