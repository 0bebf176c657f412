"""Benchmark: messages per second accepted durably: smtp-tarpit (Maildir, fsync on), Postfix smtpd, a sink.

The same load generator, in the same run, against each server:

- **smtp-tarpit**, delivering into a Maildir (it always fsyncs: file, then the new/ directory, before 250);
- **postfix**: a private Postfix (tests/e2e/downstream.py, own config directory, a free 127.0.0.1 port)
  whose smtpd answers 250 after cleanup has written and fsynced the queue file; by default the message
  then stays in the hold queue (no background delivery: acceptance work only; see bench/postfixlib.py and
  ``--postfix-disposal`` for discard(8) or Maildir delivery instead);
- **sink**: bench/baseline_server.py --mode sink: the same SMTP dialogue, DATA discarded, no disk.

Two load generators, each against every server: this script's own asyncio client (bench/smtpload.py) and
Postfix's ``smtp-source -c -l SIZE -m N -s C -f sender@bench.test -t box0@example.test 127.0.0.1:PORT``.
C concurrent clients, one connection per message (or, with --reuse, one per client), 2 KB messages.

Only a 250 after the final dot counts, and what each server kept must match: files in Maildir new/
(smtp-tarpit), queue files in hold/ or deliveries (Postfix), the sink's own count. Each (generator, server)
pair runs R times, a fresh server each time, the order rotating run by run; the median rate is reported,
with the ratios smtp-tarpit / Postfix (DESIGN.md's target: >= 1.5) and each / sink. See bench/README.md.

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
from postfixlib import (
    DISPOSALS,
    delivered,
    files_in,
    missing_tools,
    postfix_cpu_seconds,
    postfix_version,
    queued,
    smtp_source,
    start_acceptor,
)
from smtpload import Load, drive, make_message
from tests.e2e.downstream import PostfixInstance, free_port  # postfixlib put the repo root on sys.path

SINK_STOPPED = re.compile(r"stopped: (\d+) connections, (\d+) messages")
TROUBLE = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback")
POSTFIX_TROUBLE = re.compile(r"\b(warning|fatal|panic|error):")
TARGET_RATIO = 1.5
DESIGN_TARGET = "accept into Maildir (fsync on) at >= 1.5x the rate of Postfix's smtpd (DESIGN.md)"
GENERATORS = ("python", "smtp-source")
IN_FLIGHT = ("maildrop", "incoming", "active", "deferred")  # Postfix queues that must end up empty


# --- the servers under test ---------------------------------------------------------------------------------


class Target:
    """A server under test: start it, read its CPU time, wait for its background work, stop it, and check
    that what it kept matches what it acknowledged."""

    name = ""
    host = "127.0.0.1"
    port = 0

    def __init__(self, folder: Path, args: argparse.Namespace) -> None:
        self.folder = folder
        self.args = args
        self.mailboxes = [f"box{i}@example.test" for i in range(args.mailboxes)]

    def start(self) -> None:
        raise NotImplementedError

    def cpu_seconds(self, kernel_only: bool = False) -> float:
        """The server's CPU time so far (user + system, or only system with ``kernel_only``)."""
        raise NotImplementedError

    def loop_cpu_seconds(self) -> float | None:
        """CPU time so far of the thread that runs the event loop (None: not one process of ours)."""
        return None

    def drain(self, expected: int) -> float:
        """Wait (bounded) for work the server does after its 250; return the seconds waited."""
        return 0.0

    def stop(self) -> int | None:
        raise NotImplementedError

    def kept(self) -> int | None:
        """How many messages the server kept (or counted), after stop()."""
        raise NotImplementedError

    def checks(self, acknowledged: int, message: bytes | None) -> list[str]:
        """Problems with what the server kept, after stop(); ``message`` is the last one sent, if known."""
        kept = self.kept()
        if kept != acknowledged:
            return [f"{self.name} kept {kept} messages, but {acknowledged} got a 250 (warm-up included)"]
        return []

    def trouble(self) -> list[str]:
        return []


