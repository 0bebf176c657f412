"""Real Redis servers for the store tests and the store benchmark: a plain server, a Sentinel, a Cluster.

Every process is a ``redis-server`` of our own, in the foreground, listening on a free 127.0.0.1 port, with
its files in a folder the caller owns (no persistence: ``--save ''``, ``--appendonly no``), and stopped by
its own PID (SIGCONT first, in case a test left it stopped, then SIGTERM, SIGKILL after a bounded wait).
Never by name. Every wait here is bounded.

- :func:`start_redis`: one server. ``pause``/``resume`` (SIGSTOP/SIGCONT) make it a hung server.
- :func:`start_sentinel`: a Sentinel watching a server as master ``mymaster``.
- :func:`start_cluster`: three master nodes joined with ``redis-cli --cluster create``.
- :func:`client`: a synchronous redis-py client to one of them (setup and inspection, not the code
  under test), with short timeouts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.polling import wait_until

REDIS_SERVER = Path("/usr/bin/redis-server")
REDIS_CLI = Path("/usr/bin/redis-cli")
HOST = "127.0.0.1"
SERVICE = "mymaster"
_START_ATTEMPTS = 5  # a free port can be taken between our probe and the server's bind: try another


def require_redis() -> None:
    """Skip the calling test (with the reason) unless redis-server and redis-cli are installed."""
    for tool in (REDIS_SERVER, REDIS_CLI):
        if not tool.exists():
            pytest.skip(f"{tool} is missing: install the Debian package 'redis-server'")


def free_port(bus: bool = False) -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now; with ``bus``, port + 10000 is free too (a
    Cluster node's bus port)."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            port: int = sock.getsockname()[1]
        if not bus:
            return port
        if port + 10000 <= 65535 and _bindable(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def client(port: int, timeout: float = 2.0) -> redis.Redis:
    return redis.Redis(
        host=HOST,
        port=port,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


@dataclass
class RedisProcess:
    name: str
    port: int
    folder: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    stopped: bool = field(default=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets (connections succeed) and answers nothing."""
        os.kill(self.pid, signal.SIGSTOP)
        self.stopped = True

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)
        self.stopped = False

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)
                self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)


def _answers(port: int) -> bool:
    try:
        with client(port, timeout=0.5) as probe:
            return bool(probe.ping())
    except redis.RedisError:
        return False


def _ready(server: RedisProcess, timeout: float = 15.0) -> bool:
    """Wait until the server answers PING or exits; True if it answers."""
    return wait_until(lambda: server.process.poll() is not None or _answers(server.port), timeout) and (
        server.process.poll() is None
    )


def _launch(name: str, folder: Path, argv: Callable[[int], list[str]], bus: bool = False) -> RedisProcess:
    folder.mkdir(parents=True, exist_ok=True)
    for _ in range(_START_ATTEMPTS):
        port = free_port(bus)
        log_path = folder / f"{name}-{port}.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                argv(port), cwd=folder, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
            )
        server = RedisProcess(name, port, folder, process, log_path)
        if _ready(server):
            return server
        server.stop()
        if "Address already in use" not in server.log():
            raise RuntimeError(f"{name} did not start; log:\n{server.log()[-3000:]}")
    raise RuntimeError(f"{name} found no free port in {_START_ATTEMPTS} attempts")


def _server_args(port: int, folder: Path) -> list[str]:
    return [
        str(REDIS_SERVER),
        "--port",
        str(port),
        "--bind",
        HOST,
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(folder),
    ]


def start_redis(folder: Path, *extra: str, name: str = "redis") -> RedisProcess:
    return _launch(name, folder, lambda port: [*_server_args(port, folder), *extra])


def start_sentinel(folder: Path, master: RedisProcess, service: str = SERVICE) -> RedisProcess:
    """A Sentinel (quorum 1) monitoring ``master`` as ``service``; returns once it names the master."""

    def argv(port: int) -> list[str]:
        config = folder / f"sentinel-{port}.conf"  # Sentinel rewrites its config file: one of its own
        config.write_text(
            f"port {port}\nbind {HOST}\ndir {folder}\n"
            f"sentinel monitor {service} {HOST} {master.port} 1\n"
            f"sentinel down-after-milliseconds {service} 5000\n"
        )
        return [str(REDIS_SERVER), str(config), "--sentinel"]

    sentinel = _launch("sentinel", folder, argv)

    def knows_master() -> bool:
        try:
            with client(sentinel.port) as probe:
                address = probe.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", service)
        except redis.RedisError:
            return False
        return address is not None and int(address[1]) == master.port

    if not wait_until(knows_master, timeout=15):
        sentinel.stop()
        raise RuntimeError(f"sentinel does not name the master; log:\n{sentinel.log()[-3000:]}")
    return sentinel


def start_cluster(folder: Path, nodes: int = 3) -> list[RedisProcess]:
    """``nodes`` masters (no replicas) sharing the 16384 slots; returns once every node says ok."""
    started: list[RedisProcess] = []
    try:
        for index in range(nodes):
            node_folder = folder / f"node{index}"
            node_folder.mkdir(parents=True, exist_ok=True)

            def argv(port: int, node_folder: Path = node_folder) -> list[str]:
                return [
                    *_server_args(port, node_folder),
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(node_folder / f"nodes-{port}.conf"),
                    "--cluster-node-timeout",
                    "2000",
                ]

            started.append(_launch(f"cluster{index}", node_folder, argv, bus=True))
        create = subprocess.run(
            [
                str(REDIS_CLI),
                "--cluster",
                "create",
                *(f"{HOST}:{node.port}" for node in started),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if create.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{create.stdout}\n{create.stderr}")
        if not wait_until(
            lambda: all(_cluster_ok(node.port, nodes) for node in started), timeout=30, interval=0.1
        ):
            raise RuntimeError("the cluster did not become ok in 30 s")
    except BaseException:
        for node in started:
            node.stop()
        raise
    return started


def _cluster_ok(port: int, nodes: int) -> bool:
    try:
        with client(port) as probe:
            info = probe.execute_command("CLUSTER", "INFO")
    except redis.RedisError:
        return False
    text = info.decode() if isinstance(info, bytes) else str(info)
    return "cluster_state:ok" in text and f"cluster_known_nodes:{nodes}" in text
