"""Benchmark: smtp-tarpit at its file-descriptor limit: does it keep running, refuse politely, and recover?

smtp-tarpit runs under ``prlimit --nofile=L:L`` (default L = 512, soft and hard, so it cannot raise it) and
the client opens more connections than that (L + ``--extra``, ``--concurrency`` at once), spread over
loopback addresses 127.0.50.x. Each connection waits up to ``--banner-timeout`` s for its first reply.
Four modes, each a fresh server:

- **default**: no ``[limits] max_connections`` in the config: the server's own default applies (since
  2026-11-28: the descriptor limit less a reserve of a tenth, at most 1000; the table shows the value the
  server logged);
- **backlog**: ``[limits] max_connections`` at its default (20,000, far above L): the process runs out of
  descriptors before the cap bites. Clients past the limit cannot be accepted: they wait in the kernel's
  listen backlog (asyncio logs "socket.accept() out of system resource" and retries accept() after 1 s);
- **refuse**: ``max_connections = L - --reserve`` (64 descriptors kept for the listener, logs, Maildir
  files): clients past the cap should be accepted, told ``421 4.7.0`` and closed, without running out;
- **headroom**: ``max_connections = L - --reserve - --concurrency``: the same, with room left for every
  connection the client can have in flight at once (each is accepted, so it holds a descriptor until its
  421 is written and it is closed).

For each mode, at the limit: is the server alive, how many descriptors it has, what a fresh client gets,
and what a greeted session gets for a message (Maildir delivery needs a descriptor). Then every greeted
connection is closed ("release"): how long until the waiting clients get their banners, and how long a new
client connecting right after the release, and one connecting once all is quiet, waits for its banner.
Finally everything is closed and the server must exit 0 on SIGTERM. Loopback only, bounded in time.

Run: .venv/bin/python bench/fd_limit.py [--limit 512] [--extra 300] [--modes default,backlog,refuse,headroom]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import re
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

PRLIMIT = "/usr/bin/prlimit"
SOURCE_SUBNET = 50
OUT_OF_FDS = "out of system resource"
CONNECTION_LIMIT = re.compile(r"connection limit: (\d+)")
TROUBLE = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback")
MODES = ("default", "backlog", "refuse", "headroom")


@dataclass
class Conn:
    """One client connection and what it got first."""

    sock: socket.socket
    source: str
    started: float  # perf_counter at connect()
    outcome: str = "waiting"  # 220, 421, other code, waiting (no reply yet), closed (EOF/reset), error
    banner_at: float | None = None  # perf_counter when the first reply arrived
    reader: asyncio.Task[None] | None = field(default=None, repr=False)


async def first_reply(loop: asyncio.AbstractEventLoop, conn: Conn) -> None:
    """Read until the first complete reply line; set the outcome."""
    buffer = b""
    try:
        while b"\r\n" not in buffer:
            chunk = await loop.sock_recv(conn.sock, 1024)
            if not chunk:
                conn.outcome = "closed"
                return
            buffer += chunk
    except OSError:
        conn.outcome = "closed"
        return
    conn.banner_at = time.perf_counter()
    conn.outcome = buffer[:3].decode("ascii", "replace")


async def open_conn(host: str, port: int, source: str, timeout: float) -> Conn:
    """Connect from ``source``; start reading the first reply; wait for it at most ``timeout`` s (the
    reader keeps going after that: a client in the backlog gets its banner later)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    conn = Conn(sock, source, time.perf_counter())
    try:
        sock.bind((source, 0))
        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), timeout)
    except (OSError, TimeoutError) as exc:
        conn.outcome = f"error: {exc.__class__.__name__}"
        return conn
    conn.reader = asyncio.ensure_future(first_reply(loop, conn))
    await asyncio.wait([conn.reader], timeout=timeout)
    return conn


