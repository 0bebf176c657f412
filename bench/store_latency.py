"""Benchmark: what each client store adds to a session, end to end: greeting, RCPT, whole session.

For each store (memory, sqlite, redis: a redis-server this script starts on a free loopback port and stops
by PID), one smtp-tarpit process with that store and the tar pit delay at 0, and the same client: N
sessions one after another, each from one of 50 loopback addresses (so records exist and are read back),
each greeting, EHLO, MAIL, one RCPT to an unknown address (an observation the store must take), one RCPT
to a valid address, QUIT. Reported per store: p50/p99 of connect-to-greeting (the store is read before the
greeting), of the unknown RCPT (written beside the session, never in front of the reply), of the valid
RCPT, and of the whole session, with the difference from the memory store measured in the same run.

Run: .venv/bin/python bench/store_latency.py [--sessions 400] [--stores memory,sqlite,redis]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchlib import (
    BENCH,
    REPO,
    ServerProcess,
    machine,
    quantile,
    smtp_tarpit_command,
    table,
    write_json,
    write_tarpit_config,
)

sys.path.insert(0, str(REPO))
from tests.state.redis_server import start_redis  # needs the repository root on sys.path

STORES = ("memory", "sqlite", "redis")
SOURCES = [f"127.0.60.{n}" for n in range(1, 51)]
STEPS = ("greeting", "rcpt_unknown", "rcpt_valid", "session")


async def _reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await reader.readline()
        if not line or line[3:4] != b"-":
            return line


async def one_session(host: str, port: int, source: str, index: int) -> dict[str, float]:
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
    times: dict[str, float] = {}
    try:
        assert (await _reply(reader)).startswith(b"220")
        times["greeting"] = time.perf_counter() - started
        for command, key, code in (
            (b"EHLO bench.test", "", b"250"),
            (b"MAIL FROM:<s@bench.test>", "", b"250"),
            (f"RCPT TO:<nobody{index}@example.test>".encode(), "rcpt_unknown", b"550"),
            (b"RCPT TO:<box0@example.test>", "rcpt_valid", b"250"),
            (b"QUIT", "", b"221"),
        ):
            sent = time.perf_counter()
            writer.write(command + b"\r\n")
            line = await _reply(reader)
            assert line.startswith(code), (command, line)
            if key:
                times[key] = time.perf_counter() - sent
    finally:
        writer.close()
    times["session"] = time.perf_counter() - started
    return times


async def load(host: str, port: int, sessions: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {step: [] for step in STEPS}
    for index in range(sessions):
        times = await one_session(host, port, SOURCES[index % len(SOURCES)], index)
        for step, seconds in times.items():
            samples[step].append(seconds)
    return samples


def run_store(kind: str, folder: Path, redis_url: str, sessions: int) -> dict[str, list[float]]:
    store = {"memory": "memory", "sqlite": f"sqlite://{folder / 'state.db'}", "redis": redis_url}[kind]
    extra = f'[reputation]\nstore = "{store}"\nhalf_life = "1h"\n[harvest]\nthreshold = 1000\n'
    config = write_tarpit_config(folder, 0, ["box0@example.test"], None, extra=extra)
    server = ServerProcess(f"smtp-tarpit-{kind}", smtp_tarpit_command(config), folder).start()
    try:
        asyncio.run(load(server.host, server.port, 20))  # warm-up
        return asyncio.run(load(server.host, server.port, sessions))
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=400)
    parser.add_argument("--stores", default=",".join(STORES))
    parser.add_argument("--json", type=Path, default=BENCH / "results" / "store_latency.json")
    args = parser.parse_args()
    kinds = [kind for kind in args.stores.split(",") if kind]
    folder = Path(tempfile.mkdtemp(prefix="store-latency-"))
    redis = start_redis(folder / "redis-server") if "redis" in kinds else None
    results: dict[str, dict[str, list[float]]] = {}
    try:
        for kind in kinds:
            (folder / kind).mkdir()
            results[kind] = run_store(kind, folder / kind, redis.url if redis else "", args.sessions)
    finally:
        if redis is not None:
            redis.stop()
        shutil.rmtree(folder, ignore_errors=True)
    rows, summary = [], {}
    base = results.get("memory")
    for kind, samples in results.items():
        row, summary[kind] = [kind], {}
        for step in STEPS:
            p50, p99 = (quantile(samples[step], q) or 0.0 for q in (0.5, 0.99))
            summary[kind][step] = {"p50_ms": p50 * 1000, "p99_ms": p99 * 1000}
            delta = ""
            if base is not None and kind != "memory":
                delta = f" ({(p50 - (quantile(base[step], 0.5) or 0.0)) * 1000:+.2f})"
            row.append(f"{p50 * 1000:.2f} / {p99 * 1000:.2f}{delta}")
        rows.append(row)
    headers = ["store", *(f"{step} p50/p99 ms (+p50 vs memory)" for step in STEPS)]
    print(f"{args.sessions} sessions per store, one at a time, from {len(SOURCES)} loopback addresses")
    print(table(headers, rows))
    write_json(args.json, {"machine": machine(), "sessions": args.sessions, "results": summary})
    print(f"JSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
