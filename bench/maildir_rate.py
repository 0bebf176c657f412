"""Benchmark: messages per second accepted into Maildir (fsync on) by smtp-tarpit, against a discarding sink.

One load generator (an asyncio SMTP client in this script: asyncio.Protocol, no SMTP library, so it costs
little CPU on a machine it shares with the server) sends a fixed number of 2 KB messages with C concurrent
clients, one connection per message (or, with --reuse, one connection per client for all its messages), to:

- smtp-tarpit, delivering into a Maildir (it always fsyncs: file, then new/ directory, before the 250);
- the sink (bench/baseline_server.py --mode sink): the same SMTP dialogue, DATA discarded, no disk.

Only a 250 after the final dot counts. After each run the number of files in the Maildir new/ directories
(or the sink's own count) must equal the number of 250s. Each server is run R times (fresh process, fresh
folder, the order alternating run by run); the median rate is reported, and smtp-tarpit's as a ratio of the
sink's. A Postfix smtpd column is skipped: see bench/README.md.

Run: .venv/bin/python bench/maildir_rate.py [--messages 2000] [--clients 20] [--runs 3] [--reuse]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import re
import shutil
import statistics
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
    system_cpu_busy_seconds,
    table,
    wait_until_quiet,
    write_json,
    write_tarpit_config,
)

SINK_STOPPED = re.compile(r"stopped: (\d+) connections, (\d+) messages")
POSTFIX_SMTPD = (Path("/usr/lib/postfix/sbin/smtpd"), Path("/usr/libexec/postfix/smtpd"))
DESIGN_TARGET = "accept into Maildir (fsync on) at >= 1.5x the rate of Postfix's smtpd (DESIGN.md)"


class DialogueError(Exception):
    pass


def make_message(size: int) -> bytes:
    """A message of exactly ``size`` octets on the wire before the final dot: headers, then 76-octet lines."""
    head = (
        b"From: Bench Sender <sender@bench.test>\r\n"
        b"To: <rcpt@example.test>\r\n"
        b"Subject: maildir_rate benchmark message\r\n"
        b"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
        b"Message-ID: <maildir-rate@bench.test>\r\n"
        b"\r\n"
    )
    line = b"x" * 74 + b"\r\n"
    body = b""
    while len(head) + len(body) + len(line) <= size:
        body += line
    rest = size - len(head) - len(body)
    if rest >= 3:
        body += b"y" * (rest - 2) + b"\r\n"
    message = head + body
    return message + b"\r\n" * ((size - len(message)) // 2)


class Client(asyncio.Protocol):
    """One SMTP client connection: send a command, await the complete reply's code."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.waiter: asyncio.Future[int] | None = None
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._deliver()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionResetError("server closed the connection")
        self.transport = None
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(self.lost)

    def _deliver(self) -> None:
        if self.waiter is None or self.waiter.done():
            return
        start = 0
        while True:
            end = self.buffer.find(b"\r\n", start)
            if end < 0:
                return
            line = self.buffer[start:end]
            start = end + 2
            if len(line) < 3:
                self.waiter.set_exception(DialogueError(f"bad reply line {line!r}"))
                return
            if len(line) == 3 or line[3:4] == b" ":
                self.buffer = self.buffer[start:]
                self.waiter.set_result(int(line[:3]))
                return

    async def reply(self, timeout: float) -> int:
        if self.lost is not None and not self.buffer:
            raise self.lost
        self.waiter = asyncio.get_running_loop().create_future()
        self._deliver()
        if self.lost is not None and not self.waiter.done():
            self.waiter.set_exception(self.lost)
        return await asyncio.wait_for(self.waiter, timeout)

    async def command(self, data: bytes, expected: int, timeout: float) -> int:
        if self.transport is None:
            raise ConnectionResetError("not connected")
        self.transport.write(data)
        code = await self.reply(timeout)
        if code != expected:
            raise DialogueError(f"{data[:12]!r}: expected {expected}, got {code}")
        return code


