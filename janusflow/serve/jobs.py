"""Requests on the model: queue a job on the :class:`~janusflow.serve.worker.ModelWorker`, wait for
it, and turn what can go wrong into a :class:`~janusflow.serve.schemas.ServeError` (the routes'
refusals): a full queue, a timeout, a cancelled job, or input the model refuses."""

from __future__ import annotations

from ..errors import JanusFlowError
from .schemas import ServeError
from .worker import Cancelled, Job, ModelWorker, QueueFull, RequestTimeout


def submit(worker: ModelWorker, work) -> Job:
    """Queue ``work(job)``; a full queue is a 503 (``queue_full``)."""
    try:
        return worker.submit(work)
    except QueueFull as e:
        raise ServeError(503, None, f"the server is busy ({e}); retry later", code="queue_full") from None


def job_error(e: BaseException, field: str | None) -> ServeError | None:
    """The refusal for a job's failure; None for an unexpected one (a bug, reported as a 500)."""
    if isinstance(e, ServeError):
        return e
    if isinstance(e, RequestTimeout):
        return ServeError(503, None, str(e), code="timeout")
    if isinstance(e, Cancelled):
        return ServeError(503, None, "the request was cancelled", code="cancelled")
    if isinstance(e, JanusFlowError):
        return ServeError(422, field, str(e), code="invalid_value")
    return None


async def run_on_model(worker: ModelWorker, work, field: str | None):
    """Queue ``work(job)`` on the model and wait; queue and timeout failures become 503s, input errors 422."""
    job = submit(worker, work)
    try:
        return await job.wait()
    except (RequestTimeout, Cancelled, JanusFlowError) as e:
        raise job_error(e, field) from None


class CancelCheck:
    """A token streamer that only stops a cancelled job (``generate`` calls ``put`` for every token)."""

    def __init__(self, job, inner=None):
        self.job, self.inner = job, inner

    def put(self, value):
        self.job.check()
        if self.inner is not None:
            self.inner.put(value)

    def end(self):
        if self.inner is not None:
            self.inner.end()