async def open_many(
    host: str, port: int, sources: list[str], count: int, args: argparse.Namespace
) -> list[Conn]:
    semaphore = asyncio.Semaphore(args.concurrency)

    async def one(index: int) -> Conn:
        async with semaphore:
            return await open_conn(host, port, sources[index % len(sources)], args.banner_timeout)

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def read_code(loop: asyncio.AbstractEventLoop, sock: socket.socket, timeout: float) -> str:
    """The code of the next complete reply (multi-line replies read to their last line), or "closed"."""
    buffer = b""
    while True:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 4096), timeout)
        if not chunk:
            return "closed"
        buffer += chunk
        for line in buffer.split(b"\r\n")[:-1]:
            if len(line) == 3 or line[3:4] == b" ":
                return line[:3].decode("ascii", "replace")


async def send_message(conn: Conn, timeout: float) -> dict[str, Any]:
    """On a greeted connection: EHLO, MAIL, RCPT (valid), DATA, a short message. Returns the last reply's
    code (or what went wrong, at which step) and the ms each step took."""
    loop = asyncio.get_running_loop()
    steps = {
        "EHLO": b"EHLO fd.bench.test\r\n",
        "MAIL": b"MAIL FROM:<s@bench.test>\r\n",
        "RCPT": b"RCPT TO:<alice@example.test>\r\n",
        "DATA": b"DATA\r\n",
        "message": b"Subject: fd limit\r\n\r\nbody\r\n.\r\n",
    }
    took: dict[str, float] = {}
    code = "-"
    for step, command in steps.items():
        started = time.perf_counter()
        try:
            await loop.sock_sendall(conn.sock, command)
            code = await read_code(loop, conn.sock, timeout)
        except (OSError, TimeoutError) as exc:
            return {"reply": f"{step}: {exc.__class__.__name__}", "ms": took}
        took[step] = 1000 * (time.perf_counter() - started)
        if code[0] in "45c":  # a refusal, or "closed"
            return {"reply": f"{step}: {code}", "ms": took}
    return {"reply": code, "ms": took}


def close_all(conns: list[Conn]) -> None:
    for conn in conns:
        if conn.reader is not None and not conn.reader.done():
            conn.reader.cancel()
        conn.sock.close()


def count(conns: list[Conn]) -> dict[str, int]:
    found: dict[str, int] = {}
    for conn in conns:
        key = conn.outcome if not conn.outcome.startswith("error") else "error"
        found[key] = found.get(key, 0) + 1
    return found


def nofile_of(pid: int) -> str:
    """The 'Max open files' line of /proc/PID/limits (soft and hard)."""
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return " ".join(line.split()[3:5])
    except OSError:
        pass
    return "?"


def alive(server: ServerProcess) -> bool:
    return server.process is not None and server.process.poll() is None


async def banner_after(host: str, port: int, source: str, timeout: float) -> tuple[str, float | None]:
    """A new client: its first reply and the ms from connect() to it (None if none came in ``timeout``)."""
    conn = await open_conn(host, port, source, timeout)
    try:
        if conn.reader is not None and not conn.reader.done():
            await asyncio.wait([conn.reader], timeout=timeout)
        waited = None if conn.banner_at is None else 1000 * (conn.banner_at - conn.started)
        return conn.outcome, waited
    finally:
        close_all([conn])


async def release(
    server: ServerProcess, conns: list[Conn], args: argparse.Namespace, fresh_source: str
) -> dict[str, Any]:
    """Close every greeted connection; time how fast the waiting ones and a new client get served."""
    waiting = [c for c in conns if c.outcome == "waiting"]
    greeted = [c for c in conns if c.outcome == "220"]
    outcomes_before = count(conns)
    close_all(greeted)
    released = time.perf_counter()
    fresh = asyncio.ensure_future(banner_after(server.host, server.port, fresh_source, args.recover_timeout))
    readers = [c.reader for c in waiting if c.reader is not None]
    if readers:
        await asyncio.wait(readers, timeout=args.recover_timeout)
    served = [1000 * (c.banner_at - released) for c in waiting if c.banner_at is not None]
    outcome, fresh_ms = await fresh
    return {
        "outcomes_before_release": outcomes_before,
        "released": len(greeted),
        "waiting_before": len(waiting),
        "waiting_outcomes": count(waiting),
        "waiting_served_ms": {
            "first": min(served, default=None),
            "p50": quantile(served, 0.5),
            "max": max(served, default=None),
        },
        "new_client_at_release": {"outcome": outcome, "banner_ms": fresh_ms},
    }


