"""The one pool of worker processes that computes selective search for `train`, `test` and `detect`.

:class:`WorkerPool` runs a function over items in ``workers`` processes (0: in this process) and
yields the results in completion order, with at most ``in_flight_per_worker`` items per worker
submitted at a time, so a long input never sits in memory as futures. A worker that dies (a
decoder crash, the OOM killer) breaks a ``ProcessPoolExecutor`` and fails every item it held; the
pool hands those items to ``on_death`` and carries on with a new executor.

Workers die with their parent: each one asks the kernel for SIGKILL when its parent exits
(``PR_SET_PDEATHSIG`` on Linux; elsewhere a thread that watches the parent's pid), so a
``kill -9`` of `sppnet` leaves no worker behind, and with the workers gone the multiprocessing
resource tracker, which exits when the last process holding its pipe is gone, ends too.
"""
from __future__ import annotations

import ctypes
import itertools
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Generic, Iterable, Iterator, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

WORKER_DIED = ("a worker process died while this image was in flight (a decoder crash or out of "
               "memory; it may be another image of the same moment): rerun to retry")

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_PARENT_POLL_SECONDS = 1.0


def die_with_parent(parent: int) -> None:
    """Make this (worker) process end when process ``parent`` does; runs first in every worker.

    The kernel's parent-death signal is tied to the thread that started the worker: the pool
    starts its workers from the thread that submits, which lives as long as the pool is used.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    else:
        threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()
    if os.getppid() != parent:  # the parent died before the signal was asked for
        os._exit(1)


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(_PARENT_POLL_SECONDS)
    os._exit(1)


class WorkerPool(Generic[Item, Result]):
    """``function`` over items in ``workers`` processes, results in completion order.

    ``wait_seconds`` adds up the time the consumer spent waiting for the next result (inline:
    all of the work): with enough workers it stays near zero after the pool has started.
    """

    def __init__(self, workers: int, in_flight_per_worker: int = 2):
        self.workers = workers
        self.in_flight = max(1, in_flight_per_worker * workers)
        self.wait_seconds = 0.0

    def map_unordered(self, function: Callable[[Item], Result], items: Iterable[Item],
                      on_death: Callable[[Item, str], Result]) -> Iterator[tuple[Item, Result]]:
        """Yield ``(item, function(item))``, or ``(item, on_death(item, WORKER_DIED))`` for an item lost with its worker.

        ``function`` must be picklable (a module-level function or a ``functools.partial`` of
        one). An exception it raises is raised here. On an interruption (the consumer stops,
        Ctrl-C) only the items being worked on are waited for, not the queue.
        """
        if self.workers <= 0:
            return self._inline(function, items)
        return self._pooled(function, iter(items), on_death)

    def _inline(self, function: Callable[[Item], Result], items: Iterable[Item]) -> Iterator[tuple[Item, Result]]:
        for item in items:
            start = time.perf_counter()
            result = function(item)
            self.wait_seconds += time.perf_counter() - start
            yield item, result

    def _pooled(self, function: Callable[[Item], Result], items: Iterator[Item],
                on_death: Callable[[Item, str], Result]) -> Iterator[tuple[Item, Result]]:
        pool = self._new_executor()
        pending: dict[Future, Item] = {}
        end = object()
        try:
            while True:
                item = end
                try:
                    while len(pending) < self.in_flight and (item := next(items, end)) is not end:
                        pending[pool.submit(function, item)] = item
                except BrokenProcessPool:
                    # a worker died since the last wait: this item waits for the next executor
                    items = itertools.chain([item], items)
                    if not pending:
                        pool = self._replace(pool)
                        continue
                if not pending:
                    return
                start = time.perf_counter()
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                self.wait_seconds += time.perf_counter() - start
                results = [self._result(future, pending.pop(future), on_death) for future in done]
                if any(died for _, _, died in results):
                    # a dead worker breaks the executor and fails every item it held: collect them
                    # all (they are failing now), then a new executor serves the rest
                    rest, _ = wait(pending)
                    results += [self._result(future, pending.pop(future), on_death) for future in rest]
                    pool = self._replace(pool)
                yield from ((item, result) for item, result, _ in results)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _replace(self, pool: ProcessPoolExecutor) -> ProcessPoolExecutor:
        pool.shutdown(wait=False)
        return self._new_executor()

    def _new_executor(self) -> ProcessPoolExecutor:
        # spawn, not fork: OpenCV's thread pool state does not survive fork (opencv/opencv#5150)
        return ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=die_with_parent, initargs=(os.getpid(),))

    @staticmethod
    def _result(future: Future, item: Item, on_death: Callable[[Item, str], Result]) -> tuple[Item, Result, bool]:
        try:
            return item, future.result(), False
        except BrokenProcessPool:
            return item, on_death(item, WORKER_DIED), True