class ProcessTarget(Target):
    """A server that is one process of ours: started from ``command()``, measured and stopped by its PID."""

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        self.server = ServerProcess(self.name, self.command(), self.folder).start()
        self.host, self.port = self.server.host, self.server.port

    def cpu_seconds(self, kernel_only: bool = False) -> float:
        return self.server.cpu_seconds(kernel_only)

    def loop_cpu_seconds(self) -> float | None:
        return self.server.cpu_seconds(main_thread=True)

    def stop(self) -> int | None:
        return self.server.stop()


class TarpitTarget(ProcessTarget):
    name = "smtp-tarpit"

    def command(self) -> list[str]:
        config = write_tarpit_config(self.folder, self.args.delay, self.mailboxes, max_connections=20000)
        return smtp_tarpit_command(config)

    def kept(self) -> int | None:
        return len(maildir_files(self.folder / "mail", "new"))

    def checks(self, acknowledged: int, message: bytes | None) -> list[str]:
        problems = super().checks(acknowledged, message)
        new, tmp = maildir_files(self.folder / "mail", "new"), maildir_files(self.folder / "mail", "tmp")
        if tmp:
            problems.append(f"{len(tmp)} files left in tmp/")
        if message is not None and new:
            newest = max(new, key=lambda p: p.stat().st_mtime)
            if not newest.read_bytes().endswith(message.replace(b"\r\n", b"\n")):
                problems.append("the newest file in new/ does not end with the message sent")
        return problems

    def trouble(self) -> list[str]:
        return [line for line in self.server.log().splitlines() if TROUBLE.search(line)][:10]


class TarpitGroupTarget(TarpitTarget):
    """``count`` smtp-tarpit processes on one port (``[server] reuse_port``: the kernel spreads the
    connections), one Maildir, one SQLite client store (what several processes of one host must share)."""

    def __init__(self, folder: Path, args: argparse.Namespace, count: int) -> None:
        super().__init__(folder, args)
        self.count = count
        self.name = f"smtp-tarpit x{count}"
        self.servers: list[ServerProcess] = []

    def start(self) -> None:
        port = free_port()
        for number in range(self.count):
            sub = self.folder / f"p{number}"  # its own config, log and admin socket
            sub.mkdir()
            config = write_tarpit_config(
                sub,
                self.args.delay,
                self.mailboxes,
                max_connections=20000,
                extra=f'[reputation]\nstore = "sqlite://{self.folder / "state.db"}"\n',
                listen=f"127.0.0.1:{port}",
                maildir=str(self.folder / "mail"),
                reuse_port=True,
            )
            server = ServerProcess(f"{self.name}-{number}", smtp_tarpit_command(config), sub).start()
            self.servers.append(server)
        self.server = self.servers[0]
        self.host, self.port = self.server.host, self.server.port

    def cpu_seconds(self, kernel_only: bool = False) -> float:
        return sum(server.cpu_seconds(kernel_only) for server in self.servers)

    def loop_cpu_seconds(self) -> float | None:
        return sum(server.cpu_seconds(main_thread=True) for server in self.servers)

    def stop(self) -> int | None:
        codes = [server.stop() for server in self.servers]
        return next((code for code in codes if code), 0)

    def trouble(self) -> list[str]:
        lines = [line for server in self.servers for line in server.log().splitlines()]
        return [line for line in lines if TROUBLE.search(line)][:10]


class SinkTarget(ProcessTarget):
    name = "sink"

    def command(self) -> list[str]:
        return baseline_command("sink")

    def kept(self) -> int | None:
        found = SINK_STOPPED.search(self.server.log())
        return int(found.group(2)) if found else None