@dataclass
class Load:
    """One timed load: what to send, where, and the tallies."""

    host: str
    port: int
    count: int
    message: bytes
    recipients: list[bytes]
    step_timeout: float
    reuse: bool
    taken: int = 0
    ok: int = 0  # a 250 after the final dot
    refused: int = 0  # any other reply after the final dot
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # MAIL sent to 250 after the dot, seconds

    def take(self) -> int | None:
        if self.taken >= self.count:
            return None
        self.taken += 1
        return self.taken - 1


async def connect(load: Load) -> Client:
    loop = asyncio.get_running_loop()
    _, client = await asyncio.wait_for(
        loop.create_connection(Client, load.host, load.port), load.step_timeout
    )
    await client.command(b"", 220, load.step_timeout)
    await client.command(b"EHLO client.bench.test\r\n", 250, load.step_timeout)
    return client


async def send_one(client: Client, load: Load, index: int) -> None:
    started = time.perf_counter()
    rcpt = load.recipients[index % len(load.recipients)]
    await client.command(
        b"MAIL FROM:<sender@bench.test> SIZE=%d\r\n" % len(load.message), 250, load.step_timeout
    )
    await client.command(b"RCPT TO:<%s>\r\n" % rcpt, 250, load.step_timeout)
    await client.command(b"DATA\r\n", 354, load.step_timeout)
    assert client.transport is not None
    client.transport.write(load.message + b".\r\n")
    code = await client.reply(load.step_timeout)
    if code == 250:
        load.ok += 1
        load.latencies.append(time.perf_counter() - started)
    else:
        load.refused += 1


async def quit_and_close(client: Client, timeout: float) -> None:
    try:
        if client.transport is not None:
            await client.command(b"QUIT\r\n", 221, timeout)
    except (OSError, DialogueError, TimeoutError):
        pass
    finally:
        if client.transport is not None:
            client.transport.close()


async def worker(load: Load) -> None:
    client: Client | None = None
    try:
        while (index := load.take()) is not None:
            try:
                if client is None:
                    client = await connect(load)
                await send_one(client, load, index)
            except (OSError, DialogueError, TimeoutError) as exc:
                load.errors.append(f"message {index}: {exc.__class__.__name__}: {exc}")
                if client is not None and client.transport is not None:
                    client.transport.abort()
                client = None
                continue
            if not load.reuse:
                await quit_and_close(client, load.step_timeout)
                client = None
    finally:
        if client is not None:
            await quit_and_close(client, load.step_timeout)


async def drive(load: Load, clients: int, timeout: float) -> tuple[float, bool]:
    """Run ``clients`` workers until ``load.count`` messages were tried or ``timeout`` passed.
    Returns (elapsed seconds, timed out?)."""
    started = time.perf_counter()
    tasks = [asyncio.ensure_future(worker(load)) for _ in range(clients)]
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=10)
    elapsed = time.perf_counter() - started
    for task in done:
        if task.exception() is not None:
            load.errors.append(f"worker failed: {task.exception()!r}")
    return elapsed, bool(pending)


# --- one run of one server ----------------------------------------------------------------------------------


def maildir_files(root: Path, sub: str) -> list[Path]:
    return [p for p in root.glob(f"*/*/{sub}/*") if p.is_file()]


