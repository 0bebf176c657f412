"""Benchmark: how well the tar pit stops a directory harvest attack, and what it costs a legitimate sender.

A harvester from 127.0.1.2 probes N candidate addresses (default 1,000, of which V = 50 really exist, in a
random order fixed by --seed) with C parallel connections (default 4), each sending EHLO, MAIL and up to K
RCPTs (default 3) before QUIT and reconnecting, with a per-reply client timeout (default 30 s, an impatient
bot) and a total time budget (default 120 s). It knows nothing about the server: RCPT 250 means valid, 550
invalid, anything else (4xx, other 5xx, timeout, disconnect) unknown; unknown addresses are not retried.
At the same time a legitimate sender from 127.0.2.3 delivers M messages (default 50), one connection per
message, to valid users, paced over the attack; its latency is compared with the same sender's on the same
server before the attack (unloaded).

Modes, each a fresh server process in its own temporary folder, in the same run: "seed" ([tarpit] delay = 5,
built-in defaults otherwise), "adaptive" (the recommended policy: escalating delay, memory across connections,
harvest flagging with temporary failures; its keys are checked with `smtp-tarpit check-config` first, and the
mode is SKIPPED if the server does not know them yet) and "off" (delay 0: the attacker's best case).

Checks (exit 1, PROBLEM lines): the legitimate sender got a 250 for every message in every mode; every 250
is a file in the Maildir; every server exited 0 on SIGTERM. The design targets (the harvester learns at most
2 of the 50 under adaptive; the legitimate sender's latency unchanged) are reported as met / not met.

Run: .venv/bin/python bench/harvest_efficacy.py [--modes seed,adaptive,off] [--budget 120] [--adaptive-toml F]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib import (
    BENCH,
    ServerProcess,
    machine,
    quantile,
    raise_nofile,
    smtp_tarpit_command,
    table,
    wait_until_quiet,
    write_json,
)

HARVESTER_SOURCE = "127.0.1.2"
LEGIT_SOURCE = "127.0.2.3"
DOMAIN = "example.test"
MODES = ("seed", "adaptive", "off")
POLICIES: dict[str, dict[str, Any]] = {
    "seed": {"tarpit": {"delay": 5}},
    "adaptive": {
        "tarpit": {"delay": 5, "growth": 2, "max_delay": "60s", "hard_error_limit": 10},
        "harvest": {"threshold": 10, "window": "1h", "hold_for": "1h", "action": "tempfail"},
        "reputation": {"half_life": "1h"},
        "limits": {"connections_per_client": 10},
    },
    "off": {"tarpit": {"delay": 0}},
}
# Keys the benchmark needs as they are, whatever --adaptive-toml says.
FORCED: dict[str, dict[str, Any]] = {
    "server": {"listen": ["127.0.0.1:0"]},
    "recipients": {"domains": [DOMAIN], "file": "recipients.txt"},
    "delivery": {"maildir": "mail"},
}
BASE: dict[str, dict[str, Any]] = {
    "server": {"hostname": "mx.example.test"},
    "log": {"level": "info"},
}
MAX_REPLY_LINES = 100
RECONNECT_PAUSE = 0.1  # after a connection that ended before any RCPT (refused, 421 greeting, ...)
LEGIT_REPLY_TIMEOUT = 300.0  # RFC 5321 4.5.3.2: a legitimate MTA waits 5 minutes (10 after the final dot)
TARGET_LEARNED = 2  # the harvester learns at most this many valid addresses under "adaptive"
MIN_DURING_ATTACK = 5  # fewer legitimate messages sent during the attack: latency "not measured"
TARGET_P50_RATIO, TARGET_P99_RATIO = 1.5, 2.0  # "unchanged latency", allowing for a shared 2-core machine
UNKNOWN_ITEM = re.compile(r": (\[[^\]]+\](?: [\w.-]+)?): unknown (?:key|section)")
SESSION_END = re.compile(r"session end client=(\S+) .*?delayed=([\d.]+)s .*?outcome=(\S+)")
LOG_TROUBLE = re.compile(r" (?:WARNING|ERROR|CRITICAL) |Traceback")


class ProtocolError(Exception):
    pass


# --- config ---------------------------------------------------------------------------------------------


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise ValueError(f"cannot write {value!r} as TOML")


def toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def to_toml(doc: dict[str, Any]) -> str:
    lines: list[str] = []

    def section(name: str, body: dict[str, Any]) -> None:
        lines.append(f"[{name}]")
        lines.extend(f"{toml_key(k)} = {toml_value(v)}" for k, v in body.items() if not isinstance(v, dict))
        for key, value in body.items():
            if isinstance(value, dict):
                section(f"{name}.{toml_key(key)}", value)

    for name, body in doc.items():
        section(toml_key(name), body)
    return "\n".join(lines) + "\n"


def server_config(policy: dict[str, Any]) -> dict[str, Any]:
    return merge(merge(BASE, policy), FORCED)


def write_config(folder: Path, doc: dict[str, Any], valid: list[str], name: str = "smtp-tarpit.toml") -> Path:
    (folder / "recipients.txt").write_text("".join(f"{a}\n" for a in valid))
    path = folder / name
    path.write_text(to_toml(doc))
    return path


def check_config(path: Path) -> tuple[int, str]:
    argv = smtp_tarpit_command(path)
    argv[-3:] = ["check-config", str(path)]  # "serve --config FILE" -> "check-config FILE"
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, cwd=path.parent)
    return done.returncode, (done.stderr + done.stdout).strip()


def without(doc: dict[str, Any], item: str) -> bool:
    """Remove "[section]" or "[section] key" (as check-config names it) from ``doc``; False if absent."""
    name, _, key = item.partition(" ")
    section = name.strip("[]")
    if not key:
        return doc.pop(section, None) is not None
    body = doc.get(section)
    return isinstance(body, dict) and body.pop(key.split(".")[0], None) is not None


def unsupported_keys(folder: Path, doc: dict[str, Any], valid: list[str]) -> tuple[list[str], str]:
    """Ask `check-config` about ``doc``; returns (the keys it does not know, its last complaint, if any).
    check-config names one unknown section at a time, so unknown items are removed and it is asked again
    (bounded by the number of keys)."""
    probe = json.loads(json.dumps(doc))
    unknown: list[str] = []
    rounds = 1 + sum(len(v) + 1 for v in doc.values() if isinstance(v, dict))
    for _ in range(rounds):
        code, output = check_config(write_config(folder, probe, valid, "check-config.toml"))
        if code == 0:
            return unknown, ""
        found = [m.group(1) for m in UNKNOWN_ITEM.finditer(output)]
        removed = [item for item in found if without(probe, item)]
        unknown.extend(removed)
        if not removed:
            return unknown, output
    return unknown, "check-config kept refusing (gave up)"


# --- SMTP client ----------------------------------------------------------------------------------------


async def read_reply(reader: asyncio.StreamReader, timeout: float) -> tuple[int, str]:
    async with asyncio.timeout(timeout):
        for _ in range(MAX_REPLY_LINES):
            line = await reader.readline()
            if not line.endswith(b"\n"):
                raise ConnectionResetError("server closed the connection")
            if len(line) < 5 or line[3:4] != b"-":
                try:
                    return int(line[:3]), line.decode(errors="replace").strip()
                except ValueError:
                    raise ProtocolError(f"bad reply line {line[:80]!r}") from None
        raise ProtocolError("reply longer than 100 lines")


async def command(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes | None, timeout: float
) -> tuple[int, str]:
    """Send ``data`` (None: nothing, e.g. to read the greeting) and read the complete reply."""
    if data:
        writer.write(data)
    return await read_reply(reader, timeout)


async def connect(
    host: str, port: int, source: str, timeout: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    async with asyncio.timeout(timeout):
        return await asyncio.open_connection(host, port, local_addr=(source, 0))


async def close(
    writer: asyncio.StreamWriter | None, reader: asyncio.StreamReader | None, quit_: bool
) -> None:
    if writer is None:
        return
    try:
        if quit_ and reader is not None and not writer.is_closing():
            await command(reader, writer, b"QUIT\r\n", 5.0)
    except (TimeoutError, OSError, ProtocolError):
        pass
    writer.close()
    with contextlib.suppress(TimeoutError, OSError):
        await asyncio.wait_for(writer.wait_closed(), 2.0)


# --- the harvester ----------------------------------------------------------------------------------------


@dataclass
class Harvest:
    """The harvester's shared state: work queue, verdicts and tallies."""

    candidates: list[str]
    valid: frozenset[str]
    per_connection: int
    client_timeout: float
    budget: float
    started: float = 0.0
    ended: float = 0.0
    queue: collections.deque[str] = field(default_factory=collections.deque)
    verdicts: dict[str, str] = field(default_factory=dict)  # address -> valid / invalid / unknown
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)  # RCPT code or failure
    connections: int = 0
    early_ends: int = 0  # connections that ended before their first RCPT
    early_samples: list[str] = field(default_factory=list)
    rcpt_reply_seconds: list[float] = field(default_factory=list)
    found_at: list[float] = field(default_factory=list)  # seconds into the attack, per true valid found
    setup_seconds: list[float] = field(default_factory=list)  # connect() to the 250 for MAIL
    probes: list[list[Any]] = field(default_factory=list)  # [address, really valid, outcome, s, at s]

    def remaining(self) -> float:
        return self.started + self.budget - time.monotonic()

    def step_timeout(self) -> float:
        return max(0.001, min(self.client_timeout, self.remaining()))

    def take(self) -> list[str]:
        return [self.queue.popleft() for _ in range(min(self.per_connection, len(self.queue)))]

    def early_end(self, why: str) -> None:
        self.early_ends += 1
        if len(self.early_samples) < 5:
            self.early_samples.append(why[:200])

    def classify(self, address: str, outcome: int | str, sent: float) -> None:
        now = time.monotonic()
        verdict = "valid" if outcome in (250, 251) else "invalid" if outcome == 550 else "unknown"
        self.verdicts[address] = verdict
        self.outcomes[str(outcome)] += 1
        if isinstance(outcome, int):
            self.rcpt_reply_seconds.append(now - sent)
        self.probes.append(
            [address, address in self.valid, outcome, round(now - sent, 3), round(sent - self.started, 3)]
        )
        if verdict == "valid" and address in self.valid:
            self.found_at.append(now - self.started)