class PostfixTarget(Target):
    def __init__(self, folder: Path, args: argparse.Namespace, disposal: str) -> None:
        super().__init__(folder, args)
        self.disposal = disposal
        self.name = f"postfix ({disposal})"
        self.postfix: PostfixInstance | None = None

    def start(self) -> None:
        self.postfix = start_acceptor(self.folder, self.mailboxes, self.disposal)
        self.port = self.postfix.port

    def cpu_seconds(self, kernel_only: bool = False) -> float:
        assert self.postfix is not None
        return postfix_cpu_seconds(self.postfix, kernel_only)

    def _done(self) -> int:
        assert self.postfix is not None
        if self.disposal == "hold":
            return queued(self.postfix, ("hold",))
        if self.disposal == "discard":
            return delivered(self.postfix)
        return sum(len(files_in(self.postfix.maildir(m) / "new")) for m in self.mailboxes)

    def drain(self, expected: int) -> float:
        """Until every acknowledged message is where the disposal puts it and nothing else is queued (or,
        with nothing queued, the count has not moved for 3 s), bounded by --drain-timeout."""
        assert self.postfix is not None
        started = time.monotonic()
        last, changed = -1, started
        while time.monotonic() - started < self.args.drain_timeout:
            done, waiting = self._done(), queued(self.postfix, IN_FLIGHT)
            if done != last:
                last, changed = done, time.monotonic()
            if waiting == 0 and (done >= expected or time.monotonic() - changed > 3.0):
                break
            time.sleep(0.05)
        return time.monotonic() - started

    def stop(self) -> int | None:
        assert self.postfix is not None
        self.postfix.stop()
        return 0

    def kept(self) -> int | None:
        return self._done()

    def checks(self, acknowledged: int, message: bytes | None) -> list[str]:
        assert self.postfix is not None
        problems = super().checks(acknowledged, message)
        left = queued(self.postfix, IN_FLIGHT)
        if left:
            problems.append(f"{left} messages still in Postfix's incoming/active/deferred queues")
        return problems

    def trouble(self) -> list[str]:
        assert self.postfix is not None
        return [line for line in self.postfix.log().splitlines() if POSTFIX_TROUBLE.search(line)][:10]


def maildir_files(root: Path, sub: str) -> list[Path]:
    return [p for p in root.glob(f"*/*/{sub}/*") if p.is_file()]


def make_target(kind: str, folder: Path, args: argparse.Namespace) -> Target:
    if kind == "smtp-tarpit":
        return TarpitTarget(folder, args)
    if kind == "sink":
        return SinkTarget(folder, args)
    group = re.fullmatch(r"smtp-tarpit-x(\d+)", kind)
    if group:
        return TarpitGroupTarget(folder, args, int(group.group(1)))
    return PostfixTarget(folder, args, kind.removeprefix("postfix:"))


