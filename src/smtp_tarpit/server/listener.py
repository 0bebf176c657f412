"""The listening server: sockets, the set of live sessions, connection limits, shutdown and reload.

Invariants:
- Shutdown stops accepting first; idle and tar pitted sessions get 421 at once; a session inside DATA (or
  waiting for its delivery) may finish within ``[server] shutdown_grace`` and then gets 421; a delivery
  already running is awaited, so nothing acknowledged is lost and nothing unacknowledged is claimed.
- A failed reload (SIGHUP) logs why and keeps everything as it was.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import itertools
import logging
import os
import socket
import time
from collections.abc import Awaitable, Coroutine
from typing import Any

from smtp_tarpit.auth.passwords import Users
from smtp_tarpit.config import ConfigError, load
from smtp_tarpit.delivery.maildir import MaildirDeliverer
from smtp_tarpit.observability.metrics import Stats
from smtp_tarpit.policy.decisions import IPAddress
from smtp_tarpit.protocol import replies
from smtp_tarpit.protocol.replies import Reply
from smtp_tarpit.server.admin import open_admin_socket
from smtp_tarpit.server.classify import Verdict, classify
from smtp_tarpit.server.deadlines import Timeouts
from smtp_tarpit.server.disk import CHECK_EVERY, DiskWatch, clean_tmp
from smtp_tarpit.server.executor import Executor
from smtp_tarpit.server.runtime import Runtime, build
from smtp_tarpit.server.session import Session
from smtp_tarpit.server.sizing import connection_limit, descriptor_limit, listen_backlog, message_slots
from smtp_tarpit.server.tarpit import Tarpit
from smtp_tarpit.state import snapshot
from smtp_tarpit.state.memory import MemoryStore
from smtp_tarpit.state.open import open_store

log = logging.getLogger("smtp_tarpit.server")
PURGE_EVERY = 60.0  # seconds between sweeps of idle client records
OVERLOAD_ON, OVERLOAD_OFF = 0.9, 0.8  # of the connection limit
ACCEPT_WARN_EVERY = 10.0  # seconds between warnings while descriptors are exhausted
PASSWORD_CHECKS = 2  # password checks (scrypt) running at once


class ListenError(Exception):
    """A ``[server] listen`` address cannot be bound; the message says which and why."""


def split_listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def _why_not(text: str, exc: OSError) -> ListenError:
    # asyncio words a bind error as "error while attempting to bind on address (...): ..."; the address is
    # said already. A name that does not resolve is a gaierror, whose errno is no errno.
    number = None if isinstance(exc, socket.gaierror) else exc.errno
    why = f"cannot listen on {text}: {os.strerror(number) if number else exc.strerror or exc}"
    if exc.errno == errno.EADDRINUSE:
        why += " (another process has it; processes meant to share it all need [server] reuse_port = true)"
    elif exc.errno == errno.EACCES:
        why += " (a port below 1024 needs root or CAP_NET_BIND_SERVICE; see contrib/)"
    return ListenError(why)


class Server:
    def __init__(self, runtime: Runtime, loop: asyncio.AbstractEventLoop) -> None:
        self.runtime = runtime
        self.loop = loop
        self.stats = Stats()
        self.executor = Executor(loop, runtime.config.limits.max_tarpitted, self.stats)
        reputation = runtime.config.reputation
        memory = MemoryStore(runtime.settings, reputation.max_entries)
        try:
            shared = open_store(reputation, runtime.settings)
        except ValueError as exc:
            raise ConfigError(f"{runtime.config.source or 'built-in defaults'}: {exc}") from None
        self.tarpit = Tarpit(runtime, memory, shared)
        self.tarpit.stats = self.stats
        self.sessions: set[Session] = set()
        self.max_connections = connection_limit(runtime.config.limits.max_connections)
        self.overloaded = runtime.config.limits.overload == "on"
        self.tarpit.overloaded = self.overloaded
        self.per_client: dict[IPAddress | None, int] = {}
        self.per_network: dict[str, int] = {}  # sessions per client prefix ([reputation] prefix_v4/v6)
        self._purger: asyncio.TimerHandle | None = None
        self._snapshot_at = loop.time()
        self._password_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.disk = DiskWatch(self.stats)  # MAIL gets 452 4.3.1 while the Maildir's disk is nearly full
        self.receiving = 0  # sessions between their 354 and the end of their message text
        self.message_slots = message_slots(runtime.config.limits.message_memory, runtime.limits.data_part)
        self._slots_full = False
        self._disk_timer: asyncio.TimerHandle | None = None
        self.admin: asyncio.Server | None = None
        self.http: Any = None  # aiohttp's AppRunner when [admin] listen is set
        self.started = loop.time()
        self.bound_config = runtime.config  # what the sockets were opened with: a reload cannot change it
        self.listeners: list[asyncio.Server] = []
        self.draining = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)
        self._id_prefix = f"{int(time.time()):X}{os.getpid() % 0xFFFF:04X}"

    async def start(self) -> list[tuple[str, int]]:
        """Open every listener; return the (host, port) pairs actually bound (port 0 picks a free one)."""
        self._quiet_accept_errors()
        if isinstance(self.runtime.deliverer, MaildirDeliverer):
            await clean_tmp(self.runtime.deliverer)  # before the first client: nothing of ours is in flight
        # Also before the first client: a restart must not let a flagged harvester in while the records
        # load (CI caught a session accepted between the listener opening and the snapshot being read).
        await self._restore_snapshot()
        bound = []
        for text in self.runtime.config.server.listen:
            host, port = split_listen(text)
            try:
                server = await self.loop.create_server(
                    lambda: Session(self),
                    host,
                    port,
                    reuse_address=True,
                    reuse_port=self.runtime.config.server.reuse_port,
                    backlog=listen_backlog(descriptor_limit()),
                )
            except OSError as exc:
                raise _why_not(text, exc) from None
            self.listeners.append(server)
            for sock in server.sockets:
                address = sock.getsockname()
                bound.append((address[0], address[1]))
                log.info("listening on %s port %d", address[0], address[1])
        if self.runtime.config.server.reuse_port and self.tarpit.shared is None:
            log.warning(
                "[server] reuse_port with the memory store: each process on the port judges clients on its "
                "own; set [reputation] store to sqlite:// or redis:// to share what they see"
            )
        self._purger = self.loop.call_later(PURGE_EVERY, self._purge)
        self._check_disk()
        self.admin = await open_admin_socket(self, self.runtime.config.admin.socket)
        if self.runtime.config.admin.listen:
            # aiohttp costs ~10 MB of RSS: imported only when the listener is on.
            from smtp_tarpit.server import http_admin  # noqa: PLC0415

            self.http = await http_admin.start(self, self.runtime.config.admin.listen)
        return bound

    def _quiet_accept_errors(self) -> None:
        """Out of descriptors, asyncio logs an error with a traceback for every failed accept (thousands a
        second, CPython gh-151615): one warning per episode instead, and a count."""
        loop, last = self.loop, [-ACCEPT_WARN_EVERY]

        def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            if not str(context.get("message", "")).startswith("socket.accept() out of system resource"):
                loop.default_exception_handler(context)
                return
            self.stats.cap("descriptors")
            if loop.time() - last[0] >= ACCEPT_WARN_EVERY:
                last[0] = loop.time()
                log.warning(
                    "accept: out of system resource (%s, %d sessions): new clients wait in the listen "
                    "backlog; raise RLIMIT_NOFILE or lower [limits] max_connections",
                    context.get("exception"),
                    len(self.sessions),
                )

        loop.set_exception_handler(handler)

    def admit(self, session: Session) -> Reply | None:
        """None to admit the session, or the 421 to refuse it with."""
        limits = self.runtime.config.limits
        refusal = None
        if self.draining:
            refusal, reason = replies.SHUTTING_DOWN, "shutting_down"
        elif not self.runtime.deliverer.available:
            refusal, reason = replies.SERVICE_UNAVAILABLE, "downstream_unavailable"
        elif len(self.sessions) >= self.max_connections:
            refusal, reason = replies.TOO_MANY_CONNECTIONS, "max_connections"
        elif self.per_client.get(session.client, 0) >= limits.connections_per_client:
            refusal, reason = replies.TOO_MANY_CONNECTIONS, "connections_per_client"
        elif (
            limits.connections_per_network and self._network_count(session) >= limits.connections_per_network
        ):
            refusal, reason = replies.TOO_MANY_CONNECTIONS, "connections_per_network"
        if refusal is not None:
            self.stats.cap(reason)
            log.info("refused client=%s reason=%s reply=%d", session.client, reason, refusal.code)
            return refusal
        self.stats.sessions += 1
        self.sessions.add(session)
        self.per_client[session.client] = self.per_client.get(session.client, 0) + 1
        if session.keys is not None:
            self.per_network[session.keys.prefix] = self.per_network.get(session.keys.prefix, 0) + 1
        self._check_load()
        return None

    def room_for_a_message(self) -> bool:
        """May a DATA be answered 354? Not while ``[limits] message_memory`` is taken by messages being
        received (each counted at the most it can hold: ``message_slots``); one log line per episode."""
        if self.receiving < self.message_slots:
            if self._slots_full:
                self._slots_full = False
                log.warning("message memory free again: %d messages in progress", self.receiving)
            return True
        if not self._slots_full:
            self._slots_full = True
            log.warning(
                "[limits] message_memory taken by %d messages in progress: DATA gets 451 until one ends",
                self.receiving,
            )
        self.stats.cap("message_memory")
        return False

    def _network_count(self, session: Session) -> int:
        return 0 if session.keys is None else self.per_network.get(session.keys.prefix, 0)

    def forget(self, session: Session) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            left = self.per_client.get(session.client, 1) - 1
            if left > 0:
                self.per_client[session.client] = left
            else:
                self.per_client.pop(session.client, None)
            if session.keys is not None:
                prefix = session.keys.prefix
                if self.per_network.get(prefix, 1) > 1:
                    self.per_network[prefix] -= 1
                else:
                    self.per_network.pop(prefix, None)
            self._check_load()

    @property
    def idle_timeout(self) -> float:
        limits = self.runtime.config.limits
        if self.overloaded:
            return min(limits.overload_idle_timeout, limits.idle_timeout)
        return limits.idle_timeout

    @property
    def timeouts(self) -> Timeouts:
        limits = self.runtime.config.limits
        return Timeouts(self.idle_timeout, limits.command_timeout, limits.min_data_rate)

    def _check_load(self) -> None:
        """Overload (Postfix's stress mode) on above 90% of the connection limit, off below 80%."""
        limits = self.runtime.config.limits
        if limits.overload != "auto":
            overloaded = limits.overload == "on"
        elif self.overloaded:
            overloaded = len(self.sessions) >= OVERLOAD_OFF * self.max_connections
        else:
            overloaded = len(self.sessions) >= OVERLOAD_ON * self.max_connections
        if overloaded == self.overloaded:
            return
        self.overloaded = self.tarpit.overloaded = overloaded
        if overloaded:
            self.stats.cap("overload")
            log.warning(
                "overload: %d of %d connections: new sessions get idle timeout %gs and 421 at %d errors",
                len(self.sessions),
                self.max_connections,
                self.idle_timeout,
                limits.overload_hard_error_limit,
            )
        else:
            log.warning("overload over: %d of %d connections", len(self.sessions), self.max_connections)

    def _purge(self) -> None:
        now = self.tarpit.now()
        dropped = self.tarpit.store.purge(now)
        if dropped:
            log.debug("forgot %d idle client records", dropped)
        if self.tarpit.shared is not None:
            self.spawn(self._call_store(self.tarpit.shared.purge(now)))
        interval = self.runtime.config.reputation.snapshot_interval
        if interval and self.loop.time() - self._snapshot_at >= interval:
            self.spawn(self._save_snapshot())
        self._purger = self.loop.call_later(min(PURGE_EVERY, interval or PURGE_EVERY), self._purge)

    def _check_disk(self) -> None:
        self._disk_timer = self.loop.call_later(CHECK_EVERY, self._check_disk)
        deliverer, minimum = self.runtime.deliverer, self.runtime.config.limits.min_free_space
        if isinstance(deliverer, MaildirDeliverer) and minimum:
            self.spawn(self.disk.measure(deliverer.root, minimum))
        else:
            self.disk.low = False

    @staticmethod
    async def _call_store(call: Awaitable[object]) -> None:
        await call  # the guard logs and counts failures

    async def _restore_snapshot(self) -> None:
        path = self.runtime.config.reputation.snapshot
        self._snapshot_at = self.loop.time()
        if path is None:
            return
        try:
            count = await snapshot.restore(path, self.tarpit.store, self.tarpit.settings, self.tarpit.now())
        except Exception as exc:  # a bad snapshot must not keep mail out
            log.error("could not read the snapshot %s, starting with no client records: %s", path, exc)
            return
        log.info("restored %d client records from %s", count, path)

    async def _save_snapshot(self) -> None:
        path = self.runtime.config.reputation.snapshot
        self._snapshot_at = self.loop.time()
        if path is None:
            return
        try:
            count = await snapshot.save(path, self.tarpit.store, self.tarpit.settings, self.tarpit.now())
        except Exception as exc:  # logged; the running server keeps its records
            log.error("could not write the snapshot %s: %s", path, exc)
            return
        log.info("saved %d client records to %s", count, path)

    async def check_password(self, users: Users, username: str, password: str) -> bool:
        """scrypt (16 MiB, tens of ms) in a pool of its own, two at a time: a brute force waits its turn
        and never delays Maildir writes, which use asyncio's default pool."""
        if self._password_pool is None:
            self._password_pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=PASSWORD_CHECKS, thread_name_prefix="password"
            )
        return await self.loop.run_in_executor(self._password_pool, users.check, username, password)

    def new_message_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids):06X}"

    async def classify(self, client: IPAddress) -> Verdict:
        dns = self.runtime.dns
        return Verdict() if dns is None else await classify(dns, self.runtime.config, client)

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def reload(self) -> None:
        """SIGHUP: re-read the config file and everything it names (recipients, users, TLS certificate).

        All or nothing: a config that does not build is refused with the reason logged, and the running
        one stays. Sessions in flight carry on; each of their next replies follows the new policy.
        """
        old, bound = self.runtime.config, self.bound_config
        try:
            runtime = build(load(old.source) if old.source else old)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return
        new = runtime.config
        fixed = [
            name
            for name, before, after in (
                ("[server] listen", bound.server.listen, new.server.listen),
                ("[server] reuse_port", bound.server.reuse_port, new.server.reuse_port),
                ("[admin] socket", bound.admin.socket, new.admin.socket),
                ("[admin] listen", bound.admin.listen, new.admin.listen),
                ("[reputation] store", bound.reputation.store, new.reputation.store),
            )
            if before != after
        ]
        if fixed:
            log.warning("reload: %s changed: takes effect after a restart", ", ".join(fixed))
        self.runtime = runtime
        self.executor.max_held = new.limits.max_tarpitted
        self.max_connections = connection_limit(new.limits.max_connections)
        self.message_slots = message_slots(new.limits.message_memory, runtime.limits.data_part)
        self._check_load()
        self.tarpit.configure(runtime)
        self.tarpit.store.max_entries = new.reputation.max_entries
        directory = runtime.directory
        log.info(
            "reloaded %s: %d addresses, %d catch-all domains, tar pit delay %gs, TLS %s",
            old.source or "built-in defaults",
            len(directory.mailboxes),
            len(directory.catch_all),
            runtime.settings.delay,
            "on" if runtime.tls else "off",
        )

    async def shutdown(self) -> None:
        grace = self.runtime.config.server.shutdown_grace
        log.info("shutting down: %d sessions, grace %.0fs for messages in flight", len(self.sessions), grace)
        self.draining = True
        if self._purger is not None:
            self._purger.cancel()
        if self._disk_timer is not None:
            self._disk_timer.cancel()
        for listener in self.listeners:
            listener.close()
        for session in list(self.sessions):
            if (not session.conn.in_data and not session.busy) or session.hold is not None:
                self._cut(session)
        deadline = self.loop.time() + grace
        while self.sessions and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self._tasks:  # deliveries and password checks already running: let them end and answer
            await asyncio.wait(list(self._tasks), timeout=max(grace, 5.0))
        for session in list(self.sessions):
            self._cut(session)
        for listener in self.listeners:
            await listener.wait_closed()
        if self.http is not None:
            await self.http.cleanup()
        if self.runtime.verifier is not None:
            await self.runtime.verifier.close()
        await self.runtime.deliverer.close()
        if self._password_pool is not None:
            self._password_pool.shutdown(wait=False, cancel_futures=True)
        await self._save_snapshot()
        await self.tarpit.close()
        if self.admin is not None:
            self.admin.close()
            self.bound_config.admin.socket.unlink(missing_ok=True)  # the path we bound, even after a reload

    def _cut(self, session: Session) -> None:
        if session.transport is None:
            return
        session.outcome = "shutdown"
        self.executor.cut(session, replies.SHUTTING_DOWN)