async def one_mode(mode: str, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    limit = args.limit
    folder.mkdir(parents=True)
    cap = {
        "default": None,  # not in the config: the server's own default (the descriptor limit less a reserve)
        "backlog": 20000,
        "refuse": limit - args.reserve,
        "headroom": limit - args.reserve - args.concurrency,
    }[mode]
    config = write_tarpit_config(folder, 5, ["alice@example.test"], cap, connections_per_client=50)
    argv = [PRLIMIT, f"--nofile={limit}:{limit}", "--", *smtp_tarpit_command(config)]
    server = ServerProcess(f"smtp-tarpit-{mode}", argv, folder).start()
    deadline = time.monotonic() + 5.0  # logged just after "listening on"
    while (logged := CONNECTION_LIMIT.search(server.log())) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    shown = str(cap) if cap is not None else f"default: {logged.group(1) if logged else '?'}"
    sources = source_addresses(args.sources, SOURCE_SUBNET)
    result: dict[str, Any] = {"mode": mode, "limit": limit, "max_connections": shown, "problems": []}
    conns: list[Conn] = []
    try:
        result["nofile"] = nofile_of(server.pid)
        result["fds_idle"] = fd_count(server.pid)
        total = limit + args.extra
        cpu = server.cpu_seconds()
        started = time.perf_counter()
        conns = await open_many(server.host, server.port, sources, total, args)
        result["open_seconds"] = time.perf_counter() - started
        result["opened"] = total
        result["outcomes"] = count(conns)
        greeted = [c for c in conns if c.outcome == "220"]
        banners = [1000 * (c.banner_at - c.started) for c in greeted if c.banner_at is not None]
        result["banner_ms_greeted"] = {"p50": quantile(banners, 0.5), "max": max(banners, default=None)}
        result["alive_at_limit"] = alive(server)
        result["fds_at_limit"] = fd_count(server.pid)
        outcome, waited = await banner_after(server.host, server.port, "127.0.60.1", args.banner_timeout)
        result["fresh_client_at_limit"] = {"outcome": outcome, "banner_ms": waited}
        result["message_at_limit"] = await send_message(greeted[0], args.recover_timeout) if greeted else None
        result["release"] = await release(server, conns, args, "127.0.60.2")
        close_all(conns)
        await asyncio.sleep(1.5)  # let the server see every close
        outcome, waited = await banner_after(server.host, server.port, "127.0.60.3", args.recover_timeout)
        result["new_client_when_quiet"] = {"outcome": outcome, "banner_ms": waited}
        result["fds_after"] = fd_count(server.pid)
        # From the burst to here: how busy the limit kept the server (it should be nearly idle).
        result["server_cpu_seconds"] = server.cpu_seconds() - cpu
        result["wall_seconds"] = time.perf_counter() - started
        result["alive_after"] = alive(server)
    finally:
        close_all(conns)
        result["exit_code"] = server.stop()
    log = server.log()
    result["log_out_of_fds_lines"] = log.count(OUT_OF_FDS)
    result["log_bytes"] = len(log.encode())
    result["log_trouble"] = [line for line in log.splitlines() if TROUBLE.search(line)][:8]
    result["log_trouble_count"] = len([line for line in log.splitlines() if TROUBLE.search(line)])
    result["problems"] = problems_of(result)
    result["targets"] = targets_of(result, args)
    return result


def problems_of(r: dict[str, Any]) -> list[str]:
    """What must hold in every mode: the server lives on and exits 0, every client past the limit is
    refused with 421 or waits (none is cut off or fails to connect), and it serves again after release."""
    found = []
    if not r.get("alive_at_limit") or not r.get("alive_after"):
        found.append("the server died")
    if r.get("exit_code") != 0:
        found.append(f"exit code {r.get('exit_code')} after SIGTERM")
    outcomes = r.get("outcomes", {})
    impolite = {k: v for k, v in outcomes.items() if k not in ("220", "421", "waiting")}
    if impolite:
        found.append(f"clients past the limit neither refused with 421 nor left waiting: {impolite}")
    quiet = r.get("new_client_when_quiet", {})
    if quiet.get("outcome") != "220":
        found.append(f"a new client after the release got {quiet.get('outcome')}, not 220")
    rel = r.get("release", {})
    if rel.get("waiting_outcomes", {}).get("waiting"):
        found.append(
            f"{rel['waiting_outcomes']['waiting']} waiting clients never got a banner after the release"
        )
    return [f"{r.get('mode')}: {p}" for p in found]


def targets_of(r: dict[str, Any], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Issue 6's "at the limit it keeps running, refuses politely, recovers as soon as descriptors free
    up", as measurable targets (reported met / NOT MET, never a script failure)."""
    rel = r.get("release", {})
    at_release = rel.get("new_client_at_release", {}).get("banner_ms")
    ehlo = (r.get("message_at_limit") or {}).get("ms", {}).get("EHLO")
    values: dict[str, tuple[Any, bool]] = {
        # A session already open is answered promptly although the listener is stuck at the limit.
        f"open_session_ehlo_at_limit_ms <= {args.prompt_ms:g}": (
            ehlo,
            ehlo is not None and ehlo <= args.prompt_ms,
        ),
        # A client arriving right after the release (behind any clients waiting in the backlog).
        f"new_client_banner_after_release_ms <= {args.recover_ms:g}": (
            at_release,
            at_release is not None and at_release <= args.recover_ms,
        ),
        "no_descriptor_exhaustion_log_lines": (
            r.get("log_out_of_fds_lines"),
            r.get("log_out_of_fds_lines") == 0,
        ),
    }
    if r.get("mode") != "backlog":
        fresh = r.get("fresh_client_at_limit", {})
        waited = fresh.get("banner_ms")
        got = waited if waited is not None else f"{fresh.get('outcome')} after {args.banner_timeout:g} s"
        values[f"fresh_client_at_cap_gets_421_within_ms {args.prompt_ms:g}"] = (
            got if fresh else None,
            fresh.get("outcome") == "421" and waited is not None and waited <= args.prompt_ms,
        )
    return {name: {"value": v, "met": None if v is None else met} for name, (v, met) in values.items()}


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def message_text(sent: dict[str, Any] | None) -> str:
    if not sent:
        return "-"
    return f"{sent['reply']} ({fmt(sum(sent['ms'].values()), '.0f')} ms)"


def column(r: dict[str, Any]) -> list[str]:
    """One mode's figures, in the order of ROWS."""
    o = r.get("outcomes", {})
    rel = r.get("release", {})
    served = rel.get("waiting_served_ms", {})
    fresh, at_release, quiet = (
        r.get("fresh_client_at_limit", {}),
        rel.get("new_client_at_release", {}),
        r.get("new_client_when_quiet", {}),
    )
    return [
        r.get("nofile", "?"),
        str(r["max_connections"]),
        str(r.get("opened", "-")),
        " / ".join(str(o.get(k, 0)) for k in ("220", "421", "waiting")),
        str(sum(v for k, v in o.items() if k not in ("220", "421", "waiting"))),
        f"{r.get('fds_idle', '-')} / {r.get('fds_at_limit', '-')} / {r.get('fds_after', '-')}",
        "yes" if r.get("alive_at_limit") and r.get("alive_after") else "NO",
        f"{fresh.get('outcome')} after {fmt(fresh.get('banner_ms'), '.0f')} ms",
        message_text(r.get("message_at_limit")),
        fmt((r.get("message_at_limit") or {}).get("ms", {}).get("EHLO"), ".0f"),
        str(rel.get("waiting_before", "-")),
        f"{fmt(served.get('first'), '.0f')} / {fmt(served.get('max'), '.0f')}",
        f"{at_release.get('outcome')} after {fmt(at_release.get('banner_ms'), '.0f')} ms",
        f"{quiet.get('outcome')} after {fmt(quiet.get('banner_ms'), '.1f')} ms",
        str(r.get("log_out_of_fds_lines", "-")),
        fmt(r["log_bytes"] / 1e6 if "log_bytes" in r else None, ".1f"),
        f"{fmt(r.get('server_cpu_seconds'), '.1f')} / {fmt(r.get('wall_seconds'), '.1f')}",
        str(r.get("exit_code")),
    ]


ROWS = [
    "RLIMIT_NOFILE (soft hard)",
    "[limits] max_connections",
    "connections opened",
    "first reply: 220 / 421 / none yet",
    "first reply: other (cut off, failed)",
    "server fds: idle / at limit / after",
    "server alive throughout",
    "fresh client at the limit",
    "message on an open session at the limit",
    "  its EHLO reply, ms",
    "clients still waiting at release",
    "  served after release, ms (first / last)",
    "new client right after release",
    "new client once quiet",
    "log: 'out of system resource' lines",
    "log size, MB",
    "server CPU s / wall s, burst to end",
    "exit code after SIGTERM",
]


def report(results: list[dict[str, Any]]) -> str:
    columns = [column(r) for r in results if "outcomes" in r]
    names = [r["mode"] for r in results if "outcomes" in r]
    rows = [[label, *(c[i] for c in columns)] for i, label in enumerate(ROWS)]
    return table(["measure", *names], rows)


async def run(args: argparse.Namespace) -> int:
    raise_nofile()
    folder = Path(tempfile.mkdtemp(prefix="bench-fdlimit-", dir=args.tmpdir))
    started = datetime.datetime.now(datetime.UTC)
    results: list[dict[str, Any]] = []
    try:
        for mode in args.modes.split(","):
            print(
                f"{mode}: RLIMIT_NOFILE {args.limit}, {args.limit + args.extra} connections ...",
                file=sys.stderr,
                flush=True,
            )
            try:
                results.append(await one_mode(mode, folder / mode, args))
            except Exception as exc:  # the server did not start: report, go on
                results.append(
                    {"mode": mode, "max_connections": "-", "problems": [f"{mode}: {exc!r}"[:2000]]}
                )
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    problems = [p for r in results for p in r["problems"]]
    data = {
        "benchmark": "fd_limit",
        "started": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "modes": results,
        "ok": not problems,
        "problems": problems,
    }
    write_json(args.json, data)
    print(report(results))
    for r in results:
        for line in r.get("log_trouble", [])[:3]:
            print(f"{r['mode']} log ({r.get('log_trouble_count')} such lines): {line[:200]}")
    for r in results:
        for name, t in r.get("targets", {}).items():
            met = "not measured" if t["met"] is None else "met" if t["met"] else "NOT MET"
            print(f"target {r['mode']} {name}: {met} ({t['value'] if t['value'] is not None else '-'})")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print(f"JSON: {args.json}")
    if args.keep:
        print(f"kept: {folder}")
    return 0 if not problems else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--limit", type=int, default=512, help="the server's RLIMIT_NOFILE (soft = hard)")
    parser.add_argument("--extra", type=int, default=300, help="connections opened beyond the limit")
    parser.add_argument("--reserve", type=int, default=64, help="refuse mode: max_connections = limit - this")
    parser.add_argument(
        "--modes", default=",".join(MODES), help="comma list of default, backlog, refuse, headroom"
    )
    parser.add_argument("--sources", type=int, default=100, help="client addresses 127.0.50.1...")
    parser.add_argument("--concurrency", type=int, default=200, help="connections being opened at once")
    parser.add_argument("--banner-timeout", type=float, default=3.0, help="wait for a first reply, s")
    parser.add_argument(
        "--recover-timeout", type=float, default=10.0, help="wait for service after release, s"
    )
    parser.add_argument("--prompt-ms", type=float, default=100.0, help="target: replies at the limit, ms")
    parser.add_argument("--recover-ms", type=float, default=100.0, help="target: banner after release, ms")
    parser.add_argument("--json", type=Path, default=BENCH / "results" / "fd_limit.json")
    parser.add_argument("--tmpdir", type=Path, default=None, help="where the temporary folder goes")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (configs, logs)")
    args = parser.parse_args()
    if args.limit < 64 or args.extra < 1 or not 0 < args.reserve < args.limit - args.concurrency:
        parser.error("--limit >= 64, --extra >= 1, 0 < --reserve < --limit - --concurrency")
    if not set(args.modes.split(",")) <= set(MODES):
        parser.error("--modes: default, backlog, refuse, headroom")
    if not Path(PRLIMIT).exists():
        parser.error(f"{PRLIMIT} is missing (Debian package util-linux)")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