async def one_run(kind: str, folder: Path, args: argparse.Namespace, message: bytes) -> dict[str, Any]:
    recipients = [f"box{i}@example.test" for i in range(args.mailboxes)]
    folder.mkdir(parents=True)
    if kind == "smtp-tarpit":
        config = write_tarpit_config(folder, args.delay, recipients, max_connections=20000)
        server = ServerProcess(kind, smtp_tarpit_command(config), folder)
    else:
        server = ServerProcess(kind, baseline_command("sink"), folder)
    server.start()
    result: dict[str, Any] = {"server": kind, "problems": []}
    try:
        rcpts = [r.encode() for r in recipients]
        # Warm-up, not timed: first connections, and the Maildirs' creation (every mailbox gets one).
        warm = Load(
            server.host, server.port, max(10, args.mailboxes), message, rcpts, args.step_timeout, False
        )
        await drive(warm, 1, args.timeout)
        result["warm_up_ok"] = warm.ok
        load = Load(server.host, server.port, args.messages, message, rcpts, args.step_timeout, args.reuse)
        cpu_server, cpu_client, cpu_all = server.cpu_seconds(), time.process_time(), system_cpu_busy_seconds()
        elapsed, timed_out = await drive(load, args.clients, args.timeout)
        cpu_server, cpu_client = server.cpu_seconds() - cpu_server, time.process_time() - cpu_client
        cpu_others = system_cpu_busy_seconds() - cpu_all - cpu_server - cpu_client
        result["rss_kib_after"] = server.rss_kib()
    finally:
        exit_code = server.stop()
    accepted = warm.ok + load.ok
    result.update(
        tried=load.taken,
        ok=load.ok,
        refused=load.refused,
        errors=len(load.errors),
        error_sample=load.errors[:5],
        elapsed_seconds=elapsed,
        timed_out=timed_out,
        rate=load.ok / elapsed if elapsed > 0 else 0.0,
        latency_ms={
            "p50": (quantile(load.latencies, 0.5) or 0) * 1000,
            "p99": (quantile(load.latencies, 0.99) or 0) * 1000,
            "max": max(load.latencies, default=0) * 1000,
        },
        cpu_ms_per_message={
            "server": 1000 * cpu_server / load.ok if load.ok else None,
            "client": 1000 * cpu_client / load.ok if load.ok else None,
        },
        # Share of the machine's CPUs used by everything else during the run (other users, the kernel's own
        # work not charged to our processes): high values mean a noisy measurement.
        others_cpu_share=max(0.0, cpu_others) / (elapsed * (os.cpu_count() or 1)) if elapsed > 0 else None,
        server_exit_code=exit_code,
    )
    problems: list[str] = result["problems"]
    if kind == "smtp-tarpit":
        new, tmp = maildir_files(folder / "mail", "new"), maildir_files(folder / "mail", "tmp")
        result["files_in_new"] = len(new)
        result["files_left_in_tmp"] = len(tmp)
        if len(new) != accepted:
            problems.append(f"{len(new)} files in new/, but {accepted} messages got a 250 (incl. warm-up)")
        if tmp:
            problems.append(f"{len(tmp)} files left in tmp/")
        expected_tail = message.replace(b"\r\n", b"\n")
        if new and not max(new, key=lambda p: p.stat().st_mtime).read_bytes().endswith(expected_tail):
            problems.append("the newest file in new/ does not end with the message sent")
    else:
        found = SINK_STOPPED.search(server.log())
        counted = int(found.group(2)) if found else None
        result["sink_counted"] = counted
        if counted != accepted:
            problems.append(f"the sink counted {counted} messages, but {accepted} got a 250 (incl. warm-up)")
    if load.ok != args.messages:
        problems.append(f"only {load.ok} of {args.messages} messages got a 250")
    if timed_out:
        problems.append(f"the run hit --timeout {args.timeout}s")
    if exit_code != 0:
        problems.append(f"exit code {exit_code} after SIGTERM; log tail: {server.log()[-500:]!r}")
    return result


def postfix_status() -> str:
    for path in POSTFIX_SMTPD:
        if path.exists():
            return f"skipped: {path} is installed, but this benchmark has no Postfix column yet"
    if shutil.which("smtpd"):
        return "skipped: smtpd is on PATH, but this benchmark has no Postfix column yet"
    return "skipped: Postfix is not installed (no /usr/lib/postfix/sbin/smtpd)"


