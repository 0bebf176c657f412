"""Group commit for durable file writes: writer threads that take every pending job at once.

A job is two callables run in a writer thread: ``work`` writes its file, fsyncs it, links it where it
belongs and returns the directories whose entries it changed; ``after`` (optional) tidies up once those
directories are durable (a Maildir's tmp/ name). A writer thread takes every job pending when it becomes
free (a batch), runs each ``work`` in turn, fsyncs each directory the batch touched once, runs the
``after`` of each job whose work succeeded, and hands the whole batch back to the event loop in one
callback.

Why not ``asyncio.to_thread`` per message, as before: every message then cost a thread hand-off each way,
its own fsync of ``new/``, and a fight for the GIL between the event loop and six pool threads (strace saw
about 70 futex calls per message). Measured with smtp-source, 20 clients, 2 KB messages, one connection
each (bench/README.md, maildir_rate): 399-441 msg/s at 2.5-2.7 ms of server CPU per message with the
pool; 585-633 msg/s at 1.75-1.85 ms with one writer thread in groups. Two writer threads measured slower
than one on this machine (more GIL hand-offs), so one is the default; on a disk where each fsync takes
milliseconds (spinning disks, network storage) more writers let the file system merge their fsyncs.

Invariants:
- A job's future completes only after its ``work`` returned and every directory it named was fsynced, or
  with the exception that stopped it (its own, or the directory's fsync error).
- Jobs run in the order they were submitted within a batch; each job's ``work`` runs exactly once.
- ``after`` runs only for jobs whose ``work`` succeeded, after the batch's directory fsyncs (even when
  one of those failed: it tidies, it does not commit).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable, Iterable

from smtp_tarpit.handoff import Waiter, hand_back

log = logging.getLogger("smtp_tarpit.delivery")

Work = Callable[[], Iterable[str]]
IDLE_EXIT = 30.0  # seconds: an idle writer thread ends (a reload's new deliverer starts its own)


class _Job(Waiter):
    __slots__ = ("after", "work", "worked")

    def __init__(self, work: Work, after: Callable[[], None] | None) -> None:
        super().__init__()
        self.work, self.after = work, after
        self.worked = False


class Committer:
    """Up to ``threads`` writer threads working through jobs in batches: started when jobs come, ended
    after ``IDLE_EXIT`` seconds without one (so a deliverer replaced by a reload leaves no thread)."""

    def __init__(self, threads: int = 1, name: str = "writer") -> None:
        self._jobs: list[_Job] = []
        self._wake = threading.Condition()
        self._closing = False
        self._size, self._name = threads, name
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads waiting for a job

    async def run(self, work: Work, after: Callable[[], None] | None = None) -> None:
        """Run ``work`` in a writer thread; return once it and its directories are durable."""
        job = _Job(work, after)
        with self._wake:
            if self._closing:
                raise RuntimeError("the writer threads are stopped")
            self._jobs.append(job)
            if len(self._threads) < self._size and self._idle == 0:
                self._start()
            self._wake.notify()
        await job.future

    async def close(self) -> None:
        """Finish the jobs already submitted, then stop the threads."""
        with self._wake:
            self._closing = True
            self._wake.notify_all()
            threads = list(self._threads)
        for thread in threads:
            await asyncio.to_thread(thread.join)

    def _start(self) -> None:
        # Called with the lock held.
        thread = threading.Thread(target=self._serve, name=f"{self._name}-writer", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _serve(self) -> None:
        while True:
            with self._wake:
                if not self._jobs and not self._closing:
                    self._idle += 1
                    self._wake.wait(IDLE_EXIT)
                    self._idle -= 1
                if not self._jobs:  # closing, idle too long, or another writer took them: run() starts anew
                    self._threads.remove(threading.current_thread())
                    return
                batch, self._jobs = self._jobs, []
            try:
                _commit(batch)
            except Exception as exc:  # a bug of ours: the waiters get an error (a 451), never silence
                log.exception("writer failed")
                for job in batch:
                    job.error = job.error or exc
                hand_back(batch)


def _commit(batch: list[_Job]) -> None:
    touched: dict[str, list[_Job]] = {}
    for job in batch:
        try:
            for directory in job.work():
                touched.setdefault(directory, []).append(job)
            job.worked = True
        except Exception as exc:
            job.error = exc
    for directory, jobs in touched.items():
        try:
            fsync_directory(directory)
        except OSError as exc:
            for job in jobs:
                job.error = job.error or exc
    for job in batch:
        if job.worked:
            _tidy(job)
    hand_back(batch)


def _tidy(job: _Job) -> None:
    if job.after is None:
        return
    try:
        job.after()
    except OSError as exc:  # what is left is a tmp/ name: harmless, and removed at the next start
        log.warning("writer clean-up failed: %s", exc)


def fsync_directory(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