async def probe(
    h: Harvest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, batch: list[str]
) -> tuple[int, bool]:
    """RCPT each address of ``batch`` in turn. Returns how many got a verdict, and whether the session is
    still in step (every RCPT answered, no 421), so that a QUIT makes sense."""
    tried = 0
    for address in batch:
        if h.remaining() <= 0:
            return tried, True
        sent = time.monotonic()
        budget_bound = h.remaining() < h.client_timeout  # then a timeout is the budget's end
        try:
            code, _ = await command(reader, writer, b"RCPT TO:<%s>\r\n" % address.encode(), h.step_timeout())
        except TimeoutError:
            if not budget_bound:  # the bot lost patience; an address cut off by the budget is "not tested"
                h.classify(address, "timeout", sent)
                tried += 1
            return tried, False  # a bot that lost patience hangs up: no QUIT
        except (OSError, ProtocolError):
            h.classify(address, "disconnect", sent)
            return tried + 1, False
        h.classify(address, code, sent)
        tried += 1
        if code == 421:
            return tried, False
    return tried, True


async def harvest_connection(h: Harvest, host: str, port: int, batch: list[str]) -> int:
    """One harvester connection: greeting, EHLO, MAIL, the batch's RCPTs, QUIT. Returns addresses tried."""
    h.connections += 1
    reader = writer = None
    tried, in_step = 0, False
    opened = time.monotonic()
    try:
        reader, writer = await connect(host, port, HARVESTER_SOURCE, h.step_timeout())
        steps = (
            (None, 220),
            (b"EHLO bot.harvest.test\r\n", 250),
            (b"MAIL FROM:<probe@harvest.test>\r\n", 250),
        )
        for data, wanted in steps:
            code, text = await command(reader, writer, data, h.step_timeout())
            if code != wanted:
                h.early_end(text)
                return 0
        h.setup_seconds.append(time.monotonic() - opened)
        tried, in_step = await probe(h, reader, writer, batch)
    except (TimeoutError, OSError, ProtocolError) as exc:
        h.early_end(f"{exc.__class__.__name__}: {str(exc) or 'no reply in time'}")
    finally:
        await close(writer, reader, quit_=in_step and h.remaining() > 0)
    return tried