def summarize(kind: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [r["rate"] for r in runs]
    return {
        "rates": rates,
        "median_rate": statistics.median(rates) if rates else None,
        "median_latency_p50_ms": statistics.median(r["latency_ms"]["p50"] for r in runs) if runs else None,
        "median_latency_p99_ms": statistics.median(r["latency_ms"]["p99"] for r in runs) if runs else None,
        "median_server_cpu_ms_per_message": statistics.median(
            r["cpu_ms_per_message"]["server"] or 0 for r in runs
        ),
        "median_client_cpu_ms_per_message": statistics.median(
            r["cpu_ms_per_message"]["client"] or 0 for r in runs
        ),
        "max_others_cpu_share": max((r["others_cpu_share"] or 0 for r in runs), default=None),
        "runs": runs,
    }


def report(summary: dict[str, dict[str, Any]], ratio: float | None, postfix: str) -> str:
    headers = [
        "server",
        "msg/s per run",
        "median msg/s",
        "p50 ms",
        "p99 ms",
        "srv CPU ms/msg",
        "cli CPU ms/msg",
        "others' CPU",
    ]
    rows = []
    for kind, s in summary.items():
        rows.append(
            [
                kind,
                " ".join(f"{r:.0f}" for r in s["rates"]),
                f"{s['median_rate']:.1f}",
                f"{s['median_latency_p50_ms']:.1f}",
                f"{s['median_latency_p99_ms']:.1f}",
                f"{s['median_server_cpu_ms_per_message']:.2f}",
                f"{s['median_client_cpu_ms_per_message']:.2f}",
                f"<= {100 * (s['max_others_cpu_share'] or 0):.0f}%",
            ]
        )
    text = table(headers, rows)
    text += f"\nratio smtp-tarpit / sink (median rates): {'-' if ratio is None else f'{ratio:.3f}'}"
    text += f"\npostfix: {postfix}"
    return text


async def run(args: argparse.Namespace) -> int:
    raise_nofile()
    message = make_message(args.size)
    folder = Path(tempfile.mkdtemp(prefix="bench-maildir-", dir=args.tmpdir))
    started = datetime.datetime.now(datetime.UTC)
    kinds = ["smtp-tarpit", "sink"]
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    try:
        for number in range(args.runs):
            order = kinds if number % 2 == 0 else kinds[::-1]
            for kind in order:
                print(f"run {number + 1}/{args.runs}: {kind} ...", file=sys.stderr, flush=True)
                busy_before = wait_until_quiet(args.wait_quiet)
                result = await one_run(kind, folder / f"run{number + 1}" / kind, args, message)
                result["run"] = number + 1
                result["machine_busy_share_before"] = busy_before
                runs[kind].append(result)
                print(
                    f"  {result['ok']}/{args.messages} in {result['elapsed_seconds']:.2f}s = "
                    f"{result['rate']:.1f} msg/s",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    summary = {kind: summarize(kind, runs[kind]) for kind in kinds}
    tarpit, sink = summary["smtp-tarpit"]["median_rate"], summary["sink"]["median_rate"]
    ratio = tarpit / sink if tarpit is not None and sink else None
    postfix = postfix_status()
    problems = [f"{kind} run {r['run']}: {p}" for kind in kinds for r in runs[kind] for p in r["problems"]]
    data: dict[str, Any] = {
        "benchmark": "maildir_rate",
        "started": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "message_octets": len(message),
        "servers": summary,
        "ratio_tarpit_to_sink": ratio,
        "postfix": postfix,
        "design_target": DESIGN_TARGET,
        "ok": not problems,
        "problems": problems,
    }
    write_json(args.json, data)
    print(report(summary, ratio, postfix))
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print(f"JSON: {args.json}")
    if args.keep:
        print(f"kept: {folder}")
    return 0 if not problems else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--messages", type=int, default=2000, help="messages per run (timed)")
    parser.add_argument("--clients", type=int, default=20, help="concurrent clients")
    parser.add_argument("--size", type=int, default=2048, help="message size in octets, before the final dot")
    parser.add_argument("--reuse", action="store_true", help="one connection per client for all its messages")
    parser.add_argument("--runs", type=int, default=3, help="runs per server; the median is reported")
    parser.add_argument(
        "--mailboxes", type=int, default=1, help="spread the messages over this many mailboxes"
    )
    parser.add_argument(
        "--delay", type=float, default=5.0, help="smtp-tarpit [tarpit] delay (no 5xx is sent)"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="bound on one run, s")
    parser.add_argument("--step-timeout", type=float, default=60.0, help="bound on one reply, s")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=20.0,
        help="before each run, wait up to this many seconds for the machine to be < 15%% busy (0: don't)",
    )
    parser.add_argument("--json", type=Path, default=BENCH / "results" / "maildir_rate.json")
    parser.add_argument(
        "--tmpdir", type=Path, default=None, help="where the temporary folder (and Maildir) goes"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (configs, logs, mail)")
    args = parser.parse_args()
    if args.messages < 1 or args.clients < 1 or args.runs < 1 or args.mailboxes < 1:
        parser.error("--messages, --clients, --runs and --mailboxes must be at least 1")
    if args.size < 300:
        parser.error("--size must be at least 300 octets")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