def difference(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else after - before


# --- the two load generators --------------------------------------------------------------------------------


async def python_load(target: Target, args: argparse.Namespace, message: bytes) -> dict[str, Any]:
    """Warm-up (one message per client, not timed), then the timed load with the asyncio client."""
    rcpts = [m.encode() for m in target.mailboxes]
    warm_count = max(args.clients, args.mailboxes)
    warm = Load(target.host, target.port, warm_count, message, rcpts, args.step_timeout, False)
    await drive(warm, args.clients, args.timeout)
    busy_before = wait_until_quiet(args.wait_quiet)
    load = Load(target.host, target.port, args.messages, message, rcpts, args.step_timeout, args.reuse)
    cpu_server, cpu_client, cpu_all = target.cpu_seconds(), time.process_time(), system_cpu_busy_seconds()
    kernel_server, loop_server = target.cpu_seconds(kernel_only=True), target.loop_cpu_seconds()
    elapsed, timed_out = await drive(load, args.clients, args.timeout)
    cpu_server, cpu_client = target.cpu_seconds() - cpu_server, time.process_time() - cpu_client
    kernel_server = target.cpu_seconds(kernel_only=True) - kernel_server
    loop_server = difference(target.loop_cpu_seconds(), loop_server)
    return {
        "warm_up_ok": warm.ok,
        "ok": load.ok,
        "refused": load.refused,
        "errors": len(load.errors),
        "error_sample": load.errors[:5],
        "elapsed_seconds": elapsed,
        "timed_out": timed_out,
        "latency_ms": {
            "p50": (quantile(load.latencies, 0.5) or 0) * 1000,
            "p99": (quantile(load.latencies, 0.99) or 0) * 1000,
            "max": max(load.latencies, default=0) * 1000,
        },
        "cpu_seconds": {
            "server": cpu_server,
            "server_kernel": kernel_server,
            "server_loop": loop_server,
            "client": cpu_client,
        },
        "cpu_all": system_cpu_busy_seconds() - cpu_all,
        "machine_busy_share_before": busy_before,
    }


def source_load(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    """Warm-up (one message per session, not timed), then the timed load with smtp-source."""
    mailbox = target.mailboxes[0]
    warm = smtp_source(
        target.port,
        mailbox,
        target.folder / "warm-up",
        messages=args.clients,
        sessions=args.clients,
        size=args.size,
        reuse=False,
        timeout=60,
    )
    warm_ok = args.clients if warm.exit_code == 0 and not warm.timed_out else None
    busy_before = wait_until_quiet(args.wait_quiet)
    cpu_server, cpu_all = target.cpu_seconds(), system_cpu_busy_seconds()
    kernel_server, loop_server = target.cpu_seconds(kernel_only=True), target.loop_cpu_seconds()
    source = smtp_source(
        target.port,
        mailbox,
        target.folder / "load",
        messages=args.messages,
        sessions=args.clients,
        size=args.size,
        reuse=args.reuse,
        timeout=args.timeout,
    )
    cpu_server = target.cpu_seconds() - cpu_server
    kernel_server = target.cpu_seconds(kernel_only=True) - kernel_server
    loop_server = difference(target.loop_cpu_seconds(), loop_server)
    complete = source.exit_code == 0 and not source.timed_out
    return {
        "warm_up_ok": warm_ok,
        # smtp-source exits 0 only if every message got a 2xx; otherwise the count comes from the server.
        "ok": args.messages if complete else None,
        "refused": None,
        "errors": 0 if complete else 1,
        "error_sample": [] if complete else [f"exit {source.exit_code}: {source.stderr[-300:]}"],
        "elapsed_seconds": source.elapsed,
        "timed_out": source.timed_out,
        "latency_ms": None,
        "cpu_seconds": {
            "server": cpu_server,
            "server_kernel": kernel_server,
            "server_loop": loop_server,
            "client": source.cpu_seconds,
        },
        "cpu_all": system_cpu_busy_seconds() - cpu_all,
        "machine_busy_share_before": busy_before,
        "dots_sent": source.dots_sent,
    }


# --- one run of one (generator, server) pair ----------------------------------------------------------------


async def one_run(
    kind: str, generator: str, folder: Path, args: argparse.Namespace, message: bytes
) -> dict[str, Any]:
    folder.mkdir(parents=True)
    target = make_target(kind, folder, args)
    target.start()
    result: dict[str, Any] = {"server": target.name, "generator": generator, "problems": []}
    problems: list[str] = result["problems"]
    drain = 0.0
    cpu_drain = 0.0
    try:
        if generator == "python":
            result.update(await python_load(target, args, message))
        else:
            result.update(source_load(target, args))
        before = target.cpu_seconds()
        expected_if_all = (result["warm_up_ok"] or 0) + (result["ok"] or args.messages)
        drain = target.drain(expected_if_all)
        cpu_drain = target.cpu_seconds() - before
    finally:
        exit_code = target.stop()
    kept = target.kept()
    warm_ok = result["warm_up_ok"]
    if result["ok"] is None:  # smtp-source failed: count what the server kept, minus the warm-up
        result["ok"] = max(0, (kept or 0) - (warm_ok or 0))
    ok, elapsed = result["ok"], result["elapsed_seconds"]
    cpu = result.pop("cpu_seconds")
    cpu_others = result.pop("cpu_all") - cpu["server"] - cpu["client"]
    result.update(
        rate=ok / elapsed if elapsed > 0 else 0.0,
        cpu_ms_per_message={
            "server": 1000 * cpu["server"] / ok if ok else None,
            "server_incl_drain": 1000 * (cpu["server"] + cpu_drain) / ok if ok else None,
            "server_kernel": 1000 * cpu["server_kernel"] / ok if ok else None,
            "server_loop": 1000 * cpu["server_loop"] / ok if ok and cpu["server_loop"] is not None else None,
            "client": 1000 * cpu["client"] / ok if ok else None,
        },
        # Share of the machine's CPUs used by everything else during the load (other users, the kernel's own
        # work not charged to our processes): high values mean a noisy measurement.
        others_cpu_share=max(0.0, cpu_others) / (elapsed * (os.cpu_count() or 1)) if elapsed > 0 else None,
        drain_seconds=drain,
        kept=kept,
        server_exit_code=exit_code,
        log_trouble=target.trouble(),
    )
    if warm_ok is None:
        problems.append("the warm-up failed")
    problems += target.checks((warm_ok or 0) + ok, message if generator == "python" else None)
    if ok != args.messages:
        problems.append(f"only {ok} of {args.messages} messages got a 250")
    if result["errors"]:
        problems.append(f"{result['errors']} errors, e.g. {result['error_sample'][:2]}")
    if result["timed_out"]:
        problems.append(f"the load hit --timeout {args.timeout}s")
    if exit_code != 0:
        problems.append(f"exit code {exit_code} after SIGTERM")
    return result


# --- summary and report -------------------------------------------------------------------------------------


def median_of(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    cpu = {
        key: median_of([r["cpu_ms_per_message"][key] for r in runs])
        for key in ("server", "server_incl_drain", "server_kernel", "server_loop", "client")
    }
    latencies = [r["latency_ms"] for r in runs if r["latency_ms"]]
    return {
        "rates": [r["rate"] for r in runs],
        "median_rate": median_of([r["rate"] for r in runs]),
        "median_latency_p50_ms": median_of([x["p50"] for x in latencies]),
        "median_latency_p99_ms": median_of([x["p99"] for x in latencies]),
        "median_cpu_ms_per_message": cpu,
        "median_drain_seconds": median_of([r["drain_seconds"] for r in runs]),
        "max_others_cpu_share": max((r["others_cpu_share"] or 0 for r in runs), default=None),
        "runs": runs,
    }


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def ratios(summary: dict[str, dict[str, Any]], kinds: list[str]) -> dict[str, dict[str, float | None]]:
    """Per generator: smtp-tarpit / each Postfix column, and every server / sink (median rates)."""
    out: dict[str, dict[str, float | None]] = {}
    for generator, servers in summary.items():
        rates = {name: s["median_rate"] for name, s in servers.items()}
        found: dict[str, float | None] = {}
        sink = rates.get("sink")
        for ours, tarpit in rates.items():
            for name, rate in rates.items():
                if ours.startswith("smtp-tarpit") and name.startswith("postfix") and tarpit is not None:
                    found[f"{ours} / {name}"] = tarpit / rate if rate else None
        for name, rate in rates.items():
            if name != "sink" and sink and rate is not None:
                found[f"{name} / sink"] = rate / sink
        out[generator] = found
    return out


def run_ratios(runs: list[dict[str, Any]], generator: str, postfix: str) -> list[float]:
    """smtp-tarpit / Postfix for each run separately (the two loads were minutes apart at most)."""
    by_run: dict[int, dict[str, float]] = {}
    for r in runs:
        if r["generator"] == generator:
            by_run.setdefault(r["run"], {})[r["server"]] = r["rate"]
    return [
        pair["smtp-tarpit"] / pair[postfix]
        for _, pair in sorted(by_run.items())
        if pair.get("smtp-tarpit") and pair.get(postfix)
    ]


def report(summary: dict[str, dict[str, Any]], found: dict[str, dict[str, float | None]], args: Any) -> str:
    headers = [
        "generator",
        "server",
        "msg/s per run",
        "median msg/s",
        "p50 ms",
        "p99 ms",
        "srv CPU ms/msg (+drain)",
        "of it kernel",
        "of it event loop",
        "cli CPU ms/msg",
        "drain s",
        "others' CPU",
    ]
    rows = []
    for generator, servers in summary.items():
        for name, s in servers.items():
            cpu = s["median_cpu_ms_per_message"]
            rows.append(
                [
                    generator,
                    name,
                    " ".join(f"{r:.0f}" for r in s["rates"]),
                    fmt(s["median_rate"], ".1f"),
                    fmt(s["median_latency_p50_ms"], ".1f"),
                    fmt(s["median_latency_p99_ms"], ".1f"),
                    f"{fmt(cpu['server'], '.2f')} ({fmt(cpu['server_incl_drain'], '.2f')})",
                    fmt(cpu["server_kernel"], ".2f"),
                    fmt(cpu["server_loop"], ".2f"),
                    fmt(cpu["client"], ".2f"),
                    fmt(s["median_drain_seconds"], ".1f"),
                    f"<= {100 * (s['max_others_cpu_share'] or 0):.0f}%",
                ]
            )
    mode = "one connection per client (--reuse)" if args.reuse else "one connection per message"
    text = (
        f"{args.messages} messages x {args.runs} runs, {args.clients} clients, {args.size} octets, {mode}\n"
    )
    text += table(headers, rows)
    for generator, pairs in found.items():
        for name, value in pairs.items():
            verdict = ""
            if name.startswith("smtp-tarpit") and " / postfix" in name and value is not None:
                met = "met" if value >= TARGET_RATIO else "NOT MET"
                verdict = f"  (target >= {TARGET_RATIO:g}: {met})"
            text += f"\nratio {name} [{generator}]: {fmt(value, '.3f')}{verdict}"
    return text


def columns(args: argparse.Namespace) -> tuple[list[str], list[str], str | None]:
    """(servers, generators, why Postfix is skipped or None) from the options and what is installed."""
    servers = [s for s in args.servers.split(",") if s]
    disposals = [d for d in args.postfix_disposal.split(",") if d]
    generators = [g for g in args.generators.split(",") if g]
    missing = missing_tools()
    skipped = f"skipped: {', '.join(missing)} missing (Debian package 'postfix')" if missing else None
    kinds: list[str] = []
    for server in servers:
        if server == "postfix":
            kinds += [] if skipped else [f"postfix:{d}" for d in disposals]
        else:
            kinds.append(server)
    if skipped:
        generators = [g for g in generators if g != "smtp-source"]
    return kinds, generators, skipped


async def run(args: argparse.Namespace) -> int:
    raise_nofile()
    message = make_message(args.size)
    kinds, generators, postfix_skipped = columns(args)
    folder = Path(tempfile.mkdtemp(prefix="bench-maildir-", dir=args.tmpdir))
    started = datetime.datetime.now(datetime.UTC)
    runs: list[dict[str, Any]] = []
    fatal: list[str] = []
    try:
        for number in range(args.runs):
            for generator in generators:
                shift = number % len(kinds)
                order = kinds[shift:] + kinds[:shift]
                for kind in order:
                    print(
                        f"run {number + 1}/{args.runs} [{generator}]: {kind} ...", file=sys.stderr, flush=True
                    )
                    where = folder / f"run{number + 1}" / generator / kind.replace(":", "-")
                    try:
                        result = await one_run(kind, generator, where, args, message)
                    except Exception as exc:  # a server that did not start: report it, go on
                        fatal.append(
                            f"run {number + 1} [{generator}] {kind}: {exc.__class__.__name__}: {exc}"
                        )
                        continue
                    result["run"] = number + 1
                    runs.append(result)
                    print(
                        f"  {result['ok']}/{args.messages} in {result['elapsed_seconds']:.2f}s = "
                        f"{result['rate']:.1f} msg/s",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    summary: dict[str, dict[str, Any]] = {}
    for generator in generators:
        names = list(dict.fromkeys(r["server"] for r in runs if r["generator"] == generator))
        summary[generator] = {
            name: summarize([r for r in runs if r["generator"] == generator and r["server"] == name])
            for name in names
        }
    found = ratios(summary, kinds)
    per_run = {
        generator: {
            name: run_ratios(runs, generator, name)
            for name in summary[generator]
            if name.startswith("postfix")
        }
        for generator in generators
    }
    problems = fatal + [
        f"{r['server']} [{r['generator']}] run {r['run']}: {p}" for r in runs for p in r["problems"]
    ]
    disposals = {k.removeprefix("postfix:"): DISPOSALS[k.removeprefix("postfix:")] for k in kinds if ":" in k}
    data: dict[str, Any] = {
        "benchmark": "maildir_rate",
        "started": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "message_octets_python": len(message),
        "smtp_source_payload_octets": args.size,
        "postfix_version": None if postfix_skipped else postfix_version(),
        "postfix_disposal": disposals,
        "postfix_skipped": postfix_skipped,
        "servers": summary,
        "ratios": found,
        "ratios_per_run": per_run,
        "target": DESIGN_TARGET,
        "ok": not problems,
        "problems": problems,
    }
    write_json(args.json, data)
    print(report(summary, found, args))
    for generator, pairs in per_run.items():
        for name, values in pairs.items():
            print(f"per run smtp-tarpit / {name} [{generator}]: {' '.join(f'{v:.3f}' for v in values)}")
    for disposal, what in disposals.items():
        print(f"postfix ({disposal}): {what}")
    if postfix_skipped:
        print(f"postfix: {postfix_skipped}")
    for line in sorted({line for r in runs for line in r.get("log_trouble", [])})[:10]:
        print(f"log: {line}")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print(f"JSON: {args.json}")
    if args.keep:
        print(f"kept: {folder}")
    return 0 if not problems else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--messages", type=int, default=2000, help="messages per timed load")
    parser.add_argument("--clients", type=int, default=20, help="concurrent clients (smtp-source -s)")
    parser.add_argument(
        "--size", type=int, default=2048, help="message octets (python), payload octets (smtp-source -l)"
    )
    parser.add_argument("--reuse", action="store_true", help="one connection per client for all its messages")
    parser.add_argument("--runs", type=int, default=3, help="runs per server; the median is reported")
    parser.add_argument(
        "--servers",
        default="smtp-tarpit,postfix,sink",
        help="comma-separated subset; smtp-tarpit-xN adds N smtp-tarpit processes sharing one port "
        "([server] reuse_port), one Maildir and one SQLite client store (x1: the store's cost alone)",
    )
    parser.add_argument("--generators", default=",".join(GENERATORS), help="python, smtp-source or both")
    parser.add_argument(
        "--postfix-disposal",
        default="hold",
        help="what Postfix does with accepted mail: hold, discard, maildir (comma list: a column each)",
    )
    parser.add_argument(
        "--mailboxes", type=int, default=1, help="spread the messages over this many mailboxes"
    )
    parser.add_argument(
        "--delay", type=float, default=5.0, help="smtp-tarpit [tarpit] delay (no 5xx is sent)"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="bound on one load, s")
    parser.add_argument("--step-timeout", type=float, default=60.0, help="bound on one reply, s")
    parser.add_argument(
        "--drain-timeout", type=float, default=120.0, help="bound on waiting for Postfix's deliveries, s"
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=10.0,
        help="before each load, wait up to this many seconds for the machine to be < 15%% busy (0: don't)",
    )
    parser.add_argument("--json", type=Path, default=BENCH / "results" / "maildir_rate.json")
    parser.add_argument(
        "--tmpdir", type=Path, default=None, help="where the temporary folder (and mail) goes"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (configs, logs, mail)")
    args = parser.parse_args()
    if args.messages < 1 or args.clients < 1 or args.runs < 1 or args.mailboxes < 1:
        parser.error("--messages, --clients, --runs and --mailboxes must be at least 1")
    if args.size < 300:
        parser.error("--size must be at least 300 octets")
    known = re.compile(r"smtp-tarpit|smtp-tarpit-x([1-9]|[1-5][0-9]|6[0-4])|postfix|sink")
    if not all(known.fullmatch(server) for server in args.servers.split(",")):
        parser.error("--servers: smtp-tarpit, smtp-tarpit-xN (N from 1 to 64), postfix, sink")
    if not set(args.generators.split(",")) <= set(GENERATORS):
        parser.error("--generators: python, smtp-source")
    if not set(args.postfix_disposal.split(",")) <= set(DISPOSALS):
        parser.error(f"--postfix-disposal: {', '.join(DISPOSALS)}")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
