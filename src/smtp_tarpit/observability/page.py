"""The live status page at / of the admin listener: plain server-rendered HTML, one small script, no build.

It shows at a glance what the tar pit holds now, the attacker time wasted today, the worst offenders (with
a forget button each, which works only when ``[admin] token`` is set and typed in), and how long held
clients waited before they hung up, as an inline SVG bar chart.

Layout: made to fit a 1280x900 browser window without scrolling for a typical day (six cards in one row,
a short offenders table, a chart whose bucket labels are centred in slots wide enough never to overlap).

Invariants: pure (a status dict in, a string out); every value from the status dict is HTML-escaped;
the page refreshes itself every 10 seconds and works without its script (forms post plainly, and a
<noscript> meta refresh takes over). The script only copies the typed token into the form being sent and
holds the refresh back while a token is being typed, so the refresh never wipes it.
"""

from __future__ import annotations

from html import escape
from typing import Any

REFRESH_SECONDS = 10

_STYLE = """
body{font:15px/1.4 system-ui,sans-serif;margin:1em auto;max-width:64em;color:#222;padding:0 1em}
h1{font-size:1.4em;margin:0} h2{font-size:1.15em;margin:1.1em 0 .4em} .muted{color:#666} p{margin:.3em 0}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(9.5em,1fr));gap:.7em;margin:.8em 0}
.card{border:1px solid #ddd;border-radius:6px;padding:.4em .8em;font-size:.9em;color:#555}
.card b{display:block;font-size:1.7em;line-height:1.2;color:#222}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.25em .5em;border-bottom:1px solid #eee}
.flag{color:#b00;font-weight:bold} form{display:inline} button{cursor:pointer}
button:disabled{cursor:not-allowed}
svg{max-width:100%;height:auto;display:block} svg text{font-size:12px;fill:#444;text-anchor:middle}
svg .axis{stroke:#999}
"""

_SCRIPT = f"""
var token = document.getElementById('token');
document.querySelectorAll('form.forget').forEach(function (f) {{
  f.addEventListener('submit', function () {{ f.token.value = token ? token.value : ''; }});
}});
setInterval(function () {{
  if (!token || (!token.value && document.activeElement !== token)) {{ location.reload(); }}
}}, {REFRESH_SECONDS * 1000});
"""

# The chart's geometry, in SVG user units (= CSS pixels at width 100%).
_SLOT, _BAR, _TOP, _PLOT, _BOTTOM = 52, 34, 20, 110, 24


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
        f'<div class="card" id="{key}"><b>{escape(str(value))}</b>{escape(label)}</div>'
        for label, value, key in cards
    )


def _forget_button(key: str, enabled: bool) -> str:
    disabled = "" if enabled else ' disabled title="set [admin] token to enable"'
    return (
        '<form class="forget" method="post" action="/forget">'
        f'<input type="hidden" name="client" value="{key}">'
        '<input type="hidden" name="token" value="">'
        f'<button aria-label="forget {key}"{disabled}>forget</button></form>'
    )


def _offenders(status: dict[str, Any]) -> str:
    if not status["top_clients"]:
        return '<p class="muted" id="no-offenders">No client is held in suspicion right now.</p>'
    rows = []
    for client in status["top_clients"]:
        key = escape(str(client["key"]))
        why = escape(", ".join(f"{kind} {count}" for kind, count in client["why"].items()) or "-")
        flag = (
            f'<span class="flag">flagged, {escape(_duration(client["flagged_for"]))} left</span>'
            if client["flagged_for"] > 0
            else ""
        )
        button = _forget_button(key, bool(status["forget_enabled"])) if key.startswith("ip:") else ""
        score = escape(str(client["score"]))
        rows.append(f"<tr><td>{key}</td><td>{score}</td><td>{flag}</td><td>{why}</td><td>{button}</td></tr>")
    head = "<tr><th>client</th><th>score</th><th>harvest</th><th>why</th><th></th></tr>"
    return f'<table id="offenders">{head}{"".join(rows)}</table>'


def _chart(hangups: dict[str, list[Any]]) -> str:
    bounds = hangups["bounds"]
    labels = [f"≤{b:g}s" for b in bounds] + [f">{bounds[-1]:g}s" if bounds else "all"]
    counts = [int(c) for c in hangups["counts"]]
    peak = max(counts, default=0) or 1
    width, base = _SLOT * len(counts), _TOP + _PLOT
    parts = [f'<line class="axis" x1="0" y1="{base}" x2="{width}" y2="{base}"/>']
    for i, (label, count) in enumerate(zip(labels, counts, strict=True)):
        h, middle = round(_PLOT * count / peak), i * _SLOT + _SLOT / 2
        text = escape(f"{label}: {count} hung up")
        parts.append(
            f'<rect class="bar" data-count="{count}" x="{middle - _BAR / 2}" y="{base - h}" width="{_BAR}" '
            f'height="{h}" fill="#c33"><title>{text}</title></rect>'
            f'<text class="label" x="{middle}" y="{base + 16}">{escape(label)}</text>'
        )
        if count:
            parts.append(f'<text class="count" x="{middle}" y="{base - h - 5}">{count}</text>')
    height = base + _BOTTOM
    note = "" if any(counts) else '<p class="muted" id="no-hangups">No held client has hung up yet.</p>'
    return (
        f'{note}<svg id="hangups" role="img" aria-label="hang-up histogram" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}">{"".join(parts)}</svg>'
    )


def render(status: dict[str, Any]) -> str:
    token_box = (
        '<p><label>Token to forget a client: <input id="token" type="password" autocomplete="off">'
        "</label></p>"
        if status["forget_enabled"]
        else '<p class="muted">Forgetting clients from this page needs <code>[admin] token</code>.</p>'
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<noscript><meta http-equiv="refresh" content="{REFRESH_SECONDS}"></noscript>
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
