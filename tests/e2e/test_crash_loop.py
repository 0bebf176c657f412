"""kill -9, again and again, while several clients send short and long (streamed) messages: every message
that got a 250 is stored complete (at least once), nothing partial is ever visible, and what a crash left
in the Maildir's tmp/ is cleaned at the next start. In Maildir mode and in relay mode in front of Postfix.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

from tests.e2e import downstream
from tests.e2e.downstream import PostfixInstance
from tests.e2e.helpers import send_until_stopped, start_server

make_postfix = downstream.make_postfix
postfix = downstream.postfix

CYCLES = 3
SENDERS = 4
LONG = (b"y" * 70 + b"\r\n") * 3000  # ~216 KB: goes out in parts, so crashes catch it half-written


def _filler(number: int) -> bytes:
    return LONG if number % 3 == 0 else (b"x" * 70 + b"\r\n") * 20


def _crash_cycles(folder: Path, overrides: dict[str, dict[str, Any]]) -> dict[str, bytes]:
    """Start, let SENDERS clients send until a few messages are acknowledged, kill -9; CYCLES times."""
    acked: dict[str, bytes] = {}
    for cycle in range(CYCLES):
        server = start_server(folder, overrides)
        if cycle:  # what the previous crash left in tmp/ was cleaned before the first client came
            assert _tmp_files(folder) == []
        stop = threading.Event()
        before = len(acked)
        workers = [
            threading.Thread(
                target=send_until_stopped,
                args=(server, n, acked, stop),
                kwargs={"filler": _filler, "prefix": f"c{cycle}"},
            )
            for n in range(SENDERS)
        ]
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + 15
        while len(acked) < before + 12 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05 * cycle)  # kill at different points of the messages in flight
        server.process.kill()
        server.process.wait()
        stop.set()
        for worker in workers:
            worker.join(timeout=15)
        assert len(acked) >= before + 12, f"cycle {cycle}: only {len(acked) - before} acknowledged"
    start_server(folder, overrides).stop()  # one more start: it cleans the last crash's leftovers
    assert _tmp_files(folder) == []
    return acked


def _tmp_files(folder: Path) -> list[Path]:
    return list((folder / "mail").glob("*/*/tmp/*"))


def _check(stored: list[bytes], acked: dict[str, bytes], id_pattern: bytes) -> None:
    found: dict[str, bytes] = {}
    for message in stored:
        ending = re.search(rb"END-(\w+)\n$", message)
        assert ending is not None, "a partial message is visible"
        marker = re.search(rb"Subject: crash (\w+)", message)
        assert marker is not None and marker.group(1) == ending.group(1)
        if (match := re.search(id_pattern, message)) is not None:
            found[match.group(1).decode()] = ending.group(1)
    missing = {message_id for message_id in acked if message_id not in found}
    assert not missing, f"acknowledged but not stored: {sorted(missing)}"
    assert all(found[message_id] == marker for message_id, marker in acked.items())


def test_maildir_survives_repeated_kill_9(tmp_path: Path) -> None:
    acked = _crash_cycles(tmp_path, {})
    new = tmp_path / "mail" / "example.test" / "alice" / "new"
    _check([path.read_bytes() for path in new.iterdir()], acked, rb"id (\w+)")


def test_relay_survives_repeated_kill_9(tmp_path: Path, postfix: PostfixInstance) -> None:
    relay = {"relay": f"smtp://127.0.0.1:{postfix.port}", "relay_timeout": "10s"}
    acked = _crash_cycles(tmp_path, {"delivery": relay})
    stored = postfix.wait_for_messages("alice@example.test", len(acked), timeout=60)
    _check(stored, acked, rb"smtp-tarpit\) with ESMTP id (\w+)")
