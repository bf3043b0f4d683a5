"""Everything this project knows about RQ's internals, in one module: where RQ keeps a queue and a
job in Redis, the function name every job of ours carries, how a submit's RQ writes are recorded
without being sent, and how our workers sit on RQ's ``SimpleWorker`` (the queue class that takes
requests, the job class that runs them, the hooks a worker in a thread replaces, RQ's "Job OK" log
lines). Upgrading RQ means reading this module against RQ's source; nothing else touches RQ's
private parts (the rest of the project uses ``Queue``/``SimpleWorker`` only through these).

Both sides use it: the API records a submit's RQ writes here; the workers take, run and log jobs
here. It imports nothing of the project, so the request scripts and stores can import it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import redis
from rq import Queue, SimpleWorker
from rq.exceptions import DequeueTimeout
from rq.job import Job
from rq.timeouts import TimerDeathPenalty
from rq.utils import now as rq_now

logger = logging.getLogger(__name__)

# --- where RQ keeps things (the Lua scripts push to and remove from these keys directly) ---------

QUEUE_KEY_PREFIX: str = Queue.redis_queue_namespace_prefix  # "rq:queue:": the list of a queue's job ids
JOB_KEY_PREFIX: str = Job.redis_job_namespace_prefix  # "rq:job:": a job's hash (function, arguments, state)

# The function RQ stores in every job of ours, with the request id as its one argument. It is the
# job's historical import path and stays exactly this: the jobs already in Redis carry it, and so
# must the jobs a new API enqueues while workers of an earlier version still serve the queues (a
# rolling upgrade), since those import it. Our workers never import it: ``request_job_class``
# resolves it to the process's own ``TaskRunner``.
TASK_FUNCTION = "worker.tasks.run_request"


def queue_key(queue_name: str) -> str:
    """RQ's list of the job ids waiting in ``queue_name`` (the job id of a request is its id)."""
    return QUEUE_KEY_PREFIX + queue_name


def job_key(request_id: str) -> str:
    """RQ's hash of the job that carries ``request_id``."""
    return JOB_KEY_PREFIX + request_id


# --- the API's side: a submit's RQ writes, recorded ---------------------------------------------

Command = tuple[tuple[Any, ...], dict[str, Any]]


def record_enqueue(
    recorder: redis.client.Pipeline,
    connection: redis.Redis,
    queue_name: str,
    request_id: str,
    *,
    timeout_s: int,
    failure_ttl_s: int,
) -> None:
    """Queue RQ's own writes for the job that carries ``request_id`` on ``recorder``, a MULTI pipeline
    that is never executed (RQ has no async API: ``recorded_commands`` reads the writes back, for the
    API to send from the event loop). RQ sends nothing on ``connection`` but its one-time server
    version probe (cached on the connection)."""
    Queue(queue_name, connection=connection).enqueue_call(
        TASK_FUNCTION,
        args=(request_id,),
        job_id=request_id,
        timeout=timeout_s,
        result_ttl=0,
        failure_ttl=failure_ttl_s,
        description=f"bitdance request {request_id}",
        pipeline=recorder,
    )


def recorded_commands(recorder: redis.client.Pipeline) -> list[Command]:
    """The commands queued on a pipeline, in order (redis-py's ``command_stack``), unsent."""
    return [(tuple(args), dict(options)) for args, options in recorder.command_stack]


def push_index(commands: list[Command], queue_name: str) -> int:
    """Where RQ's push of the job id is among the commands (its reply is the queue's new length)."""
    list_key = queue_key(queue_name)
    for index, (args, _) in enumerate(commands):
        if str(args[0]).upper() in ("RPUSH", "LPUSH") and args[1] == list_key:
            return index
    raise RuntimeError(f"RQ did not push to {list_key}")


# --- the workers' side ----------------------------------------------------------------------------


def idle_worker_count(connection: redis.Redis) -> int:
    """Workers (slots included) registered with RQ whose loop is listening for a request (state "idle")."""
    return sum(1 for worker in SimpleWorker.all(connection=connection) if worker.get_state() == "idle")


class RequestTaker(Protocol):
    """Takes a request id off the first non-empty RQ list, noting it as taken (``WorkerRequestStore``)."""

    def dequeue(self, queue_keys: list[str]) -> tuple[str, str] | None: ...


class QueueWaiter(Protocol):
    """Wakes idle dequeuers when a request is submitted (``worker.wakeup.QueueWakeup``)."""

    @property
    def heard(self) -> int: ...

    def wait_after(self, seen: int, timeout_s: float) -> None: ...

    def pass_on(self) -> None: ...


