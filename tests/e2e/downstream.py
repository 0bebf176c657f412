"""Real downstream MTAs for relay tests: a private Postfix instance with Maildirs, and Postfix's smtp-sink.

Both listen on 127.0.0.1 only, on a free port, with everything under a folder the test owns, and are stopped by
their own PID (Postfix: the PID in its ``queue/pid/master.pid``), never by process name.

- :func:`start_postfix` / the :func:`postfix` fixture: Postfix as a final destination for ``example.test``
  (virtual mailboxes delivered into Maildirs; unknown users get ``550 5.1.1`` at RCPT), relaying for
  127.0.0.0/8 and advertising XFORWARD to 127.0.0.0/8.
- :func:`start_smtp_sink`: ``smtp-sink`` (SMTP or LMTP) that records every completed transaction, with
  options to make commands fail.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import pytest

from tests.polling import wait_until

POSTFIX = Path("/usr/sbin/postfix")
POSTMAP = Path("/usr/sbin/postmap")
SMTP_SINK = Path("/usr/sbin/smtp-sink")
HOST = "127.0.0.1"
DOMAIN = "example.test"
DEFAULT_MAILBOXES = ("alice@example.test", "bob@example.test")
# smtp-sink writes this before each recorded transaction (-S); \001 and \002 never occur in test mail.
_SINK_SEPARATOR = b"\x01\x02smtp-sink-message\x02\x01\n"
_SINK_SEPARATOR_ARG = r"\001\002smtp-sink-message\002\001\n"


# ---------------------------------------------------------------------------------------------- utilities


def require_postfix() -> None:
    """Skip the calling test (with the reason) unless Postfix is installed."""
    for tool in (POSTFIX, POSTMAP):
        if not tool.exists():
            pytest.skip(f"{tool} is missing: install the Debian package 'postfix'")


def require_smtp_sink() -> None:
    """Skip the calling test (with the reason) unless smtp-sink is installed."""
    if not SMTP_SINK.exists():
        pytest.skip(f"{SMTP_SINK} is missing: install the Debian package 'postfix'")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the caller retries if it gets taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes


def is_listening(port: int, host: str = HOST, pid: int | None = None) -> bool:
    """Whether a socket (of process ``pid``, if given) is in LISTEN state on host:port, from /proc/net/tcp:
    no probe connection, which a server would count as a session."""
    wanted = f"{socket.inet_aton(host)[::-1].hex().upper()}:{port:04X}"  # little-endian, as the kernel prints
    owned = _socket_inodes(pid) if pid is not None else None
    with contextlib.suppress(OSError), open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[1] == wanted and fields[3] == "0A" and (owned is None or fields[9] in owned):
                return True
    return False


def _stat(pid: int) -> tuple[str, int, int, str] | None:
    """(state, ppid, start time in clock ticks, command name) of ``pid``, or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    rest = stat[stat.rindex(")") + 2 :].split()  # rest[0] is field 3 (state), rest[19] field 22 (starttime)
    return rest[0], int(rest[1]), int(rest[19]), name


def start_time(pid: int) -> int | None:
    """The start time of ``pid`` (with the PID, identifies a process even if the PID is reused later)."""
    stat = _stat(pid)
    return None if stat is None or stat[0] == "Z" else stat[2]


