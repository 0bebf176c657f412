"""Benchmark: server memory (RSS) per held connection, smtp-tarpit against a bare asyncio.Protocol baseline.

For each server, in one run and one after the other: start it, warm it up with one connection, read its idle
RSS, open N connections and hold them, read its RSS again, close everything, stop it. smtp-tarpit runs with a
tar pit delay of 240 s (the config maximum) and every connection reads the banner, sends EHLO, MAIL FROM and
RCPT TO an unknown address, so every session waits on a delayed 550; the benchmark checks that no 550 has
arrived when it measures. The baseline (bench/baseline_server.py --mode hold) writes a 220 and holds.

Result: KiB per held connection above the idle RSS, for both, and their ratio; time to the banner for the
first connection (idle server) and the last (N-1 held). See bench/README.md.

Run: .venv/bin/python bench/held_connections.py [--connections 2000] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
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
    machine,
    quantile,
    raise_nofile,
    smtp_tarpit_command,
    table,
    write_json,
    write_tarpit_config,
)

UNKNOWN_RECIPIENT = b"nobody@example.test"
TCP_ESTABLISHED = "01"
TCP_CLOSE_WAIT = "08"
BUDGET_KIB = 4.0  # DESIGN.md, "Performance budget"


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
    kib_per_connection: float | None = None
    banner_seconds: dict[str, float | None] = field(default_factory=dict)
    open_seconds: float = 0.0
    settled: bool = False
    settle_state: str = ""
    unexpected_replies: int = 0
    unexpected_sample: str = ""
    oldest_rcpt_age_at_check: float | None = None
    server_sessions_after_close: int | None = None
    session_end_lines: int | None = None
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


# --- the server side, seen from /proc -----------------------------------------------------------------------


def server_sockets(server: ServerProcess) -> tuple[int, int, int]:
    """(established, close-wait, bytes unread) over the TCP sockets the server process itself has open.

    Sockets are matched by inode (/proc/PID/fd), not by port: a client socket bound to 127.0.0.x may get
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


# --- one server, start to stop ------------------------------------------------------------------------------


async def measure(
    server: ServerProcess, smtp: bool, args: argparse.Namespace, sources: list[str]
) -> ServerResult:
    result = ServerResult(server.name, args.connections)
    n = args.connections
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
        await drained(server, args.settle_timeout)
        await settle(server, 0, args.settle_timeout)
        result.rss_kib["idle"] = server.rss_kib()

        opened = time.monotonic()
        # The first connection, alone, on the idle server.
        await open_many(target, 1, 1, 0, out=held, failures=result.failures)
        result.banner_seconds["first"] = held[0].banner_seconds if held else None
        # The bulk, `concurrency` at a time, bounded in time as a whole.
        bulk: list[Held] = []
        try:
            await asyncio.wait_for(
                open_many(target, n - 2, args.concurrency, 1, out=bulk, failures=result.failures),
                args.open_timeout,
            )
        except TimeoutError:
            result.failures.append(f"opening the bulk took longer than --open-timeout {args.open_timeout}s")
        held += bulk
        bulk_banners = [c.banner_seconds for c in bulk]
        result.banner_seconds["bulk_p50"] = quantile(bulk_banners, 0.5)
        result.banner_seconds["bulk_p99"] = quantile(bulk_banners, 0.99)
        result.banner_seconds["bulk_max"] = max(bulk_banners) if bulk_banners else None
        await settle(server, len(held), args.settle_timeout)
        # The last connection, alone, with N-1 held.
        last: list[Held] = []
        await open_many(target, 1, 1, n - 1, out=last, failures=result.failures)
        result.banner_seconds["last"] = last[0].banner_seconds if last else None
        held += last
        result.open_seconds = time.monotonic() - opened
        result.connections_held = len(held)

        result.settled, result.settle_state = await settle(server, len(held), args.settle_timeout)
        result.rss_kib["held"] = server.rss_kib()
        result.status_held = server.status()
        result.unexpected_replies, result.unexpected_sample = unexpected_data(held)
        if smtp and held:
            result.oldest_rcpt_age_at_check = time.monotonic() - min(c.rcpt_sent_at for c in held)
        if held:
            result.kib_per_connection = (result.rss_kib["held"] - result.rss_kib["idle"]) / len(held)
    finally:
        for conn in held:
            conn.sock.close()
    result.server_sessions_after_close = await drained(server, args.settle_timeout)
    result.rss_kib["after_close"] = server.rss_kib()
    result.server_exit_code = server.stop()
    log = server.log()
    if smtp:
        result.session_end_lines = log.count("session end ")
    result.log_tail = "\n".join(log.splitlines()[-5:])
    return result


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
    if result.server_sessions_after_close:
        found.append(f"{result.name}: {result.server_sessions_after_close} connections open after close")
    ends = result.session_end_lines
    if smtp and ends is not None and ends != result.connections_held + 1:
        found.append(
            f"{result.name}: {result.session_end_lines} 'session end' log lines, expected "
            f"{result.connections_held + 1} (held + warm-up)"
        )
    if result.server_exit_code != 0:
        found.append(f"{result.name}: exit code {result.server_exit_code} after SIGTERM")
    return found


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f}"


