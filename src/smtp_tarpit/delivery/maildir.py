"""Durable delivery into one Maildir per mailbox: ``<root>/<domain>/<local-part>/{tmp,new,cur}``.

The sequence for one message, run in a writer thread (never on the event loop): write to
``tmp/<unique>``, fsync the file, hard-link it into ``new/`` of every target mailbox, fsync each ``new/``
directory, unlink the tmp name. Only then does ``deliver`` return and the client get its 250. The writer
threads work in groups (delivery/committer.py): messages that arrive together share one fsync of each
``new/`` directory and one hand-off back to the event loop. A long message (one that arrives in parts) is
written to its tmp file part by part as it arrives (``begin``), so it is never held whole in memory; the
rest of the sequence is the same.

Invariants:
- Never partial: a reader only ever sees complete files in ``new/`` (the link is atomic).
- Never lost once acknowledged: file and directory entries are fsynced before ``deliver`` returns.
- Never twice within one transaction: each mailbox is linked exactly once per message.
- A local part becomes a safe directory name: no "/", no NUL, no leading ".", so never ".." (percent-encoded).
- Lines are stored with LF endings, as Dovecot and Postfix's virtual(8) store them.
- What a crash leaves in ``tmp/`` is removed at the next start (``clean_tmp``); a reader never sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import itertools
import os
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

from smtp_tarpit.delivery import DeliveryError, Envelope
from smtp_tarpit.delivery.committer import Committer, fsync_directory
from smtp_tarpit.delivery.outgoing import Outgoing

_UNSAFE = {"/": "%2F", "\x00": "%00", "%": "%25"}
MARK = ".smtp-tarpit"  # in our own file names: what is left in tmp/ by us is ours to clean
_OURS = re.compile(r"\d+\.M\d+P(?P<pid>\d+)Q\d+\.(?P<host>.+)\.smtp-tarpit(,S=\d+)?")
STALE_TMP = 36 * 3600.0  # seconds: any tmp/ file older is garbage (the Maildir convention)


def safe_name(local_part: str) -> str:
    """Turn a local part into one safe path component (reversible percent-encoding)."""
    name = "".join(_UNSAFE.get(c, c) for c in local_part)
    return "%2E" + name[1:] if name.startswith(".") else name


@functools.lru_cache(maxsize=4096)
def mailbox_path(root: Path, mailbox: str) -> Path:
    """The mailbox's folder. Cached: on every message, and the same few mailboxes take most of the mail
    (a character-by-character encoding and two Path joins were 3% of a message's calls)."""
    local, _, domain = mailbox.rpartition("@")
    return root / safe_name(domain) / safe_name(local)


class MaildirDeliverer:
    """Deliver into Maildirs under ``root``; the directories are made on first delivery."""

    final = True

    def __init__(self, root: Path, writers: int = 1) -> None:
        self.root = root
        self._writer = Committer(writers, name="maildir")
        self._host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
        self._counter = itertools.count(1)  # next() is atomic under the GIL: safe across threads
        self._ready: set[Path] = set()

    @property
    def available(self) -> bool:
        return True

    def check(self) -> None:
        """The root, or the folder it will be made in on first delivery, must be a writable directory."""
        existing = self.root
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise DeliveryError(f"{existing} is not a writable directory")

    early = False  # nothing to prepare before the text comes: a small message is written in one go

    async def deliver(self, envelope: Envelope, message: bytes) -> None:
        content = message.replace(b"\r\n", b"\n")
        boxes = [mailbox_path(self.root, m) for m in envelope.mailboxes]
        name = self._unique(len(content))
        tmp = f"{boxes[0]}/tmp/{name}"  # strings, not Paths, on the way of every message: Path joins cost

        def work() -> list[str]:
            for box in boxes:
                self._ensure(box)
            try:
                _write_durably(tmp, content)
                return [_link(tmp, box, name, content) for box in boxes]
            except OSError:
                _remove(tmp)  # a full disk, say: leave nothing half-written behind
                raise

        try:
            await self._writer.run(work, lambda: _remove(tmp))
        except OSError as exc:
            raise DeliveryError(f"maildir: {exc.strerror or exc}") from exc

    async def close(self) -> None:
        await self._writer.close()

    def clean_tmp(self) -> int:
        """At start: remove what a crash left in the mailboxes' tmp/ folders: ours (by name, written on this
        host by a process that is gone), and anybody's after 36 hours. Another smtp-tarpit process at work
        on the same Maildirs keeps its files (its PID is alive). Never touches new/ or cur/. Returns how
        many went."""
        removed, now = 0, time.time()
        for tmp in self.root.glob("*/*/tmp"):
            for path in tmp.iterdir():
                try:
                    stale = self._left_by_a_crash(path.name) or now - path.lstat().st_mtime > STALE_TMP
                    if stale and path.is_file():
                        path.unlink()
                        removed += 1
                except FileNotFoundError:
                    continue
            if removed:
                fsync_directory(tmp)
        return removed

    def _left_by_a_crash(self, name: str) -> bool:
        found = _OURS.fullmatch(name)
        if found is None or found["host"] != self._host:
            return False
        pid = int(found["pid"])
        if pid == os.getpid():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False  # alive, someone else's
        return False

    def begin(self, envelope: Envelope, head: bytes) -> Outgoing:
        return Outgoing(lambda out: self._stream(envelope, head, out))

    async def _stream(self, envelope: Envelope, head: bytes, out: Outgoing) -> None:
        # Every step runs in the thread, one after another (never two at once on one file); on a failure
        # or an abort the tmp file goes, so nothing half-written is ever left or linked.
        try:
            spool = await asyncio.to_thread(self._open_spool, envelope, head)
        except OSError as exc:
            raise DeliveryError(f"maildir: {exc.strerror or exc}") from exc
        delivered = False
        try:
            async for part in out.parts():
                await asyncio.to_thread(spool.write, part)
            await self._writer.run(lambda: self._commit(envelope, spool), spool.discard)
            delivered = True
        except OSError as exc:
            raise DeliveryError(f"maildir: {exc.strerror or exc}") from exc
        finally:
            if not delivered:
                await asyncio.to_thread(spool.discard)

    def _open_spool(self, envelope: Envelope, head: bytes) -> _Spool:
        box = mailbox_path(self.root, envelope.mailboxes[0])
        self._ensure(box)
        spool = _Spool(box / "tmp" / self._unique(0).rpartition(",S=")[0])
        spool.write(head)
        return spool

    def _commit(self, envelope: Envelope, spool: _Spool) -> list[str]:
        """In the writer thread: the spool durable and linked; the new/ directories still to fsync."""
        spool.sync()
        boxes = [mailbox_path(self.root, m) for m in envelope.mailboxes]
        for box in boxes:
            self._ensure(box)
        name = f"{spool.path.name},S={spool.size}"
        return [_link(spool.path, box, name, spool.content) for box in boxes]

    def _unique(self, size: int) -> str:
        count = next(self._counter)
        now = time.time()
        seconds, micros = int(now), int((now % 1) * 1_000_000)
        return f"{seconds}.M{micros}P{os.getpid()}Q{count}.{self._host}{MARK},S={size}"

    def _ensure(self, box: Path) -> None:
        if box in self._ready:
            return
        for sub in ("tmp", "new", "cur"):
            (box / sub).mkdir(parents=True, exist_ok=True)
        # Make the new directories themselves durable: fsync every parent up to the root.
        for directory in (box, box.parent, self.root, self.root.parent):
            fsync_directory(directory)
        self._ready.add(box)


class _Spool:
    """A message being written to its tmp file as it arrives (used from the worker thread only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)

    def write(self, text: bytes) -> None:
        view = memoryview(text.replace(b"\r\n", b"\n"))
        self.size += len(view)
        while view:
            view = view[os.write(self.fd, view) :]

    def sync(self) -> None:
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1

    def content(self) -> bytes:
        """The whole text again, for a mailbox on another file system (rare: read back, not held)."""
        return self.path.read_bytes()

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.path.unlink(missing_ok=True)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _write_durably(path: str | Path, content: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _link(tmp: str | Path, box: Path, name: str, content: bytes | Callable[[], bytes]) -> str:
    """Link the durable tmp file into ``box``'s new/; the directory that now needs its fsync."""
    directory = f"{box}/new"
    target = f"{directory}/{name}"
    try:
        os.link(tmp, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        # Mailboxes on another file system: a copy of its own, written the same durable way.
        staged = box / "tmp" / name
        _write_durably(staged, content if isinstance(content, bytes) else content())
        os.rename(staged, target)
    return directory