def pid_alive(pid: int, started: int | None = None) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone) and, if ``started`` is given, is still that process."""
    now = start_time(pid)
    return now is not None and (started is None or now == started)


def _process_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (ppid, start time, command name) for every live process."""
    table: dict[int, tuple[int, int, str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[0] != "Z":
                table[int(entry.name)] = stat[1:]
    return table


def process_tree(pid: int) -> dict[int, int]:
    """``pid`` and every live process below it, as pid -> start time (empty if ``pid`` is gone)."""
    table = _process_table()
    if pid not in table:
        return {}
    found = {pid: table[pid][1]}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, started, _) in table.items():
            if ppid == parent and child not in found:
                found[child] = started
                frontier.append(child)
    return found


def _signal_all(processes: dict[int, int], sig: signal.Signals) -> None:
    """Send ``sig`` to each process of the snapshot that is still the same process."""
    for pid, started in processes.items():
        if pid_alive(pid, started):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


def wait_gone(processes: dict[int, int] | list[int], timeout: float) -> list[int]:
    """Wait until none of ``processes`` (pids, or pid -> start time) runs; return those left at the deadline."""
    snapshot = processes if isinstance(processes, dict) else {pid: start_time(pid) or -1 for pid in processes}

    def left() -> list[int]:
        return [pid for pid, started in snapshot.items() if pid_alive(pid, started)]

    wait_until(lambda: not left(), timeout)
    return left()


def make_traversable(folder: Path) -> None:
    """Let unprivileged users (postfix, nobody) reach ``folder``: mode 0755 on it, o+x on every parent.

    Note: pytest resets its ``/tmp/pytest-of-USER`` to 0700 when a new pytest session starts, so a Postfix
    instance under ``tmp_path`` can lose delivery if another pytest run starts concurrently; the ``make_postfix``
    and ``postfix`` fixtures therefore use a folder of their own directly under the system temp dir.
    """
    folder.chmod(0o755)
    for parent in folder.resolve().parents:
        if parent == Path("/"):
            break
        mode = parent.stat().st_mode
        if mode & 0o011 != 0o011:
            parent.chmod((mode & 0o7777) | 0o011)


def _maildir_messages(new: Path) -> list[bytes]:
    if not new.is_dir():
        return []
    files = [path for path in new.iterdir() if path.is_file()]
    files.sort(key=lambda path: (path.stat().st_mtime_ns, path.name))
    return [path.read_bytes() for path in files]


def _nobody_ids() -> tuple[int, int]:
    uid = pwd.getpwnam("nobody").pw_uid
    try:
        gid = grp.getgrnam("nogroup").gr_gid
    except KeyError:
        gid = pwd.getpwnam("nobody").pw_gid
    return uid, gid


# ------------------------------------------------------------------------------------------------ Postfix

_MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command + args
{host}:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


@dataclass
class PostfixInstance:
    """A private Postfix started by :func:`start_postfix`; everything lives under ``folder``."""

    folder: Path
    port: int
    mailboxes: list[str]
    host: str = HOST
    master_pid: int = 0
    master_started: int | None = None  # start time of master_pid, to never signal a reused PID

    # -- layout
    @property
    def config_dir(self) -> Path:
        return self.folder / "config"

    @property
    def queue_dir(self) -> Path:
        return self.folder / "queue"

    @property
    def data_dir(self) -> Path:
        return self.folder / "data"

    @property
    def mail_dir(self) -> Path:
        """virtual_mailbox_base: ``<mail_dir>/<domain>/<local>/{new,cur,tmp}``."""
        return self.folder / "mail"

    @property
    def log_path(self) -> Path:
        return self.folder / "postfix.log"

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def env(self) -> dict[str, str]:
        return {**os.environ, "MAIL_CONFIG": str(self.config_dir)}

    def postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``postfix -c CONFIG ARGS`` (e.g. ``"flush"``, ``"reload"``) for this instance."""
        return subprocess.run(
            [str(POSTFIX), "-c", str(self.config_dir), *args],
            env=self.env(),
            capture_output=True,
            text=True,
            check=check,
            timeout=30,
        )

    # -- mail
    def maildir(self, mailbox: str) -> Path:
        local, _, domain = mailbox.partition("@")
        return self.mail_dir / domain / local

    def messages(self, mailbox: str = "alice@example.test") -> list[bytes]:
        """Delivered messages (files in ``new/``), oldest first; Postfix stores them with LF line ends and
        prepends ``Return-Path:``, ``Delivered-To:`` and its ``Received:`` header."""
        return _maildir_messages(self.maildir(mailbox) / "new")

    def wait_for_messages(
        self, mailbox: str = "alice@example.test", count: int = 1, timeout: float = 10.0
    ) -> list[bytes]:
        """Wait until ``mailbox`` holds at least ``count`` messages (delivery is asynchronous) and return them."""
        if not wait_until(lambda: len(self.messages(mailbox)) >= count, timeout):
            found = len(self.messages(mailbox))
            raise AssertionError(
                f"{mailbox}: {found} message(s) after {timeout}s, wanted {count}\n{self.log()[-4000:]}"
            )
        return self.messages(mailbox)

    def queue(self) -> str:
        """``postqueue -p`` for this instance ("Mail queue is empty" when nothing waits)."""
        return subprocess.run(
            ["/usr/sbin/postqueue", "-c", str(self.config_dir), "-p"],
            env=self.env(),
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        ).stdout

    # -- log
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        found: list[re.Match[str]] = []

        def matched() -> bool:
            match = re.search(pattern, self.log())
            if match:
                found.append(match)
            return match is not None

        if not wait_until(matched, timeout):
            raise AssertionError(f"postfix log never matched {pattern!r}:\n{self.log()[-4000:]}")
        return found[0]

    # -- processes
    def read_master_pid(self) -> int:
        return int((self.queue_dir / "pid" / "master.pid").read_text().strip())

    def processes(self) -> dict[int, int]:
        """The live master and all its descendants (smtpd, qmgr, ...), as pid -> start time."""
        if not pid_alive(self.master_pid, self.master_started):
            return {}
        return process_tree(self.master_pid)

    def pids(self) -> list[int]:
        return sorted(self.processes())

    def smtpd_pids(self) -> list[int]:
        table = _process_table()
        return sorted(pid for pid in self.processes() if pid in table and table[pid][2] == "smtpd")

    @property
    def running(self) -> bool:
        return pid_alive(self.master_pid, self.master_started)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the master by its master.pid (it takes its children down) and wait for all to go."""
        processes = self.processes()
        if not processes:
            return
        _signal_all(processes, signal.SIGCONT)  # in case freeze() was used
        _signal_all({self.master_pid: processes[self.master_pid]}, signal.SIGTERM)
        left = wait_gone(processes, timeout)
        if left:
            _signal_all({pid: processes[pid] for pid in left}, signal.SIGKILL)
            wait_gone({pid: processes[pid] for pid in left}, 5.0)
            raise AssertionError(f"postfix processes {left} outlived SIGTERM by {timeout}s (killed)")

    # SIGKILL takes effect when the process next leaves the kernel: one in an uninterruptible disk wait
    # on a loaded machine outlived 5 s in CI, so these wait up to 30 s (they return as soon as all are gone).
    def stop_abruptly(self, timeout: float = 30.0) -> None:
        """The downstream goes away at once: SIGKILL the master and every descendant (open sessions see the
        connection drop, new connections are refused). :meth:`stop` afterwards is a no-op."""
        if not self.running:
            return
        os.kill(self.master_pid, signal.SIGSTOP)  # no new children while we collect them
        processes = self.processes()
        _signal_all(processes, signal.SIGKILL)
        left = wait_gone(processes, timeout)
        if left:
            raise AssertionError(f"postfix processes {left} survived SIGKILL")

    def kill_sessions(self, timeout: float = 30.0) -> list[int]:
        """SIGKILL the smtpd processes only: open SMTP sessions drop mid-conversation while the master keeps
        listening. The master then throttles smtpd for ``service_throttle_time`` (1 s here): a new connection
        is accepted at once but greeted about a second later. Returns the killed PIDs."""
        processes = self.processes()
        smtpds = {pid: processes[pid] for pid in self.smtpd_pids() if pid in processes}
        _signal_all(smtpds, signal.SIGKILL)
        left = wait_gone(smtpds, timeout)
        if left:
            raise AssertionError(f"smtpd processes {left} survived SIGKILL")
        return sorted(smtpds)

    def freeze(self) -> None:
        """SIGSTOP master and children: the port still accepts TCP connections (kernel backlog) but nothing
        answers, i.e. a hung downstream. Undo with :meth:`thaw` (:meth:`stop` thaws first)."""
        _signal_all(self.processes(), signal.SIGSTOP)

    def thaw(self) -> None:
        _signal_all(self.processes(), signal.SIGCONT)

    def __enter__(self) -> PostfixInstance:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _main_cf(instance: PostfixInstance, domains: list[str], extra: dict[str, str]) -> str:
    uid, gid = _nobody_ids()
    settings: dict[str, str] = {
        "compatibility_level": "3.6",
        "queue_directory": str(instance.queue_dir),
        "data_directory": str(instance.data_dir),
        "mail_owner": "postfix",
        "setgid_group": "postdrop",
        "myhostname": "downstream.example.test",
        "mydomain": "example.test",
        "myorigin": "$myhostname",
        "inet_interfaces": "loopback-only",
        "inet_protocols": "ipv4",
        "mydestination": "",
        "local_recipient_maps": "",
        "alias_maps": "",
        "alias_database": "",
        "relay_domains": "",
        # Keep relayed mail intact: without this, mail from 127.0.0.1 (our own interface) counts as local
        # submission and cleanup adds From:/Date:/Message-Id: and rewrites addresses.
        "local_header_rewrite_clients": "",
        "relayhost": "",
        "mynetworks": "127.0.0.0/8",
        "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
        "smtpd_authorized_xforward_hosts": "127.0.0.0/8",
        "smtpd_banner": "$myhostname ESMTP",
        "virtual_mailbox_domains": ", ".join(domains),
        "virtual_mailbox_maps": f"hash:{instance.config_dir / 'vmailbox'}",
        "virtual_mailbox_base": str(instance.mail_dir),
        "virtual_uid_maps": f"static:{uid}",
        "virtual_gid_maps": f"static:{gid}",
        "virtual_minimum_uid": str(min(uid, 100)),
        # Anything not for our virtual domains (bounces, relayed mail) fails here, never leaves the machine.
        "default_transport": "error:no outbound mail from the test downstream",
        "smtp_dns_support_level": "disabled",
        # The master throttles a service for this long when a child dies before serving (kill_sessions() does
        # that; so does a setting smtpd refuses): 60 s by default, longer than any test.
        "service_throttle_time": "1s",
        "biff": "no",
        "append_dot_mydomain": "no",
        "readme_directory": "no",
        "maillog_file": str(instance.log_path),
        "maillog_file_prefixes": str(instance.folder),
    }
    settings.update(extra)
    return "".join(f"{key} = {value}\n" for key, value in settings.items())


def start_postfix(
    folder: Path,
    mailboxes: list[str] | tuple[str, ...] = DEFAULT_MAILBOXES,
    *,
    smtpd_options: dict[str, str] | None = None,
    port: int | None = None,
    timeout: float = 15.0,
) -> PostfixInstance:
    """Start a private Postfix on 127.0.0.1:<free port> with Maildirs for ``mailboxes`` under ``folder``.

    ``smtpd_options`` are extra main.cf parameters applied last (any parameter works, typically ``smtpd_*``,
    e.g. ``{"smtpd_data_restrictions": "reject"}``). Returns once the listener is up; use it as a context
    manager or call :meth:`PostfixInstance.stop`. ``folder`` and its parents are made traversable (see
    :func:`make_traversable`); prefer the ``make_postfix`` / ``postfix`` fixtures, which avoid pytest's 0700
    base temp dir.
    """
    require_postfix()
    for mailbox in mailboxes:
        local, _, domain = mailbox.partition("@")
        if not local or not domain or "/" in mailbox:
            raise ValueError(f"mailbox {mailbox!r} is not user@domain")
    folder.mkdir(parents=True, exist_ok=True)
    make_traversable(folder)
    attempts = 1 if port is not None else 3
    for attempt in range(attempts):
        instance = PostfixInstance(folder=folder, port=port or free_port(), mailboxes=list(mailboxes))
        try:
            _start(instance, smtpd_options or {}, timeout)
        except _PortTakenError:
            if attempt == attempts - 1:
                raise
            continue
        return instance
    raise AssertionError("unreachable")


class _PortTakenError(AssertionError):
    pass


def _start(instance: PostfixInstance, extra: dict[str, str], timeout: float) -> None:
    uid, gid = _nobody_ids()
    postfix_user = pwd.getpwnam("postfix")
    for directory in (instance.config_dir, instance.queue_dir, instance.data_dir, instance.mail_dir):
        directory.mkdir(exist_ok=True)
        directory.chmod(0o755)
    os.chown(instance.data_dir, postfix_user.pw_uid, postfix_user.pw_gid)
    os.chown(instance.mail_dir, uid, gid)
    domains = sorted({DOMAIN, *(mailbox.partition("@")[2] for mailbox in instance.mailboxes)})
    vmailbox = instance.config_dir / "vmailbox"
    lines = []
    for mailbox in instance.mailboxes:
        local, _, domain = mailbox.partition("@")
        lines.append(f"{mailbox} {domain}/{local}/\n")  # trailing slash: Maildir
    vmailbox.write_text("".join(lines))
    (instance.config_dir / "main.cf").write_text(_main_cf(instance, domains, extra))
    (instance.config_dir / "master.cf").write_text(_MASTER_CF.format(host=instance.host, port=instance.port))
    # Postfix re-reads a config file whose mtime is within the last second (sleeping 300 ms per try, ~2 s per
    # command): backdate what we just wrote.
    backdated = time.time() - 10
    for written in (vmailbox, instance.config_dir / "main.cf", instance.config_dir / "master.cf"):
        os.utime(written, (backdated, backdated))
    subprocess.run(
        [str(POSTMAP), "-c", str(instance.config_dir), f"hash:{vmailbox}"],
        env=instance.env(),
        check=True,
        capture_output=True,
        timeout=30,
    )
    log_before = len(instance.log())
    started = instance.postfix("start", check=False)
    if started.returncode != 0:
        log = instance.log()[log_before:]
        if "Address already in use" in log + started.stderr:
            raise _PortTakenError(f"port {instance.port} taken")
        raise AssertionError(f"postfix start failed ({started.returncode}):\n{started.stderr}\n{log}")
    instance.master_pid = instance.read_master_pid()
    instance.master_started = start_time(instance.master_pid)
    if not wait_until(lambda: is_listening(instance.port, instance.host, instance.master_pid), timeout):
        instance.stop()
        raise AssertionError(f"postfix never listened on {instance.host}:{instance.port}:\n{instance.log()}")


PostfixFactory = Callable[..., PostfixInstance]


@pytest.fixture
def make_postfix(tmp_path: Path) -> Iterator[PostfixFactory]:
    """``make_postfix(mailboxes=DEFAULT_MAILBOXES, *, smtpd_options=None)`` starts a Postfix downstream;
    all are stopped after the test.

    Each lives in its own ``mkdtemp`` folder directly under the system temp dir, not under ``tmp_path``:
    pytest chmods its ``/tmp/pytest-of-USER`` back to 0700 whenever a pytest session starts, which would
    stop virtual(8) (running as nobody) from reaching the Maildirs. Each log is copied to
    ``tmp_path / "postfix<N>.log"`` at teardown and the folder is removed.
    """
    require_postfix()
    started: list[PostfixInstance] = []

    def factory(
        mailboxes: list[str] | tuple[str, ...] = DEFAULT_MAILBOXES,
        *,
        smtpd_options: dict[str, str] | None = None,
    ) -> PostfixInstance:
        folder = Path(tempfile.mkdtemp(prefix="downstream-postfix-"))
        try:
            instance = start_postfix(folder, mailboxes, smtpd_options=smtpd_options)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        started.append(instance)
        return instance

    yield factory
    errors = []
    for number, instance in enumerate(started):
        try:
            instance.stop()
        except AssertionError as error:
            errors.append(error)
        if instance.log_path.exists():
            shutil.copyfile(instance.log_path, tmp_path / f"postfix{number}.log")
        shutil.rmtree(instance.folder, ignore_errors=True)
    if errors:
        raise errors[0]


@pytest.fixture
def postfix(make_postfix: PostfixFactory) -> PostfixInstance:
    """A Postfix downstream with alice@example.test and bob@example.test, stopped after the test."""
    return make_postfix(["alice@example.test", "bob@example.test"])


# ----------------------------------------------------------------------------------------------- smtp-sink


@dataclass(frozen=True)
class SinkMessage:
    """One transaction recorded by smtp-sink: its envelope and the message (LF line ends, dot-unstuffed)."""

    client_addr: str
    proto: str  # SMTP, ESMTP or LMTP
    helo: str | None
    mail_args: str  # e.g. "<a@x.test> SIZE=12 BODY=8BITMIME"
    rcpt_args: list[str]  # e.g. ["<b@y.test>", "<c@y.test> NOTIFY=NEVER"]
    data: bytes

    @property
    def sender(self) -> str:
        return self.mail_args.split(" ", 1)[0].strip("<>")

    @property
    def recipients(self) -> list[str]:
        return [args.split(" ", 1)[0].strip("<>") for args in self.rcpt_args]

    @classmethod
    def parse(cls, raw: bytes) -> SinkMessage:
        fields: dict[str, list[str]] = {}
        rest = raw
        while True:
            line, _, after = rest.partition(b"\n")
            name, _, value = line.decode("utf-8", "replace").partition(": ")
            if not name.startswith("X-"):
                break
            fields.setdefault(name, []).append(value)
            rest = after
        # smtp-sink's own three-line Received: header ends its part; then the data and one extra empty line.
        if rest.startswith(b"Received: "):
            rest = rest.split(b"\n", 3)[3]
        if rest.endswith(b"\n"):
            rest = rest[:-1]
        return cls(
            client_addr=fields.get("X-Client-Addr", [""])[0],
            proto=fields.get("X-Client-Proto", [""])[0],
            helo=fields["X-Helo-Args"][-1] if "X-Helo-Args" in fields else None,
            mail_args=fields.get("X-Mail-Args", [""])[0],
            rcpt_args=fields.get("X-Rcpt-Args", []),
            data=rest,
        )


@dataclass
class SmtpSink:
    """A running ``smtp-sink`` (our child process) started by :func:`start_smtp_sink`."""

    folder: Path
    port: int
    process: subprocess.Popen[bytes]
    lmtp: bool
    args: list[str]
    host: str = HOST

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def dump_path(self) -> Path:
        return self.folder / "root" / "messages"

    @property
    def log_path(self) -> Path:
        return self.folder / "smtp-sink.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def messages(self) -> list[bytes]:
        """Every completed transaction (the client sent the final '.'), oldest first, as smtp-sink dumps it:
        its X-Client-Addr/X-Client-Proto/X-Helo-Args/X-Mail-Args/X-Rcpt-Args lines, a three-line Received:
        header, the message with LF line ends, then one empty line. A transaction still open or abandoned
        is not listed. Note: a message rejected at '.' (``-f .``/``-r .``) is still listed."""
        if not self.dump_path.exists():
            return []
        chunks = self.dump_path.read_bytes().split(_SINK_SEPARATOR)
        return chunks[1:]

    def parsed_messages(self) -> list[SinkMessage]:
        return [SinkMessage.parse(raw) for raw in self.messages()]

    def wait_for_messages(self, count: int = 1, timeout: float = 10.0) -> list[bytes]:
        if not wait_until(lambda: len(self.messages()) >= count, timeout):
            raise AssertionError(
                f"smtp-sink: {len(self.messages())} message(s) after {timeout}s, wanted {count}"
            )
        return self.messages()

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM by PID and reap; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # in case freeze() was used
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def stop_abruptly(self) -> int:
        """SIGKILL by PID: open sessions see the connection drop, new connections are refused."""
        if self.process.poll() is None:
            self.process.kill()
        return self.process.wait(timeout=10)

    def freeze(self) -> None:
        """SIGSTOP: connections are still accepted by the kernel but nothing answers. Undo with :meth:`thaw`."""
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def __enter__(self) -> SmtpSink:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_smtp_sink(
    folder: Path,
    *,
    lmtp: bool = False,
    options: list[str] | None = None,
    port: int | None = None,
    timeout: float = 10.0,
) -> SmtpSink:
    """Start ``smtp-sink`` on 127.0.0.1:<free port>, recording each completed transaction (see
    :meth:`SmtpSink.messages`); ``lmtp=True`` speaks LMTP (``-L``: LHLO, one reply per recipient after DATA).

    ``options`` are extra smtp-sink arguments, e.g. ``["-f", "RCPT"]`` (5xx at RCPT), ``["-r", "DATA"]``
    (4xx at DATA), ``["-f", "."]`` (5xx after the data), ``["-Q", "MAIL"]`` (421 and hang up),
    ``["-q", "RCPT"]`` (hang up silently), ``["-A", "0"]`` (550 + hang up right after the 354),
    ``["-w", "5"]`` (delay the DATA reply), ``["-W", "rcpt:3"]``, ``["-F"]`` (no XFORWARD),
    ``["-h", "name"]``. Command names are case-insensitive.
    """
    require_smtp_sink()
    folder.mkdir(parents=True, exist_ok=True)
    # smtp-sink chroots into root/ (-R) as root before dropping to nobody (-u), so the dump works whatever
    # the permissions of the folders above it (pytest's base temp dir is 0700).
    root = folder / "root"
    root.mkdir(exist_ok=True)
    uid, gid = _nobody_ids()
    os.chown(root, uid, gid)
    root.chmod(0o755)
    attempts = 1 if port is not None else 3
    for attempt in range(attempts):
        args = [str(SMTP_SINK)]
        if os.geteuid() == 0:  # smtp-sink refuses to run as root without -u
            args += ["-u", "nobody", "-R", str(root), "-D", "/messages"]
        else:
            args += ["-D", str(root / "messages")]
        args += ["-S", _SINK_SEPARATOR_ARG, *(["-L"] if lmtp else []), *(options or [])]
        try:
            return _spawn_sink(folder, args, port or free_port(), lmtp, timeout)
        except _PortTakenError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _spawn_sink(folder: Path, args: list[str], port: int, lmtp: bool, timeout: float) -> SmtpSink:
    args = [*args, f"{HOST}:{port}", "100"]
    log_path = folder / "smtp-sink.log"
    log_before = log_path.stat().st_size if log_path.exists() else 0
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    sink = SmtpSink(folder=folder, port=port, process=process, lmtp=lmtp, args=args)
    if not wait_until(lambda: is_listening(port, pid=process.pid) or process.poll() is not None, timeout):
        sink.stop_abruptly()
        raise AssertionError(f"smtp-sink never listened on {HOST}:{port}: {args}\n{sink.log()}")
    if process.poll() is None:
        return sink
    returncode = process.wait()
    log = log_path.read_bytes()[log_before:].decode(errors="replace")
    if "Address already in use" in log:
        raise _PortTakenError(f"port {port} taken")
    raise AssertionError(f"smtp-sink exited with {returncode}: {args}\n{log}")