def report(results: list[ServerResult], ratio: float | None) -> str:
    headers = [
        "server",
        "held",
        "idle RSS KiB",
        "held RSS KiB",
        "KiB/conn",
        "banner first ms",
        "banner last ms",
        "bulk p99 ms",
        "open s",
    ]
    rows = [
        [
            r.name,
            f"{r.connections_held}/{r.connections_requested}",
            str(r.rss_kib.get("idle", "-")),
            str(r.rss_kib.get("held", "-")),
            fmt(r.kib_per_connection, ".2f"),
            ms(r.banner_seconds.get("first")),
            ms(r.banner_seconds.get("last")),
            ms(r.banner_seconds.get("bulk_p99")),
            f"{r.open_seconds:.1f}",
        ]
        for r in results
    ]
    text = table(headers, rows)
    text += f"\nratio smtp-tarpit / baseline KiB per connection: {fmt(ratio, '.2f')}"
    text += f"  (budget: <= {BUDGET_KIB:g} KiB per tarpitted session above baseline RSS)"
    return text


async def run(args: argparse.Namespace) -> int:
    nofile = raise_nofile()
    if args.connections < 3:
        print("--connections must be at least 3", file=sys.stderr)
        return 2
    if args.connections + 100 > nofile:
        print(f"--connections {args.connections} does not fit the fd limit {nofile}", file=sys.stderr)
        return 2
    sources = [f"127.0.0.{2 + i}" for i in range(args.sources)] if args.sources else []
    folder = Path(tempfile.mkdtemp(prefix="bench-held-", dir=args.tmpdir))
    started = datetime.datetime.now(datetime.UTC)
    results: list[ServerResult] = []
    servers = [
        (ServerProcess("smtp-tarpit", [], folder / "smtp-tarpit"), True),
        (ServerProcess("baseline", baseline_command("hold"), folder / "baseline"), False),
    ]
    tarpit_folder = servers[0][0].folder
    tarpit_folder.mkdir(parents=True)
    config = write_tarpit_config(tarpit_folder, args.delay, ["alice@example.test"], args.max_connections)
    servers[0][0].argv = smtp_tarpit_command(config)
    try:
        for server, smtp in servers:
            print(f"{server.name}: opening {args.connections} connections ...", file=sys.stderr, flush=True)
            results.append(await measure(server, smtp, args, sources))
    finally:
        for server, _ in servers:
            server.kill()  # only if still running: measure() already stopped it
    tarpit, baseline = results
    ratio = None
    if tarpit.kib_per_connection is not None and baseline.kib_per_connection:
        ratio = tarpit.kib_per_connection / baseline.kib_per_connection
    problems = problems_of(tarpit, True, args.delay) + problems_of(baseline, False, args.delay)
    hidden = {"name"} if args.keep else {"name", "log_path"}  # the folder is gone unless --keep
    data: dict[str, Any] = {
        "benchmark": "held_connections",
        "started": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "sources": sources,
        "servers": {r.name: {k: v for k, v in vars(r).items() if k not in hidden} for r in results},
        "kib_per_connection": {r.name: r.kib_per_connection for r in results},
        "ratio_tarpit_to_baseline": ratio,
        "budget_kib_per_connection": BUDGET_KIB,
        "within_budget": tarpit.kib_per_connection is not None and tarpit.kib_per_connection <= BUDGET_KIB,
        "ok": not problems,
        "problems": problems,
    }
    write_json(args.json, data)
    print(report(results, ratio))
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
    parser.add_argument("--connections", type=int, default=2000, help="connections held per server (>= 3)")
    parser.add_argument("--delay", type=float, default=240.0, help="smtp-tarpit [tarpit] delay, s (max 240)")
    parser.add_argument(
        "--sources",
        type=int,
        default=8,
        help="spread connections over this many source addresses 127.0.0.2... (0: let the kernel pick)",
    )
    parser.add_argument("--concurrency", type=int, default=100, help="connections being opened at once")
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
    if not 0 <= args.sources <= 250:
        parser.error("--sources must be in 0..250")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
