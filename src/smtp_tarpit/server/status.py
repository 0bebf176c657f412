"""What the server is doing right now, as one JSON-able dict: for /status, the status page and the CLI.

Invariants: reads only (no side effect); bounded output (the top clients only), whatever the load.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from smtp_tarpit import __version__

if TYPE_CHECKING:
    from smtp_tarpit.server.listener import Server

TOP_CLIENTS = 20


def status(server: Server, top: int = TOP_CLIENTS) -> dict[str, Any]:
    tarpit, stats = server.tarpit, server.stats
    now, settings = tarpit.now(), tarpit.settings
    clients: list[dict[str, Any]] = []
    for key, state in tarpit.store.items():
        score = state.score_at(now, settings.half_life)
        flagged_for = max(state.flagged_until - now, 0.0)
        if score > 0 or flagged_for > 0:
            clients.append(
                {
                    "key": key,
                    "score": round(score, 3),
                    "flagged_for": round(flagged_for, 1),
                    "why": dict(state.counts),
                }
            )
    clients.sort(key=lambda c: (c["flagged_for"] > 0, c["score"]), reverse=True)
    return {
        "version": __version__,
        "uptime": round(server.loop.time() - server.started, 1),
        "sessions": len(server.sessions),
        "tarpitted": server.executor.held,
        "delayed_seconds_total": round(server.executor.delayed_seconds, 1),
        "delayed_seconds_today": round(stats.delayed_today, 1),
        "sessions_total": stats.sessions,
        "messages": dict(stats.messages),
        "harvest_flags_total": tarpit.flags,
        "caps_hit": dict(stats.caps_hit),
        "clients_known": len(tarpit.store),
        "hangups": {
            "bounds": list(stats.hangups.bounds),
            "counts": list(stats.hangups.counts),
        },
        "top_clients": clients[:top],
        "forget_enabled": bool(server.runtime.config.admin.token),
    }