LOST_OUTCOME = "lost"  # a run's outcome when another run holds its request now (``worker.tasks``)


class RequestRunner(Protocol):
    """Runs one request to its recorded outcome (``worker.tasks.TaskRunner``)."""

    last_outcome: tuple[str, str] | None  # (request id, outcome) of the last run

    def run(self, request_id: str) -> str: ...


def tracked_queue_class(
    taker: RequestTaker, wakeup: QueueWaiter, stopping: Callable[[], bool] = lambda: False
) -> type[Queue]:
    """RQ's ``Queue`` whose dequeue goes through ``taker.dequeue`` (RQ's own pops leave no trace; a
    blocking pop cannot also note what it took), waiting for ``wakeup`` while the queues are empty.

    A request found by looking rather than announced (requeued by the recovery sweep, or left from a
    burst) is passed on: one more idle dequeuer looks, so a backlog nobody announced is taken by every
    idle dequeuer in turn, not one per recheck. Once ``stopping()`` (a slot asked to stop), the dequeue
    ends with nothing."""

    class TrackedQueue(Queue):
        @classmethod
        def lpop(cls, queue_keys: Sequence[str], timeout: int | None, connection: Any = None) -> Any:
            """RQ's contract: (list key, job id); None when empty and ``timeout`` is None, else waits up
            to ``timeout`` seconds (woken by submits) and raises ``DequeueTimeout``."""
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                if stopping():
                    return None  # RQ's dequeue loop ends on None
                seen = wakeup.heard  # before looking: a submit heard after this wakes the wait below
                taken = taker.dequeue(list(queue_keys))
                if taken is not None and wakeup.heard == seen:
                    wakeup.pass_on()
                if taken is not None or deadline is None:
                    return taken
                left_s = deadline - time.monotonic()
                if left_s <= 0:
                    raise DequeueTimeout(timeout, queue_keys)
                wakeup.wait_after(seen, left_s)

        @classmethod
        def lmove(cls, connection: Any, queue_key: str, timeout: int | None) -> Any:
            return cls.lpop([queue_key], timeout, connection)

    return TrackedQueue


class NotARequestJobError(Exception):
    """A job on our queues that does not carry ``TASK_FUNCTION``: never imported, never run."""


def request_job_class(runner: RequestRunner) -> type[Job]:
    """RQ's ``Job`` whose function is ``runner.run``, for every job that carries ``TASK_FUNCTION``
    (those enqueued before this class existed included). RQ would import the name stored in the job
    hash; this worker's runner is bound here instead (no module global), and a job naming anything
    else fails without importing it."""

    class RequestJob(Job):
        @property
        def func(self) -> Any:
            if self.func_name != TASK_FUNCTION:
                raise NotARequestJobError(f"job {self.id} calls {self.func_name!r}, not {TASK_FUNCTION!r}")
            return runner.run

    return RequestJob


class OutcomeLogFilter(logging.Filter):
    """RQ logs "Job OK" (and "Successfully completed") for every job function that returns, and ours
    return for cancelled and failed requests too: those lines name the request's real outcome instead.
    """

    def __init__(self, runner: RequestRunner) -> None:
        super().__init__()
        self.runner = runner

    def filter(self, record: logging.LogRecord) -> bool:
        last = self.runner.last_outcome
        if last is None or last[1] == "ok":
            return True
        request_id, outcome = last
        message = record.getMessage()
        if request_id in message and ("Job OK" in message or "Successfully completed" in message):
            message = message.replace("Job OK", f"Job ended: {outcome}")
            record.msg, record.args = message.replace("Successfully completed", f"Ended ({outcome})"), ()
        return True


