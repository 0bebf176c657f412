"""The live status page at / of the admin listener: plain server-rendered HTML, one small script, no build.

It shows at a glance what the tar pit holds now, the attacker time wasted today, the worst offenders (with
a forget button each, which works only when ``[admin] token`` is set and typed in), and how long held
clients waited before they hung up, as an inline SVG bar chart.

Invariants: pure (a status dict in, a string out); every value from the status dict is HTML-escaped;
the page refreshes itself every 10 seconds and works without its script (forms post plainly).
"""

from __future__ import annotations

from html import escape
from typing import Any

_STYLE = """
body{font:15px/1.4 system-ui,sans-serif;margin:2em auto;max-width:60em;color:#222;padding:0 1em}
h1{font-size:1.4em;margin-bottom:.2em} .muted{color:#666}
.cards{display:flex;flex-wrap:wrap;gap:1em;margin:1em 0}
.card{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;min-width:9em}
.card b{display:block;font-size:1.6em}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.3em .5em;border-bottom:1px solid #eee}
.flag{color:#b00;font-weight:bold} form{display:inline} button{cursor:pointer}
svg text{font-size:11px;fill:#444}
"""

_SCRIPT = """
document.querySelectorAll('form.forget').forEach(function (f) {
  f.addEventListener('submit', function () { f.token.value = document.getElementById('token').value; });
});
"""


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _cards(status: dict[str, Any]) -> str:
    cards = [
        ("held in the tar pit now", status["tarpitted"], "tarpitted"),
        ("open sessions", status["sessions"], "sessions"),
        ("attacker time wasted today", _duration(status["delayed_seconds_today"]), "wasted-today"),
        ("harvest flags", status["harvest_flags_total"], "flags"),
        ("messages accepted", status["messages"].get("accepted", 0), "accepted"),
        ("clients remembered", status["clients_known"], "clients"),
    ]
    return "".join(
        f'<div class="card" id="{key}">{escape(label)}<b>{escape(str(value))}</b></div>'
        for label, value, key in cards
    )


def _offenders(status: dict[str, Any]) -> str:
    if not status["top_clients"]:
        return '<p class="muted" id="no-offenders">No client is held in suspicion right now.</p>'
    rows = []
    for client in status["top_clients"]:
        key = escape(client["key"])
        why = escape(", ".join(f"{kind} {count}" for kind, count in client["why"].items()) or "-")
        flag = (
            f'<span class="flag">flagged, {escape(_duration(client["flagged_for"]))} left</span>'
            if client["flagged_for"] > 0
            else ""
        )
        button = ""
        if key.startswith("ip:"):
            disabled = "" if status["forget_enabled"] else " disabled title='set [admin] token to enable'"
            button = (
                '<form class="forget" method="post" action="/forget">'
                f'<input type="hidden" name="client" value="{key}">'
                '<input type="hidden" name="token" value="">'
                f"<button{disabled}>forget</button></form>"
            )
        rows.append(
            f"<tr><td>{key}</td><td>{client['score']}</td><td>{flag}</td><td>{why}</td><td>{button}</td></tr>"
        )
    head = "<tr><th>client</th><th>score</th><th>harvest</th><th>why</th><th></th></tr>"
    return f'<table id="offenders">{head}{"".join(rows)}</table>'


def _chart(hangups: dict[str, list[Any]]) -> str:
    labels = [f"≤{b:g}s" for b in hangups["bounds"]] + ["more"]
    counts = hangups["counts"]
    peak = max(counts) or 1
    width, height, bar = 40 * len(counts), 140, 30
    parts = []
    for i, (label, count) in enumerate(zip(labels, counts, strict=True)):
        h = round(100 * count / peak)
        x = i * 40 + 5
        parts.append(
            f'<rect x="{x}" y="{110 - h}" width="{bar}" height="{h}" fill="#c33">'
            f"<title>{count}</title></rect>"
            f'<text x="{x}" y="125">{escape(label)}</text><text x="{x}" y="{105 - h}">{count}</text>'
        )
    return (
        f'<svg id="hangups" role="img" aria-label="hang-up histogram" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">{"".join(parts)}</svg>'
    )


def render(status: dict[str, Any]) -> str:
    token_box = (
        '<p>Token to forget a client: <input id="token" type="password" autocomplete="off"></p>'
        if status["forget_enabled"]
        else '<p class="muted">Forgetting clients from this page needs <code>[admin] token</code>.</p>'
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="10">
<title>smtp-tarpit status</title><style>{_STYLE}</style></head>
<body>
<h1>smtp-tarpit</h1>
<p class="muted">version {escape(str(status["version"]))}, up {escape(_duration(status["uptime"]))},
{escape(_duration(status["delayed_seconds_total"]))} of delay served since start</p>
<div class="cards">{_cards(status)}</div>
<h2>Worst offenders</h2>
{token_box}
{_offenders(status)}
<h2>How long held clients waited before hanging up</h2>
<p class="muted">Bots are impatient (published data: 87% leave within 30 s); legitimate MTAs wait minutes.</p>
{_chart(status["hangups"])}
<script>{_SCRIPT}</script>
</body></html>
"""
