"""Maildir delivery without sockets: layout, safe names, durability sequence, failure is an error."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtp_tarpit.delivery import DeliveryError, Envelope
from smtp_tarpit.delivery.maildir import MaildirDeliverer, safe_name


@given(st.text(min_size=1, max_size=64))
def test_safe_name_is_one_harmless_path_component(local: str) -> None:
    name = safe_name(local)
    assert "/" not in name and "\x00" not in name
    assert not name.startswith(".")
    assert name not in ("", ".", "..")


def test_safe_name_is_injective_on_tricky_names() -> None:
    names = ["..", ".x", "%2Ex", "a/b", "a%2Fb", "a%b"]
    assert len({safe_name(n) for n in names}) == len(names)


def test_delivery_writes_one_complete_file_per_mailbox(tmp_path: Path) -> None:
    deliverer = MaildirDeliverer(tmp_path)
    envelope = Envelope("ID1", "s@r.test", ("alice@example.test", "bob@example.test"), ("a", "b"))
    asyncio.run(deliverer.deliver(envelope, b"Subject: x\r\n\r\nbody\r\n"))
    for local in ("alice", "bob"):
        box = tmp_path / "example.test" / local
        assert sorted(p.name for p in box.iterdir()) == ["cur", "new", "tmp"]
        [stored] = list((box / "new").iterdir())
        assert stored.read_bytes() == b"Subject: x\n\nbody\n"
        assert stored.name.endswith(",S=17")
        assert list((box / "tmp").iterdir()) == []


def test_a_file_in_the_way_is_a_delivery_error(tmp_path: Path) -> None:
    (tmp_path / "example.test").write_text("not a directory")
    with pytest.raises(DeliveryError):
        asyncio.run(
            MaildirDeliverer(tmp_path).deliver(Envelope("I", "", ("a@example.test",), ("a",)), b"x\r\n")
        )


def test_clean_tmp_removes_our_leftovers_and_stale_files_only(tmp_path: Path) -> None:
    deliverer = MaildirDeliverer(tmp_path)
    box = tmp_path / "example.test" / "alice"
    for sub in ("tmp", "new", "cur"):
        (box / sub).mkdir(parents=True)
    gone = subprocess.Popen(["true"])
    gone.wait()  # a process that crashed: its PID is free

    def ours(pid: int, count: int) -> Path:
        return box / "tmp" / f"1700000000.M1P{pid}Q{count}.{deliverer._host}.smtp-tarpit,S=10"

    crashed = ours(gone.pid, 1)
    live_other = ours(os.getppid(), 2)  # another smtp-tarpit process, still writing
    mine = ours(os.getpid(), 3)  # this process's own delivery in flight
    fresh_other = box / "tmp" / "1700000000.M1P2Q3.host"  # another writer (Dovecot) in the middle of work
    stale_other = box / "tmp" / "1600000000.M1P2Q3.host"
    delivered = box / "new" / f"1700000000.M1P{gone.pid}Q4.{deliverer._host}.smtp-tarpit,S=10"
    for path in (crashed, live_other, mine, fresh_other, stale_other, delivered):
        path.write_bytes(b"x")
    old = time.time() - 40 * 3600
    os.utime(stale_other, (old, old))
    assert deliverer.clean_tmp() == 2
    kept = {path.name for path in (box / "tmp").iterdir()}
    assert kept == {live_other.name, mine.name, fresh_other.name}
    assert delivered.exists()


_FILE_SIZE_LIMITED = """
import asyncio, resource, signal, sys
from pathlib import Path
from smtp_tarpit.delivery import DeliveryError, Envelope
from smtp_tarpit.delivery.maildir import MaildirDeliverer

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
deliverer = MaildirDeliverer(Path(sys.argv[1]))
envelope = Envelope("I", "", ("alice@example.test",), ("alice@example.test",))
asyncio.run(deliverer.deliver(envelope, b"small\\r\\n"))  # makes the directories, within the limit
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    asyncio.run(deliverer.deliver(envelope, b"x" * 5000 + b"\\r\\n"))
except DeliveryError as exc:
    print("refused:", exc)
"""


def test_a_write_that_fails_half_way_leaves_nothing_behind(tmp_path: Path) -> None:
    # A real failing write (the file-size limit, as a full disk would), in a process of its own.
    result = subprocess.run(
        [sys.executable, "-c", _FILE_SIZE_LIMITED, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.startswith("refused: maildir: File too large")
    box = tmp_path / "example.test" / "alice"
    assert list((box / "tmp").iterdir()) == []
    assert [p.read_bytes() for p in (box / "new").iterdir()] == [b"small\n"]
