"""Benchmark: 10,000 sessions held in the tar pit: memory per session, and what fresh clients see meanwhile.

One run, two servers one after the other, the same client:

- **smtp-tarpit** holds N connections (default 10,000), each waiting on a delayed ``550 5.1.1`` (banner,
  ``EHLO``, ``MAIL``, ``RCPT TO`` an unknown address, with ``[tarpit] delay = 240``: every session is held
  for the whole measurement). Measured: RSS per held session above the idle RSS (also at N/4, N/2, 3N/4:
  is the cost linear?), banner time of the first and the N-th connection, the server's CPU while it only
  holds. Then, *while the N are held*, after a reload (SIGHUP) to ``[tarpit] delay = 2`` (the held
  sessions keep the 240 s timers they already have): **probes**, fresh clients from other loopback
  addresses (127.0.200.x) whose delayed 550 is timed (overshoot = reply time - configured delay); and a
  **legitimate sender** from 127.0.100.1 sending clean messages (one connection each, a valid recipient,
  Maildir delivery, fsync on) with C clients, for throughput and p99 latency. The probes and the sender
  also run unloaded, before the N are opened and after they are closed, against the same process.
- **baseline**: bench/baseline_server.py --mode hold, a bare asyncio.Protocol that writes a 220 and holds:
  the floor for one held connection in pure-Python asyncio; the same N connections, RSS per connection.

Targets (DESIGN.md "Performance budget", issue 6), reported as met / NOT MET, never a script failure:
<= 4 KiB per held session; the N-th banner as fast as the first; probe overshoot p99 <= 20 ms; the
sender's throughput loaded / unloaded >= 0.90 and p99 loaded / unloaded <= 2.0. Correctness problems
(a held session answered early, connections refused, a server that did not exit 0) exit 1. Loopback only;
every step bounded in time. See bench/README.md.

Run: .venv/bin/python bench/held_connections.py [--connections 10000] [--probes 20] [--legit-messages 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import math
import os
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib import (
    BENCH,
    ServerProcess,
    baseline_command,
    fd_count,
    machine,
    quantile,
    raise_nofile,
    smtp_tarpit_command,
    source_addresses,
    table,
    write_json,
    write_tarpit_config,
)
from smtpload import Load, drive, make_message

UNKNOWN_RECIPIENT = b"nobody@example.test"
VALID_RECIPIENT = "alice@example.test"
TCP_ESTABLISHED = "01"
TCP_CLOSE_WAIT = "08"
BUDGET_KIB = 4.0  # DESIGN.md, "Performance budget"
OVERSHOOT_TARGET_MS = 20.0
THROUGHPUT_TARGET = 0.90
P99_TARGET = 2.0
HELD_SUBNET, LEGIT_ADDRESS, PROBE_SUBNET = 1, "127.0.100.1", 200


class DialogueError(Exception):
    pass


@dataclass
class Held:
    """The client side of one held connection."""

    sock: socket.socket
    banner_seconds: float
    rcpt_sent_at: float  # monotonic; 0 when the dialogue has no RCPT


@dataclass
class ServerResult:
    name: str
    connections_requested: int
    connections_held: int = 0
    failures: list[str] = field(default_factory=list)
    rss_kib: dict[str, int] = field(default_factory=dict)
    status_held: dict[str, int] = field(default_factory=dict)
    fds_held: int | None = None
    kib_per_connection: float | None = None
    checkpoints: list[tuple[int, int]] = field(default_factory=list)  # (connections held, RSS KiB)
    slope_kib_per_connection: float | None = None
    idle_cpu_share_held: float | None = None  # of one core, while only holding
    cpu_ms_per_session_open: float | None = None  # server CPU to accept one and take it to the held RCPT
    cpu_ms_per_session_close: float | None = None  # server CPU when the client hangs up on a held session
    kernel_slab_kib_per_connection: float | None = None  # machine-wide Slab growth / N (both socket ends)
    kernel_tcp_buffer_pages: int | None = None  # /proc/net/sockstat TCP mem while held (buffers in use)
    banner_seconds: dict[str, float | None] = field(default_factory=dict)
    open_seconds: float = 0.0
    settled: bool = False
    settle_state: str = ""
    unexpected_replies: int = 0
    unexpected_sample: str = ""
    oldest_rcpt_age_at_check: float | None = None
    probes: dict[str, dict[str, Any]] = field(default_factory=dict)
    legit: dict[str, dict[str, Any]] = field(default_factory=dict)
    reloads_ok: bool | None = None
    server_sessions_after_close: int | None = None
    session_end_lines: int | None = None
    sessions_opened: int = 0
    server_exit_code: int | None = None
    log_path: str = ""
    log_tail: str = ""


# --- the client: raw non-blocking sockets driven by the event loop ------------------------------------------


async def read_reply(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> int:
    """Read one complete (possibly multi-line) reply; return its code. Nothing is pipelined: no leftovers."""
    buffer = b""
    while True:
        chunk = await loop.sock_recv(sock, 4096)
        if not chunk:
            raise DialogueError(f"server closed the connection (after {buffer!r})")
        buffer += chunk
        if not buffer.endswith(b"\r\n"):
            continue
        last = buffer[:-2].rsplit(b"\r\n", 1)[-1]
        if len(last) >= 4 and last[3:4] == b" ":
            return int(last[:3])
        if len(last) == 3:
            return int(last)


async def expect(loop: asyncio.AbstractEventLoop, sock: socket.socket, command: bytes, code: int) -> None:
    await loop.sock_sendall(sock, command)
    got = await read_reply(loop, sock)
    if got != code:
        raise DialogueError(f"{command.strip()!r}: expected {code}, got {got}")


async def open_one(host: str, port: int, source: str | None, smtp: bool) -> Held:
    """Connect, read the 220; for smtp-tarpit go on to a RCPT whose 550 will be held."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        if source:
            sock.bind((source, 0))
        started = time.perf_counter()
        await loop.sock_connect(sock, (host, port))
        code = await read_reply(loop, sock)
        banner = time.perf_counter() - started
        if code != 220:
            raise DialogueError(f"greeting: expected 220, got {code}")
        rcpt_at = 0.0
        if smtp:
            await expect(loop, sock, b"EHLO client.bench.test\r\n", 250)
            await expect(loop, sock, b"MAIL FROM:<sender@bench.test>\r\n", 250)
            await loop.sock_sendall(sock, b"RCPT TO:<" + UNKNOWN_RECIPIENT + b">\r\n")
            rcpt_at = time.monotonic()
        return Held(sock, banner, rcpt_at)
    except BaseException:
        sock.close()
        raise