async def harvest_worker(h: Harvest, host: str, port: int) -> None:
    for _ in range(10 * len(h.candidates) + 100):  # bounded: every turn takes or puts back work
        batch = h.take()
        if not batch or h.remaining() <= 0:
            h.queue.extendleft(reversed(batch))
            return
        tried = await harvest_connection(h, host, port, batch)
        h.queue.extendleft(reversed(batch[tried:]))  # untried: back to the front of the queue
        if tried == 0:
            await asyncio.sleep(min(RECONNECT_PAUSE, max(0.0, h.remaining())))


async def run_harvester(h: Harvest, host: str, port: int, connections: int, done: asyncio.Event) -> None:
    h.queue.extend(h.candidates)
    h.started = time.monotonic()
    try:
        workers = [asyncio.ensure_future(harvest_worker(h, host, port)) for _ in range(connections)]
        _, pending = await asyncio.wait(workers, timeout=h.budget + 15.0)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=10.0)
    finally:
        h.ended = time.monotonic()
        done.set()


def harvest_summary(h: Harvest, n_valid: int) -> dict[str, Any]:
    elapsed = max(h.ended - h.started, 1e-9)
    classified_valid = {a for a, v in h.verdicts.items() if v == "valid"}
    true_valid = classified_valid & h.valid
    tested = sum(n for code, n in h.outcomes.items() if code[:1] in ("2", "5"))
    precision = len(true_valid) / len(classified_valid) if classified_valid else None
    rate = tested / elapsed
    return {
        "elapsed_seconds": elapsed,
        "connections": h.connections,
        "connections_ended_before_rcpt": h.early_ends,
        "early_end_samples": h.early_samples,
        "rcpts_sent": sum(h.outcomes.values()),
        "rcpt_outcomes": dict(sorted(h.outcomes.items())),
        "tested": tested,
        "tested_per_second": rate,
        "seconds_to_test_all_at_this_rate": len(h.candidates) / rate if rate > 0 else None,
        "not_tested": len(h.candidates) - len(h.verdicts),
        "verdicts": dict(collections.Counter(h.verdicts.values())),
        "classified_valid": len(classified_valid),
        "true_valid_among_classified": len(true_valid),
        "false_positives": len(classified_valid - h.valid),
        "precision": precision,
        # Precision-aware: a 250 only teaches the harvester something if at least half of its 250s are
        # real mailboxes; with a 250 for everything it has learned nothing.
        "identified": len(true_valid) if len(classified_valid) <= 2 * len(true_valid) else 0,
        # The issue's simpler rule, kept for comparison: counts unless it classified more than 2 x V valid.
        "identified_if_at_most_2x_valid": len(true_valid) if len(classified_valid) <= 2 * n_valid else 0,
        "valid_found_at_seconds": [round(t, 3) for t in h.found_at],
        "setup_seconds": {  # connect() to the 250 for MAIL, per connection that got that far
            "p50": quantile(h.setup_seconds, 0.5),
            "max": max(h.setup_seconds, default=None),
        },
        "rcpt_reply_seconds": {
            "p50": quantile(h.rcpt_reply_seconds, 0.5),
            "p99": quantile(h.rcpt_reply_seconds, 0.99),
            "max": max(h.rcpt_reply_seconds, default=None),
        },
        "probes": h.probes,  # [address, really valid, outcome, s to the reply, sent at s into the attack]
    }


