"""Benchmark: messages per second through smtp-tarpit (relay mode) into Postfix, against Postfix alone.

One load generator, Postfix's own ``smtp-source`` (C, cheap on CPU), sends the same fixed number of messages
with the same number of parallel sessions, one connection per message (or, with --reuse, many messages per
connection), to:

- **direct**: a private Postfix's smtpd (final destination for example.test, virtual Maildir mailboxes;
  its 250 comes after the message is queued and fsynced by Postfix);
- **relay**: smtp-tarpit with ``[delivery] relay = "smtp://127.0.0.1:<that Postfix's port>"``, which
  answers 250 only after Postfix's 250 for the forwarded message.

Each run starts a fresh Postfix and a fresh smtp-tarpit, warms both up, then times the two loads one after
the other (the order alternates run by run), waiting after each for Postfix's queue to drain into the
Maildir. Direct mail goes to alice@example.test, relayed mail to bob@example.test, so each mailbox counts
one path. Only accepted messages count; at the end the Maildirs must hold exactly one file per message
accepted (for the relay: per 250 smtp-tarpit sent, by its own counter), nothing left in tmp/ or in the
queue, and a relayed body must equal a direct one. The rate is the median of the runs; the headline is the
ratio relay / direct. See bench/README.md.

Run: .venv/bin/python bench/relay_rate.py [--messages 2000] [--sessions 20] [--runs 3] [--reuse]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import re
import shutil
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchlib import (
    BENCH,
    ServerProcess,
    machine,
    smtp_tarpit_command,
    system_cpu_busy_seconds,
    table,
    wait_until_quiet,
    write_json,
)
from postfixlib import (
    POSTFIX,
    SMTP_SOURCE,
    files_in,
    postfix_cpu_seconds,
    postfix_version,
    queued,
    smtp_source,
)
from tests.e2e.downstream import (  # postfixlib put the repository root on sys.path
    PostfixInstance,
    _socket_inodes,
    free_port,
    start_postfix,
)

MAILBOX = {"direct": "alice@example.test", "relay": "bob@example.test"}
TARGETS = ("direct", "relay")
METRIC = re.compile(r"^(smtp_tarpit_\w+?)(?:_total)?\{([^}]*)\}\s+(\S+)$", re.M)
TROUBLE = re.compile(r"WARNING|ERROR|CRITICAL|Traceback|exception", re.I)
POSTFIX_TROUBLE = re.compile(r"\b(warning|fatal|panic|error):")


# --- processes ----------------------------------------------------------------------------------------------


class TarpitProcess(ServerProcess):
    """smtp-tarpit at ``[log] level = "warning"``: its "listening on" line is an info line and is not
    logged, so the SMTP port is found from the process's own LISTEN socket (/proc/net/tcp), not the log."""

    admin_port: int = 0

    def listening(self) -> bool:
        ports = listening_ports(self.pid)
        smtp = sorted(ports - {self.admin_port})
        if smtp and self.admin_port in ports:
            self.host, self.port = "127.0.0.1", smtp[0]
            return True
        return False


def listening_ports(pid: int) -> set[int]:
    """Ports on which ``pid`` has a socket in LISTEN state on 127.0.0.1."""
    inodes = _socket_inodes(pid)
    loopback = socket.inet_aton("127.0.0.1")[::-1].hex().upper()
    ports = set()
    with contextlib.suppress(OSError), open("/proc/net/tcp") as fh:
        next(fh)
        for line in fh:
            fields = line.split()
            address, _, port = fields[1].partition(":")
            if fields[3] == "0A" and fields[9] in inodes and address == loopback:
                ports.add(int(port, 16))
    return ports


