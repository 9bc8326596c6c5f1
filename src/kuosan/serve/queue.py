"""Jobs run one at a time per model, from a bounded queue, taking turns between clients.

Each model has a :class:`ModelQueue`: a worker thread and at most ``capacity`` waiting jobs (``per_client`` of
them from one client). A job that does not fit is refused at once (:class:`QueueFull`). The next job is the
first waiting one of the client served longest ago (round robin), so a client with many jobs waiting does not
hold back one with a single job. A job cancelled while waiting leaves the queue; one cancelled while running
stops at its next sampler step (its ``report`` raises :class:`Cancelled`).
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

from kuosan.errors import KuosanError

__all__ = ["QueueFull", "Cancelled", "Job", "ModelQueue", "Queues"]


class QueueFull(KuosanError):
    """The model's queue (or this client's share of it) is full: try again in a moment."""


class Cancelled(Exception):
    """The job's client went away (or asked to stop)."""


_ids = itertools.count(1)


@dataclass(eq=False)
class Job:
    work: Callable                         # work(job) -> result, run on the model's worker thread
    client: str = ""                       # who asked: turns are taken between clients
    emit: Callable = lambda event: None    # called with each event dict (from the worker thread)
    seq: int = field(default_factory=lambda: next(_ids))
    cancelled: threading.Event = field(default_factory=threading.Event)
    state: str = "new"                     # new | waiting | running | done | failed | cancelled
    result: object = None                  # what work returned
    error: str | None = None               # the one-line reason it failed
    finished: threading.Event = field(default_factory=threading.Event)
    timings: dict = field(default_factory=dict)  # submitted, started, finished (time.monotonic())
    owner: object = None                   # the ModelQueue it was submitted to

    def check(self) -> None:
        """Raise :class:`Cancelled` if the job was cancelled (work calls this between steps)."""
        if self.cancelled.is_set():
            raise Cancelled()

    def cancel(self) -> None:
        """Stop the job: out of its queue if it waits, at its next step if it runs."""
        if self.owner is not None:
            self.owner.cancel(self)
        else:
            self.cancelled.set()

    def place(self) -> int:
        return self.owner.place(self) if self.owner is not None else 0


class ModelQueue:
    """One model's worker thread and its bounded, round-robin queue."""

    def __init__(self, name: str, capacity: int = 16, per_client: int = 4):
        self.name, self.capacity, self.per_client = name, capacity, per_client
        self._waiting: list[Job] = []
        self._served: dict[str, float] = {}  # client -> when its last job started
        self._running: Job | None = None
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=f"kuosan-serve-{name}", daemon=True)
        self._thread.start()

    # -- the order -------------------------------------------------------------------------------------
    def _order(self) -> list[Job]:
        """Waiting jobs in the order they will run: clients by when they were last served (never: first),
        then their first jobs, then their second ones, …"""
        by_client: dict[str, list[Job]] = {}
        for job in self._waiting:
            by_client.setdefault(job.client, []).append(job)
        clients = sorted(by_client, key=lambda c: (self._served.get(c, -1.0), by_client[c][0].seq))
        rounds = itertools.zip_longest(*(by_client[c] for c in clients))
        return [job for r in rounds for job in r if job is not None]

    def place(self, job: Job) -> int:
        """0 while running (or finished), else its place among the waiting jobs (1 = next)."""
        with self._cond:
            if job.state != "waiting":
                return 0
            order = self._order()
            return order.index(job) + 1 if job in order else 0

    def waiting(self) -> int:
        with self._cond:
            return len(self._waiting)

    # -- in and out ----------------------------------------------------------------------------------
    def submit(self, job: Job) -> int:
        """Queue ``job``; its place (1 = next). A full queue raises :class:`QueueFull` at once."""
        with self._cond:
            if self._closed:
                raise QueueFull("the server is shutting down")
            if len(self._waiting) >= self.capacity:
                raise QueueFull(f"the queue of model {self.name} is full ({self.capacity} requests waiting); "
                                "try again in a moment")
            mine = sum(j.client == job.client for j in self._waiting)
            if mine >= self.per_client:
                raise QueueFull(f"you already have {mine} requests waiting for model {self.name}; wait for one "
                                "to finish")
            job.state, job.timings["submitted"], job.owner = "waiting", time.monotonic(), self
            self._waiting.append(job)
            self._cond.notify_all()
            return self._order().index(job) + 1

    def cancel(self, job: Job) -> None:
        """Stop ``job``: out of the queue if it waits, at its next step if it runs."""
        job.cancelled.set()
        with self._cond:
            if job in self._waiting:
                self._waiting.remove(job)
                self._finish(job, "cancelled")

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for job in self._waiting:
                job.cancelled.set()
                self._finish(job, "cancelled")
            self._waiting.clear()
            if self._running is not None:
                self._running.cancelled.set()
            self._cond.notify_all()

    def _finish(self, job: Job, state: str, error: str | None = None) -> None:
        job.state, job.error, job.timings["finished"] = state, error, time.monotonic()
        job.finished.set()
        event = {"type": state, **({"message": error} if error else {}), **({"result": job.result} if state == "done"
                                                                            else {})}
        try:
            job.emit(event)
        except Exception:  # noqa: BLE001 - a client that went away must not stop the worker
            pass

    # -- the worker ----------------------------------------------------------------------------------
    def _next(self) -> Job | None:
        with self._cond:
            while not self._waiting and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            job = self._order()[0]
            self._waiting.remove(job)
            self._served[job.client] = time.monotonic()
            job.state, job.timings["started"], self._running = "running", time.monotonic(), job
            return job

    def _work(self) -> None:
        while (job := self._next()) is not None:
            try:
                job.check()
                job.result = job.work(job)
                state, error = "done", None
            except Cancelled:
                state, error = "cancelled", None
            except KuosanError as e:
                state, error = "failed", str(e)
            except Exception as e:  # noqa: BLE001 - a bug: one line to the page, the traceback to the log
                traceback.print_exc(file=sys.stderr)
                state, error = "failed", f"internal error ({type(e).__name__}: {e}); see the server's log"
            with self._cond:
                self._running = None
                self._finish(job, state, error)


class Queues:
    """A :class:`ModelQueue` per model name, made on first use."""

    def __init__(self, capacity: int = 16, per_client: int = 4):
        self.capacity, self.per_client = capacity, per_client
        self._queues: dict[str, ModelQueue] = {}
        self._lock = threading.Lock()

    def __getitem__(self, name: str) -> ModelQueue:
        with self._lock:
            if name not in self._queues:
                self._queues[name] = ModelQueue(name, self.capacity, self.per_client)
            return self._queues[name]

    def close(self) -> None:
        with self._lock:
            for q in self._queues.values():
                q.close()
