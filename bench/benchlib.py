"""Shared plumbing for the benchmarks: server subprocesses, /proc readings, configs, results.

Not a benchmark itself. Every server is started by PID in its own temporary folder and stopped by that PID
only (SIGTERM, then SIGKILL after a bounded wait).
"""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
BASELINE_SERVER = BENCH / "baseline_server.py"
LISTENING = re.compile(r"listening on (\S+) port (\d+)")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def raise_nofile() -> int:
    """Raise RLIMIT_NOFILE to the hard limit; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def smtp_tarpit_command(config: Path) -> list[str]:
    script = Path(sys.executable).parent / "smtp-tarpit"
    if script.exists():
        return [str(script), "serve", "--config", str(config)]
    return [sys.executable, "-m", "smtp_tarpit", "serve", "--config", str(config)]


def baseline_command(mode: str, host: str = "127.0.0.1") -> list[str]:
    return [sys.executable, str(BASELINE_SERVER), "--mode", mode, "--listen", f"{host}:0"]


def write_tarpit_config(
    folder: Path,
    delay: float,
    recipients: list[str],
    max_connections: int | None,
    *,
    connections_per_client: int | None = None,
    max_tarpitted: int | None = None,
    extra: str = "",
    listen: str = "127.0.0.1:0",
    maildir: str = "mail",
    reuse_port: bool = False,
) -> Path:
    """The benchmark config: the brief's shape, a free port picked by the server (read from its log).

    ``connections_per_client`` and ``max_tarpitted`` default to ``max_connections`` (the load comes from a
    few loopback addresses, and every session is meant to be held); a limit that is None is not written
    (the server's own default applies). ``extra`` is appended as it is (more TOML sections). ``listen``,
    ``maildir`` and ``reuse_port`` go into [server] and [delivery]. Writing it again over the same file and
    sending SIGHUP reloads it."""
    (folder / "recipients.txt").write_text("".join(f"{r}\n" for r in recipients))
    per_client = max_connections if connections_per_client is None else connections_per_client
    tarpitted = max_connections if max_tarpitted is None else max_tarpitted
    limits = {
        "max_connections": max_connections,
        "connections_per_client": per_client,
        "max_tarpitted": tarpitted,
    }
    config = folder / "smtp-tarpit.toml"
    config.write_text(
        "[server]\n"
        f'listen = ["{listen}"]\n'
        + ("reuse_port = true\n" if reuse_port else "")  # only when set: older servers do not know it
        + 'hostname = "mx.example.test"\n'
        "[recipients]\n"
        'domains = ["example.test"]\n'
        'file = "recipients.txt"\n'
        "[delivery]\n"
        f'maildir = "{maildir}"\n'
        "[tarpit]\n"
        f"delay = {delay:g}\n"
        "[limits]\n"
        + "".join(f"{key} = {value}\n" for key, value in limits.items() if value is not None)
        + extra
    )
    return config


def source_addresses(count: int, first_subnet: int) -> list[str]:
    """``count`` loopback client addresses 127.0.S.1-127.0.S.250 for S = ``first_subnet``, then S + 1, ...
    (all of 127.0.0.0/8 is loopback on Linux: no setup needed)."""
    return [f"127.0.{first_subnet + i // 250}.{1 + i % 250}" for i in range(count)]


def fd_count(pid: int) -> int | None:
    """How many file descriptors ``pid`` has open (None if it is gone)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


@dataclass
class ServerProcess:
    """One server under test, started as a subprocess with its stderr in a log file."""

    name: str
    argv: list[str]
    folder: Path
    process: subprocess.Popen[bytes] | None = None
    host: str = ""
    port: int = 0
    log_path: Path = field(default_factory=Path)
    exit_code: int | None = None

    def start(self, timeout: float = 30.0) -> ServerProcess:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.log_path = self.folder / f"{self.name}.log"
        with self.log_path.open("wb") as log_file:
            self.process = subprocess.Popen(
                self.argv,
                cwd=self.folder,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.listening():
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"{self.name} did not start listening; log:\n{self.log()[-4000:]}")

    def listening(self) -> bool:
        """Has the server said where it listens? Sets host and port when it has."""
        found = LISTENING.search(self.log())
        if found:
            self.host, self.port = found.group(1), int(found.group(2))
        return found is not None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def status(self) -> dict[str, int]:
        """VmRSS, RssAnon, RssFile, VmHWM and Threads from /proc/PID/status (sizes in KiB)."""
        wanted = ("VmRSS", "RssAnon", "RssFile", "VmHWM", "Threads")
        out: dict[str, int] = {}
        with open(f"/proc/{self.pid}/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in wanted:
                    out[key] = int(value.split()[0])
        return out

    def rss_kib(self) -> int:
        return self.status()["VmRSS"]

    def cpu_seconds(self, kernel_only: bool = False, main_thread: bool = False) -> float:
        """User + system CPU time of the server process (all its threads) so far; only the system (kernel)
        part with ``kernel_only``; only the first thread's (an asyncio server's event loop) with
        ``main_thread``."""
        path = f"/proc/{self.pid}/task/{self.pid}/stat" if main_thread else f"/proc/{self.pid}/stat"
        with open(path) as fh:
            fields = fh.read().rpartition(")")[2].split()
        return (int(fields[12]) + (0 if kernel_only else int(fields[11]))) / CLOCK_TICKS

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM by PID and wait; SIGKILL if it does not exit in time. Returns the exit code."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.exit_code = self.process.returncode
        return self.exit_code

    def reload(self, timeout: float = 10.0) -> bool:
        """SIGHUP by PID; True once the log says ``reloaded`` once more than before (bounded wait)."""
        before = self.log().count("reloaded ")
        os.kill(self.pid, signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log().count("reloaded ") > before:
                return True
            time.sleep(0.02)
        return False

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        if self.process is not None:
            self.exit_code = self.process.returncode


def system_cpu_busy_seconds() -> float:
    """User + system CPU time of every process on the machine since boot, all CPUs summed. Interrupt,
    softirq (much of loopback TCP is processed there) and steal time are left out: they are not charged to
    any process, ours included."""
    with open("/proc/stat") as fh:
        user, nice, system = (int(v) for v in fh.readline().split()[1:4])
    return (user + nice + system) / CLOCK_TICKS


def wait_until_quiet(max_wait: float, busy_below: float = 0.15, window: float = 1.0) -> float | None:
    """Wait (at most ``max_wait`` seconds) for a ``window`` in which the machine's CPUs are less than
    ``busy_below`` busy, i.e. nobody else is running much. Returns the busy share of the last window seen,
    or None if ``max_wait`` is 0."""
    if max_wait <= 0:
        return None
    cpus = os.cpu_count() or 1
    deadline = time.monotonic() + max_wait
    while True:
        before = system_cpu_busy_seconds()
        time.sleep(window)
        share = (system_cpu_busy_seconds() - before) / (window * cpus)
        if share < busy_below or time.monotonic() >= deadline:
            return share


def load_average() -> float:
    with open("/proc/loadavg") as fh:
        return float(fh.read().split()[0])


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nofile_soft": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "load_average_1min_at_start": load_average(),
    }
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        info["commit"] = commit.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        info["commit"] = None
    return info


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    return "\n".join(lines)
