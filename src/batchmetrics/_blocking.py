"""An executor on daemon threads, for the blocking file calls of sinks and exports.

The loop's default executor is joined when ``asyncio.run`` ends, and any
``ThreadPoolExecutor`` when the interpreter exits: a call stuck on a hung disk
or on a FIFO nobody reads would keep the process alive for ever, long after the
batch gave up on it at its ``shutdown_timeout``. A daemon thread does not. A
call that outlives its event loop ends unheard (asyncio drops the result of a
future whose loop has closed).
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, ParamSpec, TypeVar

_P = ParamSpec("_P")
_T = TypeVar("_T")

#: Seconds an idle thread waits for work before it ends.
_IDLE_EXIT = 30.0


class DaemonExecutor(Executor):
    """Daemon threads, started as calls need them (up to ``max_workers``), ending when idle.

    The cap is high: a thread stuck on a dead disk is never given back, and healthy
    calls must still find threads. Safe across ``fork``: the child starts afresh.
    """

    def __init__(self, max_workers: int, name: str) -> None:
        self._max = max_workers
        self._name = name
        self._reset()
        if hasattr(os, "register_at_fork"):  # a forked child has none of these threads
            os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]]] = \
            queue.SimpleQueue()
        self._idle = threading.Semaphore(0)  # a token per thread waiting for work
        self._lock = threading.Lock()
        self._threads = 0

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args,
               **kwargs: _P.kwargs) -> Future[_T]:
        future: Future[_T] = Future()
        self._jobs.put((future, lambda: fn(*args, **kwargs)))
        if not self._idle.acquire(blocking=False):  # no thread waiting: start one
            with self._lock:
                if self._threads < self._max:
                    self._threads += 1
                    threading.Thread(target=self._work, name=f"{self._name}-{self._threads}",
                                     daemon=True).start()
        return future

    def _work(self) -> None:
        jobs, idle = self._jobs, self._idle  # this generation's (see _reset)
        while True:
            try:
                future, call = jobs.get(timeout=_IDLE_EXIT)
            except queue.Empty:
                if idle.acquire(blocking=False):  # its token unclaimed: nobody counts on it
                    with self._lock:
                        self._threads -= 1
                    return
                continue  # a submitter took its token: that job is on its way
            if future.set_running_or_notify_cancel():
                try:
                    result = call()
                except BaseException as exc:  # handed to the caller, as an executor does
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            del future, call  # hold nothing while idle
            idle.release()


#: Blocking file calls of sinks, exports and the summary file.
FILE_EXECUTOR = DaemonExecutor(64, "batchmetrics-files")
