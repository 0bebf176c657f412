"""Postfix for the benchmarks: private instances, their CPU time and queue, and smtp-source as the load.

Not a benchmark itself. The instance comes from ``tests/e2e/downstream.py`` (``start_postfix``: its own
config, queue and data directories under a temporary folder, smtpd on a free 127.0.0.1 port, no chroot,
stopped by the PID in its own ``master.pid``); this module adds what the benchmarks measure around it.

``start_acceptor(folder, mailboxes, disposal)`` is Postfix as the *accepting* MTA of maildir_rate.py. Its
smtpd answers 250 after cleanup has written and fsynced the queue file; what happens to the mail then
is the ``disposal``:

- ``hold``: ``smtpd_data_restrictions = check_client_access static:HOLD``: every message is accepted into
  the *hold* queue (the same fsynced queue file, in ``queue/hold/``) and the queue manager never touches
  it: no delivery work in the background, so Postfix spends its CPU on acceptance alone, like smtp-tarpit;
- ``discard``: ``virtual_transport = discard``: the queue manager hands each message to discard(8), which
  drops it; that delivery runs in the background, on the same 2 cores, during the load;
- ``maildir``: virtual(8) delivers each message into a Maildir (Postfix's full job, the same end state as
  smtp-tarpit's), also in the background.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchlib import CLOCK_TICKS, REPO

sys.path.insert(0, str(REPO))
from tests.e2e.downstream import (  # needs the repository root on sys.path
    PostfixInstance,
    start_postfix,
)

SMTP_SOURCE = Path("/usr/sbin/smtp-source")
POSTFIX = Path("/usr/sbin/postfix")
POSTCONF = Path("/usr/sbin/postconf")
SENDER = "sender@bench.test"
QUEUE_SUBDIRS = ("maildrop", "incoming", "active", "deferred", "hold")
DISPOSALS = {
    "hold": "accepted into the hold queue (fsynced queue file), never delivered: acceptance work only",
    "discard": "queued (fsynced), then delivered to discard(8) in the background during the load",
    "maildir": "queued (fsynced), then delivered into a Maildir by virtual(8) in the background",
}
SENT = re.compile(r" status=sent ")


def missing_tools() -> list[str]:
    """The Postfix programs the benchmarks need that are not installed."""
    return [str(tool) for tool in (POSTFIX, SMTP_SOURCE) if not tool.exists()]


def start_acceptor(folder: Path, mailboxes: list[str], disposal: str) -> PostfixInstance:
    """A private Postfix that accepts mail for ``mailboxes`` and does ``disposal`` with it (see above)."""
    options = {
        "hold": {"smtpd_data_restrictions": "check_client_access static:HOLD"},
        "discard": {"virtual_transport": "discard"},
        "maildir": {},
    }[disposal]
    return start_postfix(folder, mailboxes, smtpd_options=options)


def proc_times(pid: int, kernel_only: bool = False) -> tuple[float, float]:
    """(utime + stime, cutime + cstime) of ``pid`` in seconds, from /proc/PID/stat; (0, 0) if it is gone.
    With ``kernel_only``, (stime, cstime)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rpartition(")")[2].split()
    except OSError:
        return 0.0, 0.0
    user = 0 if kernel_only else 1
    own = (user * int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    children = (user * int(fields[13]) + int(fields[14])) / CLOCK_TICKS
    return own, children


def postfix_cpu_seconds(postfix: PostfixInstance, kernel_only: bool = False) -> float:
    """CPU time of the whole Postfix instance so far: every live process of it (master, smtpd, cleanup, qmgr,
    virtual, ...) plus what the master has reaped (smtpd exits after max_use connections; its time then
    moves to the master's cutime/cstime)."""
    total = 0.0
    for pid in postfix.processes():
        own, children = proc_times(pid, kernel_only)
        total += own + (children if pid == postfix.master_pid else 0.0)
    return total


def files_in(directory: Path) -> list[Path]:
    """Regular files directly in ``directory`` ([] if it does not exist)."""
    if not directory.is_dir():
        return []
    return [Path(entry.path) for entry in os.scandir(directory) if entry.is_file()]


def queued(postfix: PostfixInstance, subdirs: tuple[str, ...] = QUEUE_SUBDIRS) -> int:
    """Queue files in ``subdirs`` of the instance's queue (hashed subdirectories included)."""
    count = 0
    for sub in subdirs:
        for _, _, names in os.walk(postfix.queue_dir / sub):
            count += len(names)
    return count


def delivered(postfix: PostfixInstance) -> int:
    """Deliveries the instance has logged as done (``status=sent``: discard(8) and virtual(8) alike)."""
    return len(SENT.findall(postfix.log()))


def postfix_version() -> str | None:
    """``mail_version`` of the installed Postfix, or None."""
    try:
        out = subprocess.run(
            [str(POSTCONF), "-d", "mail_version"],
            check=False,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.partition("=")[2].strip() or None


@dataclass
class SourceResult:
    """What one smtp-source run did."""

    exit_code: int
    elapsed: float
    cpu_seconds: float
    dots_sent: int
    timed_out: bool
    stderr: str


def smtp_source(
    port: int,
    mailbox: str,
    out: Path,
    *,
    messages: int,
    sessions: int,
    size: int,
    reuse: bool,
    timeout: float,
    host: str = "127.0.0.1",
    sender: str = SENDER,
) -> SourceResult:
    """Run smtp-source once, bounded by ``timeout`` (then SIGKILL by PID). It exits 0 only if every message
    got a 2xx after the final dot (any other reply is fatal to it). ``-c`` prints a counter of final dots
    sent (not of 250s); the CPU time is the child's own, from wait4(). ``out`` names its .out/.err files."""
    argv = [str(SMTP_SOURCE), "-c", "-s", str(sessions), "-m", str(messages), "-l", str(size)]
    argv += [*(["-d"] if reuse else []), "-f", sender, "-t", mailbox, f"{host}:{port}"]
    stdout_path, stderr_path = out.with_suffix(".out"), out.with_suffix(".err")
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)
        deadline = started + timeout
        timed_out = False
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() >= deadline:
                timed_out = True
                os.kill(process.pid, signal.SIGKILL)
                pid, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(0.002)
        elapsed = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: keep Popen from waiting again
    counts = re.findall(rb"\d+", stdout_path.read_bytes())
    return SourceResult(
        exit_code=process.returncode,
        elapsed=elapsed,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        dots_sent=int(counts[-1]) if counts else 0,
        timed_out=timed_out,
        stderr=stderr_path.read_text(errors="replace"),
    )