# --- the legitimate sender ------------------------------------------------------------------------------


def legit_message_bytes(index: int, recipient: str) -> bytes:
    head = (
        f"From: Legit Sender <legit@partner.test>\r\nTo: <{recipient}>\r\n"
        f"Subject: harvest_efficacy legitimate message {index}\r\n"
        f"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <legit-{index}@partner.test>\r\n\r\n"
    ).encode()
    return head + b"A legitimate message, delivered while a harvester probes the same server.\r\n" * 12


async def legit_message(host: str, port: int, index: int, recipient: str, timeout: float) -> dict[str, Any]:
    """One message, one connection, full dialogue; latency is connect() to the 250 after the final dot."""
    started = time.perf_counter()
    reader = writer = None
    in_step = False  # QUIT only when every command so far got its reply
    steps = (
        (None, 220),
        (b"EHLO mta.partner.test\r\n", 250),
        (b"MAIL FROM:<legit@partner.test>\r\n", 250),
        (b"RCPT TO:<%s>\r\n" % recipient.encode(), 250),
        (b"DATA\r\n", 354),
        (legit_message_bytes(index, recipient) + b".\r\n", 250),
    )
    try:
        reader, writer = await connect(host, port, LEGIT_SOURCE, timeout)
        for data, wanted in steps:
            code, text = await command(reader, writer, data, timeout)
            in_step = code != 421
            if code != wanted:
                return {"ok": False, "error": f"{(data or b'greeting')[:12]!r}: {text[:200]}"}
        return {"ok": True, "latency": time.perf_counter() - started}
    except (TimeoutError, OSError, ProtocolError) as exc:
        in_step = False
        return {"ok": False, "error": f"{exc.__class__.__name__}: {str(exc) or 'no reply in time'}"}
    finally:
        await close(writer, reader, quit_=in_step)


