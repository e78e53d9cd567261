"""Bounded concurrency: one thread runs the model, one job at a time; a few more may wait.

``submit`` refuses a job when ``max_queue`` jobs are already waiting (:class:`QueueFull`, the
server's 503 with ``Retry-After``). A job has ``timeout_s`` seconds from submission to finish;
after that its caller gets :class:`RequestTimeout` and the job is cancelled: dropped if it is still
waiting, or stopped at its next :meth:`Job.check` (the engine calls it after every ODE step and
every new token) if it is running, so a timed-out request never keeps the model busy.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


class QueueFull(Exception):
    """More jobs are waiting than the queue allows."""


class RequestTimeout(Exception):
    """A job did not finish within its time limit."""


class Cancelled(Exception):
    """Raised inside a running job whose caller gave up on it."""


class Job:
    def __init__(self, work: Callable[["Job"], Any], timeout_s: float):
        self.work = work
        self.future: Future = Future()
        self.deadline = time.monotonic() + timeout_s
        self.timeout_s = timeout_s
        self.cancelled = threading.Event()
        self.steps_done, self.steps_total = 0, 0

    def check(self) -> None:
        """Stop the job here if its caller gave up on it."""
        if self.cancelled.is_set():
            raise Cancelled()

    def progress(self, done: int, total: int) -> None:
        """The engine's progress callback: record the step, and stop here if cancelled."""
        self.steps_done, self.steps_total = done, total
        self.check()

    def result(self, poll: Callable[["Job"], None] | None = None) -> Any:
        """Wait for the result in a plain thread (``poll`` is called about ten times a second)."""
        while True:
            left = self.deadline - time.monotonic()
            if left <= 0:
                self.cancel()
                raise RequestTimeout(f"the request did not finish within {self.timeout_s:g} s")
            try:
                return self.future.result(timeout=min(left, 0.1))
            except TimeoutError:
                if poll is not None:
                    poll(self)

    async def wait(self) -> Any:
        """Wait for the result in the event loop."""
        wrapped = asyncio.wrap_future(self.future)
        try:
            done, _ = await asyncio.wait({wrapped}, timeout=max(0.0, self.deadline - time.monotonic()))
        except asyncio.CancelledError:  # the client went away: free the model too
            self.cancel()
            wrapped.cancel()
            raise
        if not done:
            self.cancel()
            # Nobody will read the job's late end (Cancelled): drop it here, or the loop logs
            # "exception was never retrieved" whenever the garbage collector happens to run.
            wrapped.cancel()
            raise RequestTimeout(f"the request did not finish within {self.timeout_s:g} s")
        return wrapped.result()

    def cancel(self) -> None:
        self.cancelled.set()


class ModelWorker:
    def __init__(self, max_queue: int, timeout_s: float):
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self._waiting: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._running: Job | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="janusflow-model", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        with self._cond:
            return sum(not job.cancelled.is_set() for job in self._waiting)

    @property
    def busy(self) -> bool:
        return self._running is not None

    def submit(self, work: Callable[[Job], Any], timeout_s: float | None = None) -> Job:
        """Queue ``work(job)``; raises :class:`QueueFull` when ``max_queue`` jobs already wait."""
        job = Job(work, self.timeout_s if timeout_s is None else timeout_s)
        with self._cond:
            live = [j for j in self._waiting if not j.cancelled.is_set()]
            self._waiting = collections.deque(live)
            if self._closed:
                raise QueueFull("the server is shutting down")
            if len(live) >= self.max_queue:
                raise QueueFull(f"{len(live)} requests are already waiting for the model")
            self._waiting.append(job)
            self._cond.notify()
        return job

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for job in self._waiting:
                job.cancel()
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if self._closed and not self._waiting:
                    return
                job = self._waiting.popleft()
            if job.cancelled.is_set() or not job.future.set_running_or_notify_cancel():
                continue
            self._running = job
            try:
                job.future.set_result(job.work(job))
            except BaseException as e:  # handed to the waiting request, which maps it to a response
                job.future.set_exception(e)
            finally:
                self._running = None
