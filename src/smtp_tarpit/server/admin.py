"""The admin socket: a Unix socket (mode 0600) through which ``smtp-tarpit client show|forget`` reach the
running server.

Protocol: the client sends one JSON object on one line, ``{"command": "show"|"forget", "client": "ADDR"}``;
the server answers one JSON object on one line: ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.

Invariants:
- Only the owner of the socket file can connect (mode 0600, set before the first accept); nothing is read
  beyond one line of at most ``MAX_REQUEST`` octets, and a request never blocks the SMTP service.
- A stale socket file left by a crashed server is replaced; a live one (another server answering on it)
  is an error at start, so two servers never share one socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smtp_tarpit.policy.decisions import SessionFacts
from smtp_tarpit.policy.engine import error_delay
from smtp_tarpit.policy.reputation import ClientState
from smtp_tarpit.protocol.replies import UNKNOWN_USER

if TYPE_CHECKING:
    from smtp_tarpit.server.listener import Server

log = logging.getLogger("smtp_tarpit.admin")
MAX_REQUEST = 4096


class AdminError(Exception):
    """The admin socket cannot be opened; the message says why."""


async def open_admin_socket(server: Server, path: Path) -> asyncio.Server:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise AdminError(f"cannot make {path.parent}: {exc.strerror}") from None
    _remove_stale(path)
    old_umask = os.umask(0o177)  # the socket is born 0600: no window where others could connect
    try:
        listener = await asyncio.start_unix_server(lambda r, w: _serve(server, r, w), path=str(path))
    except OSError as exc:
        raise AdminError(f"cannot listen on {path}: {exc.strerror}") from None
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    log.info("admin socket at %s", path)
    return listener


def _remove_stale(path: Path) -> None:
    if not path.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(0.5)
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)  # nobody answers: left by a server that died
        return
    finally:
        probe.close()
    raise AdminError(f"{path} is in use by another running server")


async def _serve(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        line = await asyncio.wait_for(reader.readline(), timeout=5)
        answer = await handle(server, line[:MAX_REQUEST])
        writer.write(json.dumps(answer).encode() + b"\n")
        await writer.drain()
    except (TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def handle(server: Server, line: bytes) -> dict[str, Any]:
    try:
        request = json.loads(line)
        command, client = request["command"], ipaddress.ip_address(request["client"])
    except (ValueError, KeyError, TypeError):
        return {"ok": False, "error": 'expected {"command": "show"|"forget", "client": "ADDRESS"}'}
    tarpit = server.tarpit
    keys = tarpit.keys(client)
    assert keys is not None
    if command == "forget":
        forgotten = await tarpit.forget(keys)
        log.info("admin: forgot %s (%s)", client, ", ".join(forgotten) or "nothing was known")
        return {"ok": True, "client": str(client), "forgotten": forgotten}
    if command == "show":
        await tarpit.refresh(keys)  # what every host knows, when a shared store answers
        now = tarpit.now()
        records = {key: describe(tarpit.store.get(key), now, tarpit) for key in (keys.exact, keys.prefix)}
        view = tarpit.view(keys)
        first_error = SessionFacts(client, authenticated=False, exempt=False, errors=1)
        return {
            "ok": True,
            "client": str(client),
            "score": round(view.score(now, tarpit.settings), 3),
            "flagged": view.flagged(now),
            "next_error_delay": round(error_delay(view, first_error, UNKNOWN_USER, now, tarpit.settings), 3),
            "records": records,
            "connections": server.per_client.get(client, 0),
        }
    return {"ok": False, "error": f"unknown command {command!r}"}


def describe(state: ClientState, now: float, tarpit: Any) -> dict[str, Any]:
    settings = tarpit.settings
    return {
        "score": round(state.score_at(now, settings.half_life), 3),
        "flagged_for": round(max(state.flagged_until - now, 0.0), 1),
        "recent_unknown_recipients": sum(1 for t in state.unknowns if now - t < settings.harvest_window),
        "seen": dict(state.counts),
    }


def request(path: Path, command: str, client: str, timeout: float = 5.0) -> dict[str, Any]:
    """Used by the CLI: send one request to a running server's admin socket and return its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(json.dumps({"command": command, "client": client}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    answer = json.loads(data)
    if not isinstance(answer, dict):
        raise ValueError("not a JSON object")
    return answer