def write_config(folder: Path, postfix_port: int, admin_port: int) -> Path:
    (folder / "recipients.txt").write_text("".join(f"{m}\n" for m in MAILBOX.values()))
    config = folder / "smtp-tarpit.toml"
    config.write_text(
        "[server]\n"
        'listen = ["127.0.0.1:0"]\n'
        'hostname = "mx.example.test"\n'
        "[recipients]\n"
        'domains = ["example.test"]\n'
        f'file = "{folder / "recipients.txt"}"\n'
        "[delivery]\n"
        f'relay = "smtp://127.0.0.1:{postfix_port}"\n'
        "[limits]\n"
        "connections_per_client = 100000\n"
        "max_tarpitted = 100000\n"
        "[admin]\n"
        f'socket = "{folder / "admin.sock"}"\n'
        # Read once before and once after each timed load (its message counter); idle otherwise.
        f'listen = "127.0.0.1:{admin_port}"\n'
        "[log]\n"
        'level = "warning"\n'
    )
    return config


def start_tarpit(folder: Path, postfix_port: int) -> TarpitProcess:
    folder.mkdir(parents=True, exist_ok=True)
    last: Exception | None = None
    for attempt in range(3):  # the admin port is picked free but could be taken before the server binds it
        admin_port = free_port()
        config = write_config(folder, postfix_port, admin_port)
        server = TarpitProcess(f"smtp-tarpit-{attempt}", smtp_tarpit_command(config), folder)
        server.admin_port = admin_port
        try:
            server.start()
        except RuntimeError as exc:
            last = exc
        else:
            return server
    raise RuntimeError(f"smtp-tarpit did not start: {last}")


def tarpit_counters(server: TarpitProcess) -> dict[str, float]:
    """smtp-tarpit's own counters from /metrics: messages by result and replies by class and command."""
    url = f"http://127.0.0.1:{server.admin_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:  # a loopback URL we built
        text = response.read().decode()
    counters: dict[str, float] = {}
    for name, labels, value in METRIC.findall(text):
        if name in ("smtp_tarpit_messages", "smtp_tarpit_replies"):
            key = name.removeprefix("smtp_tarpit_") + "{" + labels + "}"
            counters[key] = counters.get(key, 0.0) + float(value)
    return counters


def accepted_by_tarpit(counters: dict[str, float]) -> int:
    return int(counters.get('messages{result="accepted"}', 0))


# --- Postfix's side -----------------------------------------------------------------------------------------


def wait_drained(postfix: PostfixInstance, mailbox: str, expected: int, timeout: float) -> dict[str, Any]:
    """Wait until ``mailbox`` holds ``expected`` messages and Postfix's queue is empty; bounded by
    ``timeout``, and given up early if the queue is empty and the count has not moved for 3 s."""
    new = postfix.maildir(mailbox) / "new"
    started = time.monotonic()
    last_count, last_change = -1, started
    while True:
        count, waiting = len(files_in(new)), queued(postfix)
        now = time.monotonic()
        if count != last_count:
            last_count, last_change = count, now
        if (count >= expected and waiting == 0) or (waiting == 0 and now - last_change > 3.0):
            break
        if now - started >= timeout:
            break
        time.sleep(0.05)
    return {"in_new": count, "queued": waiting, "seconds": time.monotonic() - started}


def body(path: Path) -> bytes:
    return path.read_bytes().partition(b"\n\n")[2]


# --- one run ------------------------------------------------------------------------------------------------