async def legit_phase(
    host: str,
    port: int,
    args: argparse.Namespace,
    count: int,
    *,
    pace: float = 0.0,
    attack_done: asyncio.Event | None = None,
) -> list[dict[str, Any]]:
    """Send ``count`` messages, at most --legit-concurrency at once. While ``attack_done`` is not set,
    message i starts at (i + 1/2) x ``pace`` after the start; otherwise --legit-gap after the previous.
    The phase is bounded: messages not done by its time limit count as not delivered."""
    recipients = [f"user{i:03d}@{DOMAIN}" for i in range(min(args.legit_recipients, args.valid))]
    limit = asyncio.Semaphore(args.legit_concurrency)
    results: list[dict[str, Any]] = []
    tasks: list[asyncio.Task[None]] = []
    t0 = time.monotonic()
    deadline = t0 + max(pace, args.legit_gap) * count + args.legit_timeout + 60.0

    def left() -> float:
        return max(0.001, deadline - time.monotonic())

    async def one(index: int, during: bool) -> None:
        result: dict[str, Any] = {"ok": False, "error": "cut: the phase hit its time limit"}
        try:
            rcpt = recipients[index % len(recipients)]
            result = await legit_message(host, port, index, rcpt, args.legit_timeout)
        finally:
            results.append({"index": index, "during_attack": during, **result})
            limit.release()

    for index in range(count):
        if attack_done is not None and not attack_done.is_set():
            wait = t0 + (index + 0.5) * pace - time.monotonic()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(attack_done.wait(), min(wait, left()))
        elif index:
            await asyncio.sleep(min(args.legit_gap, left()))
        try:
            await asyncio.wait_for(limit.acquire(), left())
        except TimeoutError:
            results.append(
                {"index": index, "during_attack": False, "ok": False, "error": "not sent: time limit"}
            )
            continue
        during = attack_done is not None and not attack_done.is_set()
        tasks.append(asyncio.ensure_future(one(index, during)))
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=left())
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=10.0)
    return sorted(results, key=lambda r: r["index"])


