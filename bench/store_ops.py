"""Benchmark: operations per second and latency of the client stores (memory, sqlite, redis), side by side.

What the server does with a shared store: at a session's start it loads the client's two keys (exact
address and prefix) in one ``load``; on each observation it ``apply``s a change (``observe``) to a key. This
measures both, for each store opened exactly as ``[reputation] store`` opens it (state/open.py, default
``store_timeout`` 0.25 s; memory is ``MemoryClientStore``), in one run on one machine:

- sequential: one coroutine, ``--ops`` operations one after the other; each one timed (mean, p99);
- concurrent: ``--concurrency`` coroutines sharing ``--ops`` operations (the rate only).

Keys are spread over ``--keys`` clients (192.0.2.0/24 style addresses, two keys each), as many clients make
them; each phase is preceded by an untimed warm-up. The redis store talks to a ``redis-server`` this script
starts on a free 127.0.0.1 port (no persistence) and stops by its PID; the sqlite store uses a fresh file in
a temporary folder (WAL, synchronous=NORMAL). Every phase is bounded by ``--phase-timeout``. A store error
is counted and reported as a PROBLEM (exit 1); no error is retried.

Before each store it waits up to ``--wait-quiet`` seconds for the machine to be less than 15% busy (others'
CPU use would show as our latency); the busy share seen is in the JSON (``machine_busy_before``).

Run: .venv/bin/python bench/store_ops.py [--ops 5000] [--concurrency 20] [--stores memory,sqlite,redis]
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from benchlib import REPO, machine, quantile, table, wait_until_quiet, write_json

from smtp_tarpit.config import ReputationConfig
from smtp_tarpit.policy.reputation import Observation, keys_for, observe
from smtp_tarpit.policy.settings import PolicySettings
from smtp_tarpit.state.base import ClientStore, StoreError
from smtp_tarpit.state.memory import MemoryClientStore
from smtp_tarpit.state.open import open_store

sys.path.insert(0, str(REPO))
from tests.state.redis_server import RedisProcess, start_redis  # needs the repository root on sys.path

STORES = ("memory", "sqlite", "redis")
SETTINGS = PolicySettings(half_life=3600.0, harvest_threshold=10, harvest_window=3600.0)
Operation = Callable[[int], Awaitable[object]]


class Phase:
    """One timed phase: ``count`` operations by ``workers`` coroutines; errors counted, not raised."""

    def __init__(self, operation: Operation, count: int, workers: int) -> None:
        self.operation, self.count, self.workers = operation, count, workers
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.seconds = 0.0

    async def run(self, timeout: float) -> Phase:
        next_index = 0

        async def worker() -> None:
            nonlocal next_index
            while next_index < self.count:
                index = next_index
                next_index += 1
                started = time.perf_counter()
                try:
                    await self.operation(index)
                except StoreError as exc:
                    self.errors.append(str(exc))
                self.latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(worker() for _ in range(self.workers)))
        self.seconds = time.perf_counter() - started
        return self

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "operations": self.count,
            "workers": self.workers,
            "seconds": round(self.seconds, 4),
            "per_second": round(self.rate, 1),
            "mean_ms": round(statistics.fmean(self.latencies) * 1000, 4) if self.latencies else None,
            "p50_ms": _ms(quantile(self.latencies, 0.50)),
            "p99_ms": _ms(quantile(self.latencies, 0.99)),
            "max_ms": _ms(max(self.latencies, default=None)),
            "errors": len(self.errors),
            "first_errors": self.errors[:3],
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 4)


def open_bench_store(kind: str, folder: Path, redis: RedisProcess | None) -> ClientStore:
    if kind == "memory":
        return MemoryClientStore(SETTINGS)
    url = f"sqlite://{folder / 'state.db'}" if kind == "sqlite" else redis.url if redis else ""
    store = open_store(ReputationConfig(store=url), SETTINGS)
    assert store is not None
    return store


async def measure(kind: str, store: ClientStore, args: argparse.Namespace) -> dict[str, Any]:
    clients = [keys_for(_address(i)) for i in range(args.keys)]
    keys = [key for client in clients for key in (client.exact, client.prefix)]

    async def apply(index: int) -> object:
        now = time.time()
        key = keys[index % len(keys)]
        return await store.apply(key, lambda state: observe(state, Observation.ERROR, now, SETTINGS), now)

    async def load(index: int) -> object:
        client = clients[index % len(clients)]
        return await store.load([client.exact, client.prefix], time.time())

    phases: dict[str, Phase] = {}
    for name, operation, workers in (
        ("apply", apply, 1),
        ("apply_concurrent", apply, args.concurrency),
        ("load", load, 1),
        ("load_concurrent", load, args.concurrency),
    ):
        await Phase(operation, min(args.ops, 500), workers).run(args.phase_timeout)  # warm-up
        phases[name] = await Phase(operation, args.ops, workers).run(args.phase_timeout)
    return {name: phase.summary() for name, phase in phases.items()}


def _address(index: int) -> ipaddress.IPv4Address:
    # 16 addresses per /24, so prefix keys are shared the way a busy network's are.
    return ipaddress.IPv4Address(f"10.{index // 4096 % 256}.{index // 16 % 256}.{index % 16 + 1}")


async def run_store(
    kind: str, folder: Path, redis: RedisProcess | None, args: argparse.Namespace
) -> dict[str, Any]:
    store = open_bench_store(kind, folder, redis)
    try:
        return await measure(kind, store, args)
    finally:
        await store.close()


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> list[str]:
    headers = [
        "store",
        "load/s",
        f"load/s x{args.concurrency}",
        "apply/s",
        f"apply/s x{args.concurrency}",
        "load mean ms",
        "load p99 ms",
        "apply mean ms",
        "apply p99 ms",
        "errors",
    ]
    rows, problems = [], []
    for kind, result in results.items():
        phases = {name: phase for name, phase in result.items() if name != "machine_busy_before"}
        errors = sum(phase["errors"] for phase in phases.values())
        rows.append(
            [
                kind,
                f"{phases['load']['per_second']:.0f}",
                f"{phases['load_concurrent']['per_second']:.0f}",
                f"{phases['apply']['per_second']:.0f}",
                f"{phases['apply_concurrent']['per_second']:.0f}",
                f"{phases['load']['mean_ms']:.3f}",
                f"{phases['load']['p99_ms']:.3f}",
                f"{phases['apply']['mean_ms']:.3f}",
                f"{phases['apply']['p99_ms']:.3f}",
                str(errors),
            ]
        )
        for name, phase in phases.items():
            if phase["errors"]:
                problems.append(
                    f"{kind} {name}: {phase['errors']} store errors, e.g. {phase['first_errors'][0]}"
                )
    print(
        f"{args.ops} operations per phase, {args.keys} clients, {args.concurrency} coroutines when concurrent"
    )
    print(table(headers, rows))
    return problems


async def main_async(args: argparse.Namespace, folder: Path) -> int:
    kinds = [kind.strip() for kind in args.stores.split(",") if kind.strip()]
    redis = start_redis(folder / "redis") if "redis" in kinds else None
    results: dict[str, dict[str, Any]] = {}
    try:
        for kind in kinds:
            # Others' CPU use would show up as our latency: wait (bounded) for a quiet machine first.
            busy = wait_until_quiet(args.wait_quiet)
            results[kind] = await run_store(kind, folder, redis, args)
            results[kind]["machine_busy_before"] = None if busy is None else round(busy, 3)
    finally:
        if redis is not None:
            redis.stop()
    problems = report(results, args)
    for problem in problems:
        print(f"PROBLEM: {problem}")
    if args.json:
        write_json(
            Path(args.json),
            {
                "machine": machine(),
                "options": vars(args),
                "results": results,
                "ok": not problems,
                "problems": problems,
            },
        )
        print(f"JSON: {args.json}")
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--ops", type=int, default=5000, help="operations per timed phase")
    parser.add_argument("--concurrency", type=int, default=20, help="coroutines in the concurrent phases")
    parser.add_argument("--keys", type=int, default=1000, help="distinct clients (two keys each)")
    parser.add_argument(
        "--stores", default=",".join(STORES), help="comma-separated subset of memory,sqlite,redis"
    )
    parser.add_argument("--phase-timeout", type=float, default=120.0, help="seconds any one phase may take")
    parser.add_argument(
        "--json", default=str(REPO / "bench" / "results" / "store_ops.json"), help="'' for none"
    )
    parser.add_argument(
        "--wait-quiet", type=float, default=20.0, help="seconds to wait for an idle machine before each store"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and print its path")
    args = parser.parse_args()
    if min(args.ops, args.concurrency, args.keys) < 1 or args.phase_timeout <= 0 or args.wait_quiet < 0:
        parser.error("--ops, --concurrency, --keys and --phase-timeout must be positive, --wait-quiet >= 0")
    if not set(args.stores.split(",")) <= set(STORES):
        parser.error(f"--stores: choose from {', '.join(STORES)}")
    folder = Path(tempfile.mkdtemp(prefix="store-ops-"))
    try:
        return asyncio.run(main_async(args, folder))
    finally:
        if args.keep:
            print(f"kept: {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
