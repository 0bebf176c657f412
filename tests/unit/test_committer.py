"""The group-commit writer (delivery/committer.py), with real threads and real directories, no sockets."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from smtp_tarpit.delivery import committer
from smtp_tarpit.delivery.committer import Committer


def test_jobs_waiting_together_are_committed_as_one_batch(tmp_path: Path) -> None:
    events: list[str] = []
    gate = threading.Event()

    def work(number: int) -> committer.Work:
        def run() -> list[str]:
            if number == 0:
                gate.wait(5)  # holds the writer while the others queue up behind it
            events.append(f"work{number}")
            return [str(tmp_path)]

        return run

    async def scenario() -> None:
        writer = Committer(1)
        first = asyncio.ensure_future(writer.run(work(0), lambda: events.append("after0")))
        await asyncio.sleep(0.05)
        rest = [
            asyncio.ensure_future(writer.run(work(n), lambda n=n: events.append(f"after{n}")))
            for n in (1, 2, 3)
        ]
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(first, *rest)
        await writer.close()

    asyncio.run(scenario())
    # The three that waited were one batch: all their work before any of their clean-ups.
    assert events == ["work0", "after0", "work1", "work2", "work3", "after1", "after2", "after3"]


def test_a_failure_reaches_its_own_waiter_only(tmp_path: Path) -> None:
    tidied: list[str] = []

    def fails() -> list[str]:
        raise OSError(28, "No space left on device")

    async def scenario() -> list[BaseException | None]:
        writer = Committer(1)
        results = await asyncio.gather(
            writer.run(lambda: [str(tmp_path)], lambda: tidied.append("good")),
            writer.run(fails, lambda: tidied.append("failed")),
            writer.run(lambda: [str(tmp_path / "gone")], lambda: tidied.append("unsyncable")),
            return_exceptions=True,
        )
        await writer.close()
        return results

    good, failed, unsyncable = asyncio.run(scenario())
    assert good is None
    assert isinstance(failed, OSError) and failed.errno == 28
    # Its directory cannot be fsynced: not durable, so an error, never a silent success.
    assert isinstance(unsyncable, FileNotFoundError)
    # Clean-up only where the work itself succeeded; the failed work tidies after itself.
    assert sorted(tidied) == ["good", "unsyncable"]


def test_idle_writers_end_and_come_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(committer, "IDLE_EXIT", 0.1)

    def writers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "test-writer"]

    async def scenario() -> None:
        writer = Committer(2, name="test")
        await writer.run(lambda: [str(tmp_path)])
        assert len(writers()) == 1  # one was enough: the second starts only when the first is busy
        deadline = time.monotonic() + 5
        while writers() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not writers()
        await writer.run(lambda: [str(tmp_path)])  # a job after that starts a thread again
        assert len(writers()) == 1
        await writer.close()
        assert not writers()
        with pytest.raises(RuntimeError):
            await writer.run(lambda: [str(tmp_path)])

    asyncio.run(scenario())


def test_close_finishes_what_was_submitted(tmp_path: Path) -> None:
    done: list[int] = []

    def slow(number: int) -> committer.Work:
        def run() -> list[str]:
            time.sleep(0.02)
            done.append(number)
            return [str(tmp_path)]

        return run

    async def scenario() -> None:
        writer = Committer(1)
        jobs = [asyncio.ensure_future(writer.run(slow(n))) for n in range(5)]
        await asyncio.sleep(0)  # all submitted
        await writer.close()
        await asyncio.gather(*jobs)

    asyncio.run(scenario())
    assert done == [0, 1, 2, 3, 4]