@dataclass
class Target:
    """Where and how to connect: the server, the source addresses to spread over, the dialogue."""

    host: str
    port: int
    sources: list[str]
    smtp: bool
    timeout: float  # bound on opening one connection


async def open_many(
    target: Target, count: int, concurrency: int, first_index: int, *, out: list[Held], failures: list[str]
) -> None:
    """Open ``count`` connections, at most ``concurrency`` in progress at once, each one time-bounded."""
    semaphore = asyncio.Semaphore(concurrency)

    async def one(index: int) -> None:
        async with semaphore:
            sources = target.sources
            source = sources[index % len(sources)] if sources else None
            try:
                opening = open_one(target.host, target.port, source, target.smtp)
                out.append(await asyncio.wait_for(opening, target.timeout))
            except (OSError, DialogueError, TimeoutError) as exc:
                failures.append(f"connection {index} from {source}: {exc.__class__.__name__}: {exc}")

    await asyncio.gather(*(one(first_index + i) for i in range(count)))


def unexpected_data(held: list[Held]) -> tuple[int, str]:
    """How many held sockets have something to read (they should not: the 550 is held); and one sample."""
    count, sample = 0, ""
    for conn in held:
        try:
            data = conn.sock.recv(4096, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            continue
        except OSError as exc:
            data = f"<{exc.__class__.__name__}>".encode()
        count += 1
        sample = sample or data[:200].decode("ascii", "replace")
    return count, sample


# --- probes and the legitimate sender -----------------------------------------------------------------------


async def probe(host: str, port: int, source: str, delay: float, timeout: float) -> dict[str, Any]:
    """A fresh client: banner, EHLO, MAIL, RCPT to an unknown address; time its delayed 550."""
    loop = asyncio.get_running_loop()
    held = await asyncio.wait_for(open_one(host, port, source, True), timeout)
    try:
        sent = held.rcpt_sent_at
        code = await asyncio.wait_for(read_reply(loop, held.sock), delay + timeout)
        waited = time.monotonic() - sent
        with contextlib.suppress(OSError, DialogueError, TimeoutError):
            await asyncio.wait_for(expect(loop, held.sock, b"QUIT\r\n", 221), timeout)
    finally:
        held.sock.close()
    return {"code": code, "banner": held.banner_seconds, "waited": waited, "overshoot": waited - delay}


async def probes(target: Target, args: argparse.Namespace, first: int) -> dict[str, Any]:
    """``--probes`` probes, one every ``--probe-stagger`` s, each from its own fresh address."""
    addresses = source_addresses(first + args.probes, PROBE_SUBNET)[first:]

    async def one(index: int) -> dict[str, Any]:
        await asyncio.sleep(index * args.probe_stagger)
        try:
            return await probe(target.host, target.port, addresses[index], args.probe_delay, target.timeout)
        except (OSError, DialogueError, TimeoutError) as exc:
            return {"error": f"probe from {addresses[index]}: {exc.__class__.__name__}: {exc}"}

    done = await asyncio.gather(*(one(i) for i in range(args.probes)))
    good = [d for d in done if "error" not in d]
    overshoot = [d["overshoot"] for d in good]
    banners = [d["banner"] for d in good]
    return {
        "delay": args.probe_delay,
        "count": len(done),
        "answered": len(good),
        "codes": sorted({d["code"] for d in good}),
        "errors": [d["error"] for d in done if "error" in d][:5],
        "overshoot_ms": {
            "min": 1000 * min(overshoot) if overshoot else None,
            "p50": 1000 * (quantile(overshoot, 0.5) or 0) if overshoot else None,
            "p99": 1000 * (quantile(overshoot, 0.99) or 0) if overshoot else None,
            "max": 1000 * max(overshoot) if overshoot else None,
        },
        "banner_ms": {
            "p50": 1000 * (quantile(banners, 0.5) or 0) if banners else None,
            "max": 1000 * max(banners) if banners else None,
        },
        "sessions": len(done),
    }


async def legit(
    server: ServerProcess, args: argparse.Namespace, count: int, timeout: float | None = None
) -> dict[str, Any]:
    """The legitimate sender: ``count`` clean messages, one connection each, ``--legit-clients`` at once."""
    message = make_message(args.legit_size)
    load = Load(
        server.host,
        server.port,
        count,
        message,
        [VALID_RECIPIENT.encode()],
        args.step_timeout,
        reuse=False,
        sources=[LEGIT_ADDRESS],
    )
    cpu = server.cpu_seconds()
    elapsed, timed_out = await drive(load, args.legit_clients, timeout or args.legit_timeout)
    cpu = server.cpu_seconds() - cpu
    lat = load.session_latencies
    return {
        "messages": count,
        "ok": load.ok,
        "refused": load.refused,
        "errors": len(load.errors),
        "error_sample": load.errors[:3],
        "timed_out": timed_out,
        "elapsed": elapsed,
        "rate": load.ok / elapsed if elapsed > 0 else 0.0,
        "p50_ms": 1000 * (quantile(lat, 0.5) or 0) if lat else None,
        "p99_ms": 1000 * (quantile(lat, 0.99) or 0) if lat else None,
        "max_ms": 1000 * max(lat) if lat else None,
        "latencies": lat,
        "server_cpu_ms_per_message": 1000 * cpu / load.ok if load.ok else None,
        "sessions": load.taken,
    }


def pooled(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The unloaded figures: the runs before and after the hold together (rate = all messages / all time,
    p99 over all latencies), so slow drift of the machine during the run cancels out."""
    lat = before["latencies"] + after["latencies"]
    elapsed = before["elapsed"] + after["elapsed"]
    return {
        "rate": (before["ok"] + after["ok"]) / elapsed if elapsed > 0 else 0.0,
        "p50_ms": 1000 * (quantile(lat, 0.5) or 0) if lat else None,
        "p99_ms": 1000 * (quantile(lat, 0.99) or 0) if lat else None,
    }


# --- the server side, seen from /proc -----------------------------------------------------------------------


def server_sockets(server: ServerProcess) -> tuple[int, int, int]:
    """(established, close-wait, bytes unread) over the TCP sockets the server process itself has open.

    Sockets are matched by inode (/proc/PID/fd), not by port: a client socket bound to 127.0.x.y may get
    the server's port number as its own ephemeral port."""
    inodes = set()
    fd_dir = f"/proc/{server.pid}/fd"
    for name in os.listdir(fd_dir):
        try:
            target = os.readlink(f"{fd_dir}/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    established = close_wait = unread = 0
    for table_path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table_path) as fh:
                next(fh)
                for line in fh:
                    fields = line.split()
                    if fields[9] not in inodes:
                        continue
                    state = fields[3]
                    if state == TCP_ESTABLISHED:
                        established += 1
                        unread += int(fields[4].partition(":")[2], 16)
                    elif state == TCP_CLOSE_WAIT:
                        close_wait += 1
        except FileNotFoundError:
            continue
    return established, close_wait, unread


async def settle(server: ServerProcess, expected: int, timeout: float) -> tuple[bool, str]:
    """Wait until the server has accepted ``expected`` connections, read every byte sent to it, and its RSS
    has stopped moving (three equal samples 0.2 s apart). Bounded by ``timeout``: (settled?, last state)."""
    deadline = time.monotonic() + timeout
    samples: list[int] = []
    state = ""
    while time.monotonic() < deadline:
        established, _, unread = server_sockets(server)
        samples.append(server.rss_kib())
        state = f"established={established}/{expected} unread={unread} rss={samples[-3:]}"
        if established == expected and unread == 0 and len(samples) >= 3 and len(set(samples[-3:])) == 1:
            return True, state
        await asyncio.sleep(0.2)
    return False, state


async def drained(server: ServerProcess, timeout: float) -> int:
    """Wait until the server holds no connection on its port; return how many it still holds."""
    deadline = time.monotonic() + timeout
    while True:
        established, close_wait, _ = server_sockets(server)
        if established + close_wait == 0 or time.monotonic() >= deadline:
            return established + close_wait
        await asyncio.sleep(0.1)


def meminfo_kib(key: str) -> int:
    """A /proc/meminfo value in KiB (machine-wide: other processes move it too)."""
    with open("/proc/meminfo") as fh:
        for line in fh:
            name, _, value = line.partition(":")
            if name == key:
                return int(value.split()[0])
    return 0


def tcp_buffer_pages() -> int | None:
    """Pages of TCP buffer memory in use machine-wide (/proc/net/sockstat, "TCP: ... mem N")."""
    with open("/proc/net/sockstat") as fh:
        for line in fh:
            if line.startswith("TCP:"):
                fields = line.split()
                return int(fields[fields.index("mem") + 1])
    return None


def slope(points: list[tuple[int, int]]) -> float | None:
    """Least-squares KiB per connection through the (connections, RSS KiB) checkpoints."""
    if len(points) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    var = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / var if var else None


# --- one server, start to stop ------------------------------------------------------------------------------


@dataclass
class Tarpit:
    """How to switch smtp-tarpit between the holding delay and the probes' delay (rewrite config, SIGHUP)."""

    folder: Path
    args: argparse.Namespace

    def write(self, delay: float) -> Path:
        n = self.args.connections
        per_client = max(50, math.ceil(n / max(self.args.sources, 1)) + 1)  # 50 is the default
        return write_tarpit_config(
            self.folder,
            delay,
            [VALID_RECIPIENT],
            self.args.max_connections,
            connections_per_client=per_client,
            max_tarpitted=n + 2 * self.args.probes + 100,
        )


async def hold(
    server: ServerProcess, target: Target, result: ServerResult, args: argparse.Namespace, held: list[Held]
) -> None:
    """Open the N connections: the first alone, the bulk in quarters (settle + RSS after each), the last
    alone; then settle and read the held RSS."""
    n = args.connections
    opened = time.monotonic()
    slab, cpu = meminfo_kib("Slab"), server.cpu_seconds()
    await open_many(target, 1, 1, 0, out=held, failures=result.failures)
    result.banner_seconds["first"] = held[0].banner_seconds if held else None
    bulk: list[Held] = []
    parts = max(1, args.checkpoints)
    deadline = opened + args.open_timeout
    for part in range(parts):
        start, stop = 1 + (n - 2) * part // parts, 1 + (n - 2) * (part + 1) // parts
        try:
            await asyncio.wait_for(
                open_many(target, stop - start, args.concurrency, start, out=bulk, failures=result.failures),
                max(1.0, deadline - time.monotonic()),
            )
        except TimeoutError:
            result.failures.append(f"opening the bulk took longer than --open-timeout {args.open_timeout}s")
            break
        await settle(server, len(held) + len(bulk), args.settle_timeout)
        result.checkpoints.append((len(held) + len(bulk), server.rss_kib()))
    held += bulk
    bulk_banners = [c.banner_seconds for c in bulk]
    result.banner_seconds["bulk_p50"] = quantile(bulk_banners, 0.5)
    result.banner_seconds["bulk_p99"] = quantile(bulk_banners, 0.99)
    result.banner_seconds["bulk_max"] = max(bulk_banners) if bulk_banners else None
    last: list[Held] = []
    await open_many(target, 1, 1, n - 1, out=last, failures=result.failures)
    result.banner_seconds["last"] = last[0].banner_seconds if last else None
    held += last
    result.open_seconds = time.monotonic() - opened
    result.connections_held = len(held)
    result.settled, result.settle_state = await settle(server, len(held), args.settle_timeout)
    result.rss_kib["held"] = server.rss_kib()
    result.status_held = server.status()
    result.fds_held = fd_count(server.pid)
    if held:
        result.cpu_ms_per_session_open = 1000 * (server.cpu_seconds() - cpu) / len(held)
        result.kernel_slab_kib_per_connection = (meminfo_kib("Slab") - slab) / len(held)
    result.kernel_tcp_buffer_pages = tcp_buffer_pages()
    result.checkpoints.append((len(held), result.rss_kib["held"]))
    result.slope_kib_per_connection = slope([(0, result.rss_kib["idle"]), *result.checkpoints])
    if held:
        result.kib_per_connection = (result.rss_kib["held"] - result.rss_kib["idle"]) / len(held)
    cpu = server.cpu_seconds()
    await asyncio.sleep(2.0)
    result.idle_cpu_share_held = (server.cpu_seconds() - cpu) / 2.0


async def unloaded(
    server: ServerProcess, target: Target, result: ServerResult, args: argparse.Namespace, phase: str
) -> None:
    """Probes and the legitimate sender with nothing held (before the hold, or after it)."""
    result.probes[phase] = await probes(target, args, 0 if phase == "before" else args.probes)
    result.legit[phase] = await legit(server, args, args.legit_messages)


async def loaded(
    server: ServerProcess,
    target: Target,
    result: ServerResult,
    args: argparse.Namespace,
    *,
    held: list[Held],
    tarpit: Tarpit,
) -> None:
    """With the N held: reload to the probes' delay, then the probes, then the legitimate sender."""
    tarpit.write(args.probe_delay)
    reloaded = server.reload()
    result.reloads_ok = bool(result.reloads_ok) and reloaded
    result.probes["loaded"] = await probes(target, args, 2 * args.probes)
    # Everything must be over well before the first held 550 is due: bound the sender by what is left.
    first_rcpt = min((c.rcpt_sent_at for c in held), default=time.monotonic())
    left = args.delay - (time.monotonic() - first_rcpt) - 10.0
    result.legit["loaded"] = await legit(
        server, args, args.legit_messages, max(1.0, min(left, args.legit_timeout))
    )
    result.unexpected_replies, result.unexpected_sample = unexpected_data(held)
    if held:
        result.oldest_rcpt_age_at_check = time.monotonic() - first_rcpt


async def measure(
    server: ServerProcess, smtp: bool, args: argparse.Namespace, sources: list[str], tarpit: Tarpit | None
) -> ServerResult:
    result = ServerResult(server.name, args.connections)
    server.start()
    target = Target(server.host, server.port, sources, smtp, args.step_timeout)
    result.log_path = str(server.log_path)
    held: list[Held] = []
    try:
        await asyncio.sleep(0.5)
        result.rss_kib["start"] = server.rss_kib()
        # Warm-up: one full dialogue, then close, so one-time costs (imports, first allocations) land in idle.
        warm: list[Held] = []
        await open_many(target, 1, 1, 0, out=warm, failures=result.failures)
        result.banner_seconds["warm_up"] = warm[0].banner_seconds if warm else None
        for conn in warm:
            conn.sock.close()
        if tarpit is not None:
            # The sender's first messages create the Maildir and the delivery threads: not timed.
            result.legit["warm_up"] = await legit(server, args, 2 * args.legit_clients)
            await unloaded(server, target, result, args, "before")
            tarpit.write(args.delay)
            result.reloads_ok = server.reload()
        await drained(server, args.settle_timeout)
        await settle(server, 0, args.settle_timeout)
        result.rss_kib["idle"] = server.rss_kib()
        await hold(server, target, result, args, held)
        if tarpit is not None:
            await loaded(server, target, result, args, held=held, tarpit=tarpit)
        else:
            result.unexpected_replies, result.unexpected_sample = unexpected_data(held)
    finally:
        cpu = server.cpu_seconds() if server.process is not None and server.process.poll() is None else None
        for conn in held:
            conn.sock.close()
    result.server_sessions_after_close = await drained(server, args.settle_timeout)
    if cpu is not None and held:
        result.cpu_ms_per_session_close = 1000 * (server.cpu_seconds() - cpu) / len(held)
    result.rss_kib["after_close"] = server.rss_kib()
    if tarpit is not None:
        await unloaded(server, target, result, args, "after")
    result.server_exit_code = server.stop()
    log = server.log()
    result.sessions_opened = 1 + result.connections_held
    result.sessions_opened += sum(p["sessions"] for p in result.probes.values())
    result.sessions_opened += sum(p["sessions"] for p in result.legit.values())
    if smtp:
        result.session_end_lines = log.count("session end ")
    result.log_tail = "\n".join(log.splitlines()[-5:])
    return result


# --- checks and report --------------------------------------------------------------------------------------


def problems_of(result: ServerResult, smtp: bool, delay: float) -> list[str]:
    found = [f"{result.name}: {f}" for f in result.failures[:10]]
    if len(result.failures) > 10:
        found.append(f"{result.name}: ... {len(result.failures) - 10} more connection failures")
    if result.connections_held != result.connections_requested:
        found.append(f"{result.name}: held {result.connections_held} of {result.connections_requested}")
    if not result.settled:
        found.append(
            f"{result.name}: server did not settle (accept all, read all, RSS still): {result.settle_state}"
        )
    if result.unexpected_replies:
        found.append(
            f"{result.name}: {result.unexpected_replies} held connections had a reply waiting "
            f"(e.g. {result.unexpected_sample!r})"
        )
    if smtp and result.oldest_rcpt_age_at_check is not None and result.oldest_rcpt_age_at_check >= delay:
        found.append(
            f"{result.name}: measured {result.oldest_rcpt_age_at_check:.0f}s after the first RCPT, "
            f"not within the {delay:g}s delay"
        )
    if result.reloads_ok is False:
        found.append(f"{result.name}: a reload (SIGHUP) was not confirmed in the log")
    for phase, p in result.probes.items():
        if p["answered"] != p["count"] or p["codes"] != [550]:
            found.append(
                f"{result.name}: probes {phase}: {p['answered']}/{p['count']} answered, codes {p['codes']}"
            )
            found += [f"{result.name}: probes {phase}: {e}" for e in p["errors"][:3]]
    for phase, p in result.legit.items():
        if p["ok"] != p["messages"]:
            found.append(
                f"{result.name}: sender {phase}: {p['ok']}/{p['messages']} accepted, "
                f"{p['errors']} errors {p['error_sample']}, timed out: {p['timed_out']}"
            )
    if result.server_sessions_after_close:
        found.append(f"{result.name}: {result.server_sessions_after_close} connections open after close")
    ends = result.session_end_lines
    clean = not result.failures and not any(p["errors"] for p in result.legit.values())
    if smtp and clean and ends is not None and ends != result.sessions_opened:
        found.append(
            f"{result.name}: {ends} 'session end' log lines, expected {result.sessions_opened} "
            "(held + warm-up + probes + sender's messages)"
        )
    if result.server_exit_code != 0:
        found.append(f"{result.name}: exit code {result.server_exit_code} after SIGTERM")
    return found


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f}"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def memory_table(results: list[ServerResult]) -> str:
    """Memory and cost per held connection: a column per server, and their ratio where it means something."""

    def row(label: str, values: list[float | None], spec: str, with_ratio: bool = False) -> list[str]:
        cells = [fmt(v, spec) for v in values]
        ratio_text = fmt(ratio(values[0], values[1]), ".2f") if with_ratio and len(values) == 2 else ""
        return [label, *cells, ratio_text]

    def ms_of(key: str) -> list[float | None]:
        values = [r.banner_seconds.get(key) for r in results]
        return [None if v is None else 1000 * v for v in values]

    rows = [
        row("connections held", [r.connections_held for r in results], "d"),
        row("idle RSS KiB", [r.rss_kib.get("idle") for r in results], "d"),
        row("held RSS KiB", [r.rss_kib.get("held") for r in results], "d"),
        row("KiB per held connection", [r.kib_per_connection for r in results], ".2f", True),
        row("  slope through the checkpoints", [r.slope_kib_per_connection for r in results], ".2f", True),
        [
            "  RSS KiB at N/4, N/2, 3N/4",
            *(" ".join(str(rss) for _, rss in r.checkpoints[:-1]) for r in results),
            "",
        ],
        row("banner ms, first (idle server)", ms_of("first"), ".2f"),
        row("banner ms, N-th (N-1 held)", ms_of("last"), ".2f"),
        row("banner ms, bulk p99 (100 opening at once)", ms_of("bulk_p99"), ".2f"),
        row("seconds to open all", [r.open_seconds for r in results], ".1f"),
        row(
            "server CPU while only holding, % of a core",
            [None if r.idle_cpu_share_held is None else 100 * r.idle_cpu_share_held for r in results],
            ".1f",
        ),
        row("server CPU ms per session opened", [r.cpu_ms_per_session_open for r in results], ".3f", True),
        row(
            "server CPU ms per held session closed",
            [r.cpu_ms_per_session_close for r in results],
            ".3f",
            True,
        ),
        row(
            "kernel Slab KiB per connection (both ends)",
            [r.kernel_slab_kib_per_connection for r in results],
            ".2f",
        ),
        row("server file descriptors held", [r.fds_held for r in results], "d"),
    ]
    return table(["measure", *(r.name for r in results), "ratio"], rows)


def pick(phase: dict[str, Any] | None, *keys: str) -> float | None:
    """A nested value of a phase's result, or None if the phase or any key is missing."""
    value: Any = phase
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value if isinstance(value, int | float) else None


def targets_of(r: ServerResult) -> dict[str, dict[str, Any]]:
    """Each target: the measured value, and met (True / False, None if not measured)."""
    unloaded_sender = (
        pooled(r.legit["before"], r.legit["after"]) if {"before", "after"} <= r.legit.keys() else {}
    )
    loaded_sender = r.legit.get("loaded")
    first, last = r.banner_seconds.get("first"), r.banner_seconds.get("last")
    values: dict[str, tuple[float | None, bool]] = {
        "kib_per_session": (r.kib_per_connection, (r.kib_per_connection or 0) <= BUDGET_KIB),
        # Single samples, so "as fast" allows 5 ms of noise (a shared 2-core machine).
        "last_banner_minus_first_ms": (
            None if first is None or last is None else 1000 * (last - first),
            first is not None and last is not None and last - first <= 0.005,
        ),
        "probe_overshoot_p99_ms": (
            p99 := pick(r.probes.get("loaded"), "overshoot_ms", "p99"),
            (p99 or 0) <= OVERSHOOT_TARGET_MS,
        ),
        "probe_overshoot_max_ms": (
            top := pick(r.probes.get("loaded"), "overshoot_ms", "max"),
            (top or 0) <= OVERSHOOT_TARGET_MS,
        ),
        "sender_throughput_loaded_to_unloaded": (
            tput := ratio(pick(loaded_sender, "rate"), pick(unloaded_sender, "rate")),
            (tput or 0) >= THROUGHPUT_TARGET,
        ),
        "sender_p99_loaded_to_unloaded": (
            slower := ratio(pick(loaded_sender, "p99_ms"), pick(unloaded_sender, "p99_ms")),
            (slower or 0) <= P99_TARGET,
        ),
    }
    return {name: {"value": v, "met": None if v is None else met} for name, (v, met) in values.items()}


TARGET_TEXT = {
    "probe_overshoot_p99_ms": "<= 20",
    "probe_overshoot_max_ms": "<= 20",
    "sender_throughput_loaded_to_unloaded": ">= 0.90",
    "sender_p99_loaded_to_unloaded": "<= 2.0",
}


def while_held(r: ServerResult, targets: dict[str, dict[str, Any]]) -> str:
    """The table of what fresh clients saw: unloaded (before / after the hold) against loaded."""
    unloaded_sender = (
        pooled(r.legit["before"], r.legit["after"]) if {"before", "after"} <= r.legit.keys() else {}
    )

    def verdict_of(name: str) -> str:
        met = targets[name]["met"]
        return "not measured" if met is None else "met" if met else "NOT MET"

    def probe_row(label: str, keys: tuple[str, str], spec: str, target: str = "") -> list[str]:
        before, after, loaded = (pick(r.probes.get(k), *keys) for k in ("before", "after", "loaded"))
        ratio_text = fmt(ratio(loaded, before), ".2f") if keys[0] == "banner_ms" else ""
        return [
            label,
            f"{fmt(before, spec)} / {fmt(after, spec)}",
            fmt(loaded, spec),
            ratio_text,
            TARGET_TEXT.get(target, ""),
            verdict_of(target) if target else "",
        ]

    def sender_row(label: str, key: str, spec: str, target: str = "") -> list[str]:
        before, after = pick(r.legit.get("before"), key), pick(r.legit.get("after"), key)
        pooled_value, loaded = unloaded_sender.get(key), pick(r.legit.get("loaded"), key)
        return [
            label,
            f"{fmt(pooled_value, spec)} ({fmt(before, spec)} / {fmt(after, spec)})"
            if pooled_value is not None
            else f"{fmt(before, spec)} / {fmt(after, spec)}",
            fmt(loaded, spec),
            fmt(ratio(loaded, pooled_value), ".3f") if pooled_value is not None else "",
            TARGET_TEXT.get(target, ""),
            verdict_of(target) if target else "",
        ]

    rows = [
        probe_row("probe delay overshoot p50 ms", ("overshoot_ms", "p50"), ".1f"),
        probe_row("probe delay overshoot p99 ms", ("overshoot_ms", "p99"), ".1f", "probe_overshoot_p99_ms"),
        probe_row("probe delay overshoot max ms", ("overshoot_ms", "max"), ".1f", "probe_overshoot_max_ms"),
        probe_row("probe banner p50 ms", ("banner_ms", "p50"), ".2f"),
        sender_row("sender msg/s", "rate", ".1f", "sender_throughput_loaded_to_unloaded"),
        sender_row("sender p50 ms", "p50_ms", ".1f"),
        sender_row("sender p99 ms", "p99_ms", ".1f", "sender_p99_loaded_to_unloaded"),
        sender_row("server CPU ms per sender msg", "server_cpu_ms_per_message", ".2f"),
    ]
    headers = ["measure", "unloaded: pooled (before / after)", f"{r.connections_held} held", "ratio"]
    return table([*headers, "target", "verdict"], rows)


async def run(args: argparse.Namespace) -> int:
    nofile = raise_nofile()  # the servers inherit it: they are started from this process
    if args.connections < 3:
        print("--connections must be at least 3", file=sys.stderr)
        return 2
    if args.connections + 100 > nofile:
        print(f"--connections {args.connections} does not fit the fd limit {nofile}", file=sys.stderr)
        return 2
    sources = source_addresses(args.sources, HELD_SUBNET) if args.sources else []
    folder = Path(tempfile.mkdtemp(prefix="bench-held-", dir=args.tmpdir))
    started = datetime.datetime.now(datetime.UTC)
    results: list[ServerResult] = []
    tarpit = Tarpit(folder / "smtp-tarpit", args)
    tarpit.folder.mkdir(parents=True)
    config = tarpit.write(args.probe_delay)
    servers = [
        (ServerProcess("smtp-tarpit", smtp_tarpit_command(config), tarpit.folder), True),
        (ServerProcess("baseline", baseline_command("hold"), folder / "baseline"), False),
    ]
    try:
        for server, smtp in servers:
            print(f"{server.name}: opening {args.connections} connections ...", file=sys.stderr, flush=True)
            results.append(await measure(server, smtp, args, sources, tarpit if smtp else None))
    except BaseException:
        if not args.keep:  # a server that did not start: its log is in the traceback, the folder can go
            shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        for server, _ in servers:
            server.kill()  # only if still running: measure() already stopped it
    tarpit_result, baseline = results
    mem_ratio = ratio(tarpit_result.kib_per_connection, baseline.kib_per_connection)
    problems = problems_of(tarpit_result, True, args.delay) + problems_of(baseline, False, args.delay)
    targets = targets_of(tarpit_result)
    held_text = while_held(tarpit_result, targets)
    hidden = {"name", "legit"} if args.keep else {"name", "log_path", "legit"}
    servers_json = {r.name: {k: v for k, v in vars(r).items() if k not in hidden} for r in results}
    servers_json["smtp-tarpit"]["legit"] = {
        phase: {k: v for k, v in p.items() if k != "latencies"} for phase, p in tarpit_result.legit.items()
    }
    data: dict[str, Any] = {
        "benchmark": "held_connections",
        "started": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "config": config.read_text(),
        "sources": {
            "held": f"{len(sources)} addresses from {sources[0] if sources else '-'}",
            "legit": LEGIT_ADDRESS,
        },
        "servers": servers_json,
        "kib_per_connection": {r.name: r.kib_per_connection for r in results},
        "ratio_tarpit_to_baseline": mem_ratio,
        "budget_kib_per_connection": BUDGET_KIB,
        "targets": targets,
        "ok": not problems,
        "problems": problems,
    }
    write_json(args.json, data)
    print(memory_table(results))
    print(f"ratio smtp-tarpit / baseline KiB per connection: {fmt(mem_ratio, '.2f')}")
    print(
        f"\nsmtp-tarpit while {tarpit_result.connections_held} sessions are held (probes: delay "
        f"{args.probe_delay:g}s, {args.probes} fresh clients; sender: {args.legit_messages} messages, "
        f"{args.legit_clients} clients, one connection each):"
    )
    print(held_text)
    for name, t in targets.items():
        met = "not measured" if t["met"] is None else "met" if t["met"] else "NOT MET"
        print(f"target {name}: {met} ({fmt(t['value'], '.4g')})")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print(f"JSON: {args.json}")
    if args.keep:
        print(f"kept: {folder}")
    else:
        shutil.rmtree(folder, ignore_errors=True)
    return 0 if not problems else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--connections", type=int, default=10000, help="connections held per server (>= 3)")
    parser.add_argument(
        "--delay", type=float, default=240.0, help="smtp-tarpit [tarpit] delay while holding, s"
    )
    parser.add_argument(
        "--sources",
        type=int,
        default=250,
        help="spread held connections over this many addresses 127.0.1.1... (0: let the kernel pick)",
    )
    parser.add_argument("--concurrency", type=int, default=100, help="connections being opened at once")
    parser.add_argument("--checkpoints", type=int, default=4, help="RSS read after each of this many parts")
    parser.add_argument("--probes", type=int, default=20, help="fresh clients timed per phase")
    parser.add_argument("--probe-delay", type=float, default=2.0, help="[tarpit] delay for the probes, s")
    parser.add_argument("--probe-stagger", type=float, default=0.25, help="seconds between probe starts")
    parser.add_argument("--legit-messages", type=int, default=1000, help="sender's messages per phase")
    parser.add_argument("--legit-clients", type=int, default=4, help="sender's concurrent connections")
    parser.add_argument("--legit-size", type=int, default=2048, help="sender's message size, octets")
    parser.add_argument("--legit-timeout", type=float, default=60.0, help="bound on one sender phase, s")
    parser.add_argument("--step-timeout", type=float, default=20.0, help="bound on opening one connection, s")
    parser.add_argument("--open-timeout", type=float, default=120.0, help="bound on opening the bulk, s")
    parser.add_argument("--settle-timeout", type=float, default=15.0, help="bound on each settle wait, s")
    parser.add_argument(
        "--max-connections", type=int, default=20000, help="smtp-tarpit [limits] max_connections"
    )
    parser.add_argument("--json", type=Path, default=BENCH / "results" / "held_connections.json")
    parser.add_argument("--tmpdir", type=Path, default=None, help="where the temporary folder goes")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (configs, logs)")
    args = parser.parse_args()
    if not 0 < args.delay <= 240:
        parser.error("--delay must be in (0, 240]")
    if args.open_timeout + 3 * args.settle_timeout + 2 * args.step_timeout >= args.delay:
        parser.error("--delay must exceed the time the measurement can take (open + settle + step timeouts)")
    if not 0 <= args.sources <= 250 * 90:
        parser.error("--sources must be in 0..22500")
    if not 0 < args.probe_delay < 60 or args.probes < 1 or args.legit_messages < 1 or args.legit_clients < 1:
        parser.error("--probe-delay in (0, 60), --probes, --legit-messages, --legit-clients >= 1")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