def measure(
    target: str,
    port: int,
    folder: Path,
    *,
    args: argparse.Namespace,
    postfix: PostfixInstance,
    tarpit: TarpitProcess,
    expected_before: int,
) -> dict[str, Any]:
    """One timed load against one target, then the drain of Postfix's queue."""
    mailbox = MAILBOX[target]
    busy_before = wait_until_quiet(args.wait_quiet)
    counters_before = tarpit_counters(tarpit)
    cpu_tarpit, cpu_postfix = tarpit.cpu_seconds(), postfix_cpu_seconds(postfix)
    cpu_all = system_cpu_busy_seconds()
    source = smtp_source(
        port,
        mailbox,
        folder / target,
        messages=args.messages,
        sessions=args.sessions,
        size=args.size,
        reuse=args.reuse,
        timeout=args.timeout,
    )
    cpu_tarpit = tarpit.cpu_seconds() - cpu_tarpit
    cpu_all = system_cpu_busy_seconds() - cpu_all
    cpu_postfix_during = postfix_cpu_seconds(postfix) - cpu_postfix
    counters_after = tarpit_counters(tarpit)
    tarpit_accepted = accepted_by_tarpit(counters_after) - accepted_by_tarpit(counters_before)
    problems: list[str] = []
    # Accepted = got a 2xx after the final dot. smtp-source exits 0 only if all did; otherwise the count
    # comes from the server that answered: smtp-tarpit's own counter, or Postfix's deliveries for direct.
    if source.exit_code == 0 and not source.timed_out:
        accepted = args.messages
    elif target == "relay":
        accepted = tarpit_accepted
    else:
        accepted = -1  # filled in from the Maildir after the drain
    expected = expected_before + (accepted if accepted >= 0 else 0)
    drain = wait_drained(postfix, mailbox, expected if accepted >= 0 else 10**9, args.drain_timeout)
    cpu_postfix_total = postfix_cpu_seconds(postfix) - cpu_postfix
    if accepted < 0:
        accepted = max(0, drain["in_new"] - expected_before)
    cpu_others = cpu_all - cpu_tarpit - cpu_postfix_during - source.cpu_seconds
    # smtp-tarpit is idle during the direct load: no figure per message for it then.
    cpu_tarpit_per_msg = 1000 * cpu_tarpit / accepted if accepted and target == "relay" else None
    if source.timed_out:
        problems.append(f"smtp-source hit --timeout {args.timeout}s and was killed")
    if source.exit_code != 0:
        tail = " | ".join(source.stderr.strip().splitlines()[-3:])
        problems.append(f"smtp-source exited {source.exit_code}: {tail}")
    if accepted != args.messages:
        problems.append(f"only {accepted} of {args.messages} messages accepted")
    if target == "relay" and tarpit_accepted != accepted:
        problems.append(f"smtp-tarpit counted {tarpit_accepted} accepted messages, the client {accepted}")
    non_2xx = {
        key: after - counters_before.get(key, 0.0)
        for key, after in counters_after.items()
        if key.startswith("replies{") and 'class="2xx"' not in key and 'class="3xx"' not in key
    }
    non_2xx = {key: value for key, value in non_2xx.items() if value}
    if target == "relay" and non_2xx:
        problems.append(f"smtp-tarpit sent non-2xx replies during the load: {non_2xx}")
    return {
        "target": target,
        "mailbox": mailbox,
        "accepted": accepted,
        "elapsed_seconds": source.elapsed,
        "rate": accepted / source.elapsed if source.elapsed > 0 else 0.0,
        "smtp_source": {
            "exit_code": source.exit_code,
            "timed_out": source.timed_out,
            "dots_sent": source.dots_sent,
            "stderr_tail": source.stderr[-1000:],
        },
        "tarpit_accepted_counter": tarpit_accepted if target == "relay" else None,
        "tarpit_non_2xx_replies": non_2xx,
        "cpu_ms_per_message": {
            "smtp_tarpit": cpu_tarpit_per_msg,
            "postfix_during_load": 1000 * cpu_postfix_during / accepted if accepted else None,
            "postfix_incl_drain": 1000 * cpu_postfix_total / accepted if accepted else None,
            "client": 1000 * source.cpu_seconds / accepted if accepted else None,
        },
        "others_cpu_share": max(0.0, cpu_others) / (source.elapsed * (os.cpu_count() or 1))
        if source.elapsed > 0
        else None,
        "machine_busy_share_before": busy_before,
        "drain": drain,
        "problems": problems,
    }


def warm_up(port: int, target: str, args: argparse.Namespace, folder: Path) -> tuple[int, list[str]]:
    """Untimed: one message per session, so Postfix has its smtpd processes forked and smtp-tarpit has
    served its first sessions. Returns (messages accepted, problems)."""
    count = args.sessions
    source = smtp_source(
        port,
        MAILBOX[target],
        folder / f"warm-{target}",
        messages=count,
        sessions=args.sessions,
        size=args.size,
        reuse=args.reuse,
        timeout=60,
    )
    if source.exit_code == 0 and not source.timed_out:
        return count, []
    tail = " | ".join(source.stderr.strip().splitlines()[-3:])
    return 0, [f"warm-up ({target}) failed, exit {source.exit_code}: {tail}"]