class RequestWorker(SimpleWorker):
    """RQ's in-process worker (no fork: CUDA state survives) as ours run: requests taken through
    ``tracked_queue_class``, jobs run by ``runner`` (``request_job_class``), RQ's outcome lines
    naming each request's real outcome while it works."""

    def __init__(
        self, queues: Any, runner: RequestRunner, taker: RequestTaker, wakeup: QueueWaiter, **kwargs: Any
    ) -> None:
        kwargs.setdefault("queue_class", tracked_queue_class(taker, wakeup, self.dequeue_stopping))
        kwargs.setdefault("job_class", request_job_class(runner))
        super().__init__(queues, **kwargs)
        self.runner = runner

    def dequeue_stopping(self) -> bool:
        """Whether a dequeue should end with nothing now (a slot asked to stop; RQ stops a lone worker itself)."""
        return False

    def handle_job_success(self, job: Job, queue: Queue, started_job_registry: Any, execution: Any) -> None:
        """RQ's bookkeeping of a job that returned; for a run that lost its request (stalled past its
        lease, requeued and taken by another worker: outcome ``lost``), only this worker's: the job's
        hash now belongs to the run that holds the request, and deleting it (RQ's cleanup, result TTL 0)
        would fail that worker's own end of the job."""
        if self.runner.last_outcome == (job.id, LOST_OUTCOME):
            with self.connection.pipeline() as pipeline:
                self.cleanup_execution(job, pipeline=pipeline, execution=execution)
                pipeline.execute()
            return
        super().handle_job_success(job, queue, started_job_registry, execution)

    def work(self, *args: Any, **kwargs: Any) -> bool:
        outcome_lines = OutcomeLogFilter(self.runner)
        self.log.addFilter(outcome_lines)
        try:
            return bool(super().work(*args, **kwargs))
        finally:
            self.log.removeFilter(outcome_lines)


# An idle slot's RQ loop comes round this often (a stop wakes it at once: ``SlotPool.request_stop``).
SLOT_IDLE_POLL_S = 30
# A slot's own RQ heartbeat (its worker key's TTL, 480 s) is sent at most this often: the process's
# heartbeat thread keeps every slot visible to /health, and RQ sent three round trips per loop, twice
# per request (a third of the Redis commands of an idle 320-slot worker).
SLOT_RQ_HEARTBEAT_S = 60.0
SLOT_RESTART_S = 1.0  # a slot whose loop ended on an error starts it again this much later


class SlotWorker(RequestWorker):
    """A ``RequestWorker`` in a thread of its own, one of several in a process (``worker.slots``):
    the process's main thread owns the signals, and the pool stops each slot."""

    death_penalty_class = TimerDeathPenalty  # RQ's default job timeout uses SIGALRM: main thread only

    def dequeue_stopping(self) -> bool:
        return bool(self._stop_requested)

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        """RQ's heartbeat inside RQ's own pipelines (a job's start, a job's end) as RQ sends it; alone (each
        round of the work loop), at most every ``SLOT_RQ_HEARTBEAT_S`` and in one round trip."""
        if pipeline is not None or timeout is not None:
            super().heartbeat(timeout, pipeline)
            return
        last = self.last_heartbeat
        if last is not None and (rq_now() - last).total_seconds() < SLOT_RQ_HEARTBEAT_S:
            return
        with self.connection.pipeline() as batch:
            super().heartbeat(None, batch)
            batch.execute()

    def set_state(self, state: str, pipeline: Any = None) -> None:
        """RQ's state write, skipped when the slot is already in ``state`` (RQ writes "idle" again at each dequeue)."""
        if pipeline is None and state == self.get_state():
            return
        super().set_state(state, pipeline)

    def _install_signal_handlers(self) -> None:
        """Nothing: the pool's main thread handles the signals for every slot."""

    def subscribe(self) -> None:
        """No per-slot pub/sub connection for RQ's remote commands: the pool is stopped by signals."""

    def unsubscribe(self) -> None:
        pass

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        """RQ's dequeue, returning ``None`` (so the work loop ends) once the pool asked this slot to stop."""
        while not self._stop_requested:
            result = super().dequeue_job_and_maintain_ttl(timeout, max_idle_time=SLOT_IDLE_POLL_S)
            if result is not None:
                return result
        return None

    def request_slot_stop(self) -> None:
        """Finish the current request, then leave the work loop (RQ's own warm-shutdown flag)."""
        self._stop_requested = True

    def serve(self, logging_level: str) -> None:
        """The slot thread's body: work until stopped. RQ's loop ends on a Redis error (a command refused or
        lost): raised from its start, logged and "quitting" from its loop. Either ends this slot's loop only,
        and the slot starts it again ``SLOT_RESTART_S`` later: the process's heartbeat announces every slot,
        so a slot that stayed down would be counted by /health yet never serve (issue 21: 215 of 320)."""
        while True:
            try:
                self.work(logging_level=logging_level)
            except Exception:
                logger.exception("slot %s stopped on an error", self.name)
            if self._stop_requested:
                return
            logger.warning("slot %s: its work loop ended; starting it again in %.0f s", self.name, SLOT_RESTART_S)
            time.sleep(SLOT_RESTART_S)
            try:
                self.register_death()  # RQ refuses to start a worker whose name is registered and alive
            except redis.RedisError:
                logger.warning("slot %s: could not clear its registration; starting anyway", self.name)
