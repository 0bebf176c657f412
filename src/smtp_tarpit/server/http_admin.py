"""The admin HTTP listener (``[admin] listen``, off unless set): /metrics, /healthz, /status, the status page
at /, and POST /forget.

Built on aiohttp (the maintained asyncio HTTP server), imported only when the listener is configured.

Invariants:
- Read-only endpoints need no credentials (bind it to loopback, the default you write in the config);
  POST /forget changes state, so it is refused unless ``[admin] token`` is set and the request carries it
  (form field ``token`` or ``Authorization: Bearer``), compared in constant time.
- Nothing here writes to an SMTP client; a failing endpoint never affects the SMTP service.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from smtp_tarpit.delivery import DeliveryError
from smtp_tarpit.observability import page
from smtp_tarpit.observability.metrics import Live, registry
from smtp_tarpit.server.status import status

if TYPE_CHECKING:
    from smtp_tarpit.server.listener import Server

log = logging.getLogger("smtp_tarpit.admin")
SERVER_KEY = web.AppKey("server", object)


def _server(request: web.Request) -> Server:
    return request.app[SERVER_KEY]  # type: ignore[return-value]


async def start(server: Server, listen: str) -> web.AppRunner:
    host, _, port = listen.rpartition(":")
    app = web.Application(client_max_size=16 * 1024)
    app[SERVER_KEY] = server
    live = Live(
        active=lambda: len(server.sessions),
        tarpitted=lambda: server.executor.held,
        delayed_seconds=lambda: server.executor.delayed_seconds,
        decisions=lambda: dict(server.tarpit.decisions),
        harvest_flags=lambda: server.tarpit.flags,
        clients_known=lambda: len(server.tarpit.store),
        lookups=lambda: _lookups(server),
        store_errors=lambda: 0 if server.tarpit.shared is None else server.tarpit.shared.guard.errors,
        store_up=lambda: server.tarpit.shared is None or server.tarpit.shared.guard.up,
        overloaded=lambda: server.overloaded,
    )
    app["registry"] = registry(server.stats, live)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/status", _status)
    app.router.add_get("/", _page)
    app.router.add_post("/forget", _forget)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host.strip("[]"), int(port))
    await site.start()
    for address in runner.addresses:
        log.info("admin HTTP on %s port %d", address[0], address[1])
    return runner


def _lookups(server: Server) -> dict[tuple[str, ...], int]:
    counts: dict[tuple[str, ...], int] = {}
    dns, verifier = server.runtime.dns, server.runtime.verifier
    if dns is not None:
        counts |= {
            ("dns", "asked"): dns.lookups,
            ("dns", "cached"): dns.cache_hits,
            ("dns", "failed"): dns.failures,
        }
    if verifier is not None:
        counts |= {
            ("verify", "asked"): verifier.probes,
            ("verify", "cached"): verifier.cache_hits,
            ("verify", "failed"): verifier.failures,
        }
    counts[("store", "evicted")] = server.tarpit.store.evictions
    if server.tarpit.shared is not None:
        guard = server.tarpit.shared.guard
        counts[("store", "failed")] = guard.errors
        counts[("store", "skipped")] = guard.skipped
    return counts


async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app["registry"])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _healthz(request: web.Request) -> web.Response:
    server = _server(request)
    problems = []
    if server.draining:
        problems.append("shutting down")
    if not any(listener.is_serving() for listener in server.listeners):
        problems.append("not listening")
    deliverer = server.runtime.deliverer
    try:
        deliverer.check()
    except DeliveryError as exc:
        problems.append(f"delivery: {exc}")
    if not deliverer.available:
        problems.append("delivery: the downstream did not answer (new sessions get 421 4.4.1)")
    if problems:
        return web.json_response({"status": "unhealthy", "problems": problems}, status=503)
    return web.json_response({"status": "ok"})


async def _status(request: web.Request) -> web.Response:
    return web.json_response(status(_server(request)))


async def _page(request: web.Request) -> web.Response:
    return web.Response(text=page.render(status(_server(request))), content_type="text/html", charset="utf-8")


async def _forget(request: web.Request) -> web.Response:
    server = _server(request)
    token = server.runtime.config.admin.token
    form = await request.post()
    given = str(form.get("token", "")) or request.headers.get("Authorization", "").removeprefix("Bearer ")
    if not token or not hmac.compare_digest(given.encode(), token.encode()):
        return web.json_response({"ok": False, "error": "forget needs [admin] token"}, status=403)
    try:
        client = ipaddress.ip_address(str(form.get("client", "")).removeprefix("ip:"))
    except ValueError:
        return web.json_response({"ok": False, "error": "client must be an IP address"}, status=400)
    keys = server.tarpit.keys(client)
    assert keys is not None
    forgotten = await server.tarpit.forget(keys)
    log.info(
        "admin: forgot %s (%s) from the status page", client, ", ".join(forgotten) or "nothing was known"
    )
    if "text/html" in request.headers.get("Accept", ""):
        raise web.HTTPSeeOther("/")
    return web.json_response({"ok": True, "client": str(client), "forgotten": forgotten})