def latency_summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    latencies = [r["latency"] for r in results if r["ok"]]
    return {
        "attempted": len(results),
        "delivered": sum(1 for r in results if r["ok"]),
        "p50_ms": 1000 * (quantile(latencies, 0.5) or 0) if latencies else None,
        "p99_ms": 1000 * (quantile(latencies, 0.99) or 0) if latencies else None,
        "max_ms": 1000 * max(latencies) if latencies else None,
        "errors": [r["error"] for r in results if not r["ok"]][:5],
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


# --- one mode ---------------------------------------------------------------------------------------------


def server_log_summary(text: str) -> dict[str, Any]:
    ends: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    delayed: dict[str, float] = collections.defaultdict(float)
    for match in SESSION_END.finditer(text):
        client, seconds, outcome = match.groups()
        ends[client][outcome] += 1
        delayed[client] += float(seconds)
    lines = text.splitlines()
    harvester_notes = [
        line
        for line in lines
        if HARVESTER_SOURCE in line and "session end" not in line and "message id=" not in line
    ]
    return {
        "session_ends": {c: dict(v) for c, v in ends.items()},
        "delayed_seconds": dict(delayed),
        "trouble_lines": [line[:300] for line in lines if LOG_TROUBLE.search(line)][:20],
        "harvester_notes": [line[:300] for line in harvester_notes[:10]],
        "harvester_notes_total": len(harvester_notes),
    }


def maildir_counts(root: Path) -> tuple[int, int]:
    new = [p for p in root.glob("*/*/new/*") if p.is_file()]
    tmp = [p for p in root.glob("*/*/tmp/*") if p.is_file()]
    return len(new), len(tmp)


async def exercise(
    server: ServerProcess, args: argparse.Namespace, valid: list[str], candidates: list[str]
) -> dict[str, Any]:
    """Warm-up, the unloaded legitimate run, then the attack with the legitimate run beside it."""
    host, port = server.host, server.port
    warm_count = min(args.legit_recipients, args.valid)
    warm = await legit_phase(host, port, args, warm_count)  # creates the Maildirs
    print(f"  unloaded: {args.legit_messages} legitimate messages ...", file=sys.stderr, flush=True)
    unloaded = await legit_phase(host, port, args, args.legit_messages)
    print(f"  attack: {args.budget:g}s budget ...", file=sys.stderr, flush=True)
    harvest = Harvest(candidates, frozenset(valid), args.per_connection, args.client_timeout, args.budget)
    done = asyncio.Event()
    attacker = asyncio.ensure_future(run_harvester(harvest, host, port, args.connections, done))
    pace = 0.8 * args.budget / args.legit_messages
    attacked = await legit_phase(host, port, args, args.legit_messages, pace=pace, attack_done=done)
    await attacker
    said = harvest_summary(harvest, args.valid)
    print(
        f"  attack over after {said['elapsed_seconds']:.1f}s: {said['tested']} tested, "
        f"{said['true_valid_among_classified']} valid among {said['classified_valid']} answered 250",
        file=sys.stderr,
        flush=True,
    )
    return {"warm": warm, "unloaded": unloaded, "attacked": attacked, "harvest": harvest}


def summarize_mode(mode: str, run: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    unloaded, attacked = run["unloaded"], run["attacked"]
    during = [r for r in attacked if r["during_attack"]]
    idle, under = latency_summary(unloaded), latency_summary(during)
    return {
        "mode": mode,
        "harvester": harvest_summary(run["harvest"], args.valid),
        "legit_warm_up": latency_summary(run["warm"]),
        "legit_unloaded": idle,
        "legit_attack_all": latency_summary(attacked),
        "legit_during_attack": under,
        "legit_p50_ratio": ratio(under["p50_ms"], idle["p50_ms"]),
        "legit_p99_ratio": ratio(under["p99_ms"], idle["p99_ms"]),
    }


async def run_mode(
    mode: str, folder: Path, args: argparse.Namespace, valid: list[str], candidates: list[str]
) -> dict[str, Any]:
    folder.mkdir(parents=True)
    doc = server_config(args.policies[mode])
    if mode == "adaptive":
        unknown, complaint = await asyncio.to_thread(unsupported_keys, folder, doc, valid)
        if unknown or complaint:
            why = (
                f"server does not support key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} yet"
                if unknown
                else f"check-config refused the config: {complaint[-300:]}"
            )
            return {"mode": mode, "skipped": why, "config": doc, "problems": []}
    config = write_config(folder, doc, valid)
    busy = wait_until_quiet(args.wait_quiet)
    server = ServerProcess(f"smtp-tarpit-{mode}", smtp_tarpit_command(config), folder)
    try:
        server.start()
    except RuntimeError as exc:
        return {"mode": mode, "config": doc, "problems": [f"server did not start: {str(exc)[-500:]}"]}
    try:
        run = await exercise(server, args, valid, candidates)
    finally:
        exit_code = server.stop()
    result = summarize_mode(mode, run, args)
    files, left_in_tmp = maildir_counts(folder / "mail")
    accepted = sum(1 for phase in ("warm", "unloaded", "attacked") for r in run[phase] if r["ok"])
    result.update(
        config=doc,
        machine_busy_share_before=busy,
        server_exit_code=exit_code,
        maildir_files=files,
        maildir_tmp_files=left_in_tmp,
        legit_accepted_total=accepted,
        server_log=server_log_summary(server.log()),
    )
    result["problems"] = mode_problems(result, run, exit_code, server)
    return result


def mode_problems(
    result: dict[str, Any], run: dict[str, Any], exit_code: int, server: ServerProcess
) -> list[str]:
    problems = []
    for phase, label in (("warm", "warm-up"), ("unloaded", "unloaded"), ("attacked", "during the attack")):
        failed = [r for r in run[phase] if not r["ok"]]
        if failed:
            problems.append(
                f"legitimate sender {label}: {len(failed)} of {len(run[phase])} messages not delivered "
                f"(first: {failed[0]['error']})"
            )
    if result["maildir_files"] != result["legit_accepted_total"]:
        problems.append(
            f"{result['maildir_files']} files in the Maildir, but {result['legit_accepted_total']} "
            "messages got a 250"
        )
    if result["maildir_tmp_files"]:
        problems.append(f"{result['maildir_tmp_files']} files left in the Maildir's tmp/")
    if exit_code != 0:
        problems.append(f"server exit code {exit_code} after SIGTERM; log tail: {server.log()[-400:]!r}")
    return problems


# --- report -----------------------------------------------------------------------------------------------


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def versus(idle: float | None, attack: float | None, times: float | None) -> str:
    return f"{fmt(idle, '.1f')} / {fmt(attack, '.1f')} ({fmt(times, '.2f')}x)"


def report_rows(modes: list[dict[str, Any]], n_valid: int) -> list[list[str]]:
    rows = []
    for m in modes:
        if "harvester" not in m:
            rows.append([m["mode"], "SKIPPED" if "skipped" in m else "FAILED", *["-"] * 10])
            continue
        h, idle, under = m["harvester"], m["legit_unloaded"], m["legit_during_attack"]
        attack_all = m["legit_attack_all"]
        rows.append(
            [
                m["mode"],
                fmt(h["tested_per_second"], ".2f"),
                str(h["tested"]),
                f"{h['identified']}/{n_valid}",
                str(h["false_positives"]),
                str(h["verdicts"].get("unknown", 0)),
                str(h["connections"]),
                f"{idle['delivered']}/{idle['attempted']}",
                f"{attack_all['delivered']}/{attack_all['attempted']} ({under['attempted']} in)",
                versus(idle["p50_ms"], under["p50_ms"], m["legit_p50_ratio"]),
                versus(idle["p99_ms"], under["p99_ms"], m["legit_p99_ratio"]),
                fmt(h["seconds_to_test_all_at_this_rate"], ".0f"),
            ]
        )
    return rows


HEADERS = [
    "mode",
    "tested/s",
    "tested",
    "identified",
    "false pos",
    "unknown",
    "h conns",
    "legit ok idle",
    "legit ok attack (n during)",
    "legit p50 ms idle / attack",
    "legit p99 ms idle / attack",
    "sweep s",
]


def targets(modes: list[dict[str, Any]]) -> dict[str, str]:
    out: dict[str, str] = {}
    adaptive = next((m for m in modes if m["mode"] == "adaptive"), None)
    if adaptive is None:
        out["harvester_learns_at_most_2"] = "not measured (mode not selected)"
    elif "harvester" not in adaptive:
        out["harvester_learns_at_most_2"] = f"not measured ({adaptive.get('skipped') or 'failed'})"
    else:
        learned = adaptive["harvester"]["identified"]
        verdict = "met" if learned <= TARGET_LEARNED else "NOT MET"
        out["harvester_learns_at_most_2"] = f"{verdict}: adaptive let it identify {learned}"
    for m in modes:
        if "harvester" not in m:
            continue
        under, everything = m["legit_during_attack"], m["legit_attack_all"]
        p50, p99 = m["legit_p50_ratio"], m["legit_p99_ratio"]
        if under["attempted"] < min(MIN_DURING_ATTACK, everything["attempted"]):
            out[f"legit_unchanged_{m['mode']}"] = (
                f"not measured: {everything['delivered']}/{everything['attempted']} delivered, but only "
                f"{under['attempted']} sent while the attack lasted "
                f"({m['harvester']['elapsed_seconds']:.1f}s)"
            )
            continue
        met = (
            everything["delivered"] == everything["attempted"]
            and p50 is not None
            and p99 is not None
            and p50 <= TARGET_P50_RATIO
            and p99 <= TARGET_P99_RATIO
        )
        out[f"legit_unchanged_{m['mode']}"] = (
            f"{'met' if met else 'NOT MET'}: {everything['delivered']}/{everything['attempted']} delivered, "
            f"p50 x{fmt(p50, '.2f')}, p99 x{fmt(p99, '.2f')} "
            f"over {under['attempted']} messages sent during the attack"
        )
    return out


# --- main -------------------------------------------------------------------------------------------------


def address_sets(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    valid = [f"user{i:03d}@{DOMAIN}" for i in range(args.valid)]
    candidates = [f"user{i:03d}@{DOMAIN}" for i in range(args.addresses)]
    random.Random(args.seed).shuffle(candidates)
    return valid, candidates


async def run(args: argparse.Namespace) -> int:
    raise_nofile()
    valid, candidates = address_sets(args)
    folder = Path(tempfile.mkdtemp(prefix="bench-harvest-", dir=args.tmpdir))
    started = datetime.datetime.now(datetime.UTC)
    modes: list[dict[str, Any]] = []
    try:
        for mode in args.modes:
            print(f"mode {mode} ...", file=sys.stderr, flush=True)
            result = await run_mode(mode, folder / mode, args, valid, candidates)
            modes.append(result)
            if "skipped" in result:
                print(f"SKIPPED {mode}: {result['skipped']}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    problems = [f"{m['mode']}: {p}" for m in modes for p in m["problems"]]
    goals = targets(modes)
    data: dict[str, Any] = {
        "benchmark": "harvest_efficacy",
        "started": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "options": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "policies"
        },
        "harvester_source": HARVESTER_SOURCE,
        "legit_source": LEGIT_SOURCE,
        "modes": modes,
        "targets": goals,
        "ok": not problems,
        "problems": problems,
    }
    write_json(args.json, data)
    print(table(HEADERS, report_rows(modes, args.valid)))
    for name, verdict in goals.items():
        print(f"target {name}: {verdict}")
    for m in modes:
        for line in m.get("server_log", {}).get("trouble_lines", [])[:5]:
            print(f"server log ({m['mode']}): {line}")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print(f"JSON: {args.json}")
    if args.keep:
        print(f"kept: {folder}")
    return 0 if not problems else 1


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    add = parser.add_argument
    add("--addresses", type=int, default=1000, help="candidate addresses the harvester probes")
    add("--valid", type=int, default=50, help="of which really exist (user000..)")
    add("--connections", type=int, default=4, help="harvester's parallel connections")
    add("--per-connection", type=int, default=3, help="harvester's RCPTs per connection before it reconnects")
    add("--budget", type=float, default=120.0, help="harvester's total time, s")
    add("--client-timeout", type=float, default=30.0, help="harvester's patience per reply, s")
    add("--legit-messages", type=int, default=50, help="legitimate messages, unloaded and again under attack")
    add("--legit-concurrency", type=int, default=1, help="legitimate messages in flight at once")
    add("--legit-recipients", type=int, default=5, help="valid mailboxes the legitimate sender writes to")
    add("--legit-gap", type=float, default=0.1, help="pause between legitimate messages when not paced, s")
    add(
        "--legit-timeout",
        type=float,
        default=LEGIT_REPLY_TIMEOUT,
        help="legitimate sender's patience per reply, s",
    )
    add("--modes", default=",".join(MODES), help="comma-separated, from: " + ", ".join(MODES))
    add("--adaptive-toml", type=Path, default=None, help="TOML with the adaptive mode's policy sections")
    add("--seed", type=int, default=1, help="random seed for the candidates' order")
    add(
        "--wait-quiet",
        type=float,
        default=10.0,
        help="before each mode, wait up to this long for a quiet machine",
    )
    add("--json", type=Path, default=BENCH / "results" / "harvest_efficacy.json")
    add("--tmpdir", type=Path, default=None, help="where the temporary folder goes")
    add("--keep", action="store_true", help="keep the temporary folder (configs, logs, mail)")
    args = parser.parse_args()
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or any(m not in MODES for m in args.modes) or len(set(args.modes)) != len(args.modes):
        parser.error(f"--modes: a comma-separated list from {', '.join(MODES)}")
    if not 1 <= args.valid <= args.addresses <= 100_000:
        parser.error("need 1 <= --valid <= --addresses <= 100000")
    for name in ("connections", "per_connection", "legit_messages", "legit_concurrency", "legit_recipients"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.budget <= 0 or args.client_timeout <= 0 or args.legit_timeout <= 0 or args.legit_gap < 0:
        parser.error("--budget, --client-timeout and --legit-timeout must be > 0, --legit-gap >= 0")
    args.policies = dict(POLICIES)
    if args.adaptive_toml is not None:
        try:
            with args.adaptive_toml.open("rb") as fh:
                args.policies["adaptive"] = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            parser.error(f"--adaptive-toml: {exc}")
    return args


def main() -> int:
    return asyncio.run(run(parse_args()))


if __name__ == "__main__":
    sys.exit(main())