def serial(port: int, target: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Untimed for the rates: ``--serial`` messages through one session, one after the other, so the wall
    time per message is the latency of one message (connect, dialogue, 250 after the dot, QUIT) with
    nothing else running."""
    source = smtp_source(
        port,
        MAILBOX[target],
        folder / f"serial-{target}",
        messages=args.serial,
        sessions=1,
        size=args.size,
        reuse=args.reuse,
        timeout=120,
    )
    ok = source.exit_code == 0 and not source.timed_out
    problems = (
        [] if ok else [f"serial probe ({target}) failed, exit {source.exit_code}: {source.stderr[-300:]}"]
    )
    return {
        "accepted": args.serial if ok else 0,
        "ms_per_message": 1000 * source.elapsed / args.serial if ok else None,
        "problems": problems,
    }


def one_run(number: int, base: Path, args: argparse.Namespace) -> dict[str, Any]:
    folder = base / f"run{number}"
    folder.mkdir(parents=True)
    result: dict[str, Any] = {"run": number, "problems": [], "measurements": {}}
    problems: list[str] = result["problems"]
    postfix = start_postfix(folder / "postfix", list(MAILBOX.values()))
    tarpit: TarpitProcess | None = None
    expected = dict.fromkeys(TARGETS, 0)
    try:
        tarpit = start_tarpit(folder / "tarpit", postfix.port)
        ports = {"direct": postfix.port, "relay": tarpit.port}
        for target in TARGETS:
            accepted, trouble = warm_up(ports[target], target, args, folder)
            expected[target] += accepted
            problems.extend(trouble)
            wait_drained(postfix, MAILBOX[target], expected[target], args.drain_timeout)
        order = TARGETS if number % 2 == 1 else TARGETS[::-1]
        for target in order:
            print(f"run {number}/{args.runs}: {target} ...", file=sys.stderr, flush=True)
            measured = measure(
                target,
                ports[target],
                folder,
                args=args,
                postfix=postfix,
                tarpit=tarpit,
                expected_before=expected[target],
            )
            expected[target] += measured["accepted"]
            result["measurements"][target] = measured
            problems.extend(f"{target}: {p}" for p in measured["problems"])
            print(
                f"  {measured['accepted']}/{args.messages} in {measured['elapsed_seconds']:.2f}s = "
                f"{measured['rate']:.1f} msg/s (queue drained {measured['drain']['seconds']:.1f}s later)",
                file=sys.stderr,
                flush=True,
            )
        result["serial"] = {}
        for target in order if args.serial else ():
            probe = serial(ports[target], target, args, folder)
            expected[target] += probe["accepted"]
            result["serial"][target] = probe
            problems.extend(probe["problems"])
            wait_drained(postfix, MAILBOX[target], expected[target], args.drain_timeout)
        result["tarpit_counters"] = tarpit_counters(tarpit)
        result["tarpit_rss_kib"] = tarpit.rss_kib()
    finally:
        if tarpit is not None:
            exit_code = tarpit.stop()
            result["tarpit_exit_code"] = exit_code
            if exit_code != 0:
                problems.append(f"smtp-tarpit exit code {exit_code} after SIGTERM")
            log = tarpit.log()
            result["tarpit_log_trouble"] = [line for line in log.splitlines() if TROUBLE.search(line)][:20]
            result["tarpit_log_lines"] = len(log.splitlines())
        for target in TARGETS:  # the last word on delivery: wait once more (bounded), then count
            wait_drained(postfix, MAILBOX[target], expected[target], args.drain_timeout)
        result["postfix_queue_left"] = queued(postfix)
        postfix.stop()
        postfix_log = postfix.log()
        result["postfix_log_trouble"] = [
            line for line in postfix_log.splitlines() if POSTFIX_TROUBLE.search(line)
        ][:20]
    new = {t: files_in(postfix.maildir(MAILBOX[t]) / "new") for t in TARGETS}
    tmp = {t: files_in(postfix.maildir(MAILBOX[t]) / "tmp") for t in TARGETS}
    result["maildir"] = {
        t: {"expected": expected[t], "in_new": len(new[t]), "in_tmp": len(tmp[t])} for t in TARGETS
    }
    for target in TARGETS:
        what = "smtp-tarpit acknowledged" if target == "relay" else "Postfix acknowledged"
        if len(new[target]) < expected[target]:
            problems.append(
                f"{MAILBOX[target]}: {len(new[target])} files in new/, but {what} {expected[target]} "
                f"(warm-up included): {expected[target] - len(new[target])} missing"
            )
        elif len(new[target]) > expected[target]:
            problems.append(
                f"{MAILBOX[target]}: {len(new[target])} files in new/, more than the {expected[target]} "
                f"{what} (warm-up included)"
            )
        if tmp[target]:
            problems.append(f"{MAILBOX[target]}: {len(tmp[target])} files left in tmp/")
    if result["postfix_queue_left"]:
        problems.append(f"{result['postfix_queue_left']} messages still in Postfix's queue at the end")
    if new["direct"] and new["relay"]:
        relayed = max(new["relay"], key=lambda p: p.stat().st_mtime)
        direct = max(new["direct"], key=lambda p: p.stat().st_mtime)
        if body(relayed) != body(direct):
            problems.append(f"the body of {relayed.name} (relayed) differs from {direct.name} (direct)")
        if b"(smtp-tarpit)" not in relayed.read_bytes().partition(b"\n\n")[0]:
            problems.append(f"{relayed.name} (relayed) has no Received: header from smtp-tarpit")
    return result


# --- report -------------------------------------------------------------------------------------------------


def median_of(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for target in TARGETS:
        measured = [r["measurements"][target] for r in runs if target in r["measurements"]]
        cpu = {
            key: median_of([m["cpu_ms_per_message"][key] for m in measured])
            for key in ("smtp_tarpit", "postfix_during_load", "postfix_incl_drain", "client")
        }
        out[target] = {
            "rates": [m["rate"] for m in measured],
            "median_rate": median_of([m["rate"] for m in measured]),
            "median_cpu_ms_per_message": cpu,
            "median_drain_seconds": median_of([m["drain"]["seconds"] for m in measured]),
            "median_serial_ms_per_message": median_of(
                [r["serial"][target]["ms_per_message"] for r in runs if target in r.get("serial", {})]
            ),
            "max_others_cpu_share": max((m["others_cpu_share"] or 0 for m in measured), default=None),
        }
    return out


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def report(summary: dict[str, Any], ratio: float | None, run_ratios: list[float], args: Any) -> str:
    headers = [
        "target",
        "msg/s per run",
        "median msg/s",
        "smtp-tarpit CPU ms/msg",
        "Postfix CPU ms/msg (+drain)",
        "cli CPU ms/msg",
        "serial ms/msg",
        "drain s",
        "others' CPU",
    ]
    names = {"direct": "Postfix alone", "relay": "smtp-tarpit -> Postfix"}
    rows = []
    for target in TARGETS:
        s = summary[target]
        cpu = s["median_cpu_ms_per_message"]
        rows.append(
            [
                names[target],
                " ".join(f"{r:.0f}" for r in s["rates"]),
                fmt(s["median_rate"], ".1f"),
                fmt(cpu["smtp_tarpit"], ".2f"),
                f"{fmt(cpu['postfix_during_load'], '.2f')} ({fmt(cpu['postfix_incl_drain'], '.2f')})",
                fmt(cpu["client"], ".2f"),
                fmt(s["median_serial_ms_per_message"], ".2f"),
                fmt(s["median_drain_seconds"], ".1f"),
                f"<= {100 * (s['max_others_cpu_share'] or 0):.0f}%",
            ]
        )
    mode = "--reuse: one connection per session" if args.reuse else "one connection per message"
    text = f"{args.messages} messages x {args.runs} runs, {args.sessions} sessions, -l {args.size}, {mode}\n"
    text += table(headers, rows)
    text += f"\nratio relay / direct (median rates): {fmt(ratio, '.3f')}"
    text += f"  (per run: {' '.join(f'{r:.3f}' for r in run_ratios) or '-'})"
    return text


def run(args: argparse.Namespace) -> int:
    base = Path(tempfile.mkdtemp(prefix="bench-relay-", dir="/tmp"))
    started = datetime.datetime.now(datetime.UTC)
    runs: list[dict[str, Any]] = []
    fatal: list[str] = []
    try:
        for number in range(1, args.runs + 1):
            try:
                runs.append(one_run(number, base, args))
            except Exception as exc:  # a setup failure: report it, do not leave anything running
                fatal.append(f"run {number}: {exc.__class__.__name__}: {str(exc)[-2000:]}")
                break
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    summary = summarize(runs)
    direct, relay = summary["direct"]["median_rate"], summary["relay"]["median_rate"]
    ratio = relay / direct if relay is not None and direct else None
    run_ratios = [
        r["measurements"]["relay"]["rate"] / r["measurements"]["direct"]["rate"]
        for r in runs
        if {"relay", "direct"} <= r["measurements"].keys() and r["measurements"]["direct"]["rate"]
    ]
    problems = fatal + [f"run {r['run']}: {p}" for r in runs for p in r["problems"]]
    data: dict[str, Any] = {
        "benchmark": "relay_rate",
        "started": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "load_generator": str(SMTP_SOURCE),
        "postfix_version": postfix_version(),
        "summary": summary,
        "ratio_relay_to_direct": ratio,
        "run_ratios": run_ratios,
        "runs": runs,
        "ok": not problems,
        "problems": problems,
    }
    json_path = args.json or BENCH / "results" / (
        "relay_rate_reuse.json" if args.reuse else "relay_rate.json"
    )
    write_json(json_path, data)
    print(report(summary, ratio, run_ratios, args))
    trouble = sorted({line for r in runs for line in r.get("tarpit_log_trouble", [])})
    for line in trouble[:10]:
        print(f"smtp-tarpit log: {line}")
    for line in sorted({line for r in runs for line in r.get("postfix_log_trouble", [])})[:5]:
        print(f"postfix log: {line}")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print(f"JSON: {json_path}")
    if args.keep:
        print(f"kept: {base}")
    return 0 if not problems else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--messages", type=int, default=2000, help="messages per timed load")
    parser.add_argument("--sessions", type=int, default=20, help="smtp-source -s: sessions in parallel")
    parser.add_argument("--size", type=int, default=2048, help="smtp-source -l: payload octets (no headers)")
    parser.add_argument("--reuse", action="store_true", help="smtp-source -d: many messages per connection")
    parser.add_argument(
        "--serial", type=int, default=50, help="messages of the one-session latency probe per run (0: none)"
    )
    parser.add_argument("--runs", type=int, default=3, help="runs; the median rate is reported")
    parser.add_argument("--timeout", type=float, default=300.0, help="bound on one timed load, s")
    parser.add_argument(
        "--drain-timeout", type=float, default=120.0, help="bound on waiting for Postfix's queue, s"
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=20.0,
        help="before each load, wait up to this many seconds for the machine to be < 15%% busy (0: don't)",
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="default bench/results/relay_rate[_reuse].json"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (configs, logs, mail)")
    args = parser.parse_args()
    if args.messages < 1 or args.sessions < 1 or args.runs < 1 or args.size < 1 or args.serial < 0:
        parser.error("--messages, --sessions, --runs and --size must be at least 1, --serial at least 0")
    for tool in (SMTP_SOURCE, POSTFIX):
        if not tool.exists():
            parser.error(f"{tool} is missing: install the Debian package 'postfix'")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
